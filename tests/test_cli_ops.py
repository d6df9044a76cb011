"""The operator commands (stats, components, send, publish, request, tail) against a CLI hub.

Every verb runs as a subprocess (``python -m genesis_trio ...``) against
``genesis-trio serve`` in another subprocess, over 127.0.0.1. Waiting is on
concrete events: a line on the tail's stdout or stderr, a message a client
receives, a process exiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from genesis_trio import Message, TranscendentalWebSocket
from genesis_trio._cli import build_parser, unknown_env
from genesis_trio._ops import default_tail_id, format_table, ws_url

from .support.processes import HubProcess, free_port, start_cli_hub

NO_STORE = ("--store", "none")


def http_url(hub: HubProcess) -> str:
    """The hub's HTTP base URL (what ``--url`` takes)."""
    return f"http://127.0.0.1:{hub.port}"


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without GENESIS_TRIO_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENESIS_TRIO_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


async def cli(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m genesis_trio ARGS`` to completion."""
    with trio.fail_after(30):
        return await trio.run_process(
            [sys.executable, "-m", "genesis_trio", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env if env is not None else clean_env(),
        )


async def ok(*args: str, **options: Any) -> str:
    """Run a verb that must succeed; its stdout."""
    result = await cli(*args, **options)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    return result.stdout.decode()


async def fails(status: int, *args: str, **options: Any) -> str:
    """Run a verb that must exit with ``status``, printing nothing on stdout; its stderr."""
    result = await cli(*args, **options)
    assert result.returncode == status, (result.stdout, result.stderr)
    assert result.stdout == b""
    return result.stderr.decode()


class Lines:
    """Lines from a subprocess pipe, as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def next(self) -> str | None:
        """The next line (without its newline); None at the end of the stream."""
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                rest, self.buffer = bytes(self.buffer), bytearray()
                return rest.decode() if rest else None
            self.buffer += chunk
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer[:] = rest
        return line.decode()

    async def until(self, wanted: Callable[[str], bool], within: float = 20) -> list[str]:
        """Lines up to and including the first ``wanted`` one; fails at the end or after."""
        seen: list[str] = []
        with trio.fail_after(within):
            while True:
                line = await self.next()
                assert line is not None, f"stream ended before the line we wait for: {seen}"
                seen.append(line)
                if wanted(line):
                    return seen

    async def rest(self, within: float = 20) -> list[str]:
        """Every remaining line, until the stream ends."""
        lines: list[str] = []
        with trio.fail_after(within):
            while (line := await self.next()) is not None:
                lines.append(line)
        return lines


class Tail:
    """A running ``genesis-trio tail`` and its two output streams."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        assert process.stderr is not None
        self.process = process
        self.out = Lines(process.stdout)
        self.err = Lines(process.stderr)

    async def connected(self) -> str:
        """Wait for the tail to say it is connected (subscriptions applied); that line."""
        return (await self.err.until(lambda line: "tail: connected to" in line))[-1]

    async def records(self, count: int, within: float = 30) -> list[dict[str, Any]]:
        """The next ``count`` printed messages."""
        found: list[dict[str, Any]] = []
        with trio.fail_after(within):
            while len(found) < count:
                line = await self.out.next()
                assert line is not None, f"the tail ended after {found}"
                found.append(json.loads(line))
        return found

    async def stop(self, signum: signal.Signals = signal.SIGINT) -> int:
        """Signal the tail and wait for its exit status."""
        self.process.send_signal(signum)
        with trio.fail_after(10):
            return await self.process.wait()


@contextlib.asynccontextmanager
async def running_tail(
    url: str, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[Tail]:
    """``genesis-trio tail --url URL ARGS`` in a subprocess; killed on exit if still running."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "genesis_trio", "tail", "--url", url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env if env is not None else clean_env(),
    )
    try:
        yield Tail(process)
    finally:
        with trio.move_on_after(10, shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()


async def presence_event(watcher: TranscendentalWebSocket, event: str, cid: str) -> Message:
    """Wait for the ``$presence`` event ``event`` about ``cid`` (the watcher subscribes to it)."""
    with trio.fail_after(15):
        async for message in watcher:
            if message.data.get("event") == event and message.data.get("id") == cid:
                return message
    raise AssertionError("the watcher closed")


# -- without a hub -----------------------------------------------------------------------


def test_environment_variables_of_the_operator_commands_are_known() -> None:
    env = {
        "GENESIS_TRIO_URL": "http://127.0.0.1:1",
        "GENESIS_TRIO_TOKEN": "x",
        "GENESIS_TRIO_TIMEOUT": "3",
        "GENESIS_TRIO_PORT": "9000",
        "GENESIS_TRIO_URLL": "typo",
    }
    assert unknown_env(env, build_parser()) == ["GENESIS_TRIO_URLL"]


async def test_a_misspelt_variable_is_still_refused_with_a_hint() -> None:
    stderr = await fails(2, "stats", env=clean_env(GENESIS_TRIO_TIMEOUTT="1"))
    assert "unknown environment variable GENESIS_TRIO_TIMEOUTT" in stderr
    assert "did you mean GENESIS_TRIO_TIMEOUT?" in stderr


def test_tail_url_and_default_id() -> None:
    assert ws_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws"
    assert ws_url("https://hub.example/genesis/") == "wss://hub.example/genesis/ws"
    same = default_tail_id(["b", "$presence"], host="box.lan")
    assert same == default_tail_id(["$presence", "b", "b"], host="box.lan")
    assert same.startswith("tail.box.lan.")
    assert same != default_tail_id(["b"], host="box.lan")
    assert default_tail_id(["b"], host="wéird host!").startswith("tail.w-ird-host.")


def test_table_aligns_columns() -> None:
    rows = [
        {"id": "a", "connected": True, "node": "n1", "topics": ["x", "y"], "pending_out": 12},
        {"id": "long-id", "connected": False, "node": "n1", "topics": [], "rtt_ms": 1.25},
    ]
    assert format_table(rows) == [
        "id       connected  node  topics  pending_out  rtt_ms",
        "a        yes        n1    x,y              12       -",
        "long-id  no         n1    -                 -     1.2",
    ]


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("send", "x", "t", "{bad"), 2, "genesis-trio: JSON argument is not valid JSON: "),
        (("publish", "news", "t", "NaN"), 2, "genesis-trio: JSON argument is not valid JSON: "),
        (("request", "x", "t", "[1,"), 2, "genesis-trio: JSON argument is not valid JSON: "),
        (("send", "not an id", "t"), 2, "genesis-trio: invalid component id 'not an id'"),
        (("publish", "$presence", "t"), 2, "genesis-trio: invalid topic '$presence'"),
        (("stats", "--url", "127.0.0.1:8000"), 2, "genesis-trio: --url must be http://"),
        (("stats",), 1, "genesis-trio: cannot connect to http://127.0.0.1:"),
        (("tail", "news"), 1, "genesis-trio: tail: cannot connect to ws://127.0.0.1:"),
        (("tail", "no topic"), 2, "genesis-trio: invalid topic 'no topic'"),
        (("components", "--limit", "0"), 2, "argument --limit: invalid count value: '0'"),
    ],
)
async def test_usage_errors_and_an_absent_hub(
    args: tuple[str, ...], status: int, message: str
) -> None:
    """Nothing listens on the port: usage errors are found before any connection (2)."""
    env = clean_env(GENESIS_TRIO_URL=f"http://127.0.0.1:{free_port()}")
    stderr = await fails(status, *args, env=env)
    assert message in stderr
    assert "Traceback" not in stderr


