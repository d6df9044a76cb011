"""The browser demos (static/demo) in a real Chromium, against the real CLI hub.

Playwright for Python drives Debian's Chromium (``/usr/bin/chromium``, or
``$GENESIS_CHROMIUM``); no browser is downloaded. Without Playwright or
Chromium these tests are skipped, except under ``CI=true``, where they fail.
They are synchronous tests (Playwright's sync API runs its own event loop) with
their own hub subprocess (``genesis-trio serve --heartbeat-interval 1``) and
the demos' Python components as subprocesses. Nothing sleeps for a fixed time:
every wait is for a condition (a DOM state, or the hub's API), with a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("GENESIS_CHROMIUM", "/usr/bin/chromium")
WAIT_MS = 20_000
"""Timeout of one DOM wait (generous: CI machines are slow, and a wait ends at once when met)."""

pytestmark = pytest.mark.timeout(120)


def _unavailable(why: str) -> None:
    """Skip, or fail under CI (where the browser tests must run)."""
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{why} (CI=true: the browser tests must run)")
    pytest.skip(why)


# ---- processes -------------------------------------------------------------------------------


class Hub:
    """A ``genesis-trio serve`` subprocess."""

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.http = ws_url.replace("ws://", "http://", 1).rsplit("/", 1)[0]

    def api(self, path: str) -> Any:
        """``GET path`` on the hub's HTTP API; None on 404."""
        try:
            with urllib.request.urlopen(self.http + path, timeout=5) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def wait_component(self, component: str, *, connected: bool, within: float = 20) -> None:
        """Wait until the hub holds ``component`` with that connection state.

        Another process's state: watched on ``$presence`` (docs/api.md), the
        way a dashboard would, after a first look through the API.
        """
        deadline = time.monotonic() + within
        subprotocols = [Subprotocol("genesis.v1.json")]
        with ws_connect(self.ws_url, subprotocols=subprotocols) as watcher:
            hello = {"t": "hello", "v": 1, "id": None, "topics": ["$presence"]}
            watcher.send(json.dumps(hello))
            assert json.loads(watcher.recv(timeout=within))["t"] == "welcome"  # subscribed
            try:
                self._watch(watcher, component, connected, deadline)
            finally:
                watcher.send(json.dumps({"t": "bye"}))  # leave no session behind

    def _watch(self, watcher: Any, component: str, connected: bool, deadline: float) -> None:
        info = self.api(f"/api/components/{component}")
        if info is not None and info["connected"] is connected:
            return
        wanted = {"connected", "resumed"} if connected else {"disconnected", "left"}
        while True:  # TimeoutError at the deadline
            frame = json.loads(watcher.recv(timeout=max(0.0, deadline - time.monotonic())))
            if frame["t"] == "ping":
                watcher.send(json.dumps({"t": "pong", "id": frame["id"]}))
            bodies = [frame["m"]] if frame["t"] == "msg" else frame.get("m", [])
            for body in bodies if frame["t"] in ("msg", "batch") else []:
                event = body.get("data", {})
                if event.get("id") == component and event.get("event") in wanted:
                    return


@contextlib.contextmanager
def running(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run a Python program of the repository (killed on exit; its output kept for failures)."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log, stderr=log)
        try:
            yield process
        finally:
            process.kill()
            process.wait(timeout=10)
            if process.returncode not in (0, -9):
                log.seek(0)
                print(log.read().decode(errors="replace")[-4000:])  # shown if the test fails


@contextlib.contextmanager
def cli_hub(*extra: str) -> Iterator[Hub]:
    """``python -m genesis_trio serve --port 0 --store none --heartbeat-interval 1``."""
    args = ["-m", "genesis_trio", "serve", "--port", "0", "--store", "none"]
    args += ["--heartbeat-interval", "1", *extra]
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 20
            line = b""
            while b"hub ready at" not in line:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    raise AssertionError("the hub did not start within 20 s")
                line = process.stdout.readline()
                if not line:
                    raise AssertionError("the hub exited before it was ready")
        yield Hub(line.decode().split("hub ready at ", 1)[1].split()[0])
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


# ---- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, through Playwright."""
    if sync_playwright is None:
        _unavailable("playwright is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


class Tab:
    """A page in its own browser context (its own sessionStorage), with its errors kept."""

    def __init__(self, context: BrowserContext) -> None:
        self.context = context
        self.page: Page = context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))


