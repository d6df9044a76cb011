"""Schemathesis against the OpenAPI document a running CLI hub serves.

One hub subprocess per test, seeded with connected components (so that some
ids and topics exist and requests get answers), then, per operation of the
live document, up to ``MAX_EXAMPLES`` generated requests checked by
schemathesis: no server error, documented status codes, documented content
types, bodies that match their schemas. Generation is derandomized, so a
failure is reproducible. All traffic stays on 127.0.0.1.

Schemathesis is an optional test dependency: the module skips without it,
except on CI (``CI=true``), where a missing schemathesis is an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from genesis_trio import Message, TranscendentalWebSocket

from .support.processes import HubProcess, start_cli_hub

try:
    import requests
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("schemathesis is not installed", allow_module_level=True)

MAX_EXAMPLES = 25
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]
SEEDED = {"seed-a": ["alpha", "beta"], "seed-b": ["beta"]}  # connected, answering requests
GONE = "seed-gone"  # a session whose link went (requests to it would wait: not sampled)

# docs/api.md's operations, as the document labels them (it does not list itself)
OPERATIONS = [
    "GET /health",
    "GET /api/openapi.json",
    "GET /ready",
    "GET /metrics",
    "GET /api/stats",
    "GET /api/cluster",
    "GET /api/components",
    "GET /api/components/{id}",
    "DELETE /api/components/{id}",
    "POST /api/components/{id}/messages",
    "POST /api/components/{id}/requests",
    "GET /api/topics",
    "POST /api/topics/{topic}/messages",
]
WITH_INPUT = [label for label in OPERATIONS if "{" in label or label == "GET /api/components"]

CASES = [
    pytest.param(label, GenerationMode.POSITIVE, id=f"{label} positive") for label in OPERATIONS
]
CASES += [
    pytest.param(
        label,
        GenerationMode.NEGATIVE,
        id=f"{label} negative",
    )
    for label in WITH_INPUT
]


@pytest.fixture
async def seeded_hub() -> AsyncIterator[HubProcess]:
    """A CLI hub with two connected, answering components and one disconnected session."""
    async with start_cli_hub("--store", "none") as hub:
        async with TranscendentalWebSocket(hub.url, GONE, topics=["gamma"]) as gone:
            await gone.aclose(end_session=False)
        async with (
            TranscendentalWebSocket(hub.url, "seed-a", topics=SEEDED["seed-a"]) as seed_a,
            TranscendentalWebSocket(hub.url, "seed-b", topics=SEEDED["seed-b"]) as seed_b,
        ):
            seed_a.set_default_handler(_answer)
            seed_b.set_default_handler(_answer)
            yield hub


async def _answer(message: Message) -> Any:
    """Every type is handled: types starting with "f" fail (a 502), the rest echo."""
    if message.type.startswith("f"):
        raise ValueError("refused by the seeded component")
    return {"type": message.type, "data": message.data}


def _strategy(operation: Any, mode: GenerationMode) -> Any:
    """Generated cases, plus (when positive) cases aimed at the seeded ids and topics."""
    strategy = operation.as_strategy(generation_mode=mode)
    if mode is not GenerationMode.POSITIVE:
        return strategy
    path = operation.path
    if "{id}" in path:
        ids = sorted(SEEDED)
        if not path.endswith("/requests"):
            ids.append(GONE)
        aimed = st.sampled_from(ids).flatmap(
            lambda i: operation.as_strategy(generation_mode=mode, path_parameters={"id": i})
        )
        if not path.endswith("/requests"):
            return st.one_of(strategy, aimed)
        refused = st.sampled_from(ids).flatmap(  # the component answers with an error: 502
            lambda i: operation.as_strategy(
                generation_mode=mode,
                path_parameters={"id": i},
                body={"type": "fail-please", "data": [i], "timeout": 10},
            )
        )
        return st.one_of(strategy, aimed, refused)
    if "{topic}" in path:
        topics = sorted({t for ts in SEEDED.values() for t in ts})
        aimed = st.sampled_from(topics).flatmap(
            lambda t: operation.as_strategy(generation_mode=mode, path_parameters={"topic": t})
        )
        return st.one_of(strategy, aimed)
    if path == "/api/components":
        topics = sorted({t for ts in SEEDED.values() for t in ts})
        aimed = st.sampled_from(topics).flatmap(
            lambda t: operation.as_strategy(generation_mode=mode, query={"topic": t})
        )
        return st.one_of(strategy, aimed)
    return strategy


def _no_undocumented_server_error(documented: set[int]) -> Any:
    def not_an_undocumented_server_error(ctx: Any, response: Any, case: Any) -> None:
        status = response.status_code
        if status >= 500 and status not in documented:
            raise AssertionError(f"{case.operation.label}: undocumented server error {status}")

    return not_an_undocumented_server_error


def _fuzz(base_url: str, label: str, mode: GenerationMode) -> list[int]:
    """Run schemathesis on one operation (blocking; in a worker thread)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json", timeout=10)
    operation = schema.find_operation_by_label(label)
    assert operation is not None, f"the live document has no {label}"
    documented = {int(status) for status in operation.definition.raw["responses"]}
    server_errors = {status for status in documented if status >= 500}
    # POST .../requests documents 502 and 504: those are answers, not server errors
    checks = [_no_undocumented_server_error(server_errors) if server_errors else not_a_server_error]
    checks += CONFORMANCE
    statuses: list[int] = []

    with requests.Session() as session:

        @given(case=_strategy(operation, mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            response = case.call_and_validate(
                base_url=base_url, session=session, checks=checks, timeout=15
            )
            statuses.append(response.status_code)

        run()
    return statuses


@pytest.mark.deadline(120)
@pytest.mark.parametrize(("label", "mode"), CASES)
async def test_operation_conforms_to_the_document(
    seeded_hub: HubProcess, label: str, mode: GenerationMode
) -> None:
    base_url = f"http://127.0.0.1:{seeded_hub.port}"
    statuses = await trio.to_thread.run_sync(_fuzz, base_url, label, mode)
    assert statuses, "no request was made"
    assert all(status < 500 or status in (502, 504) for status in statuses), statuses
    if mode is GenerationMode.NEGATIVE:
        assert any(400 <= status < 500 for status in statuses), statuses
    # the hub survived, and counted no contained failure
    assert seeded_hub.alive
    health = await seeded_hub.health()
    assert health["status"] == "ok"
    async with httpx.AsyncClient(base_url=base_url) as http:
        assert (await http.get("/api/stats")).json()["serving_failures"] == 0


# ---------------------------------------------------------------- the document itself


async def _document(hub: HubProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{hub.port}") as http:
        response = await http.get("/api/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


async def test_the_document_lists_the_documented_operations(seeded_hub: HubProcess) -> None:
    document = await _document(seeded_hub)
    assert document["openapi"].startswith("3.1")
    labels = {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert labels == set(OPERATIONS)
    # every error response is a problem document
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (
                        method,
                        path,
                        status,
                    )


async def test_the_document_says_which_operations_need_a_token(seeded_hub: HubProcess) -> None:
    document = await _document(seeded_hub)
    assert "bearer" in document["components"]["securitySchemes"]
    default = document.get("security")
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            security = operation.get("security", default)
            if path in ("/health", "/ready", "/api/openapi.json"):
                assert not security, (method, path)
            else:  # a token, or none (a hub without authentication, from loopback)
                assert {"bearer": []} in security, (method, path, security)


async def test_the_topic_filter_accepts_every_listed_topic(seeded_hub: HubProcess) -> None:
    document = await _document(seeded_hub)
    parameters = document["paths"]["/api/components"]["get"]["parameters"]
    pattern = next(p for p in parameters if p["name"] == "topic")["schema"]["pattern"]
    async with (
        TranscendentalWebSocket(seeded_hub.url, "watcher", topics=["$presence"]),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{seeded_hub.port}") as http,
    ):
        topics = [item["topic"] for item in (await http.get("/api/topics")).json()["items"]]
        assert "$presence" in topics
        for topic in topics:
            answer = await http.get("/api/components", params={"topic": topic})
            assert answer.status_code == 200
            assert re.search(pattern, topic), (topic, pattern)
