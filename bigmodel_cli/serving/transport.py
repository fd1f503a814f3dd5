"""One `send()` per response: uvicorn's HTTP protocol with the writes of one event-loop step coalesced.

    config = uvicorn.Config(app, http=coalescing_protocol(AutoHTTPProtocol))

uvicorn writes a response's status line and headers, then its body, as two `transport.write` calls; on
a TCP_NODELAY socket each is its own system call and its own packet, which on loopback costs about as
much as the rest of the request's handling. `CoalescingWrites` buffers the writes made during one step
of the event loop and hands them to the real transport as one, at the end of the step (`call_soon`).
Everything else (close, flow control, peer address) is the real transport's.
"""

from __future__ import annotations

import asyncio
from typing import Any


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