@pytest.fixture
def open_tab(browser: Browser) -> Iterator[Callable[[str], Tab]]:
    """Open a URL in a new context; every context is closed after the test, checked for errors."""
    tabs: list[Tab] = []

    def open_url(url: str) -> Tab:
        tab = Tab(browser.new_context(viewport={"width": 1200, "height": 800}))
        tabs.append(tab)
        tab.page.goto(url)
        return tab

    yield open_url
    for tab in tabs:
        tab.context.close()
    assert [e for tab in tabs for e in tab.errors] == []


def connected(page: Page) -> None:
    """Wait until the page's connection badge says connected."""
    expect(page.locator("#badge")).to_have_attribute("data-state", "connected", timeout=WAIT_MS)


def say(page: Page, text: str) -> None:
    """Type a line in the chat and press Enter."""
    page.fill("#text", text)
    page.press("#text", "Enter")


def lines(page: Page) -> list[str]:
    """The chat lines shown (delivered, not pending), in order, as ``name: text``."""
    texts: list[str] = page.eval_on_selector_all(
        "#messages li",
        "items => items.map(li => `${li.querySelector('.name').textContent}: "
        "${li.querySelector('.text').textContent}`)",
    )
    return texts


def wait_lines(page: Page, count: int, prefix: str = "") -> None:
    """Wait until ``count`` delivered lines (whose text starts with ``prefix``) are shown."""
    page.wait_for_function(
        """([count, prefix]) => [...document.querySelectorAll('#messages li .text')]
            .filter(t => t.textContent.startsWith(prefix)).length >= count""",
        arg=[count, prefix],
        timeout=WAIT_MS,
    )


def chat_url(hub: Hub, name: str) -> str:
    return f"{hub.http}/demo/chat?name={name}"


def ids_are_unique(page: Page) -> None:
    ids: list[str] = page.eval_on_selector_all(
        "#messages li[data-id]", "items => items.map(li => li.dataset.id)"
    )
    assert len(ids) == len(set(ids)), ids


# ---- chat --------------------------------------------------------------------------------------


def test_two_pages_chat_with_each_other_and_the_bot(open_tab: Callable[[str], Tab]) -> None:
    with cli_hub() as hub, running("examples/chat/bot.py", hub.ws_url, "lobby"):
        hub.wait_component("chat-bot", connected=True)
        alice = open_tab(chat_url(hub, "alice")).page
        connected(alice)
        bob = open_tab(chat_url(hub, "bob")).page
        connected(bob)
        # The bot greets each newcomer ($presence: connected with the room's topic).
        expect(alice.locator("#messages")).to_contain_text("welcome, bob!", timeout=WAIT_MS)
        expect(bob.locator("#messages")).to_contain_text("welcome, bob!", timeout=WAIT_MS)

        say(alice, "hello bob")
        say(bob, "hi alice")
        say(bob, "bot: ping")
        for page in (alice, bob):
            wait_lines(page, 1, "you said 'ping'")
        # Both pages show the room's one order, each line once.
        talk = [line for line in lines(alice) if not line.startswith("bot: welcome")]
        assert talk == lines(bob)[-len(talk) :]
        assert talk[-4:] == [
            "alice: hello bob",
            "bob: hi alice",
            "bob: bot: ping",
            "bot: you said 'ping'",
        ]
        ids_are_unique(alice)
        assert alice.locator("#pending li").count() == 0

        # Presence: the initial list, then $presence events.
        members = alice.locator("#members li")
        expect(members).to_have_count(3, timeout=WAIT_MS)
        assert members.evaluate_all("items => items.map(li => li.dataset.id)") == [
            "alice",
            "bob",
            "chat-bot",
        ]
        bob.context.close()  # the link goes: bob's session stays, "away"
        expect(alice.locator('#members li[data-id="bob"]')).to_have_attribute(
            "data-connected", "false", timeout=WAIT_MS
        )

        # Another room: joined, with its own presence list.
        alice.fill("#room", "garden")
        alice.press("#room", "Enter")
        expect(alice.locator("#room-title")).to_have_text("# garden")
        expect(alice.locator("#members li")).to_have_count(1, timeout=WAIT_MS)
        say(alice, "alone in the garden")
        wait_lines(alice, 1, "alone in the garden")
        assert lines(alice) == ["alice: alone in the garden"]


