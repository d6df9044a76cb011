"""The HTTP API (docs/api.md): consistency, metrics, access, the hybrid example.

The outsider's view (every operation and error from the document, abusive
inputs, schemathesis) is in tests/test_api_blackbox.py and
tests/test_api_schema.py; here are the checks that need the inside.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from genesis_trio import GenesisHybridSystem, StaticTokens, TranscendentalWebSocket
from genesis_trio._api.access import Access
from genesis_trio._api.openapi import PATHS
from genesis_trio._api.problems import Problem
from genesis_trio.testing import RunningHub

from .test_examples import load

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_docs_list_exactly_the_openapi_operations() -> None:
    """docs/api.md has a heading per operation of the OpenAPI document, and no other."""
    documented = set(
        re.findall(r"^### `(GET|POST|DELETE) (/\S*)`$", (DOCS / "api.md").read_text(), re.M)
    )
    described = {
        (method.upper(), path)
        for path, item in PATHS.items()
        for method in item
        if method in ("get", "post", "delete")
    }
    described.add(("GET", "/api/openapi.json"))
    assert documented == described


async def test_metrics_stats_and_get_stats_agree(hub: RunningHub) -> None:
    """One instant, the same numbers; the exposition parses; histograms are filled."""
    async with TranscendentalWebSocket(hub.url, "a") as a, TranscendentalWebSocket(hub.url, "b"):
        for n in range(20):
            await a.send("b", "n", n)
        await a.flush()
    base = hub.info.http_url
    async with httpx.AsyncClient(base_url=base) as http:
        api = (await http.get("/api/stats")).json()
        text = (await http.get("/metrics")).text
    direct = hub.hub.get_stats()  # no traffic since: the same numbers
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, value in direct.items():
        if name in ("node_id", "store", "close_codes") or value is None:
            continue
        family = families[f"genesis_trio_{name}".removesuffix("_total")]  # counters: no _total
        assert family.samples[0].value == pytest.approx(float(value)), name
        assert api[name] == value, name
    closed = {s.labels["code"]: s.value for s in families["genesis_trio_links_closed"].samples}
    assert closed == {str(k): v for k, v in direct["close_codes"].items()}
    assert api["close_codes"] == {str(k): v for k, v in direct["close_codes"].items()}
    latency = families["genesis_trio_delivery_latency_seconds"]
    count = next(s.value for s in latency.samples if s.name.endswith("_count"))
    assert count == direct["messages_out"]
    info = families["genesis_trio_hub_info"].samples[0].labels
    assert info == {"node": direct["node_id"], "store": "none"}


def _request(host: str, headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "client": (host, 5000), "headers": raw, "method": "GET"})


async def test_access_rules() -> None:
    """Loopback only without authentication (unless public); admin token with it."""
    closed = Access(None, public=False)
    await closed.check(_request("127.0.0.1"))
    await closed.check(_request("::1"))
    with pytest.raises(Problem) as refused:
        await closed.check(_request("10.1.2.3"))
    assert refused.value.status == 403
    await Access(None, public=True).check(_request("10.1.2.3"))
    tokens = StaticTokens(
        [
            {"token": "a" * 20, "sub": "ops", "admin": True},
            {"token": "b" * 20, "sub": "app"},
        ]
    )
    guarded = Access(tokens, public=False)
    await guarded.check(_request("10.1.2.3", {"Authorization": "Bearer " + "a" * 20}))
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Basic " + "a" * 20}, 401),
        ({"Authorization": "Bearer " + "z" * 20}, 401),
        ({"Authorization": "Bearer " + "b" * 20}, 403),
    ):
        with pytest.raises(Problem) as denied:
            await guarded.check(_request("127.0.0.1", headers))
        assert denied.value.status == status, headers


async def test_the_api_acts_through_the_hubs_public_methods(hub: RunningHub) -> None:
    """Send, publish, request (200/502/504), disconnect and forget, seen from a client."""
    base = hub.info.http_url
    async with TranscendentalWebSocket(hub.url, "svc", topics=["news"]) as svc:

        @svc.on("add")
        async def add(message: Any) -> int:
            return int(sum(message.data))

        @svc.on("boom")
        async def boom(message: Any) -> None:
            raise KeyError("nope")

        @svc.on("slow")
        async def slow(message: Any) -> None:
            await trio.sleep_forever()

        async with httpx.AsyncClient(base_url=base) as http:
            sent = await http.post("/api/components/svc/messages", json={"type": "t", "data": 1})
            assert sent.status_code == 202
            got = await svc.receive()
            assert (got.sender, got.data, got.seq) == ("$hub", 1, sent.json()["seq"])
            published = await http.post("/api/topics/news/messages", json={"type": "n"})
            assert published.json() == {"subscribers": 1}
            assert (await svc.receive()).topic == "news"
            reply = await http.post(
                "/api/components/svc/requests", json={"type": "add", "data": [1, 2]}
            )
            assert reply.json() == {"data": 3}
            failed = await http.post("/api/components/svc/requests", json={"type": "boom"})
            assert (failed.status_code, failed.json()["code"]) == (502, "handler_error")
            assert failed.headers["content-type"] == "application/problem+json"
            late = await http.post(
                "/api/components/svc/requests", json={"type": "slow", "timeout": 0.2}
            )
            assert late.status_code == 504
            row = (await http.get("/api/components/svc")).json()
            assert (row["connected"], row["topics"], row["local"]) == (True, ["news"], False)
            closed = await http.delete("/api/components/svc")
            assert closed.json() == {"id": "svc", "disconnected": True, "forgotten": False}
            await svc.wait_connected()  # it resumed: the session stayed
            forgot = await http.delete("/api/components/svc", params={"forget": "true"})
            assert forgot.json()["forgotten"] is True
            assert (await http.get("/api/components/svc")).status_code in (200, 404)


async def test_hybrid_example() -> None:
    """examples/hybrid.py: local service, external clients and API calls on one system."""
    seen = await load("hybrid").main(0)
    assert seen["quote"] == {"item": "tea", "price": 42}
    assert seen["order"] == ("shop", {"item": "tea"})
    assert seen["api_quote"] == {"item": "coffee", "price": 42}
    assert (seen["api_publish"], seen["api_tick"]) == (1, {"coffee": 40})
    assert ("pricing", True) in seen["components"]
    assert seen["ready"] == 200
    assert seen["presence"] == ["pricing", "shop"]


async def test_ready_says_no_while_draining() -> None:
    """``/ready`` answers 503 once the system shuts down, before links are gone."""
    async with GenesisHybridSystem(port=0) as system:
        assert system.info is not None
        async with httpx.AsyncClient(base_url=system.info.http_url) as http:
            assert (await http.get("/ready")).status_code == 200
            system.hub.gate.end_handshakes(1.0)  # what a shutdown does first
            answer = await http.get("/ready")
            assert answer.status_code == 503
            assert answer.json()["detail"] == "hub shutting down"


async def _exchange(stream: trio.SocketStream, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request``; read one whole response (head, body by Content-Length)."""
    await stream.send_all(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, "the connection was closed instead of answered"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head.lower(), body


async def test_an_answer_before_the_body_says_connection_close(hub: RunningHub) -> None:
    """Hypercorn closes a keep-alive connection whose request body was not read
    (a 415, 401, 404 or 413 answered first), silently: a client reusing it got
    "server disconnected" (a CI run under load). The answer now says so; a
    request whose body was read keeps its connection."""
    body = b'{"type": "x"}'
    post = b"POST /api/topics/news/messages HTTP/1.1\r\nHost: hub\r\nContent-Type: %s\r\n"
    post += b"Content-Length: %d\r\n\r\n" % len(body)
    stream = await trio.open_tcp_stream("127.0.0.1", hub.port)
    async with stream:
        head, _ = await _exchange(stream, post % b"text/plain")  # the body is not sent yet
        assert head.startswith(b"http/1.1 415")
        assert b"connection: close" in head
    stream = await trio.open_tcp_stream("127.0.0.1", hub.port)
    async with stream:
        for _ in range(2):  # read to its end: the connection serves the next request
            head, _ = await _exchange(stream, post % b"application/json" + body)
            assert head.startswith(b"http/1.1 202")
            assert b"connection: close" not in head
        head, _ = await _exchange(stream, b"GET /health HTTP/1.1\r\nHost: hub\r\n\r\n")
        assert head.startswith(b"http/1.1 200")
        assert b"connection: close" not in head
