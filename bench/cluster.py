"""``python -m bench.cluster``: a cluster of nodes against one node and the SQLite default.

Setups, fresh processes for every run (nodes and Redis pinned to the server
core, clients to the client core; Redis with ``appendfsync everysec``):

* ``sqlite`` -- one hub on its default store (SQLite), no Redis;
* ``cluster-1`` -- one ``--cluster`` node on Redis: everything on it;
* ``cluster-2`` -- two nodes: senders/publisher on n0, receivers on n1
  (every delivery crosses nodes);
* ``cluster-3`` -- three nodes: senders on n0, receivers split over n1, n2.

Workloads:

* ``direct`` -- 8 pairs of our Python client (one process): each sender
  sends to its receiver as fast as ``send`` allows; deliveries per second;
* ``fanout`` -- one publisher (our Python client) to 100 subscribers (the C
  load generator, one per receiving node); deliveries per second.

``python -m bench.cluster`` prints a table of medians and ratios (runs: 3)
and with ``--out FILE`` writes it as Markdown; ``--smoke`` runs each case
once, briefly (CI: proves it runs, the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.build import build_loadgen
from bench.generator import Loadgen
from bench.procs import CLIENT_CORE, SERVER_CORE, LineChild, child_env, free_port, pinned

SETUPS = ("sqlite", "cluster-1", "cluster-2", "cluster-3")
PAIRS = 8
SUBS = 100


@contextmanager
def _process(argv: Sequence[str], log: Path, ready: str | None = None) -> Iterator[LineChild]:
    child = LineChild(pinned(argv, SERVER_CORE), stderr=log)
    try:
        while ready is not None:
            line = child.readline(30)
            if line is None:
                raise RuntimeError(f"{argv[0:5]} exited; see {log}")
            if ready in line:
                break
        yield child
    finally:
        child.proc.terminate()
        child.close(timeout=5)


@contextmanager
def _redis(workdir: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("bench.cluster: redis-server is not installed")
    port = free_port()
    data = workdir / f"redis-{port}"
    data.mkdir()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec"]  # fmt: skip
    with _process(argv, workdir / "redis.log", ready="Ready to accept connections"):
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def _setup(name: str, workdir: Path) -> Iterator[list[str]]:
    """Start the setup's hubs; yield their ws:// URLs."""
    hub = [sys.executable, "-m", "genesis_trio", "serve", "--log-level", "warning",
           "--demos", "off"]  # fmt: skip
    with ExitStack() as stack:
        if name == "sqlite":
            port = free_port()
            argv = [*hub, "--port", str(port), "--store", f"sqlite:{workdir}/hub-{port}.sqlite3"]
            stack.enter_context(_process(argv, workdir / "hub.log", ready="hub ready"))
            yield [f"ws://127.0.0.1:{port}/ws"]
            return
        url = stack.enter_context(_redis(workdir))
        urls = []
        for i in range(int(name.rsplit("-", 1)[1])):
            port = free_port()
            argv = [*hub, "--port", str(port), "--store", url, "--cluster", "--node-id", f"n{i}"]
            stack.enter_context(_process(argv, workdir / f"n{i}.log", ready="hub ready"))
            urls.append(f"ws://127.0.0.1:{port}/ws")
        yield urls


def _client(*args: str) -> LineChild:
    log = Path(os.environ.get("GT_BENCH_LOG", os.devnull))
    return LineChild(
        pinned([sys.executable, "-m", "bench.cluster", *args], CLIENT_CORE), stderr=log
    )


def _json(child: LineChild, timeout: float) -> dict[str, Any]:
    while (line := child.readline(timeout)) is not None:
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError("the client exited without a result")


def direct_once(urls: list[str], warmup: float, duration: float) -> float:
    """Deliveries per second of ``PAIRS`` sender->receiver pairs across the setup."""
    send, receive = urls[0], urls[1:] or urls
    child = _client("pairs", "--send", send, *[a for u in receive for a in ("--receive", u)],
                    "--warmup", str(warmup), "--duration", str(duration))  # fmt: skip
    try:
        return float(_json(child, 60 + warmup + duration)["rate"])
    finally:
        child.close()


def fanout_once(urls: list[str], loadgen: Loadgen, warmup: float, duration: float) -> float:
    """Deliveries per second from one publisher (on the first node) to ``SUBS`` subscribers."""
    receive = urls[1:] or urls
    per = SUBS // len(receive)
    run_for = warmup + duration + 30
    publisher = _client("publish", "--url", urls[0], "--run-for", str(run_for))
    subs = []
    try:
        for i, url in enumerate(receive):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            subs.append(loadgen.spawn("fanout", port=port, path="/ws", dialect="genesis",
                                      subs=per, no_pub=True, size=64, inflight=64, topic="bench",
                                      prefix=f"s{i}", warmup=warmup, duration=duration,
                                      timeout=60))  # fmt: skip
        total = 0.0
        for sub in subs:
            total += float(_json(sub, 90 + warmup + duration).get("rate", 0.0))
        return total
    finally:
        for sub in subs:
            sub.close(timeout=2)
        publisher.proc.terminate()
        publisher.close(timeout=5)


