"""Driving the compiled load generator (bench/loadgen.c) from Python."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import CLIENT_CORE, ChildError, LineChild, pinned

Result = dict[str, Any]


class LoadgenError(RuntimeError):
    """The load generator failed (connect phase, crash, timeout)."""


def _flags(options: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


class Loadgen:
    """The compiled generator; every process it starts is pinned to the client core."""

    def __init__(self, binary: Path, stderr_log: Path | None = None) -> None:
        self.binary = binary
        self.stderr_log = stderr_log

    def spawn(self, mode: str, *, stdin: bool = False, **options: Any) -> LineChild:
        """Start ``loadgen MODE --option value ...``."""
        argv = pinned([str(self.binary), mode, *_flags(options)], CLIENT_CORE)
        return LineChild(argv, stdin=stdin, stderr=self.stderr_log)

    def measure(
        self,
        mode: str,
        *,
        timeout: float,
        on_mark: Callable[[str], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        **options: Any,
    ) -> Result:
        """Run an ``echo`` or ``fanout`` measurement and return its JSON result.

        ``on_mark("start"/"end")`` runs when the measurement window opens and
        closes; ``on_ready()`` when a publisher-less fan-out has its subscribers.
        """
        child = self.spawn(mode, **options)
        try:
            while True:
                line = child.readline(timeout)
                if line is None:
                    raise LoadgenError(f"load generator exited without a result ({mode})")
                if line.startswith("mark ") and on_mark is not None:
                    on_mark(line.split()[1])
                elif line.startswith("ready") and on_ready is not None:
                    on_ready()
                elif line.startswith("{"):
                    result: Result = json.loads(line)
                    if not result.get("ok"):
                        raise LoadgenError(_describe_failure(result))
                    return result
        except ChildError as exc:
            raise LoadgenError(str(exc)) from None
        finally:
            child.close(timeout=2.0)


def _describe_failure(result: Result) -> str:
    parts = [f"load generator failed in phase {result.get('phase', 'run')}"]
    if "open" in result:
        parts.append(f"{result['open']} of {result['wanted']} connections open")
    if result.get("messages") == 0:
        parts.append("no messages received")
    messages = result.get("error_messages") or []
    if messages:
        parts.append("errors: " + "; ".join(messages))
    return ", ".join(parts)


@dataclass(frozen=True)
class IdleStatus:
    """What an ``idle`` load generator reports after ``connect N``."""

    open: int
    failed: int
    """Connections that could not be opened in this step."""
    seconds: float
    lost: int
    """Links the server closed since the start."""
    max_ping_gap: float
    """Longest interval between two hub pings on one link (genesis), seconds."""
    late_pings: int
    """Hub pings that came more than 6 s after the previous one (interval: 5 s)."""
    refused: int = 0
    """Links whose server did not accept permessage-deflate (``--deflate`` only)."""


class IdleClients:
    """An ``idle`` load generator: grow to N connections on demand."""

    def __init__(self, loadgen: Loadgen, **options: Any) -> None:
        self.child = loadgen.spawn("idle", stdin=True, **options)
        line = self.child.readline(10)
        if line != "idle ready":
            raise LoadgenError(f"idle load generator did not start: {line!r}")

    def grow(self, total: int, timeout: float) -> IdleStatus:
        """Connect until ``total`` are open (0: just report) and return the status."""
        self.child.write(f"connect {total}")
        line = self.child.readline(timeout)
        if line is None or not line.startswith("connected "):
            raise LoadgenError(f"idle load generator: unexpected {line!r}")
        fields = line.split()[1:]
        return IdleStatus(
            int(fields[0]), int(fields[1]), float(fields[2]), int(fields[3]),
            float(fields[4]), int(fields[5]), int(fields[6]),
        )  # fmt: skip

    def close(self) -> None:
        """Quit (closing every connection)."""
        with contextlib.suppress(OSError):
            self.child.write("quit")
        self.child.close(timeout=5.0)
