"""A fault-injecting TCP relay for the download tests, in the spirit of toxiproxy.

It sits on 127.0.0.1 between vlmkit and a real mirror server and forwards bytes both ways,
except when a test asks it to:
- `rate`: slow the server->client direction to N bytes/s (so a test can kill a download mid-file);
- `reset_after`: abort the next connection that has carried more than N response bytes with a
  TCP RST (what a flaky mirror or a middlebox does to long transfers);
- `canned`: answer the next connections itself with the given raw HTTP responses (503, 429,
  a gated-repo 403), without contacting the server;
- `seen`: everything clients sent, so a test can check that a token was really sent.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading


class Relay:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.rate: float | None = None
        self.reset_after: int | None = None
        self.canned: list[bytes] = []
        self.seen = bytearray()
        self.resets = 0
        self.canned_sent = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="relay", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Relay:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("relay did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.canned:
            response = self.canned.pop(0)
            self.seen += await client_r.read(65536)
            client_w.write(response)
            await client_w.drain()
            self.canned_sent += 1
            client_w.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return

        async def upstream() -> None:
            while data := await client_r.read(65536):
                self.seen += data
                up_w.write(data)
                await up_w.drain()
            up_w.close()

        async def downstream() -> None:
            carried = 0
            while data := await up_r.read(65536):
                carried += len(data)
                if self.reset_after is not None and carried > self.reset_after:
                    self.reset_after = None
                    self.resets += 1
                    sock = client_w.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client_w.transport.abort()
                    up_w.close()
                    return
                client_w.write(data)
                await client_w.drain()
                if self.rate:
                    await asyncio.sleep(len(data) / self.rate)
            client_w.close()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.gather(*tasks)
        except (ConnectionError, OSError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            client_w.close()
            up_w.close()


def http_response(status: int, reason: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
