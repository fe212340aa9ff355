"""A small asyncio TCP proxy for fault drills: forwards to a real server and, on demand, adds
latency, silently stops forwarding (a cut cable), or resets every connection.

Runs its own event loop in a thread, so sync tests drive it with plain method calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading


class FaultProxy:
    """``127.0.0.1:port`` forwarding to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.delay = 0.0
        self.cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port: int = self._server.sockets[0].getsockname()[1]

    def set(self, *, delay: float | None = None, cut: bool | None = None) -> None:
        """Add ``delay`` seconds before each request is forwarded; ``cut`` stops forwarding."""
        if delay is not None:
            self.delay = delay
        if cut is not None:
            self.cut = cut

    def reset(self) -> None:
        """Close every open connection with a TCP RST (SO_LINGER 0)."""

        def rst() -> None:
            for writer in list(self._writers):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                writer.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(rst)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer, True),
            self._pipe(up_reader, writer, False),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        """Forward one direction; the delay applies to requests (each waits once), not to
        every chunk of a large reply."""
        try:
            while data := await reader.read(65536):
                if self.delay and upstream:
                    await asyncio.sleep(self.delay)
                while self.cut:
                    await asyncio.sleep(0.05)
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()

    def close(self) -> None:
        self.reset()

        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
