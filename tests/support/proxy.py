"""A minimal HTTP CONNECT proxy on loopback that counts the tunnels it opened, so a test can tell
whether a client went through it (HTTPS_PROXY) or around it (NO_PROXY)."""

from __future__ import annotations

import asyncio
import contextlib


class ConnectProxy:
    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            request = (await client_reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, target, _ = request.split("\r\n", 1)[0].split(" ", 2)
            host, _, port = target.rpartition(":")
            if method != "CONNECT" or host.strip("[]") not in ("127.0.0.1", "localhost", "::1"):
                client_writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            self.tunnels.append(target)
            client_writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
        except (OSError, ValueError, asyncio.IncompleteReadError):
            return
        finally:
            client_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    writer.close()