Rates = dict[str, dict[str, list[float]]]
"""Deliveries per second of each run, by workload and setup."""


def run(runs: int, warmup: float, duration: float, workdir: Path) -> Rates:
    """Every workload on every setup, ``runs`` times; rates by workload and setup."""
    loadgen = Loadgen(build_loadgen(), stderr_log=workdir / "loadgen.log")
    rates: Rates = {"direct": {}, "fanout": {}}
    for _ in range(runs):
        for setup in SETUPS:
            for workload in rates:
                with _setup(setup, workdir) as urls:
                    if workload == "direct":
                        rate = direct_once(urls, warmup, duration)
                    else:
                        rate = fanout_once(urls, loadgen, warmup, duration)
                rates[workload].setdefault(setup, []).append(rate)
                print(f"  {workload:7} {setup:10} {rate:10.0f}/s", file=sys.stderr, flush=True)
    return rates


def report(rates: Rates, runs: int) -> str:
    """A Markdown table: medians, and ratios to one node and to SQLite."""
    lines = [
        "# Cluster benchmark",
        "",
        "`python -m bench.cluster` (also run by `nox -s bench`): a cluster of nodes on one",
        "Redis against one node and against one SQLite hub, the default. `direct`: 8 pairs",
        "of our Python client, senders on the first node, receivers on the others. `fanout`:",
        "one publisher (our Python client) on the first node, 100 subscribers (the C load",
        "generator) on the others. Every node and Redis share the server core, the clients",
        "the other: on a 2-core machine this measures the cost of a delivery across nodes,",
        "not how a cluster scales (docs/cluster.md, Sizing).",
        "",
        f"Medians of {runs} runs, deliveries per second; {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}. Ratios: to the one-node cluster, and to the "
        "one SQLite hub (the default).",
        "",
        "| workload | setup | deliveries/s | ÷ cluster-1 | ÷ sqlite |",
        "|---|---|---:|---:|---:|",
    ]
    for workload, by_setup in rates.items():
        med = {s: statistics.median(v) for s, v in by_setup.items()}
        for setup, value in med.items():
            one, base = med.get("cluster-1") or 1.0, med.get("sqlite") or 1.0
            ratios = f"x{value / one:.2f} | x{value / base:.2f}"
            lines.append(f"| {workload} | {setup} | {value:,.0f} | {ratios} |")
    return "\n".join(lines) + "\n"


# -- the client processes ----------------------------------------------------------


async def pairs(send: str, receive: list[str], warmup: float, duration: float) -> dict[str, Any]:
    """``PAIRS`` senders on ``send``, receivers spread over ``receive``: deliveries/s."""
    import trio

    from genesis_trio import TranscendentalWebSocket

    received = 0
    tag = os.getpid()

    async def pump(s: TranscendentalWebSocket, to: str) -> None:
        while True:
            await s.send(to, "e", "x" * 64)

    async def drain(r: TranscendentalWebSocket) -> None:
        nonlocal received
        while True:
            await r.receive()
            received += 1

    async with AsyncExitStack() as stack:
        pairs_ = []
        for i in range(PAIRS):
            url = receive[i % len(receive)]
            r = await stack.enter_async_context(
                TranscendentalWebSocket(url, f"r{i}-{tag}", codec="json")
            )
            s = await stack.enter_async_context(
                TranscendentalWebSocket(send, f"s{i}-{tag}", codec="json")
            )
            pairs_.append((s, r))
        async with trio.open_nursery() as nursery:
            for s, r in pairs_:
                nursery.start_soon(pump, s, r.component_id)
                nursery.start_soon(drain, r)
            await trio.sleep(warmup)
            before, t0 = received, time.monotonic()
            await trio.sleep(duration)
            count, seconds = received - before, time.monotonic() - t0
            result = {"ok": count > 0, "rate": count / seconds}
            print(json.dumps(result), flush=True)  # before closing: the result is out
            nursery.cancel_scope.cancel()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison (or, as a child, one client workload)."""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("pairs")
    p.add_argument("--send", required=True)
    p.add_argument("--receive", action="append", required=True)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=3.0)
    q = sub.add_parser("publish")
    q.add_argument("--url", required=True)
    q.add_argument("--run-for", type=float, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.command in ("pairs", "publish"):
        import trio

        from bench import pyclient

        if args.command == "pairs":
            trio.run(pairs, args.send, args.receive, args.warmup, args.duration)
        else:
            print(json.dumps(trio.run(pyclient.publish, args.url, 64, args.run_for)), flush=True)
        return 0
    runs, warmup, duration = (1, 0.2, 0.5) if args.smoke else (args.runs, 0.5, 3.0)
    os.environ.update(child_env())
    workdir = Path(tempfile.mkdtemp(prefix="gt-bench-cluster-"))
    os.environ["GT_BENCH_LOG"] = str(workdir / "clients.log")
    try:
        table = report(run(runs, warmup, duration, workdir), runs)
    except BaseException:
        print(f"bench.cluster: failed; logs in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    print(table)
    if args.out is not None:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
