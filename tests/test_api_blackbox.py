"""The HTTP API as an outsider sees it: a CLI hub subprocess, real sockets, docs/api.md.

Written from docs/api.md, docs/operations.md, docs/security.md, the README and
the OpenAPI document the hub serves, without reading the API's source. Every
operation is exercised on its happy path and on each documented error status;
abusive requests must never yield a 500 nor harm the process; what the hub
holds afterwards (descriptors, sessions) is checked from outside.

Findings (behaviour that differs from the documents) are tests marked
``xfail(strict=True)`` whose reason says what the hub does instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from genesis_trio import Message, TranscendentalWebSocket, create_app
from genesis_trio._api.routes import MAX_BODIES
from genesis_trio.testing import start_hub

from .support.processes import HubProcess, start_cli_hub, wait_until

PROBLEM_TYPE = "https://github.com/genesis-trio/genesis_trio/blob/main/docs/api.md#errors"
MAX_MESSAGE_SIZE = 1 << 20  # docs/operations.md: --max-message-size, 1 MiB by default
ADMIN_TOKEN = "admin-token-0123456789abcdef"
USER_TOKEN = "user-token-0123456789abcdef"
JSON = {"content-type": "application/json"}
ANSWERS = {200, 202, 400, 404, 405, 413, 415, 502, 504}  # docs/api.md, "Errors"

# docs/api.md, "Operations", in its order
DOCUMENTED_OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/api/openapi.json"),
    ("GET", "/api/stats"),
    ("GET", "/api/cluster"),
    ("GET", "/api/components"),
    ("GET", "/api/components/{id}"),
    ("DELETE", "/api/components/{id}"),
    ("POST", "/api/components/{id}/messages"),
    ("POST", "/api/components/{id}/requests"),
    ("GET", "/api/topics"),
    ("POST", "/api/topics/{topic}/messages"),
]
PROBES = {"/health", "/ready", "/api/openapi.json"}  # "answer anyone"

COMPONENT_FIELDS = {
    "id": str,
    "connected": bool,
    "anonymous": bool,
    "local": bool,
    "node": str,
    "owner": (str, type(None)),
    "topics": list,
    "epoch": int,
    "connected_since": (float, int, type(None)),
    "disconnected_since": (float, int, type(None)),
    "pending_out": int,
    "pending_in": int,
    "rtt_ms": (float, int, type(None)),
}


# ---------------------------------------------------------------- helpers


@pytest.fixture
async def cli_hub() -> AsyncIterator[HubProcess]:
    """``genesis-trio serve --port 0 --store none`` (no authentication)."""
    async with start_cli_hub("--store", "none") as hub:
        yield hub


@pytest.fixture
async def http(cli_hub: HubProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=http_url(cli_hub), timeout=20) as client:
        yield client


def http_url(hub: HubProcess) -> str:
    return f"http://127.0.0.1:{hub.port}"


def assert_problem(
    response: httpx.Response, status: int, *, instance: str | None = None
) -> dict[str, Any]:
    """An RFC 9457 problem document with docs/api.md's fields."""
    assert response.status_code == status, (response.request.url, response.text)
    media_type = response.headers["content-type"].split(";")[0].strip()
    assert media_type == "application/problem+json", response.headers
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM_TYPE
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    if instance is not None:
        assert body["instance"] == instance
    return body


async def next_message(ws: TranscendentalWebSocket, within: float = 5.0) -> Message:
    with trio.fail_after(within):
        return await ws.receive()


async def next_presence(ws: TranscendentalWebSocket) -> dict[str, Any]:
    message = await next_message(ws)
    assert message.type == "presence"
    assert message.topic == "$presence"
    assert message.sender == "$hub"
    data: dict[str, Any] = message.data
    return data