def test_offline_page_catches_up_exactly_once_in_order(open_tab: Callable[[str], Tab]) -> None:
    with cli_hub() as hub:
        alice_tab = open_tab(chat_url(hub, "alice"))
        alice = alice_tab.page
        connected(alice)
        bob = open_tab(chat_url(hub, "bob")).page
        connected(bob)
        say(bob, "before")
        wait_lines(alice, 1, "before")

        alice_tab.context.set_offline(True)
        expect(alice.locator("#badge")).not_to_have_attribute(
            "data-state", "connected", timeout=WAIT_MS
        )
        say(alice, "written offline 1")  # the client queues them; the page shows them pending
        say(alice, "written offline 2")
        expect(alice.locator("#pending li[data-pending]")).to_have_count(2)
        for i in range(5):
            say(bob, f"while away {i}")
        # The hub notices alice's silence (heartbeat 1 s plus grace), keeps her session.
        hub.wait_component("alice", connected=False)
        for i in range(5, 10):
            say(bob, f"while away {i}")
        wait_lines(bob, 1, "while away 9")

        alice_tab.context.set_offline(False)
        connected(alice)
        wait_lines(alice, 2, "written offline")
        expect(alice.locator("#pending li")).to_have_count(0, timeout=WAIT_MS)
        wait_lines(bob, 2, "written offline")
        expected = [
            "bob: before",
            *(f"bob: while away {i}" for i in range(10)),
            "alice: written offline 1",
            "alice: written offline 2",
        ]
        assert lines(alice) == expected
        assert lines(bob) == expected
        ids_are_unique(alice)
        stats = alice.evaluate("window.chatDemo.stats()")
        assert stats["recovered"] >= 1, stats  # resumed exactly: the same epoch
        assert stats["newEpochs"] == 0, stats


def test_reloaded_page_resumes_without_loss_or_duplicates(open_tab: Callable[[str], Tab]) -> None:
    with cli_hub() as hub:
        alice = open_tab(chat_url(hub, "alice")).page
        connected(alice)
        bob = open_tab(chat_url(hub, "bob")).page
        connected(bob)
        total = 60
        # bob streams a line every 25 ms (in the page, not waited for here)...
        bob.evaluate(
            """(total) => {
                let i = 0;
                const timer = setInterval(() => {
                    document.getElementById('text').value = `stream ${i}`;
                    document.getElementById('say').requestSubmit();
                    if (++i === total) clearInterval(timer);
                }, 25);
            }""",
            total,
        )
        # ...and alice reloads in the middle of it, with a line of hers still unsent.
        wait_lines(alice, 10, "stream")
        say(alice, "just before the reload")
        alice.reload()
        connected(alice)
        wait_lines(alice, total, "stream")
        wait_lines(alice, 1, "just before the reload")
        wait_lines(bob, total, "stream")
        wait_lines(bob, 1, "just before the reload")
        for page in (alice, bob):
            shown = lines(page)
            assert [line for line in shown if line.startswith("bob: ")] == [
                f"bob: stream {i}" for i in range(total)
            ]
            assert shown.count("alice: just before the reload") == 1
            assert len(shown) == total + 1
            ids_are_unique(page)
        expect(alice.locator("#pending li")).to_have_count(0)
        assert alice.evaluate("window.chatDemo.stats()")["newEpochs"] == 0


# ---- telemetry ---------------------------------------------------------------------------------


def test_telemetry_plots_readings_and_shows_an_alarm(open_tab: Callable[[str], Tab]) -> None:
    with cli_hub() as hub, running("examples/telemetry/rules.py", hub.ws_url):
        hub.wait_component("rules", connected=True)
        page = open_tab(f"{hub.http}/demo/telemetry").page
        connected(page)
        expect(page.locator("#threshold")).to_have_text("35.0", timeout=WAIT_MS)
        with running("examples/telemetry/sensors.py", hub.ws_url, "4", "20"):
            page.wait_for_function(
                "() => Number(document.getElementById('chart').dataset.readings) >= 40",
                timeout=WAIT_MS,
            )
            expect(page.locator("#sensor-count")).to_have_text("4", timeout=WAIT_MS)
            # The average and the first three sensors are plotted.
            legend = page.locator("#chart .u-legend .u-label").all_inner_texts()
            assert legend[:5] == ["Time", "average", "sensor-0", "sensor-1", "sensor-2"], legend
            assert page.locator("#chart canvas").count() == 1
            # The threshold, changed through the rule component: every reading is over it now.
            page.fill("#threshold-input", "-20")
            page.click("#threshold-form button")
            expect(page.locator("#threshold")).to_have_text("-20.0", timeout=WAIT_MS)
            expect(page.locator("#alarms li.alarm").first).to_contain_text("°C", timeout=WAIT_MS)
            assert "> -20" in page.locator("#alarms li.alarm").first.inner_text()
            # A value the rule component refuses is reported, and changes nothing.
            page.fill("#threshold-input", "500")
            page.locator("#threshold-input").evaluate("input => input.removeAttribute('max')")
            page.click("#threshold-form button")
            expect(page.locator("#threshold-error")).to_contain_text("between", timeout=WAIT_MS)
            expect(page.locator("#threshold")).to_have_text("-20.0")


