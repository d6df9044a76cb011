"""A fuzzer against a real hub: arbitrary frames never crash it, nor harm a bystander.

Hypothesis generates random JSON trees, random bytes, and well-shaped frames
with hostile field values; each example sends a few of them on a fresh link
after a valid ``hello``. Whatever comes back must be a documented answer: an
error frame with a documented code (never ``internal``: that would be a
contained bug), or a close with a documented code (never 1011). A bystander
keeps exchanging messages between examples, and the hub's own statistics
must show no contained failure at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genesis_trio import (
    CloseCode,
    ErrorCode,
    HubStatistics,
    TranscendentalExternalWebSocket,
    TranscendentalWebSocket,
)
from genesis_trio.testing import start_hub

from .support.rawws import RawLink

DOCUMENTED_CLOSES = {1000, 1006, 1009, *(code.value for code in CloseCode)} - {1011}
DOCUMENTED_ERRORS = {code.value for code in ErrorCode} - {"internal"}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
)
trees = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
hostile = (
    st.integers(-5, 5)
    | st.integers(2**53 - 2, 2**64 + 2)
    | st.sampled_from([-1, 0, 1.5, "1", None, [], {}, True, "x" * 300])
)
names = st.sampled_from(["peer", "$hub", "nobody", "", "a" * 129, "bad name", "$x", "-x", 7])
bodies = st.fixed_dictionaries(
    {"type": st.sampled_from(["x", "", "y" * 129, 3, None])},
    optional={
        "to": names,
        "topic": names,
        "id": hostile,
        "re": hostile,
        "from": names,
        "error": st.sampled_from([{"code": "x"}, {"code": 1}, "boom", None]),
        "data": trees,
    },
)
frames = st.one_of(
    st.fixed_dictionaries(
        {"t": st.sampled_from(["msg", "batch"]), "seq": hostile},
        optional={"m": bodies | st.lists(bodies, max_size=4) | trees, "ack": hostile},
    ),
    st.fixed_dictionaries(
        {"t": st.sampled_from(["ack", "ping", "pong", "sub", "unsub", "bye", "hello", "error"])},
        optional={
            "seq": hostile,
            "id": hostile,
            "topics": st.lists(names, max_size=4) | hostile,
            "code": hostile,
            "msg": hostile,
        },
    ),
    st.dictionaries(st.sampled_from(["t", "seq", "m", "id"]), trees, max_size=4),
    trees,
)
messages = st.one_of(
    frames.map(lambda frame: json.dumps(frame)),
    st.binary(max_size=200),
    st.text(max_size=200),
)


async def probe(port: int, payloads: list[str | bytes]) -> None:
    """Send ``payloads`` after a hello; check every answer is a documented one."""
    link = await RawLink.open(port)
    await link.hello("fuzz")
    for payload in payloads:
        if isinstance(payload, bytes):
            from wsproto.events import BytesMessage

            data = link.ws.send(BytesMessage(payload))
        else:
            from wsproto.events import TextMessage

            data = link.ws.send(TextMessage(payload))
        try:
            await link.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            break
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await link.send({"t": "ping", "id": 424242})
    with trio.fail_after(10):
        while True:
            frame = await link.receive()
            if frame is None:
                assert link.close_code in DOCUMENTED_CLOSES, link.close_code
                return
            if frame["t"] == "error":
                assert frame["code"] in DOCUMENTED_ERRORS, frame
            if frame["t"] == "pong" and frame["id"] == 424242:
                await link.drop()
                return


class ThreadedHub:
    """A hub on a real socket, served by its own Trio loop in a thread (it outlives examples)."""

    def __init__(self) -> None:
        self.port = 0
        self.url = ""
        self.hub: TranscendentalExternalWebSocket | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            running = await start_hub(nursery)
            self.hub, self.port, self.url = running.hub, running.port, running.url
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def __enter__(self) -> ThreadedHub:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)

    def statistics(self) -> HubStatistics:
        assert self._token is not None
        assert self.hub is not None
        return trio.from_thread.run_sync(self.hub.statistics, trio_token=self._token)


@pytest.fixture(scope="module")
def threaded_hub() -> Iterator[ThreadedHub]:
    with ThreadedHub() as hub:
        yield hub


@pytest.fixture(scope="module")
def cli_hub() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``genesis-trio serve`` as a process, for the whole module."""
    process = subprocess.Popen(
        [sys.executable, "-m", "genesis_trio", "serve", "--port", "0", "--store", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    while "hub ready at" not in line:
        line = process.stdout.readline().decode()
        assert line, "the hub did not start"
    port = int(line.split("hub ready at ", 1)[1].split()[0].rsplit(":", 1)[1].split("/")[0])
    yield process, port
    process.terminate()
    process.wait(10)
    process.stdout.close()


FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(payloads=st.lists(messages, min_size=1, max_size=5))
def test_arbitrary_frames_never_crash_the_hub(
    threaded_hub: ThreadedHub, payloads: list[Any]
) -> None:
    async def example() -> None:
        with trio.fail_after(20):
            await probe(threaded_hub.port, payloads)
            async with TranscendentalWebSocket(threaded_hub.url, "bystander") as bystander:
                await bystander.send("bystander", "still", "served")
                assert (await bystander.receive()).data == "served"

    trio.run(example)
    stats = threaded_hub.statistics()
    assert stats.serving_failures == 0
    assert CloseCode.INTERNAL_ERROR not in stats.close_codes


@settings(FUZZ, max_examples=60)
@given(payloads=st.lists(messages, min_size=1, max_size=5))
def test_arbitrary_frames_never_end_the_cli_hub(
    cli_hub: tuple[subprocess.Popen[bytes], int], payloads: list[Any]
) -> None:
    """The same against the CLI hub as a process: it is alive after each example."""
    process, port = cli_hub

    async def example() -> None:
        with trio.fail_after(20):
            await probe(port, payloads)

    trio.run(example)
    assert process.poll() is None