async def raw_http(port: int, request: bytes, within: float = 10.0) -> tuple[int | None, bytes]:
    """Send raw bytes, read until the hub closes: (status or None, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    data = b""
    async with stream:
        with trio.fail_after(within):
            try:
                await stream.send_all(request)
                while chunk := await stream.receive_some(65536):
                    data += chunk
            except trio.BrokenResourceError:
                pass  # the hub answered and closed before reading everything
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1."):
        return None, data
    return int(head.split(b" ", 2)[1]), body


async def raw_upload(
    port: int, head: bytes, *, chunked: bool, megabytes: int = 48
) -> tuple[int | None, bytes]:
    """Send ``head`` then a huge body while reading the answer: (status or None, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    data = b""
    piece = b'{"type": "x", "data": "' + b"a" * ((1 << 20) - 23)
    if chunked:
        piece = b"%x\r\n%s\r\n" % (len(piece), piece)

    async def send() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(head)
            for _ in range(megabytes):
                await stream.send_all(piece)

    async with stream:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                with contextlib.suppress(trio.BrokenResourceError):
                    while chunk := await stream.receive_some(65536):
                        data += chunk
                nursery.cancel_scope.cancel()
    head_in, _, body = data.partition(b"\r\n\r\n")
    if not head_in.startswith(b"HTTP/1."):
        return None, data
    return int(head_in.split(b" ", 2)[1]), body


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


# ---------------------------------------------------------------- probes and document


async def test_probes_and_the_openapi_document(
    cli_hub: HubProcess, http: httpx.AsyncClient
) -> None:
    health = await http.get("/health")
    assert health.status_code == 200
    assert health.headers["content-type"] == "application/json"
    body = health.json()
    assert body["status"] == "ok"
    assert set(body) >= {"status", "node", "active_connections", "sessions", "store_healthy"}
    assert body["sessions"] == 0
    assert body["active_connections"] == 0
    assert body["store_healthy"] is True

    ready = await http.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "node": body["node"]}

    stats = (await http.get("/api/stats")).json()
    assert stats["node_id"] == body["node"]
    # "the seed's five metrics and every other statistic"
    assert {"active_connections", "sessions", "messages_processed", "close_codes"} <= set(stats)

    document = (await http.get("/api/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    in_document = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    # docs/api.md: "this page and that document list the same operations" (the
    # document does not describe itself)
    assert in_document == set(DOCUMENTED_OPERATIONS)
    assert cli_hub.alive


async def test_stats_and_metrics_agree(cli_hub: HubProcess, http: httpx.AsyncClient) -> None:
    ws_url = cli_hub.url
    async with TranscendentalWebSocket(ws_url, "meter", topics=["gauges"]) as meter:
        for i in range(3):
            assert (
                await http.post("/api/components/meter/messages", json={"type": "m"})
            ).status_code == 202
            assert (await next_message(meter)).type == "m", i
        await meter.send("meter", "self", i)
        assert (await next_message(meter)).type == "self"
    await wait_until(lambda: _idle(http), within=10)

    before = (await http.get("/api/stats")).json()
    scrape = await http.get("/metrics")
    after = (await http.get("/api/stats")).json()
    assert before == after, "traffic between the reads"
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    samples = metric_samples(scrape.text)

    assert after["messages_in"] >= 1
    assert after["messages_out"] >= 4
    assert samples["genesis_trio_messages_in_total", ()] == after["messages_in"]
    assert samples["genesis_trio_messages_out_total", ()] == after["messages_out"]
    assert samples["genesis_trio_messages_processed_total", ()] == after["messages_processed"]
    assert samples["genesis_trio_sessions", ()] == after["sessions"] == 0
    assert samples["genesis_trio_active_connections", ()] == after["active_connections"] == 0
    # every numeric statistic, by name (counters with _total)
    for name, value in after.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        candidates = [f"genesis_trio_{name}", f"genesis_trio_{name}_total"]
        found = [samples[c, ()] for c in candidates if (c, ()) in samples]
        assert found == [pytest.approx(value)], (name, value, found)
    for code, count in after["close_codes"].items():
        assert samples["genesis_trio_links_closed_total", (("code", code),)] == count
    info = samples["genesis_trio_hub_info", (("node", after["node_id"]), ("store", "none"))]
    assert info == 1
    families = {family.name for family in text_string_to_metric_families(scrape.text)}
    assert {
        "genesis_trio_delivery_latency_seconds",
        "genesis_trio_delivery_frame_messages",
        "genesis_trio_heartbeat_rtt_seconds",
        "genesis_trio_store_commit_seconds",
        "genesis_trio_store_commit_rows",
    } <= families
    delivered = samples["genesis_trio_delivery_latency_seconds_count", ()]
    assert delivered == after["messages_out"]


async def _idle(http: httpx.AsyncClient) -> bool:
    stats = (await http.get("/api/stats")).json()
    return stats["active_connections"] == 0 and stats["sessions"] == 0


# ---------------------------------------------------------------- components


async def test_components_listing_paging_and_filters(
    cli_hub: HubProcess, http: httpx.AsyncClient
) -> None:
    node = (await http.get("/health")).json()["node"]
    async with (
        TranscendentalWebSocket(cli_hub.url, "comp-b", topics=["room", "lobby"]),
        TranscendentalWebSocket(cli_hub.url, "comp-a", topics=["room"]),
        TranscendentalWebSocket(cli_hub.url, "comp-c") as comp_c,
    ):
        page = (await http.get("/api/components")).json()
        assert set(page) == {"items", "next"}
        assert [item["id"] for item in page["items"]] == ["comp-a", "comp-b", "comp-c"]
        assert page["next"] is None
        for item in page["items"]:
            for field, kind in COMPONENT_FIELDS.items():
                assert isinstance(item[field], kind), (field, item)
            assert item["connected"] is True
            assert item["local"] is False
            assert item["anonymous"] is False
            assert item["owner"] is None
            assert item["node"] == node
            assert item["disconnected_since"] is None
        assert sorted(page["items"][1]["topics"]) == ["lobby", "room"]

        first = (await http.get("/api/components", params={"limit": 2})).json()
        assert [item["id"] for item in first["items"]] == ["comp-a", "comp-b"]
        assert first["next"] == "comp-b"
        rest = (
            await http.get("/api/components", params={"limit": 2, "after": first["next"]})
        ).json()
        assert [item["id"] for item in rest["items"]] == ["comp-c"]
        assert rest["next"] is None

        room = (await http.get("/api/components", params={"topic": "room"})).json()
        assert [item["id"] for item in room["items"]] == ["comp-a", "comp-b"]
        lobby = (await http.get("/api/components", params={"topic": "lobby"})).json()
        assert [item["id"] for item in lobby["items"]] == ["comp-b"]

        one = await http.get("/api/components/comp-c")
        assert one.status_code == 200
        assert one.json()["id"] == "comp-c"
        assert one.json()["topics"] == []

        # a session whose link went: listed as disconnected, kept
        await comp_c.aclose(end_session=False)
        await wait_until(lambda: _component_is(http, "comp-c", connected=False), within=10)
        gone = (await http.get("/api/components/comp-c")).json()
        assert isinstance(gone["disconnected_since"], float | int)
        off = (await http.get("/api/components", params={"connected": "false"})).json()
        assert [item["id"] for item in off["items"]] == ["comp-c"]
        on = (await http.get("/api/components", params={"connected": "true"})).json()
        assert [item["id"] for item in on["items"]] == ["comp-a", "comp-b"]
        health = (await http.get("/health")).json()
        assert health["sessions"] == 3
        assert health["active_connections"] == 2

        # operator actions on the disconnected session
        kept = await http.post("/api/components/comp-c/messages", json={"type": "later"})
        assert kept.status_code == 202
        assert (await http.get("/api/components/comp-c")).json()["pending_out"] >= 1
        nothing = await http.delete("/api/components/comp-c")
        assert nothing.json() == {"id": "comp-c", "disconnected": False, "forgotten": False}
        forgotten = await http.delete("/api/components/comp-c", params={"forget": "true"})
        assert forgotten.status_code == 200
        assert forgotten.json() == {"id": "comp-c", "disconnected": False, "forgotten": True}
        assert_problem(await http.get("/api/components/comp-c"), 404)
        assert (await http.get("/health")).json()["sessions"] == 2

    await wait_until(lambda: _idle(http), within=10)


async def _component_is(http: httpx.AsyncClient, component: str, *, connected: bool) -> bool:
    response = await http.get(f"/api/components/{component}")
    return response.status_code == 200 and response.json()["connected"] is connected


async def test_send_to_a_component_exactly_once_in_order(
    cli_hub: HubProcess, http: httpx.AsyncClient
) -> None:
    count = 60
    seqs: dict[int, int] = {}
    async with TranscendentalWebSocket(cli_hub.url, "sink") as sink:

        async def post(i: int) -> None:
            body = {"type": "item", "data": {"i": i, "text": "héllo ✓ \u202e"}}
            response = await http.post("/api/components/sink/messages", json=body)
            assert response.status_code == 202, response.text
            assert response.headers["content-type"] == "application/json"
            seqs[i] = response.json()["seq"]

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(post, i)
        assert len(set(seqs.values())) == count, "every 202 names its own seq"

        received = [await next_message(sink) for _ in range(count)]
        with trio.move_on_after(0.3):  # a duplicate would come right behind
            extra = await sink.receive()
            pytest.fail(f"more than sent: {extra}")
        assert [m.seq for m in received] == sorted(m.seq for m in received)
        by_i = {m.data["i"]: m for m in received}
        assert set(by_i) == set(range(count))
        for i, message in by_i.items():
            assert message.seq == seqs[i]
            assert message.sender == "$hub"
            assert message.to == "sink"
            assert message.type == "item"
            assert message.data["text"] == "héllo ✓ \u202e"
        # data is any JSON value, kept as sent
        for data in [None, 0, -1.5, "", [], {}, [1, [2, [3]]], {"k": {"v": [True, False]}}]:
            response = await http.post(
                "/api/components/sink/messages", json={"type": "any", "data": data}
            )
            assert response.status_code == 202
            message = await next_message(sink)
            assert message.data == data
            assert message.seq == response.json()["seq"]
        no_data = await http.post("/api/components/sink/messages", json={"type": "bare"})
        assert (await next_message(sink)).data is None
        assert no_data.status_code == 202

    assert_problem(
        await http.post("/api/components/sink/messages", json={"type": "x"}),
        404,
        instance="/api/components/sink/messages",
    )


async def test_publish_to_a_topic(cli_hub: HubProcess, http: httpx.AsyncClient) -> None:
    async with (
        TranscendentalWebSocket(cli_hub.url, "sub-1", topics=["news"]) as sub_1,
        TranscendentalWebSocket(cli_hub.url, "sub-2", topics=["news", "sport"]) as sub_2,
        TranscendentalWebSocket(cli_hub.url, "bystander", topics=["sport"]) as bystander,
    ):
        topics = (await http.get("/api/topics")).json()
        assert topics == {
            "items": [{"topic": "news", "subscribers": 2}, {"topic": "sport", "subscribers": 2}],
            "next": None,
        }
        first = (await http.get("/api/topics", params={"limit": 1})).json()
        assert first == {"items": [{"topic": "news", "subscribers": 2}], "next": "news"}
        rest = (await http.get("/api/topics", params={"limit": 1, "after": "news"})).json()
        assert rest == {"items": [{"topic": "sport", "subscribers": 2}], "next": None}
        for bad in ({"limit": 0}, {"limit": "x"}, {"after": "bad topic"}):
            assert_problem(await http.get("/api/topics", params=bad), 400)
        response = await http.post(
            "/api/topics/news/messages", json={"type": "headline", "data": {"t": "ünïcode"}}
        )
        assert response.status_code == 202
        assert response.json() == {"subscribers": 2}
        for ws in (sub_1, sub_2):
            message = await next_message(ws)
            assert message.topic == "news"
            assert message.sender == "$hub"
            assert message.type == "headline"
            assert message.data == {"t": "ünïcode"}
        with trio.move_on_after(0.3):
            pytest.fail(f"not subscribed, yet received {await bystander.receive()}")
        empty = await http.post("/api/topics/nobody.here/messages", json={"type": "x"})
        assert empty.status_code == 202
        assert empty.json() == {"subscribers": 0}
        # topic names may hold '/' (the document's pattern allows it)
        slashed = await http.post("/api/topics/a%2Fb/messages", json={"type": "x"})
        assert slashed.status_code == 202

    for path in ("/api/topics/$presence/messages", "/api/topics/%24presence/messages"):
        assert_problem(await http.post(path, json={"type": "fake"}), 400)


async def test_requests_reply_fail_and_time_out(
    cli_hub: HubProcess, http: httpx.AsyncClient
) -> None:
    release = trio.Event()
    async with TranscendentalWebSocket(cli_hub.url, "svc") as svc:

        @svc.on("echo")
        async def echo(message: Message) -> Any:
            return {"echo": message.data}

        @svc.on("fail")
        async def fail(message: Message) -> Any:
            raise ValueError("the handler refuses")

        @svc.on("hold")
        async def hold(message: Message) -> Any:
            await release.wait()
            return "too late"

        reply = await http.post(
            "/api/components/svc/requests", json={"type": "echo", "data": ["é", 1, None]}
        )
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"data": {"echo": ["é", 1, None]}}

        failed = assert_problem(
            await http.post("/api/components/svc/requests", json={"type": "fail"}),
            502,
            instance="/api/components/svc/requests",
        )
        assert failed["code"] == "handler_error"

        late_before = (await http.get("/api/stats")).json()["late_replies"]
        started = trio.current_time()
        timed_out = await http.post(
            "/api/components/svc/requests", json={"type": "hold", "timeout": 0.5}
        )
        elapsed = trio.current_time() - started
        assert_problem(timed_out, 504, instance="/api/components/svc/requests")
        assert 0.5 <= elapsed < 5, elapsed
        release.set()  # the reply comes after the timeout: dropped and counted
        await wait_until(lambda: _stat_is(http, "late_replies", late_before + 1), within=10)

        for bad in [
            {"type": "echo", "timeout": 0},
            {"type": "echo", "timeout": -1},
            {"type": "echo", "timeout": 300.5},
            {"type": "echo", "timeout": "1"},
            {"type": "echo", "timeout": None},
            {"type": "echo", "unknown": 1},
            {"type": ""},
            {"type": "x" * 129},
            {"data": 1},
        ]:
            assert_problem(await http.post("/api/components/svc/requests", json=bad), 400)
        assert (
            await http.post("/api/components/svc/requests", json={"type": "echo", "timeout": 300})
        ).status_code == 200

    assert_problem(
        await http.post("/api/components/nobody/requests", json={"type": "echo"}),
        404,
        instance="/api/components/nobody/requests",
    )


async def _stat_is(http: httpx.AsyncClient, name: str, value: Any) -> bool:
    return bool((await http.get("/api/stats")).json()[name] == value)


# ---------------------------------------------------------------- presence and operators


async def test_disconnect_forget_and_presence_events(
    cli_hub: HubProcess, http: httpx.AsyncClient
) -> None:
    node = (await http.get("/health")).json()["node"]
    seen: list[dict[str, Any]] = []

    async def presence(watcher: TranscendentalWebSocket, **expected: Any) -> dict[str, Any]:
        event = await next_presence(watcher)
        seen.append(event)
        for key, value in expected.items():
            assert event.get(key) == value, (key, event)
        assert event["node"] == node
        assert abs(event["at"] - time.time()) < 60
        return event

    async with TranscendentalWebSocket(cli_hub.url, "watcher", topics=["$presence"]) as watcher:
        await presence(watcher, event="connected", id="watcher")
        async with TranscendentalWebSocket(cli_hub.url, "bob", topics=["room"]) as bob:
            await presence(watcher, event="connected", id="bob", topics=["room"])
            assert await watcher.presence("room") == [
                {"id": "bob", "connected": True, "node": node}
            ]
            epoch = (await http.get("/api/components/bob")).json()["epoch"]

            dropped = await http.delete("/api/components/bob")
            assert dropped.status_code == 200
            assert dropped.json() == {"id": "bob", "disconnected": True, "forgotten": False}
            # a link drop: disconnected, then the client resumes the same session
            event = await presence(watcher, event="disconnected", id="bob")
            assert "topics" not in event
            assert "reason" not in event
            await presence(watcher, event="resumed", id="bob", topics=["room"])
            assert (await http.get("/api/components/bob")).json()["epoch"] == epoch
            # the session survived: a message sent now reaches bob once
            sent = await http.post("/api/components/bob/messages", json={"type": "still-here"})
            message = await next_message(bob)
            assert message.type == "still-here"
            assert message.seq == sent.json()["seq"]

            ended = await http.delete("/api/components/bob", params={"forget": "true"})
            assert ended.json() == {"id": "bob", "disconnected": True, "forgotten": True}
            await presence(watcher, event="disconnected", id="bob")
            await presence(watcher, event="left", id="bob", reason="forgotten")
            # the client starts over: a new session, a new conversation
            await presence(watcher, event="connected", id="bob")
            await wait_until(lambda: _component_is(http, "bob", connected=True), within=10)
        await presence(watcher, event="left", id="bob", reason="bye")
        assert await watcher.presence("room") == []
        assert (await http.get("/api/topics")).json() == {
            "items": [{"topic": "$presence", "subscribers": 1}],
            "next": None,
        }
        members = (await http.get("/api/components", params={"topic": "$presence"})).json()
        assert [item["id"] for item in members["items"]] == ["watcher"]
        with trio.move_on_after(0.3):
            pytest.fail(f"an event nobody caused: {await watcher.receive()}")

    assert [event["event"] for event in seen] == [
        "connected",
        "connected",
        "disconnected",
        "resumed",
        "disconnected",
        "left",
        "connected",
        "left",
    ]
    assert_problem(await http.delete("/api/components/bob"), 404, instance="/api/components/bob")
    stats = (await http.get("/api/stats")).json()
    assert stats["presence_dropped"] == 0
    assert stats["presence_events"] >= len(seen)


# ---------------------------------------------------------------- documented errors


async def test_every_documented_error_status(cli_hub: HubProcess, http: httpx.AsyncClient) -> None:
    # 404: no session, no route
    for method, path in [
        ("GET", "/api/components/alice"),
        ("DELETE", "/api/components/alice"),
        ("GET", "/nope"),
        ("GET", "/api/nope"),
        ("GET", "/api"),
    ]:
        assert_problem(await http.request(method, path), 404, instance=path)
    for path in ("/api/components/alice/messages", "/api/components/alice/requests"):
        assert_problem(await http.post(path, json={"type": "x"}), 404, instance=path)

    # 405 (with Allow, as HTTP requires)
    for method, path in [
        ("POST", "/health"),
        ("PUT", "/api/stats"),
        ("DELETE", "/api/components"),
        ("PATCH", "/api/components/alice"),
        ("GET", "/api/components/alice/messages"),
        ("GET", "/api/topics/news/messages"),
        ("POST", "/api/topics"),
        ("POST", "/metrics"),
    ]:
        response = await http.request(method, path)
        assert_problem(response, 405, instance=path)
        assert method not in response.headers["allow"]

    # 400: a body that is not JSON or breaks its schema
    path = "/api/topics/news/messages"
    for content in [
        b"",
        b"{",
        b'{"type": "x"} trailing',
        b"not json",
        b'{"type": "\xff\xfe"}',  # invalid UTF-8
        b"\xef\xbb\xbf" + b'{"type": "x"}',  # a byte-order mark
        b'{"type": "x", "data": NaN}',
        b'{"type": "x", "data": 1e999}',
        b"[]",
        b'"type"',
        b"null",
        b'{"type": 1}',
        b'{"type": ""}',
        b'{"type": "' + b"t" * 129 + b'"}',
        b'{"type": "x", "extra": 1}',
        b'{"data": 1}',
        b'{"type": "x", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ]:
        body = assert_problem(await http.post(path, content=content, headers=JSON), 400)
        assert body["instance"] == path
    # 400: a bad id, topic or query parameter
    for bad in [
        "/api/components/%24hub",
        "/api/components/%E2%82%AC",
        "/api/components/%00",
        "/api/components/" + "a" * 129,
        "/api/components?limit=0",
        "/api/components?limit=1001",
        "/api/components?limit=ten",
        "/api/components?limit=2.5",
        "/api/components?connected=maybe",
        "/api/components?topic=",
        "/api/components?topic=caf%C3%A9",
        "/api/components?after=%20",
    ]:
        assert_problem(await http.get(bad), 400)
    assert_problem(await http.delete("/api/components/alice?forget=perhaps"), 400)
    for bad_topic in ("caf%C3%A9", "%2E%2E", "-starts-with-dash", "sp%20ace"):
        assert_problem(
            await http.post(f"/api/topics/{bad_topic}/messages", json={"type": "x"}), 400
        )

    # 413: larger than max_message_size; exactly at it is not "larger"
    prefix, suffix = b'{"type": "x", "data": "', b'"}'
    at_limit = prefix + b"a" * (MAX_MESSAGE_SIZE - len(prefix) - len(suffix) - 64) + suffix
    assert (await http.post(path, content=at_limit, headers=JSON)).status_code == 202
    over = prefix + b"a" * MAX_MESSAGE_SIZE + suffix
    for target in (path, "/api/components/alice/messages", "/api/components/alice/requests"):
        assert_problem(await http.post(target, content=over, headers=JSON), 413, instance=target)

    # 415: not application/json (media types are case-insensitive; parameters allowed)
    for content_type in [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "json",
    ]:
        headers = {} if content_type is None else {"content-type": content_type}
        response = await http.post(path, content=b'{"type": "x"}', headers=headers)
        assert_problem(response, 415, instance=path)
    for content_type in ["application/json; charset=utf-8", "Application/JSON"]:
        response = await http.post(
            path, content=b'{"type": "x"}', headers={"content-type": content_type}
        )
        assert response.status_code == 202, (content_type, response.text)

    assert cli_hub.alive
    assert (await http.get("/api/stats")).json()["serving_failures"] == 0


async def test_percent_encoded_and_unicode_ids(
    cli_hub: HubProcess, http: httpx.AsyncClient
) -> None:
    async with TranscendentalWebSocket(cli_hub.url, "a.b:c@d-e_f") as odd:
        # an id in the documented alphabet, spelt with percent escapes, is the same id
        for spelling in ("a.b:c@d-e_f", "%61.b%3Ac%40d-e_f", "a%2Eb:c@d%2De_f"):
            response = await http.get(f"/api/components/{spelling}")
            assert response.status_code == 200, (spelling, response.text)
            assert response.json()["id"] == "a.b:c@d-e_f"
        sent = await http.post("/api/components/%61.b%3Ac%40d-e_f/messages", json={"type": "hi"})
        assert sent.status_code == 202
        assert (await next_message(odd)).type == "hi"
    # path tricks never escape the route nor reach another resource
    for path in [
        "/api/components/a%2Fb",
        "/api/components/%2E%2E",
        "/api/components/..%2F..%2Fhealth",
        "/api/components/%2e%2e%2fapi%2fstats",
        "/api/components/%F0%9F%98%80",
        "/api/components/%D8%A7",
        "/api/components/%FF",
        "/api/components/%C0%AE%C0%AE",
    ]:
        response = await http.get(path)
        assert response.status_code in (400, 404), (path, response.text)
        assert_problem(response, response.status_code)


# ---------------------------------------------------------------- abuse, and what is left


async def test_abusive_requests_never_500_and_leave_nothing_behind(
    cli_hub: HubProcess, http: httpx.AsyncClient
) -> None:
    port = cli_hub.port
    async with TranscendentalWebSocket(cli_hub.url, "survivor", topics=["t"]) as survivor:

        @survivor.on("ping")
        async def ping(message: Message) -> Any:
            return "pong"

        await wait_until(lambda: _component_is(http, "survivor", connected=True), within=10)
        baseline = cli_hub.open_fds()
        statuses: list[int] = []

        async def check(response: httpx.Response) -> None:
            statuses.append(response.status_code)
            # 502 and 504 are documented answers of the requests operation
            assert response.status_code in ANSWERS, (response.request.url, response.text)
            if response.status_code >= 400:
                assert_problem(response, response.status_code)

        # bodies far over the size limit: with a length, chunked, and with a bad type
        for target in ("/api/topics/t/messages", "/api/components/survivor/requests"):
            for content_type, framing in [
                (b"application/json", b"Content-Length: %d" % (48 << 20)),
                (b"application/json", b"Transfer-Encoding: chunked"),
                (b"text/plain", b"Content-Length: %d" % (48 << 20)),
            ]:
                head = b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: %s\r\n%s\r\n\r\n" % (
                    target.encode(),
                    content_type,
                    framing,
                )
                chunked = framing.startswith(b"Transfer")
                status, body = await raw_upload(port, head, chunked=chunked)
                statuses.append(status or 0)
                assert status in (413, 415), (target, framing, status, body[:300])
                problem = json.loads(body)
                assert problem["type"] == PROBLEM_TYPE
                assert problem["status"] == status
        assert statuses.count(413) >= 4

        # deep nesting, huge numbers, unicode everywhere
        for content in [
            b'{"type": "x", "data": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
            b'{"type": "x", "data": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}",
            b'{"type": "x", "data": ' + b"9" * 100_000 + b"}",
            b'{"type": "x", "data": 1e400}',
            b'{"type": "x", "data": -1e400}',
            b'{"type": "x", "data": 0.' + b"0" * 50_000 + b"1}",
            b'{"type": "\\ud800", "data": "\\udfff"}',
            '{"type": "\u202e\u0000\U0001f600", "data": "\U0010ffff"}'.encode(),
            b'{"type": "x", "data": {"' + b"k" * 500_000 + b'": 1}}',
        ]:
            for target in ("/api/topics/t/messages", "/api/components/survivor/messages"):
                await check(await http.post(target, content=content, headers=JSON))
        for timeout in ["1e999", "-1e999", "1e308", "5e-324", "-0.0", "true", "[]", "{}"]:
            content = b'{"type": "ping", "timeout": ' + timeout.encode() + b"}"
            await check(
                await http.post("/api/components/survivor/requests", content=content, headers=JSON)
            )

        # query parameters: wrong types, repeated, out of range, very long
        for query in [
            "limit=-1",
            "limit=99999999999999999999999999999999",
            "limit=1e3",
            "limit=NaN",
            "limit=%00",
            "limit=1&limit=2&limit=abc",
            "connected=true&connected=maybe",
            "topic=a&topic=b",
            "topic=%24presence",
            "topic=..%2F..%2Fetc",
            "after=%2E%2E",
            "after=" + "z" * 5000,
            "topic=" + "t" * 6000,
            "&".join(f"p{i}={i}" for i in range(1000)),
            "limit",
            "=1",
            "%ZZ=%ZZ",
        ]:
            await check(await http.get(f"/api/components?{query}"))
        await check(await http.delete("/api/components/survivor?forget=1&forget=nope"))

        # raw sockets: what httpx would not send
        long_path = b"/api/components/" + b"a" * 100_000
        for request in [
            b"GET " + long_path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            b"GET /api/components/\xff\xfe HTTP/1.1\r\nHost: localhost\r\n"
            b"Connection: close\r\n\r\n",
            b"GET /api/components/../../api/stats HTTP/1.1\r\nHost: localhost\r\n"
            b"Connection: close\r\n\r\n",
            b"GET http://elsewhere/api/stats HTTP/1.1\r\nHost: localhost\r\n"
            b"Connection: close\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            b"POST /api/topics/t/messages HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: -5\r\n\r\n",
            b"POST /api/topics/t/messages HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n",
            b"POST /api/topics/t/messages HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: text/plain\r\n"
            b"Content-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n"
            b'{"type": "x"}',
            b"GET /health HTTP/1.0\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
            b"GET /\r\n\r\n",
            b"GET /api/stats HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 203.0.113.9\r\n"
            b"Connection: close\r\n\r\n",
        ]:
            status, _ = await raw_http(port, request)
            assert status is None or status < 500, (request[:80], status)

        # requests that stop half-way, abandoned by their clients
        half_open = []
        for _ in range(20):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(
                b"POST /api/topics/t/messages HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
            )
            half_open.append(stream)
        # the hub is not wedged meanwhile: the API answers and the component replies
        assert (await http.get("/health")).status_code == 200
        reply = await http.post("/api/components/survivor/requests", json={"type": "ping"})
        assert reply.json() == {"data": "pong"}
        for stream in half_open:
            await stream.aclose()

        # what the hub holds afterwards
        assert cli_hub.alive
        health = await cli_hub.health()
        assert health["status"] == "ok"
        assert health["sessions"] == 1
        assert health["active_connections"] == 1
        await wait_until(lambda: _fds_at_most(cli_hub, baseline + 2), within=15)
        assert await survivor.request("survivor", "ping", timeout=5) == "pong"

    async with httpx.AsyncClient(base_url=http_url(cli_hub)) as after:
        stats = (await after.get("/api/stats")).json()
        assert stats["serving_failures"] == 0
        await wait_until(lambda: _idle(after), within=10)
    assert cli_hub.alive
    # nothing the hub calls a failure, apart from the abandoned uploads (a finding below)
    failures = [entry for entry in _logged_errors(cli_hub) if "ClientDisconnect" not in entry]
    assert failures == [], failures
    assert 500 not in statuses


def _logged_errors(hub: HubProcess) -> list[str]:
    """Each ERROR (or worse) entry of the hub's log, with its traceback."""
    entries: list[str] = []
    for line in hub.log().splitlines():
        if line[:4].isdigit() and " " in line:  # a new record: "2026-01-01 12:00:00,000 LEVEL ..."
            entries.append(line)
        elif entries:
            entries[-1] += "\n" + line
    return [entry for entry in entries if entry.split(" ")[2] in ("ERROR", "CRITICAL")]


async def _fds_at_most(hub: HubProcess, limit: int) -> bool:
    return hub.open_fds() <= limit


def _sockets(hub: HubProcess) -> set[str]:
    """The sockets the hub process holds ("socket:[inode]")."""
    fd_dir = f"/proc/{hub.process.pid}/fd"
    targets = set()
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            targets.add(os.readlink(f"{fd_dir}/{fd}"))
    return {target for target in targets if target.startswith("socket:")}


async def _holds_new_socket(hub: HubProcess, before: set[str]) -> bool:
    return bool(_sockets(hub) - before)


async def _released(hub: HubProcess, sockets: set[str]) -> bool:
    return not (_sockets(hub) & sockets)


# ---------------------------------------------------------------- access control


@pytest.fixture
async def auth_hub(tmp_path: Any) -> AsyncIterator[HubProcess]:
    tokens = {
        "tokens": [
            {"token": ADMIN_TOKEN, "sub": "ops", "components": ["ops"], "admin": True},
            {"token": USER_TOKEN, "sub": "alice", "components": ["alice"]},
        ]
    }
    token_file = tmp_path / "tokens.json"
    token_file.write_text(json.dumps(tokens))
    async with start_cli_hub("--store", "none", "--auth-token-file", str(token_file)) as hub:
        yield hub


def _concrete(path: str) -> str:
    return path.replace("{id}", "alice").replace("{topic}", "news")


@pytest.mark.deadline(60)
async def test_authentication_401_403_and_admin(auth_hub: HubProcess) -> None:
    async with (
        httpx.AsyncClient(base_url=http_url(auth_hub), timeout=20) as anonymous,
        TranscendentalWebSocket(auth_hub.url, "alice", token=USER_TOKEN, topics=["news"]) as alice,
    ):

        @alice.on("whoami")
        async def whoami(message: Message) -> Any:
            return "alice"

        body = {"type": "whoami", "timeout": 5}
        for method, template in DOCUMENTED_OPERATIONS:
            path = _concrete(template)
            kwargs: dict[str, Any] = {}
            if method == "POST":
                kwargs["json"] = body if path.endswith("/requests") else {"type": "note"}
            if template in PROBES:
                response = await anonymous.request(method, path, **kwargs)
                assert response.status_code == 200, (path, response.text)
                continue
            for headers in [
                {},
                {"Authorization": "Bearer not-a-known-token-at-all"},
                {"Authorization": f"Basic {ADMIN_TOKEN}"},
                {"Authorization": "Bearer"},
            ]:
                response = await anonymous.request(method, path, headers=headers, **kwargs)
                assert_problem(response, 401, instance=path)
                assert response.headers["www-authenticate"].lower().startswith("bearer")
                assert ADMIN_TOKEN not in response.text
                assert "not-a-known" not in response.text
            user = {"Authorization": f"Bearer {USER_TOKEN}"}
            response = await anonymous.request(method, path, headers=user, **kwargs)
            assert_problem(response, 403, instance=path)
            assert USER_TOKEN not in response.text
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            if method == "DELETE":
                continue  # done last: it closes alice's link
            response = await anonymous.request(method, path, headers=admin, **kwargs)
            alone = path == "/api/cluster"  # documented: 404 on a hub that is not in a cluster
            assert response.status_code in ((404,) if alone else (200, 202)), (path, response.text)

        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        one = (await anonymous.get("/api/components/alice", headers=admin)).json()
        assert one["owner"] == "alice"
        reply = await anonymous.post("/api/components/alice/requests", json=body, headers=admin)
        assert reply.json() == {"data": "alice"}
        # the API's sends reached alice (messages then the publish), as $hub
        kinds = {(m.type, m.topic) for m in [await next_message(alice), await next_message(alice)]}
        assert kinds == {("note", None), ("note", "news")}
        scrape = await anonymous.get("/metrics", headers=admin)
        assert scrape.status_code == 200
        assert metric_samples(scrape.text)["genesis_trio_sessions", ()] == 1
        dropped = await anonymous.delete("/api/components/alice", headers=admin)
        assert dropped.json() == {"id": "alice", "disconnected": True, "forgotten": False}
        await wait_until(lambda: _admin_sees(anonymous, "alice"), within=10)
        assert await alice.request("alice", "whoami", timeout=5) == "alice"


async def _admin_sees(http: httpx.AsyncClient, component: str) -> bool:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = await http.get(f"/api/components/{component}", headers=headers)
    return response.status_code == 200 and response.json()["connected"] is True


@pytest.mark.deadline(60)
async def test_without_authentication_only_loopback_is_served(nursery: trio.Nursery) -> None:
    """A client that is not on loopback: the API refuses it, the probes answer.

    The app is driven in process with that client address (httpx's ASGI
    transport): no interface beyond loopback is bound, and every machine can
    run it. (``--api-public`` is not tried: it is the documented opt-out.)
    """
    running = await start_hub(nursery)
    app = create_app(running.hub)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub", timeout=20) as remote:
        for path in PROBES:
            assert (await remote.get(path)).status_code == 200
        for path in ("/api/stats", "/metrics", "/api/components", "/api/topics"):
            assert_problem(await remote.get(path), 403, instance=path)
        publish = await remote.post("/api/topics/news/messages", json={"type": "x"})
        assert_problem(publish, 403, instance="/api/topics/news/messages")
        # forwarding headers do not make a remote client local
        spoofed = await remote.get("/api/stats", headers={"X-Forwarded-For": "127.0.0.1"})
        assert_problem(spoofed, 403)
        assert (await remote.get("/health")).json()["sessions"] == 0


# ---------------------------------------------------------------- findings


async def test_huge_integers_are_kept_or_refused(
    cli_hub: HubProcess, http: httpx.AsyncClient
) -> None:
    async with TranscendentalWebSocket(cli_hub.url, "sink") as sink:
        for number in (2**63 - 1, 2**64 - 1, 2**64, -(2**63) - 1, 10**30):
            content = b'{"type": "big", "data": ' + str(number).encode() + b"}"
            response = await http.post(
                "/api/components/sink/messages", content=content, headers=JSON
            )
            if response.status_code == 400:
                continue
            assert response.status_code == 202
            message = await next_message(sink)
            assert type(message.data) is int, (number, message.data)
            assert message.data == number


async def test_data_the_hub_cannot_deliver_is_refused(
    cli_hub: HubProcess, http: httpx.AsyncClient
) -> None:
    deep = b"[" * 300 + b"]" * 300
    async with TranscendentalWebSocket(cli_hub.url, "deep", topics=["deep"]) as receiver:
        for path in ("/api/components/deep/messages", "/api/topics/deep/messages"):
            content = b'{"type": "deep", "data": ' + deep + b"}"
            response = await http.post(path, content=content, headers=JSON)
            if response.status_code == 400:
                assert_problem(response, 400)
                continue
            message = await next_message(receiver)
            assert message.error is None, (path, response.status_code, message)
            assert message.data is not None


async def test_request_with_undeliverable_data_fails_promptly(
    cli_hub: HubProcess, http: httpx.AsyncClient
) -> None:
    async with TranscendentalWebSocket(cli_hub.url, "svc") as svc:

        @svc.on("echo")
        async def echo(message: Message) -> Any:
            return message.data

        content = b'{"type": "echo", "timeout": 3, "data": ' + b"[" * 300 + b"]" * 300 + b"}"
        response = await http.post("/api/components/svc/requests", content=content, headers=JSON)
        assert response.status_code in (400, 502), response.text


async def test_declared_oversized_body_is_refused_promptly(cli_hub: HubProcess) -> None:
    request = (
        b"POST /api/topics/t/messages HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n"
    )
    with trio.move_on_after(3):
        status, body = await raw_http(cli_hub.port, request, within=60)
        assert status == 413, body
        return
    pytest.fail("no answer within 3 s to a body declared 1 TB long")


async def test_an_abandoned_upload_is_not_an_error(cli_hub: HubProcess) -> None:
    before = _sockets(cli_hub)
    stream = await trio.open_tcp_stream("127.0.0.1", cli_hub.port)
    await stream.send_all(
        b"POST /api/topics/t/messages HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    await wait_until(lambda: _holds_new_socket(cli_hub, before), within=10)
    ours = _sockets(cli_hub) - before
    await stream.aclose()
    # the hub has seen the close once it no longer holds that socket
    await wait_until(lambda: _released(cli_hub, ours), within=10)
    health = await cli_hub.health()
    assert health["status"] == "ok"
    assert _logged_errors(cli_hub) == []


async def test_slow_bodies_cannot_pile_up(cli_hub: HubProcess, http: httpx.AsyncClient) -> None:
    """Bodies that arrive slowly hold their place for at most 10 s, and only 64 at once:
    the next request with a body gets 503 with Retry-After (each could hold 1 MiB), and
    once they are gone requests are served again."""
    head = (
        b"POST /api/topics/t/messages HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    message = {"type": "x", "data": 1}
    slow: list[trio.SocketStream] = []
    try:
        for _ in range(MAX_BODIES):
            stream = await trio.open_tcp_stream("127.0.0.1", cli_hub.port)
            slow.append(stream)
            await stream.send_all(head)

        async def refused() -> bool:
            response = await http.post("/api/topics/t/messages", json=message)
            if response.status_code == 503:
                assert_problem(response, 503)
                assert response.headers["retry-after"] == "1"
                return True
            assert response.status_code == 202  # the slow ones are not all in yet
            return False

        await wait_until(refused, within=10)
    finally:
        for stream in slow:
            await stream.aclose()

    async def served() -> bool:
        return (await http.post("/api/topics/t/messages", json=message)).status_code == 202

    await wait_until(served, within=10)
    assert _logged_errors(cli_hub) == []


async def test_trailing_slash_is_no_route(cli_hub: HubProcess, http: httpx.AsyncClient) -> None:
    for path in ("/api/components/", "/api/stats/", "/health/", "/api/components/x/"):
        for host in ("localhost", "evil.example"):  # a redirect would echo the Host
            response = await http.get(path, headers={"Host": host})
            # 404: no such route; 403: a no-auth hub answers loopback names only
            wanted = 404 if host == "localhost" else 403
            assert response.status_code == wanted, (path, host, response.headers)
            assert "location" not in response.headers


async def test_query_parameters_are_strict(cli_hub: HubProcess, http: httpx.AsyncClient) -> None:
    for query in ["connected=yes", "connected=1", "connected=no", "limit=1_0", "limit=%D9%A3"]:
        response = await http.get(f"/api/components?{query}")
        assert response.status_code == 400, (query, response.status_code)
