"""Screenshots of the browser demos for the docs: docs/images/{chat,telemetry,dashboard}.png.

Run: ``python tools/screenshots.py [--out docs/images] [--settle 30]``. It starts a
hub (``genesis-trio serve --store none`` on a free port), the chat bot, the
simulated sensors and the rule component (examples/), opens the chat in two
browser contexts (alice and bob), the telemetry page and the dashboard in
Debian's Chromium through Playwright (``pip install playwright``; ``apt-get
install chromium``; no browser download), lets data accumulate for ``--settle``
seconds, and saves the PNGs. Everything it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

from playwright.sync_api import Page, expect, sync_playwright

ROOT = pathlib.Path(__file__).resolve().parent.parent
WAIT_MS = 20_000


@contextlib.contextmanager
def running(*args: str, output: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python ARGS`` in the repository (``output``: pipe its stdout); stop it on exit."""
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE if output else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def hub_url(hub: subprocess.Popen[bytes]) -> str:
    """Read the hub's "hub ready at ws://..." line."""
    assert hub.stdout is not None
    for raw in hub.stdout:
        line = raw.decode()
        if "hub ready at" in line:
            return line.split("hub ready at ", 1)[1].split()[0]
    raise SystemExit("the hub exited before it was ready")


def say(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def seen(page: Page, text: str) -> None:
    """Wait until the chat shows a delivered line containing ``text``."""
    expect(page.locator("#messages")).to_contain_text(text, timeout=WAIT_MS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "images")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds of data to gather")
    parser.add_argument("--sensors", type=int, default=12)
    parser.add_argument(
        "--chromium", default=os.environ.get("GENESIS_CHROMIUM", "/usr/bin/chromium")
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    serve = ["-m", "genesis_trio", "serve", "--port", "0", "--store", "none"]
    with running(*serve, output=True) as hub:
        ws = hub_url(hub)
        http = ws.replace("ws://", "http://", 1).rsplit("/", 1)[0]
        with (
            running("examples/telemetry/rules.py", ws),
            running("examples/telemetry/sensors.py", ws, str(args.sensors), "10"),
            running("examples/chat/bot.py", ws, "lobby"),
            sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(executable_path=args.chromium)
            size = {"width": 1280, "height": 800}
            # The dashboard first: it plots from the moment it opens.
            dashboard = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            dashboard.goto(f"{http}/dashboard")
            expect(dashboard.locator("#badge")).to_have_attribute(
                "data-state", "connected", timeout=WAIT_MS
            )
            telemetry = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
            telemetry.goto(f"{http}/demo/telemetry")
            expect(telemetry.locator("#threshold")).to_have_text("35.0", timeout=WAIT_MS)
            telemetry.fill("#threshold-input", "24.5")
            telemetry.click("#threshold-form button")
            expect(telemetry.locator("#threshold")).to_have_text("24.5", timeout=WAIT_MS)

            expect(dashboard.locator('#components tr[data-id="chat-bot"]')).to_have_count(
                1, timeout=WAIT_MS
            )
            alice = browser.new_context(viewport=size).new_page()
            alice.goto(f"{http}/demo/chat?name=alice")
            seen(alice, "welcome, alice!")
            bob = browser.new_context(viewport=size).new_page()
            bob.goto(f"{http}/demo/chat?name=bob")
            seen(alice, "welcome, bob!")
            say(alice, "hi bob! the hub keeps our session across reloads")
            seen(bob, "across reloads")
            say(bob, "nice, and if my Wi-Fi drops I miss nothing")
            say(bob, "!who")
            seen(alice, "here: ")
            say(alice, "bot: are you there?")
            seen(bob, "you said 'are you there?'")
            say(bob, "try closing the tab's network, then reload")
            seen(alice, "then reload")

            deadline = time.monotonic() + args.settle
            while time.monotonic() < deadline:  # the pages keep plotting meanwhile
                time.sleep(0.5)

            alice.screenshot(path=args.out / "chat.png")
            telemetry.screenshot(path=args.out / "telemetry.png")
            dashboard.screenshot(path=args.out / "dashboard.png", full_page=True)
            browser.close()
    for name in ("chat", "telemetry", "dashboard"):
        print(args.out / f"{name}.png")


if __name__ == "__main__":
    main()
