"""The browser client (``genesis_trio/static/genesis.js``): its type check and its Node tests.

Runs ``npx tsc --noEmit -p jsconfig.json`` and ``node --test tests/js/`` from the
repository root; the Node tests start their own hubs (the CLI) with this
interpreter. They need Node 20+ and ``npm ci``: without them this test is
skipped, except on CI (``CI=true``), where that is an error.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
TYPECHECK_TIMEOUT = 30.0
NODE_TESTS_TIMEOUT = 60.0

pytestmark = pytest.mark.slow


def _missing(what: str) -> None:
    message = f"the browser client's tests need {what}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _node_tools() -> tuple[str, str]:
    node, npx = shutil.which("node"), shutil.which("npx")
    if node is None or npx is None:
        _missing("Node.js 20+ (node and npx on PATH)")
    assert node is not None
    assert npx is not None
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    if int(version.strip().lstrip("v").split(".")[0]) < 20:
        _missing(f"Node.js 20+ (found {version.strip()})")
    for package in ("typescript", "ws", "@types/node", "@types/ws"):
        if not (NODE_MODULES / package / "package.json").is_file():
            _missing(f"node_modules/{package} (run `npm ci` at the repository root)")
    return node, npx


def _run(args: list[str], timeout: float) -> None:
    """Run ``args`` in its own process group; on timeout, end that group (the hubs too)."""
    env = {**os.environ, "GENESIS_PYTHON": sys.executable, "NO_COLOR": "1"}
    with subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            pytest.fail(f"`{' '.join(args)}` took more than {timeout:.0f} s:\n{output}")
    if process.returncode != 0:
        pytest.fail(f"`{' '.join(args)}` exited with {process.returncode}:\n{output}")


def test_browser_client_typechecks() -> None:
    _, npx = _node_tools()
    # `--no`: never download; `--`: the rest is tsc's (npx would read `-p` as its own).
    _run([npx, "--no", "--", "tsc", "--noEmit", "-p", "jsconfig.json"], TYPECHECK_TIMEOUT)


def test_browser_client_node_tests() -> None:
    node, _ = _node_tools()
    _run([node, "--test", "--test-reporter=spec", "tests/js/"], NODE_TESTS_TIMEOUT)
