"""The ASGI application: the hub's WebSocket endpoint plus HTTP routes."""

from __future__ import annotations

import pathlib
from collections.abc import MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .._api.problems import Problem, on_http_exception, on_problem
from .._api.routes import TranscendentalAPI
from .._core.version import VERSION
from .._hub.endpoint import Receive, Scope, Send
from .._hub.hub import TranscendentalExternalWebSocket
from .hosts import host_allowed, host_header, refuse_host

STATIC = pathlib.Path(__file__).resolve().parent.parent / "static"
"""Files served at ``/static`` (the browser client ``genesis.js``, the demos' files)."""
DEMO_PAGES = {
    "/demo/chat": "chat.html",
    "/demo/telemetry": "telemetry.html",
    "/dashboard": "dashboard.html",
}
"""The demo pages, by path: files in ``static/demo``."""
CLOSE = (b"connection", b"close")


def page_route(path: str, name: str) -> Route:
    """A route answering ``GET path`` with the page ``static/demo/name``."""

    async def page(request: Request) -> Response:
        file = STATIC / "demo" / name
        if not file.is_file():
            raise HTTPException(404, f"no page {name}")
        return FileResponse(file, media_type="text/html; charset=utf-8")

    return Route(path, page, methods=["GET"])


class GenesisApp:
    """The ASGI app :func:`create_app` returns.

    WebSocket upgrades to ``ws_path`` go straight to the hub (raw ASGI: no
    framework objects per connection); everything else goes to ``http``, a
    Starlette app (the HTTP API, probes, metrics, and your routes).
    """

    def __init__(
        self,
        hub: TranscendentalExternalWebSocket,
        http: Starlette,
        ws_path: str,
        api: TranscendentalAPI | None = None,
        allowed_hosts: frozenset[str] | None = None,
    ) -> None:
        self.hub = hub
        self.http = http
        self.ws_path = ws_path
        self.api = api
        """The HTTP API (None when it was left out)."""
        self.allowed_hosts = allowed_hosts
        """Names besides loopback that ``Host`` may carry (None: any name; hosts.py)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI connection."""
        if self.allowed_hosts is not None and scope["type"] in ("http", "websocket"):
            header = host_header(scope)
            if not host_allowed(header, self.allowed_hosts):
                assert header is not None
                await refuse_host(scope, receive, send, header)
                return
        if scope["type"] == "websocket" and scope["path"] == self.ws_path:
            await self.hub.asgi(scope, receive, send)
        elif scope["type"] != "http":
            await self.http(scope, receive, send)
        else:
            await self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer; an answer that comes before the request body was read closes the connection.

        Hypercorn closes a keep-alive connection whose request was not read to
        its end (an answer given before the body: 415, 401, 404, a 413), without
        saying so: a client reusing it got "server disconnected" on its next
        request. Saying ``Connection: close`` in that answer tells it not to.
        """
        headers = scope.get("headers", ())
        done = not any(
            name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
            for name, value in headers
        )

        async def tracking() -> MutableMapping[str, Any]:
            nonlocal done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        async def answering(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and not done:
                message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
            await send(message)

        await self.http(scope, tracking, answering)


def create_app(
    hub: TranscendentalExternalWebSocket,
    *,
    routes: list[BaseRoute] | None = None,
    ws_path: str = "/ws",
    api: TranscendentalAPI | bool = True,
    demos: bool = True,
    allowed_hosts: frozenset[str] | None = None,
) -> GenesisApp:
    """An ASGI app serving ``hub`` at ``ws_path``, its HTTP API (docs/api.md) and ``/static``.

    ``api``: True for a :class:`TranscendentalAPI` with its defaults
    (loopback only without authentication), an instance of your own, or
    False for ``/health`` and ``/ready`` only. ``demos``: serve the demo pages
    (``/demo/chat``, ``/demo/telemetry``, ``/dashboard``; docs/quickstart.md).
    Extra Starlette ``routes`` are added to the HTTP side. ``allowed_hosts``:
    answer only requests whose ``Host`` is loopback or one of these (None:
    any; see :mod:`.hosts`).
    """
    if api is True:
        api = TranscendentalAPI(hub, version=VERSION)
    probes = api if api else TranscendentalAPI(hub, version=VERSION)
    served = api.routes() if api else probes.routes()[:2]
    static = Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    pages = [page_route(path, name) for path, name in DEMO_PAGES.items()] if demos else []
    http = Starlette(
        routes=[*served, static, *pages, *(routes or [])],
        exception_handlers={Problem: on_problem, HTTPException: on_http_exception},
    )
    http.router.redirect_slashes = False  # a redirect would echo the Host header; 404 instead
    return GenesisApp(hub, http, ws_path, api or None, allowed_hosts)
