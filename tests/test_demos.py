"""The demos' Python components (examples/chat, examples/telemetry) against a real hub."""

from __future__ import annotations

import pathlib

import pytest
import trio

from genesis_trio import PRESENCE_TOPIC, RemoteError, TranscendentalWebSocket
from genesis_trio.testing import RunningHub

from .test_examples import load

DEMO = pathlib.Path(__file__).resolve().parent.parent / "examples" / "demo.py"


async def test_the_chat_bot_greets_and_answers(hub: RunningHub) -> None:
    """It greets a newcomer of its room, answers !who and 'bot:' lines, ignores the rest."""
    bot = load("chat/bot")
    topic = bot.room_topic("lobby")
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def run_bot() -> None:
            await bot.main(hub.url, "lobby", lines=3)
            done.set()

        async with TranscendentalWebSocket(hub.url, "watch", topics=[topic]) as watch:
            nursery.start_soon(run_bot)
            hello = await watch.receive()
            assert hello.data["name"] == "bot"
            async with TranscendentalWebSocket(hub.url, "ana", topics=[topic]) as ana:
                welcome = await watch.receive()
                assert welcome.data == {"name": "bot", "text": "welcome, ana!"}
                await ana.publish(topic, "say", {"name": "ana", "text": "nothing for the bot"})
                await ana.publish(topic, "say", {"name": "ana", "text": "!who"})
                await ana.publish(topic, "say", {"name": "ana", "text": "bot: ping"})
                lines = [(await watch.receive()).data for _ in range(5)]
                said = [d["text"] for d in lines if d["name"] == "bot"]
                assert said[0].startswith("here: ")
                assert {"ana", "chat-bot", "watch"} <= set(said[0][6:].split(", "))
                assert said[1] == "you said 'ping'"
            with trio.fail_after(10):
                await done.wait()


async def test_sensors_and_rules(hub: RunningHub) -> None:
    """Readings flow; a reading over the threshold raises an alarm; thresholds by request."""
    sensors, rules_module = load("telemetry/sensors"), load("telemetry/rules")
    async with trio.open_nursery() as nursery:
        found: list[object] = []

        async def run_rules() -> None:
            found.append(await rules_module.main(hub.url, stop_after=1))

        async with TranscendentalWebSocket(
            hub.url, "dash", topics=[sensors.TOPIC, rules_module.ALARMS, PRESENCE_TOPIC]
        ) as dash:
            nursery.start_soon(run_rules)
            while (await dash.receive()).data.get("id") != "rules":
                pass  # presence: the rule component is connected
            assert await dash.request("rules", "get_threshold") == 35.0
            with pytest.raises(RemoteError):
                await dash.request("rules", "set_threshold", "hot")
            assert await dash.request("rules", "set_threshold", -40) == -40.0
            await sensors.main(hub.url, 3, 50.0, 10)
            readings = 0
            while True:
                message = await dash.receive()
                if message.topic == sensors.TOPIC:
                    readings += 1
                    continue
                if message.topic == PRESENCE_TOPIC:
                    continue  # sensors come and go
                assert message.type == "alarm"
                assert message.data["celsius"] > -40.0
                break
            assert readings >= 1
    assert found  # the rule component returned after its alarm


def test_rules_decide_without_io() -> None:
    rules = load("telemetry/rules").Rules(threshold=30.0)
    assert rules.check({"sensor": "s", "celsius": 29.9, "t": 1}) is None
    assert rules.check({"sensor": "s", "celsius": 31, "t": 2})["threshold"] == 30.0
    with pytest.raises(ValueError, match="threshold"):
        rules.set_threshold(1000)


@pytest.mark.deadline(60)
async def test_the_demo_program_serves_and_stops_on_sigint() -> None:
    """``nox -s demo``'s program: hub, bot, rules and sensors; the pages answer; Ctrl-C ends it."""
    import signal
    import subprocess
    import sys

    import httpx

    from .support.processes import _read_line

    demo = DEMO
    process = await trio.lowlevel.open_process(
        [sys.executable, str(demo), "--port", "0", "--sensors", "2", "--hz", "5"],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        buffer = bytearray()
        with trio.fail_after(20):
            while not (line := (await _read_line(process.stdout, buffer)).decode()).startswith(
                "dashboard:"
            ):
                pass
        base = line.split()[1].rsplit("/", 1)[0]
        async with httpx.AsyncClient(base_url=base) as http:
            for page in ("/demo/chat", "/demo/telemetry", "/dashboard", "/static/genesis.js"):
                assert (await http.get(page)).status_code == 200, page
            async with TranscendentalWebSocket(
                base.replace("http", "ws") + "/ws", "watcher", topics=["telemetry.readings"]
            ) as watcher:
                assert (await watcher.receive()).type == "reading"
        process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
