"""Developer tasks: ``nox -s tests``, ``lint``, ``typecheck``, ``soak``, ``demo``, ``bench``."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = None  # the interpreter nox runs on (3.11+)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (real Hypercorn, real sockets on 127.0.0.1, Node, Chromium).

    The browser client's tests need Node 20+ (``npm ci`` here installs their
    dev tools); the browser tests need Debian's Chromium. Without them those
    tests skip, except under CI=true, where they fail.
    """
    session.install("-e", ".[test]")
    if shutil.which("npm"):
        session.run("npm", "ci", "--no-audit", "--no-fund", "--silent", external=True)
    session.run("pytest", *session.posargs, env={"PYTHONFAULTHANDLER": "1"})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (with the ASYNC rules), the formatter check, the import-layer contracts, and
    ``tsc --noEmit --checkJs`` on the browser client (needs npm; required under CI=true)."""
    session.install("ruff>=0.6", "import-linter>=2.1")
    paths = ["genesis_trio", "tests", "examples", "bench", "tools", "noxfile.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.install("-e", ".")  # import-linter reads the installed package's imports
    session.run("lint-imports")  # the layer contracts in pyproject.toml
    if shutil.which("npm"):
        session.run("npm", "ci", "--no-audit", "--no-fund", "--silent", external=True)
        # `--no`: never download; `--`: the rest is tsc's (npx would read `-p` as its own)
        session.run("npx", "--no", "--", "tsc", "--noEmit", "-p", "jsconfig.json", external=True)
    elif os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        session.error("npm is missing: the browser client's type check must run under CI")
    else:
        session.warn("npm not found: the browser client's type check (tsc) was skipped")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".", "mypy>=1.11", "msgpack-types>=0.3", "types-jsonschema>=4.23")
    session.run("mypy")


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """A hub under abusive and normal clients for 120 s (``-- --duration N`` to change)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "tests.soak", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The hub with its demo pages, the chat bot, the sensors and the rules (Ctrl-C stops).

    Then open http://127.0.0.1:8000/demo/chat, /demo/telemetry and /dashboard
    (docs/quickstart.md). ``-- --port N --sensors N --hz F`` to change.
    """
    session.install("-e", ".")
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against peers; writes docs/benchmarks.md and a plot."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "bench", *session.posargs, env={"CI": os.environ.get("CI", "")})
    if session.posargs in ([], ["--smoke"]):  # the whole session: the cluster against one node
        out = ["--smoke"] if session.posargs else ["--out", "docs/benchmarks-cluster.md"]
        session.run("python", "-m", "bench.cluster", *out)