# -- the HTTP verbs ------------------------------------------------------------------------


async def test_stats_prints_the_hubs_statistics() -> None:
    async with (
        start_cli_hub(*NO_STORE, "--node-id", "ops-stats") as hub,
        TranscendentalWebSocket(hub.url, "someone"),
    ):
        out = await ok("stats", env=clean_env(GENESIS_TRIO_URL=http_url(hub)))
    stats = json.loads(out)
    assert stats["node_id"] == "ops-stats"
    assert stats["active_connections"] == 1
    assert stats["sessions"] == 1


@pytest.mark.deadline(90)
async def test_components_follows_pages_and_filters() -> None:
    async with (
        start_cli_hub(*NO_STORE) as hub,
        TranscendentalWebSocket(hub.url, "watch", topics=["$presence"]) as watch,
        TranscendentalWebSocket(hub.url, "c-a", topics=["room"]),
        TranscendentalWebSocket(hub.url, "c-b", topics=["room", "lobby"]),
        TranscendentalWebSocket(hub.url, "c-c", topics=["lobby"]) as gone,
    ):
        await gone.aclose(end_session=False)  # its session stays, disconnected
        await presence_event(watch, "disconnected", "c-c")
        url = ("--url", http_url(hub))

        async def ids(*args: str) -> list[str]:
            return [
                json.loads(line)["id"]
                for line in (await ok("components", *url, *args)).splitlines()
            ]

        assert await ids("--page-size", "1") == ["c-a", "c-b", "c-c", "watch"]
        assert await ids("--limit", "1") == ["c-a"]
        assert await ids("--limit", "3", "--page-size", "2") == ["c-a", "c-b", "c-c"]
        assert await ids("--topic", "lobby", "--page-size", "1") == ["c-b", "c-c"]
        assert await ids("--disconnected") == ["c-c"]
        assert await ids("--connected", "--page-size", "2") == ["c-a", "c-b", "watch"]
        table = (await ok("components", *url, "--table", "--topic", "room")).splitlines()
    assert table[0].split() == ["id", "connected", "node", "topics", "pending_out", "rtt_ms"]
    assert [line.split()[:2] for line in table[1:]] == [["c-a", "yes"], ["c-b", "yes"]]
    assert table[2].split()[3] == "lobby,room"


