"""The ASGI application: the hub's WebSocket endpoint plus HTTP routes."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute

from .._hub.endpoint import Receive, Scope, Send
from .._hub.hub import TranscendentalExternalWebSocket


class GenesisApp:
    """The ASGI app :func:`create_app` returns.

    WebSocket upgrades to ``ws_path`` go straight to the hub (raw ASGI: no
    framework objects per connection); everything else goes to ``http``, a
    Starlette app (health, and the REST API and demo pages as they land).
    """

    def __init__(self, hub: TranscendentalExternalWebSocket, http: Starlette, ws_path: str) -> None:
        self.hub = hub
        self.http = http
        self.ws_path = ws_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI connection."""
        if scope["type"] == "websocket" and scope["path"] == self.ws_path:
            await self.hub.asgi(scope, receive, send)
        else:
            await self.http(scope, receive, send)


def create_app(
    hub: TranscendentalExternalWebSocket,
    *,
    routes: list[BaseRoute] | None = None,
    ws_path: str = "/ws",
) -> GenesisApp:
    """An ASGI app serving ``hub`` at ``ws_path`` and ``GET /health``.

    Extra Starlette ``routes`` are added to the HTTP side.
    """

    async def health(request: Request) -> JSONResponse:
        stats = hub.statistics()
        return JSONResponse(
            {
                "status": "ok",
                "node": stats.node_id,
                "active_connections": stats.active_connections,
                "sessions": stats.sessions,
                "store_healthy": stats.store_healthy,
            }
        )

    http = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            WebSocketRoute(ws_path, hub.handle_connection),
            *(routes or []),
        ]
    )
    return GenesisApp(hub, http, ws_path)
