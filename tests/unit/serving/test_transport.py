"""One send() per response: the writes of one event-loop step reach the socket as one write."""

from __future__ import annotations

import asyncio

from bigmodel_cli.serving.transport import CoalescingWrites, coalescing_protocol


class _Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_writes_of_one_step_leave_together_and_close_flushes() -> None:
    async def main() -> _Recorder:
        real = _Recorder()
        transport = CoalescingWrites(real)  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"body")
        assert real.writes == []  # nothing sent within the step
        await asyncio.sleep(0)
        assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        transport.write(b"last")
        transport.close()  # flushed before closing, in order
        assert real.writes[-1] == b"last" and real.closed
        assert transport.get_extra_info("peername") == "info:peername"  # the rest is the real transport's
        return real

    assert len(asyncio.run(main()).writes) == 2


def test_protocol_subclass_wraps_the_transport() -> None:
    seen = []

    class Base(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            seen.append(transport)

    async def main() -> None:
        coalescing_protocol(Base)().connection_made(_Recorder())  # type: ignore[arg-type]

    asyncio.run(main())
    assert isinstance(seen[0], CoalescingWrites)
