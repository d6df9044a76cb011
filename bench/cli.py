"""``python -m bench``: plan the session, run it, write the report and the plot."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import facts
from bench.build import BuildError, build_loadgen
from bench.generator import Loadgen
from bench.plot import plot
from bench.procs import REPO, can_pin, machine_busy_seconds, raise_fd_limit
from bench.report import render
from bench.results import Case, Results
from bench.targets import (
    BASELINES,
    DEFLATE_MEMORY_TARGETS,
    DEFLATE_TARGETS,
    HUB,
    HUB_FULL,
    HUB_MEM,
    TARGETS,
)
from bench.workloads import FULL, GROUPS, SERVER_GROUPS, SMOKE, Profile, Runner

SERVERS = (*BASELINES, HUB, HUB_MEM, HUB_FULL)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the genesis_trio hub against aiohttp, websockets, "
        "trio-websocket, python-socketio and raw Hypercorn-Trio (writes docs/benchmarks.md "
        "and docs/benchmarks.png).",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, one run each (~10 s); writes to a temp dir unless --out",
    )
    parser.add_argument("--out", type=Path, help="output directory (default docs/, smoke: temp)")
    parser.add_argument("--runs", type=int, help="runs per case (median reported)")
    parser.add_argument("--duration", type=float, help="seconds measured per run")
    parser.add_argument(
        "--only",
        help=f"comma-separated workload groups to run, from {','.join(GROUPS)}",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RAW_JSON",
        help="do not measure: write the report and plot from a raw results file",
    )
    parser.add_argument(
        "--servers",
        help=f"comma-separated servers, from {','.join(SERVERS)}",
    )
    return parser.parse_args(argv)


def _profile(args: argparse.Namespace) -> Profile:
    profile = SMOKE if args.smoke else FULL
    changes: dict[str, Any] = {}
    if args.runs:
        changes["runs"] = args.runs
    if args.duration:
        changes["duration"] = args.duration
    return dataclasses.replace(profile, **changes) if changes else profile


def _selection(text: str | None, allowed: Sequence[str], what: str) -> list[str]:
    if not text:
        return list(allowed)
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return chosen


def run_session(runner: Runner, groups: list[str], servers: list[str]) -> None:
    """Every selected workload, server by server."""
    if SERVER_GROUPS.intersection(groups):
        compressed = [
            TARGETS[key]
            for key in servers
            if "deflate" in groups and key in DEFLATE_TARGETS and TARGETS[key].compress_args
        ]
        runner.prestart((TARGETS[key] for key in servers), compressed)
    if "ceiling" in groups:
        runner.log("load generator ceiling (C sink)")
        _guarded(runner, "ceiling", runner.ceiling)
    for key in servers:
        target = TARGETS[key]
        runner.log(target.label)
        steps = [
            ("A", runner.request_response),
            ("B", runner.pipelined),
            ("C", runner.closed_loop),
            ("D", runner.fanout),
        ]
        if key == HUB_FULL:  # what full fsync costs: B and D at one k only
            steps = [("B", runner.pipelined), ("D", runner.fanout)]
        for group, step in steps:
            if group in groups:
                _guarded(runner, f"{key} {group}", functools.partial(step, target))
        if "deflate" in groups and key in DEFLATE_TARGETS:
            _guarded(runner, f"{key} deflate", functools.partial(runner.compressed, target))
        if "py" in groups and key == HUB:
            _guarded(runner, "python client", runner.python_client)
        if "M" in groups and key not in (HUB_MEM, HUB_FULL):
            _guarded(runner, f"{key} M", functools.partial(runner.memory, target))
        if "deflate" in groups and key in DEFLATE_MEMORY_TARGETS:
            memory = functools.partial(runner.memory, target, deflate=True)
            _guarded(runner, f"{key} M deflate", memory)
        runner.release(key)
    if "local" in groups and (HUB in servers or HUB_MEM in servers):
        runner.log("in-process components vs loopback clients (hub and load in one process)")
        _guarded(runner, "local", runner.in_process)
    if "R" in groups and HUB in servers:
        runner.log("reconnect storm")
        _guarded(runner, "storm", runner.storm)


def _guarded(runner: Runner, name: str, step: Callable[[], object]) -> None:
    """Run one workload; a bug in the harness fails that workload, not the session."""
    try:
        step()
    except Exception as exc:
        runner.log(f"  {name}: harness error: {type(exc).__name__}: {exc}")
        runner.results.add(Case(name, "harness", name, error=f"{type(exc).__name__}: {exc}"))
        runner.release()


def wait_for_quiet(log: Callable[[str], None], limit: float = 120.0) -> float:
    """Wait (at most ``limit`` s) until other processes use < 20% of a core; return that share."""
    deadline = time.monotonic() + limit
    while True:
        t0, busy0 = time.monotonic(), machine_busy_seconds()
        time.sleep(2.0)
        share = (machine_busy_seconds() - busy0) / (time.monotonic() - t0)
        if share < 0.2 or time.monotonic() > deadline:
            return share
        log(f"other processes use {share:.0%} of a core; waiting for a quieter machine")


def render_only(raw: Path, out: Path) -> int:
    """Write ``benchmarks.md`` and ``benchmarks.png`` from a raw results file."""
    data = json.loads(raw.read_text())
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in data["profile"].items()
    }
    profile = Profile(**fields)
    results = Results()
    for item in data["cases"]:
        results.add(Case(**item))
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.md").write_text(render(results, profile, data["facts"], data.get("elapsed")))
    plot(results, profile, out / "benchmarks.png")
    print(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.png'} from {raw}")
    return 1 if results.failures else 0


def _import_matplotlib() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; exit status 1 if any case failed to run."""
    args = parse_args(argv)
    if args.render:
        return render_only(args.render, args.out or REPO / "docs")
    # SIGTERM (nox, CI timeouts) unwinds like Ctrl-C, so that servers are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    profile = _profile(args)
    groups = _selection(args.only, GROUPS, "workload groups")
    servers = _selection(args.servers, SERVERS, "servers")
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="genesis-bench-")) if args.smoke else REPO / "docs"
    )
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="genesis-bench-work-"))
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    if not can_pin():
        log("WARNING: cannot pin to cores 0 and 1; numbers will be noisy")
    limit = raise_fd_limit()
    if not args.smoke and limit < max(profile.m_counts) + 200:
        log(f"WARNING: file descriptor limit {limit} may be too low for {max(profile.m_counts)}")
    try:
        binary = build_loadgen()
    except BuildError as exc:
        log(str(exc))
        return 2
    log(f"load generator: {binary}; logs in {workdir}")
    if args.smoke:  # warm up matplotlib while the servers run (it takes ~2 s)
        threading.Thread(target=_import_matplotlib, daemon=True).start()
    if not args.smoke:
        share = wait_for_quiet(log)
        log(f"other processes at start: {share:.0%} of a core")
    machine = facts.collect()
    results = Results()
    runner = Runner(profile, Loadgen(binary, workdir / "loadgen.stderr"), workdir, results, log)
    try:
        run_session(runner, groups, servers)
    finally:
        runner.release()
    elapsed = time.monotonic() - started

    raw_dir = out if args.smoke or args.out else REPO / "bench" / "results" / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    raw = raw_dir / f"bench-{profile.name}-{stamp}.json"
    raw.write_text(
        json.dumps(
            {
                "profile": dataclasses.asdict(profile),
                "elapsed": elapsed,
                "facts": machine,
                "cases": [c.to_json() for c in results.cases],
            },
            indent=1,
        )
    )
    report = out / "benchmarks.md"
    report.write_text(render(results, profile, machine, elapsed))
    try:
        plot(results, profile, out / "benchmarks.png")
    except Exception as exc:  # the table matters more than the picture
        log(f"plot failed: {type(exc).__name__}: {exc}")
        return 1
    log(f"wrote {report}, {out / 'benchmarks.png'} and {raw} in {elapsed:.1f} s")
    for case in results.failures:
        log(f"FAILED: {case.target} {case.label}: {case.error}")
    return 1 if results.failures else 0
