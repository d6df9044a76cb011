"""``TranscendentalAPI``: the hub's HTTP API (docs/api.md), built on its public methods.

Routes under ``/api`` (stats, components, topics, sends, publishes,
requests), ``/metrics``, ``/health`` and ``/ready``, in the same Starlette
app as the WebSocket endpoint, on Hypercorn's Trio worker. Bodies are JSON,
validated against the OpenAPI document's schemas (:mod:`.openapi`); every
error is a problem document (:mod:`.problems`); access follows
:mod:`.access`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import jsonschema
import orjson
import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .._core.errors import RemoteError, RequestTimeout, UnknownComponent
from .._core.frames import valid_component_id, valid_subscription
from .._hub.hub import TranscendentalExternalWebSocket
from .._hub.stats import ComponentInfo
from .access import Access
from .metrics import Metrics
from .openapi import DEFAULT_REQUEST_TIMEOUT, MAX_PAGE, document, validator
from .problems import Problem

log = logging.getLogger("genesis_trio.api")

Endpoint = Callable[[Request], Awaitable[Response]]

DEFAULT_PAGE = 100
"""Rows of ``GET /api/components`` and ``GET /api/topics`` without ``limit``."""
BODY_TIMEOUT = 10.0
"""Seconds a request body may take to arrive (then 408)."""
DRAIN_FACTOR = 4
"""A body up to this many times ``max_message_size`` is read to its end before the 413."""
MAX_BODIES = 64
"""Request bodies received at once (each held up to ``max_message_size``); more: 503."""


class JSON(JSONResponse):
    """JSON through orjson (NaN and infinity become null, as on the wire)."""

    def render(self, content: Any) -> bytes:
        """Encode ``content``."""
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def component_json(info: ComponentInfo) -> dict[str, Any]:
    """One session as the API shows it (schema ``Component``)."""
    return {
        "id": info.component_id,
        "connected": info.connected,
        "anonymous": info.anonymous,
        "local": info.local,
        "node": info.node,
        "owner": info.owner,
        "topics": list(info.topics),
        "epoch": info.epoch,
        "connected_since": info.connected_since,
        "disconnected_since": info.disconnected_since,
        "pending_out": info.pending,
        "pending_in": info.pending_in,
        "rtt_ms": info.rtt_ms,
    }


def _limit(text: str | None) -> int:
    """The ``limit`` query parameter: rows per page."""
    if text is None:
        return DEFAULT_PAGE
    if not (text.isascii() and text.isdigit()):
        raise Problem(400, "query parameter 'limit' must be an integer")
    limit = int(text)
    if not 1 <= limit <= MAX_PAGE:
        raise Problem(400, f"query parameter 'limit' must be 1 to {MAX_PAGE}")
    return limit


def _bool(text: str | None, name: str) -> bool | None:
    if text is None:
        return None
    if text in ("true", "false"):
        return text == "true"
    raise Problem(400, f"query parameter {name!r} must be true or false")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def parse_json(raw: bytes) -> Any:
    """Parse a request body: exact integers (stdlib json), no NaN, bounded nesting."""
    try:
        return json.loads(raw.decode(), parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError:
        raise Problem(400, "the body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, f"the body is not JSON: {exc}"[:300]) from None


class TranscendentalAPI:
    """The HTTP API of one hub (the seed's fourth class).

    ``public``: without authentication, answer clients that are not on
    loopback too. ``draining``: tells ``/ready`` the system is shutting down.
    """

    def __init__(
        self,
        hub: TranscendentalExternalWebSocket,
        *,
        public: bool = False,
        draining: Callable[[], bool] | None = None,
        version: str = "0",
    ) -> None:
        self.hub = hub
        self.access = Access(hub.authenticator, public=public, on_refused=self._refused)
        self.metrics = Metrics(hub)
        self.openapi = document(version)
        self._draining = draining or (lambda: False)
        self._bodies = 0
        """Request bodies being received now (bounded by :data:`MAX_BODIES`)."""

    def _refused(self) -> None:
        self.hub.counters.auth_failures += 1

    def routes(self) -> list[BaseRoute]:
        """The Starlette routes (mount them in the hub's app)."""
        guard = self._guard
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready, methods=["GET"]),
            Route("/metrics", guard(self.scrape), methods=["GET"]),
            Route("/api/openapi.json", self.describe, methods=["GET"]),
            Route("/api/stats", guard(self.stats), methods=["GET"]),
            Route("/api/cluster", guard(self.cluster), methods=["GET"]),
            Route("/api/components", guard(self.list_components), methods=["GET"]),
            Route("/api/components/{id}", guard(self.get_component), methods=["GET"]),
            Route("/api/components/{id}", guard(self.disconnect), methods=["DELETE"]),
            Route("/api/components/{id}/messages", guard(self.send), methods=["POST"]),
            Route("/api/components/{id}/requests", guard(self.request), methods=["POST"]),
            Route("/api/topics", guard(self.topics), methods=["GET"]),
            Route("/api/topics/{topic:path}/messages", guard(self.publish), methods=["POST"]),
        ]

    def _guard(self, endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            await self.access.check(request)
            try:
                return await endpoint(request)
            except Problem:
                raise
            except ClientDisconnect:  # the client left mid-request: nothing to answer
                return Response(status_code=400)
            except Exception as exc:  # a bug: still a problem document, and logged
                log.exception("API %s %s failed", request.method, request.url.path)
                raise Problem(500, f"internal error: {type(exc).__name__}") from None

        return guarded

    # -- probes ---------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """Liveness: the process serves HTTP."""
        stats = self.hub.statistics()
        return JSON(
            {
                "status": "ok",
                "node": stats.node_id,
                "active_connections": stats.active_connections,
                "sessions": stats.sessions,
                "store_healthy": stats.store_healthy,
            }
        )

    async def ready(self, request: Request) -> Response:
        """Readiness: links are accepted (running, store writable, not draining)."""
        hub = self.hub
        if self._draining():
            raise Problem(503, "shutting down")
        if not hub.ready:
            refusal = hub.refusal()
            raise Problem(503, refusal[1] if refusal is not None else "not running")
        return JSON({"ready": True, "node": hub.config.node_id})

    async def scrape(self, request: Request) -> Response:
        """Prometheus metrics."""
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def describe(self, request: Request) -> Response:
        """The OpenAPI document."""
        return JSON(self.openapi)

    # -- reading ----------------------------------------------------------------------

    async def stats(self, request: Request) -> Response:
        """``get_stats()``."""
        return JSON(self.hub.get_stats())

    async def cluster(self, request: Request) -> Response:
        """Every node's statistics and their totals (404 when the hub is alone)."""
        found = await self.hub.cluster_statistics()
        if found is None:
            raise Problem(404, "this hub is not one node of a cluster")
        return JSON(found)

    async def list_components(self, request: Request) -> Response:
        """Sessions, one page."""
        query = request.query_params
        topic = query.get("topic")
        if topic is not None and not valid_subscription(topic):
            raise Problem(400, f"invalid topic name {topic[:100]!r}")
        after = query.get("after")
        if after is not None and not valid_component_id(after):
            raise Problem(400, f"invalid component id {after[:100]!r}")
        limit = _limit(query.get("limit"))
        rows = self.hub.components(
            topic=topic,
            connected=_bool(query.get("connected"), "connected"),
            after=after,
            limit=limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return JSON(
            {
                "items": [component_json(row) for row in rows],
                "next": rows[-1].component_id if more else None,
            }
        )

    def _component_id(self, request: Request) -> str:
        cid: str = request.path_params["id"]
        if not valid_component_id(cid):
            raise Problem(400, f"invalid component id {cid[:100]!r}")
        return cid

    async def get_component(self, request: Request) -> Response:
        """One session."""
        cid = self._component_id(request)
        try:
            return JSON(component_json(self.hub.component(cid)))
        except UnknownComponent as exc:
            raise Problem(404, str(exc)) from None

    async def topics(self, request: Request) -> Response:
        """Topics with subscriber counts, one page."""
        after = request.query_params.get("after")
        if after is not None and not valid_subscription(after):
            raise Problem(400, f"invalid topic name {after[:100]!r}")
        limit = _limit(request.query_params.get("limit"))
        page = self.hub.topics(after=after, limit=limit + 1)
        items = [{"topic": t, "subscribers": n} for t, n in page.items()]
        more = len(items) > limit
        items = items[:limit]
        return JSON({"items": items, "next": items[-1]["topic"] if more else None})

    # -- acting -------------------------------------------------------------------------

    async def disconnect(self, request: Request) -> Response:
        """Close a component's link; with ``forget=true`` end its session."""
        cid = self._component_id(request)
        forget = _bool(request.query_params.get("forget"), "forget") or False
        try:
            had_link = self.hub.component(cid).connected
            self.hub.disconnect(cid, forget=forget)
        except UnknownComponent as exc:
            raise Problem(404, str(exc)) from None
        return JSON({"id": cid, "disconnected": had_link, "forgotten": forget})

    async def send(self, request: Request) -> Response:
        """Send from ``$hub`` to a component."""
        cid = self._component_id(request)
        body = await self._body(request, "MessageIn")
        try:
            seq = await self.hub.send(cid, body["type"], body.get("data"))
        except UnknownComponent as exc:
            raise Problem(404, str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise Problem(400, str(exc)[:300]) from None
        except RemoteError as exc:  # a full inbox in a cluster
            raise Problem(503, exc.message[:300], code=exc.code) from None
        return JSON({"seq": seq}, 202)

    async def publish(self, request: Request) -> Response:
        """Publish from ``$hub`` to a topic."""
        topic: str = request.path_params["topic"]
        body = await self._body(request, "MessageIn")
        try:
            count = await self.hub.publish(topic, body["type"], body.get("data"))
        except (ValueError, TypeError) as exc:
            raise Problem(400, str(exc)[:300]) from None
        return JSON({"subscribers": count}, 202)

    async def request(self, request: Request) -> Response:
        """Request from ``$hub`` to a component; wait for the reply."""
        cid = self._component_id(request)
        body = await self._body(request, "RequestIn")
        timeout = float(body.get("timeout", DEFAULT_REQUEST_TIMEOUT))
        try:
            data = await self.hub.request(cid, body["type"], body.get("data"), timeout=timeout)
        except UnknownComponent as exc:
            raise Problem(404, str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise Problem(400, str(exc)[:300]) from None
        except RemoteError as exc:
            raise Problem(502, f"{cid} answered: {exc.message}"[:300], code=exc.code) from None
        except RequestTimeout as exc:
            raise Problem(504, str(exc)) from None
        try:
            return Response(orjson.dumps({"data": data}), media_type="application/json")
        except TypeError as exc:
            detail = f"the reply's data has no JSON form: {exc}"[:300]
            raise Problem(502, detail, code="not_representable") from None

    async def _body(self, request: Request, schema: str) -> dict[str, Any]:
        """The JSON body, bounded and validated against ``schema``."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise Problem(415, "send the body as application/json")
        limit = self.hub.config.max_message_size
        too_large = Problem(413, f"the body exceeds max_message_size ({limit} bytes)")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
            raise too_large  # not worth reading: the connection is closed after the answer
        if self._bodies >= MAX_BODIES:
            raise Problem(503, f"{MAX_BODIES} request bodies are arriving already: retry")
        self._bodies += 1
        try:
            raw = await self._receive(request, limit, too_large)
        finally:
            self._bodies -= 1
        body = parse_json(bytes(raw))
        error = jsonschema.exceptions.best_match(validator(schema).iter_errors(body))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "body"
            raise Problem(400, f"{where}: {error.message}"[:300])
        assert isinstance(body, dict)
        return body

    @staticmethod
    async def _receive(request: Request, limit: int, too_large: Problem) -> bytearray:
        """The body's bytes (at most ``limit``), within :data:`BODY_TIMEOUT`."""
        raw = bytearray()
        received = 0
        with trio.move_on_after(BODY_TIMEOUT) as timer:
            async for chunk in request.stream():
                received += len(chunk)
                if received > DRAIN_FACTOR * limit:
                    raise too_large
                if received <= limit:
                    raw += chunk
        if received > limit:  # read to the end (bounded), so the client hears the answer
            raise too_large
        if timer.cancelled_caught:
            raise Problem(408, f"the body did not arrive within {BODY_TIMEOUT:g} s")
        return raw
