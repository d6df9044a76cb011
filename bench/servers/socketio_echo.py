"""python-socketio echo/broadcast server: ``AsyncServer(async_mode="asgi")`` under uvicorn.

The idiomatic deployment: ``socketio.ASGIApp`` served by uvicorn with its
defaults (without uvloop and httptools installed: the asyncio loop, h11, and
the ``websockets`` sans-I/O WebSocket protocol). Clients speak Socket.IO over
Engine.IO v4 on ``/socket.io/`` (the load generator's ``socketio`` dialect,
WebSocket transport only). An ``echo`` event is emitted back to its sender
(``to=sid``); a ``bcast`` event is emitted to every other client
(``skip_sid=sid``): python-socketio encodes the packet once and sends it to
each client in a task of its own.
"""

from __future__ import annotations

import socketio
import uvicorn

from bench.servers._args import parse_port

MAX_SIZE = 16 * 1024 * 1024


def make_app() -> socketio.ASGIApp:
    """The ASGI app: Socket.IO on ``/socket.io/``, events ``echo`` and ``bcast``."""
    sio = socketio.AsyncServer(async_mode="asgi", max_http_buffer_size=MAX_SIZE)

    @sio.on("echo")
    async def echo(sid: str, data: object) -> None:
        await sio.emit("echo", data, to=sid)

    @sio.on("bcast")
    async def bcast(sid: str, data: object) -> None:
        await sio.emit("bcast", data, skip_sid=sid)

    return socketio.ASGIApp(sio)


def main() -> None:
    """Serve until killed (exit status non-zero if the port cannot be bound)."""
    port = parse_port(__doc__ or "")
    uvicorn.run(make_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
