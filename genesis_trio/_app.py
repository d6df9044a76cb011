"""The ASGI application: the hub's WebSocket endpoint plus HTTP routes."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute

from ._hub import TranscendentalExternalWebSocket


def create_app(
    hub: TranscendentalExternalWebSocket, *, routes: list[BaseRoute] | None = None
) -> Starlette:
    """A Starlette app serving ``hub`` at ``/ws`` and ``GET /health``.

    Extra ``routes`` are appended (the REST API and demo pages mount here).
    """

    async def health(request: Request) -> JSONResponse:
        stats = hub.statistics()
        return JSONResponse(
            {
                "status": "ok",
                "node": stats.node_id,
                "active_connections": stats.active_connections,
                "sessions": stats.sessions,
            }
        )

    return Starlette(
        routes=[
            WebSocketRoute("/ws", hub.handle_connection),
            Route("/health", health, methods=["GET"]),
            *(routes or []),
        ]
    )