async def test_send_reaches_a_connected_client() -> None:
    async with (
        start_cli_hub(*NO_STORE) as hub,
        TranscendentalWebSocket(hub.url, "alice") as alice,
    ):
        url = ("--url", http_url(hub))
        first = json.loads(await ok("send", "alice", "greet", '{"hi": [1, 2]}', *url))
        second = json.loads(await ok("send", "alice", "ping", *url))
        third = json.loads(await ok("send", "alice", "blob", "-", *url, stdin=b'"from stdin"'))
        with trio.fail_after(10):
            got = [await alice.receive() for _ in range(3)]
        stderr = await fails(1, "send", "nobody", "greet", "{}", *url)
    assert [(m.type, m.data, m.sender) for m in got] == [
        ("greet", {"hi": [1, 2]}, "$hub"),
        ("ping", None, "$hub"),
        ("blob", "from stdin", "$hub"),
    ]
    assert [m.seq for m in got] == [first["seq"], second["seq"], third["seq"]]
    assert stderr == "genesis-trio: 404 Not Found: no component 'nobody' on this hub\n"


async def test_publish_reaches_every_subscriber() -> None:
    async with (
        start_cli_hub(*NO_STORE) as hub,
        TranscendentalWebSocket(hub.url, "s1", topics=["news/eu"]) as s1,
        TranscendentalWebSocket(hub.url, "s2", topics=["news/eu"]) as s2,
        TranscendentalWebSocket(hub.url, "s3", topics=["sports"]),
    ):
        url = ("--url", http_url(hub))
        out = await ok("publish", "news/eu", "flash", '{"n": 1}', *url)
        with trio.fail_after(10):
            got = [await s1.receive(), await s2.receive()]
        nobody = await ok("publish", "empty", "flash", *url)
    assert json.loads(out) == {"subscribers": 2}
    assert [(m.topic, m.type, m.data, m.sender) for m in got] == [
        ("news/eu", "flash", {"n": 1}, "$hub")
    ] * 2
    assert json.loads(nobody) == {"subscribers": 0}


async def test_request_prints_the_reply_or_the_failure() -> None:
    async with (
        start_cli_hub(*NO_STORE) as hub,
        TranscendentalWebSocket(hub.url, "calc") as calc,
    ):

        @calc.on("add")
        async def add(message: Message) -> Any:
            return {"sum": sum(message.data)}

        @calc.on("boom")
        async def boom(message: Message) -> Any:
            raise ValueError("no thanks")

        url = ("--url", http_url(hub))
        reply = await ok("request", "calc", "add", "[1, 2, 3]", *url)
        failed = await fails(1, "request", "calc", "boom", *url)
        silent = await fails(1, "request", "calc", "unanswered", "--timeout", "0.5", *url)
        unknown = await fails(1, "request", "nobody", "add", "[]", *url)
        ignored = await calc.receive()  # the request no handler took
    assert json.loads(reply) == {"sum": 6}
    assert failed.startswith("genesis-trio: 502 Bad Gateway: calc answered: ValueError: no thanks")
    assert failed.endswith(" [handler_error]\n")
    assert silent.startswith("genesis-trio: 504 Gateway Timeout: ")
    assert unknown == "genesis-trio: 404 Not Found: no component 'nobody' on this hub\n"
    assert ignored.type == "unanswered"


