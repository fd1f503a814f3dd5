"""The HTTP connection: uvicorn's httptools protocol, each response in one `send()`, guarded against clients
that would hold the server's memory or its connections.

    config = uvicorn.Config(app, http=serving_protocol(request_timeout_s=30), timeout_keep_alive=5)

One send() per response: uvicorn writes a response's status line and headers, then its body, as two
`transport.write` calls; on a TCP_NODELAY socket each is its own system call and its own packet, which on
loopback costs about as much as the rest of the request's handling. `CoalescingWrites` buffers the writes
made during one step of the event loop and hands them to the real transport as one, at the end of the step
(`call_soon`). Everything else (close, flow control, peer address) is the real transport's.

Guards (`serving_protocol`), each answered with `{"error": ...}` and `connection: close`:

- a request head (request line and headers) over 64 KiB is a 431; its bytes are counted as they arrive, so a
  128 MB header is refused after its first read past the limit, never buffered whole;
- a head not complete `request_timeout_s` after its first byte is a 408; a body is the app's to time out
  (`InferEndpoint` answers 408 itself), with a backstop a little later for routes that answer without
  reading their body: their connection is closed;
- a connection that opens and sends nothing is closed after the keep-alive timeout, as uvicorn closes an
  idle one after a response;
- a client that half-closes its socket (`shutdown(SHUT_WR)`) after a complete request gets its answer,
  then the connection closes (uvicorn would close at once and the answer would be lost);
- at shutdown, a connection in the middle of a request head gets a 503;
- what is not HTTP is a 400 (without uvicorn's log line per such request).

These refusals happen before the app sees a request: they are not in the access log or the metrics.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

MAX_HEAD_BYTES = 64 * 1024
BODY_BACKSTOP_S = 2.5  # past the app's own body deadline (checked every second at most): the protocol closes
# what the app did not answer. The protocol's deadlines are checked every quarter of the timeout (at most 1 s).


class CoalescingWrites:
    """A transport whose `write`s in one event-loop step leave as one write of the wrapped transport."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(c) for c in self._pending)

    def __getattr__(self, name: str) -> Any:  # is_closing, pause_reading, get_extra_info, set_protocol...
        return getattr(self._transport, name)


def coalescing_protocol(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """`base` (uvicorn's h11 or httptools protocol) writing through `CoalescingWrites`."""

    class CoalescingProtocol(base):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(CoalescingWrites(transport))  # type: ignore[arg-type]

    CoalescingProtocol.__name__ = f"Coalescing{base.__name__}"
    return CoalescingProtocol


class _Refusal(Exception):
    """Raised in a parser callback to stop parsing and answer `status` (httptools hands it back as the
    `__context__` of its HttpParserCallbackError)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Sweep:
    """Deadlines of the connections receiving a request, checked together every `tick` seconds by one timer
    (arming and cancelling a timer per request cost more than the rest of the guards)."""

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.deadlines: dict[Any, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def set(self, protocol: Any, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.deadlines[protocol] = loop.time() + delay
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_later(self.tick, self._check)

    def _check(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for protocol, deadline in list(self.deadlines.items()):
            if deadline <= now:
                del self.deadlines[protocol]
                protocol._expired()
        self._timer = self._loop.call_later(self.tick, self._check) if self.deadlines else None


def serving_protocol(request_timeout_s: float = 30.0, max_head_bytes: int = MAX_HEAD_BYTES) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, coalescing its writes, with the guards of this module."""
    import httptools
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    sweep = _Sweep(min(request_timeout_s / 4, 1.0))
    body_deadline = request_timeout_s + BODY_BACKSTOP_S

    class ServingProtocol(coalescing_protocol(HttpToolsProtocol)):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._head_bytes: int | None = 0  # bytes read of the next request's head; None once it is complete
            self._in_message = False
            self._arm_idle()

        def connection_lost(self, exc: Exception | None) -> None:
            sweep.deadlines.pop(self, None)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:  # uvicorn's, with the head limit and the refusals
            self._unset_keepalive_if_required()
            if self._head_bytes is not None:
                self._head_bytes += len(data)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError as e:
                if isinstance(e.__context__, _Refusal):
                    self._refuse(e.__context__.status, e.__context__.message)
                else:
                    self._invalid()
                return
            except httptools.HttpParserError:
                self._invalid()
                return
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            if self._head_bytes is not None and self._head_bytes > max_head_bytes:
                self._refuse(431, f"request head (request line and headers) over {max_head_bytes} bytes")
            elif not self._in_message and (self.cycle is None or self.cycle.response_complete):
                self._arm_idle()  # bytes that began no request (blank lines): still an idle connection

        def eof_received(self) -> bool | None:
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and not self._in_message:
                cycle.keep_alive = False  # the request is complete: answer it, then close
                return True
            return None  # nothing to answer, or a request cut short: close now

        def shutdown(self) -> None:
            if self._in_message and self._head_bytes is not None:
                self._refuse(503, "server is shutting down")
            else:
                super().shutdown()

        # parser callbacks

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_message = True
            sweep.set(self, self.loop, request_timeout_s)

        def on_headers_complete(self) -> None:
            if self._head_bytes is not None and self._head_bytes > max_head_bytes:  # read with a body: measure it
                size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
                if size > max_head_bytes:
                    raise _Refusal(431, f"request head (request line and headers) over {max_head_bytes} bytes")
            self._head_bytes = None
            sweep.set(self, self.loop, body_deadline)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_message = False
            self._head_bytes = 0
            sweep.deadlines.pop(self, None)

        # timers and answers

        def _arm_idle(self) -> None:
            if self.timeout_keep_alive_task is None and not self.transport.is_closing():
                self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                    self.timeout_keep_alive_handler)

        def _expired(self) -> None:
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if self._head_bytes is not None:
                self._refuse(408, f"request head not received within {request_timeout_s:g} s (--request-timeout-s)")
            elif cycle is not None and not cycle.response_started:
                self._refuse(408, f"request body not received within {request_timeout_s:g} s (--request-timeout-s)")
            elif cycle is None or cycle.response_complete:
                self.transport.close()  # answered without its body, which has not all come

        def _refuse(self, status: int, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                        % len(body))
            self.transport.write(b"".join(head) + body)
            self.transport.close()

        def _invalid(self) -> None:  # uvicorn also logs a warning per request: anyone could flood the log
            self._refuse(400, "invalid HTTP request")

    return ServingProtocol
