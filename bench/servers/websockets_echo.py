"""``websockets`` (new asyncio implementation) echo/broadcast server.

The broadcast path uses ``websockets.asyncio.server.broadcast``, which writes
to every connection without awaiting. Compression is off (``compression=None``)
unless ``--compress`` is given: then the library's own default,
``compression="deflate"`` (permessage-deflate with a 12-bit window both ways
and memLevel 5, context takeover), for the benchmark's deflate cases.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from bench.servers._args import parse_port_compress

MAX_SIZE = 16 * 1024 * 1024


async def main(port: int, compress: bool) -> None:
    """Serve until killed."""
    peers: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        if ws.request is not None and ws.request.path == "/bcast":
            peers.add(ws)
            try:
                async for message in ws:
                    broadcast([p for p in peers if p is not ws], message)
            finally:
                peers.discard(ws)
            return
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:  # the client left with messages in flight
            pass

    compression = "deflate" if compress else None
    async with serve(
        handler, "127.0.0.1", port, compression=compression, max_size=MAX_SIZE
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(*parse_port_compress(__doc__ or "")))