async def test_token_reaches_the_api_and_the_websocket(tmp_path: Path) -> None:
    token = "ops-token-0123456789abcdef"
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"token": token, "sub": "ops", "admin": True}]}))
    async with start_cli_hub(*NO_STORE, "--auth-token-file", str(tokens)) as hub:
        url = http_url(hub)
        refused = await fails(1, "stats", "--url", url)
        assert refused.startswith("genesis-trio: 401 Unauthorized: ")
        by_flag = json.loads(await ok("stats", "--url", url, "--token", token))
        assert by_flag["sessions"] == 0
        env = clean_env(GENESIS_TRIO_URL=url, GENESIS_TRIO_TOKEN=token)
        async with running_tail(url, "news", "--id", "ops", env=env) as tail:
            await tail.connected()
            await ok("publish", "news", "flash", '"authenticated"', env=env)
            [record] = await tail.records(1)
            assert record["data"] == "authenticated"
            assert await tail.stop() == 0


# -- tail ----------------------------------------------------------------------------------


async def test_tail_prints_messages_and_presence_then_leaves_on_sigint() -> None:
    async with (
        start_cli_hub(*NO_STORE) as hub,
        TranscendentalWebSocket(hub.url, "watch", topics=["$presence"]) as watch,
        running_tail(http_url(hub), "news", "$presence", "--id", "tailer") as tail,
    ):
        assert "as tailer (topics: news, $presence)" in await tail.connected()
        url = ("--url", http_url(hub))
        assert (
            json.loads(await ok("publish", "news", "flash", '{"n": 1}', *url))["subscribers"] == 1
        )
        async with TranscendentalWebSocket(hub.url, "visitor"):
            pass  # connected, then left (bye)
        await ok("publish", "news", "flash", '{"n": 2}', *url)
        records: list[dict[str, Any]] = []
        while not ({"n": 2} in [r["data"] for r in records] and "left" in str(visitor(records))):
            records += await tail.records(1)  # the order of the two is not fixed
        assert await tail.stop(signal.SIGINT) == 0
        left = await presence_event(watch, "left", "tailer")  # it said bye: the session ended
    assert left.data["reason"] == "bye"
    news = [r for r in records if r["topic"] == "news"]
    assert [(r["from"], r["type"], r["data"]) for r in news] == [
        ("$hub", "flash", {"n": 1}),
        ("$hub", "flash", {"n": 2}),
    ]
    assert [(r["from"], r["data"]["event"]) for r in visitor(records)] == [
        ("$hub", "connected"),
        ("$hub", "left"),
    ]
    assert visitor(records)[1]["data"]["reason"] == "bye"
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(set(seqs))


def visitor(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The presence events about the component ``visitor``."""
    return [r for r in records if r["topic"] == "$presence" and r["data"].get("id") == "visitor"]


@pytest.mark.deadline(90)
async def test_tail_keeps_going_across_a_hub_restart(tmp_path: Path) -> None:
    """Nothing lost, nothing twice, in order: the session survives in the store."""
    port = free_port()
    store = ("--store", f"sqlite:{tmp_path / 'hub.sqlite3'}")
    url = f"http://127.0.0.1:{port}"
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(start_cli_hub(*store, port=port))
        tail = await stack.enter_async_context(running_tail(url, "news"))  # the default id
        await tail.connected()
        for i in range(3):
            out = await ok("publish", "news", "tick", json.dumps({"i": i}), "--url", url)
            assert json.loads(out) == {"subscribers": 1}
        first.process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await first.process.wait() == 0
        await stack.enter_async_context(start_cli_hub(*store, port=port))
        for i in range(3, 6):
            out = await ok("publish", "news", "tick", json.dumps({"i": i}), "--url", url)
            assert json.loads(out) == {"subscribers": 1}  # the restored session, linked or not
        records = await tail.records(6)
        assert await tail.stop(signal.SIGTERM) == 0
        after = await tail.out.rest()
        log = await tail.err.rest()
    assert [r["data"] for r in records] == [{"i": i} for i in range(6)]
    assert after == []  # nothing more: no message twice
    assert {(r["topic"], r["from"], r["type"]) for r in records} == {("news", "$hub", "tick")}
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(set(seqs))
    assert any("resumed the session" in line for line in log), log
    assert not any("new session" in line for line in log), log
