"""The command line: help text, a real hub subprocess, graceful shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import trio

from genesis_trio import CloseCode, Disconnected, LinkEvent, TranscendentalWebSocket
from genesis_trio._cli import build_parser

from .support.processes import start_cli_hub


def test_help_explains_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "genesis_trio", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    subcommands = build_parser()._subparsers._group_actions[0]
    serve = subcommands.choices["serve"]
    for action in serve._actions:
        for flag in action.option_strings:
            assert flag in out
        if action.dest != "help":
            assert action.help, f"flag {action.option_strings} has no help text"
    assert "GENESIS_TRIO_" in out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serve_runs_a_hub_and_stops_gracefully(signum: signal.Signals) -> None:
    events: list[LinkEvent] = []
    async with (
        start_cli_hub("--node-id", "cli-test", "--store", "none") as hub,
        TranscendentalWebSocket(hub.url, "a", on_link_event=events.append) as a,
        TranscendentalWebSocket(hub.url, "b") as b,
    ):
        await a.send("b", "x", 1)
        assert (await b.receive()).data == 1
        started = trio.current_time()
        hub.process.send_signal(signum)
        with trio.fail_after(10):
            code = await hub.process.wait()
        assert code == 0
        assert trio.current_time() - started < 5
        down = [e for e in events if isinstance(e, Disconnected)]
        assert down
        assert down[0].code == CloseCode.GOING_AWAY


async def test_flags_reach_the_hub() -> None:
    async with (
        start_cli_hub("--max-message-size", "2048", "--store", "none") as hub,
        TranscendentalWebSocket(hub.url, "a") as a,
    ):
        with pytest.raises(ValueError, match="exceeds the limit of 2048"):
            await a.send("a", "big", "x" * 4000)
        hub.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await hub.process.wait() == 0