# ---- dashboard ---------------------------------------------------------------------------------


def png_pixels(png: bytes) -> tuple[int, int, bytes]:
    """Decode an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4], "big")
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            depth, color, interlace = body[8], body[9], body[12]
            assert depth == 8, body
            assert color in (2, 6), body  # RGB or RGBA
            assert interlace == 0, body
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw, stride = zlib.decompress(idat), width * channels
    out = bytearray()
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = previous[i]
            c = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out += line
        previous = line
    return width, height, bytes(out)


def changed_pixels(first: bytes, second: bytes) -> int:
    """How many pixels differ between two PNG screenshots of the same size."""
    w1, h1, a = png_pixels(first)
    w2, h2, b = png_pixels(second)
    assert (w1, h1) == (w2, h2)
    channels = len(a) // (w1 * h1)
    return sum(a[i : i + channels] != b[i : i + channels] for i in range(0, len(a), channels))


def wait_points(page: Page, points: int, timeout: float = WAIT_MS) -> None:
    """Wait until the messages chart holds ``points`` ticks of ``$stats``, one with traffic in."""
    page.wait_for_function(
        """(points) => Number(document.getElementById('chart-messages').dataset.points) >= points
            && parseFloat(document.getElementById('fig-in').textContent) > 0""",
        arg=points,
        timeout=timeout,
    )


def points_of(page: Page) -> int:
    return int(page.locator("#chart-messages").get_attribute("data-points") or 0)


def test_dashboard_plots_stats_and_follows_presence(open_tab: Callable[[str], Tab]) -> None:
    with cli_hub() as hub:
        page = open_tab(f"{hub.http}/dashboard").page
        connected(page)
        # The components table: loaded from the API (the dashboard itself, anonymous).
        expect(page.locator("#components tr")).to_have_count(1, timeout=WAIT_MS)
        expect(page.locator("#components tr").first).to_contain_text("anonymous")
        expect(page.locator("#fig-connections")).to_have_text("1", timeout=WAIT_MS)
        chart = page.locator("#chart-messages")
        before = chart.screenshot()
        with running("examples/telemetry/sensors.py", hub.ws_url, "2", "20"):
            # $presence: the sensors appear, connected.
            expect(page.locator('#components tr[data-id="sensor-1"]')).to_have_attribute(
                "data-connected", "true", timeout=WAIT_MS
            )
            wait_points(page, points_of(page) + 3)
            expect(page.locator("#fig-connections")).to_have_text("3")
            after = chart.screenshot()
        # The sensors' links went: their sessions stay, away.
        for sensor in ("sensor-0", "sensor-1"):
            expect(page.locator(f'#components tr[data-id="{sensor}"]')).to_have_attribute(
                "data-connected", "false", timeout=WAIT_MS
            )
        changed = changed_pixels(before, after)
        width, height, _ = png_pixels(after)
        assert changed > width * height // 200, (changed, width, height)


def test_dashboard_keeps_plotting_after_a_link_closes(open_tab: Callable[[str], Tab]) -> None:
    with cli_hub() as hub:
        page = open_tab(f"{hub.http}/dashboard").page
        connected(page)
        with running("examples/telemetry/sensors.py", hub.ws_url, "1", "20"):
            wait_points(page, points_of(page) + 1)
        # The sensor's link closed (close_codes is no longer empty); the ticks go on.
        points = points_of(page)
        page.wait_for_function(
            """(points) => Number(document.getElementById('chart-messages').dataset.points)
                >= points + 2""",
            arg=points,
            timeout=5000,
        )
        expect(page.locator("#stats-error")).to_be_hidden()
