"""The workloads and the runner that measures them.

A   one connection, request -> echo (round trips/s, p50/p99 latency)
B   one connection, 100 messages in flight (messages/s); hub: k per frame
C   many connections, closed loop, one message in flight each (messages/s)
D   fan-out, 1 publisher -> S subscribers (deliveries/s); hub: k per frame
M   memory per idle connection (server RSS delta / N)
deflate  B 64 B and D (and M at one count) with permessage-deflate negotiated
R   reconnect storm: kill -9 and restart the hub, time until all re-welcomed
py  B and D driven by our Python client instead of the C generator
local  in-process component vs loopback client, hub and load in one process
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.generator import IdleClients, Loadgen, LoadgenError
from bench.procs import (
    CLIENT_CORE,
    SERVER_CORE,
    ChildError,
    LineChild,
    ServerProcess,
    free_port,
    machine_busy_seconds,
    pinned,
)
from bench.results import Case, Results
from bench.targets import HUB, HUB_FULL, HUB_MEM, SINK, TARGETS, Target

Log = Callable[[str], None]

NOISY = 0.25
"""Share of a core used by other processes above which a run is repeated."""
MAX_RETRIES_PER_CASE = 3

CLIENT_MAX_SIZE = 1 << 20
"""``ClientConfig.max_message_size``'s default: what our Python client accepts."""

SUSPICIOUS = re.compile(r"\b(ERROR|CRITICAL|WARNING)\b")
TIMESTAMP = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T][\d:,.]+( [+-]\d{4})?\]?( \[\d+\])?\s*")


def notable_log_lines(text: str, limit: int = 10) -> list[str]:
    """Warnings/errors and the exception line of each traceback, deduplicated."""
    found: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        item = None
        if SUSPICIOUS.search(line):
            item = TIMESTAMP.sub("", line).strip()
        elif line.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
                j += 1
            item = "traceback: " + (lines[j].strip() if j < len(lines) else "?")
        if item and item not in found:
            found.append(item)
    return found[:limit]


@dataclass(frozen=True)
class Profile:
    """Sizes and durations of one benchmark session."""

    name: str
    runs: int
    duration: float
    warmup: float
    c_conns: int
    d_subs: int
    m_counts: tuple[int, ...]
    r_conns: int
    sizes: tuple[int, ...]
    hub_k: tuple[int, ...]
    """Messages per client frame for the hub's B workload (64-byte payload)."""
    hub_k_large: tuple[int, ...]
    """Same, for the larger payloads."""
    fanout_k: tuple[int, ...]
    mem_k: tuple[int, ...]
    """k values measured on the hub with ``--store none`` (B at 64 B, and D)."""
    fresh_servers: bool
    """Start a fresh server process for every run (else one per server)."""
    settle: float
    noisy_retries: int = 0
    """Session-wide budget of runs repeated because the machine was busy."""
    r_backoff_cap: float = 10.0
    """Reconnect backoff cap of the storm's clients (the Python client's default: 10 s)."""
    inflight: int = 100
    connect_concurrency: int = 64
    full_sync_k: tuple[int, ...] = (16,)
    """k values measured on the hub with ``--store-sync full`` (B at 64 B, and D)."""
    m_deflate_counts: tuple[int, ...] = (1000,)
    """Idle connection counts of M with permessage-deflate negotiated."""


SMOKE = Profile(
    name="smoke",
    runs=1,
    duration=0.12,
    warmup=0.03,
    c_conns=20,
    d_subs=10,
    m_counts=(50,),
    r_conns=50,
    sizes=(64,),
    hub_k=(1, 8),
    hub_k_large=(),
    fanout_k=(1,),
    mem_k=(1,),
    fresh_servers=False,
    settle=0.1,
    r_backoff_cap=0.4,
    full_sync_k=(8,),
    m_deflate_counts=(50,),
)

FULL = Profile(
    name="full",
    runs=3,
    duration=3.0,
    warmup=0.5,
    c_conns=1000,
    d_subs=500,
    m_counts=(1000, 5000, 10000),
    r_conns=5000,
    sizes=(64, 4096),
    hub_k=(1, 8, 16, 64),
    hub_k_large=(1, 16),
    fanout_k=(1, 8, 16),
    mem_k=(1, 16),
    fresh_servers=True,
    settle=1.0,
    noisy_retries=30,
)

GROUPS = ("ceiling", "A", "B", "C", "D", "deflate", "py", "M", "R", "local")
SERVER_GROUPS = frozenset({"A", "B", "C", "D", "deflate", "py", "M"})
"""Groups that use the servers started side by side by :meth:`Runner.prestart`."""
VIA_LABELS = {"loopback": "loopback client", "local": "in-process"}
"""The two ways the ``local`` group drives the hub (``python -m bench.inproc --via``)."""


def size_label(size: int) -> str:
    """64 -> '64 B', 4096 -> '4 KiB'."""
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


class Runner:
    """Runs cases against servers, one server process on core 0 at a time."""

    def __init__(
        self, profile: Profile, loadgen: Loadgen, workdir: Path, results: Results, log: Log
    ) -> None:
        self.profile = profile
        self.loadgen = loadgen
        self.workdir = workdir
        self.results = results
        self.log = log
        self._servers: dict[str, ServerProcess] = {}
        self._ids = itertools.count(1)
        self._log_seen: dict[Path, int] = {}
        self.retry_budget = profile.noisy_retries
        """Runs that may still be repeated because other processes disturbed them."""

    # -- servers ----------------------------------------------------------------

    @staticmethod
    def _name(target: Target, compress: bool) -> str:
        """The server's name: the target's key, ``+deflate`` for its compressing variant."""
        return f"{target.key}+deflate" if compress and target.compress_args else target.key

    def _server_for(
        self,
        target: Target,
        port: int | None = None,
        state: Path | None = None,
        *,
        compress: bool = False,
    ) -> ServerProcess:
        """A server with a fresh port and a state directory of its own (unless given)."""
        port = port or free_port()
        n = next(self._ids)
        name = self._name(target, compress)
        log = self.workdir / "logs" / f"{name}-{n}.log"
        if state is None:
            state = self.workdir / "state" / f"{name}-{n}"
        state.mkdir(parents=True, exist_ok=True)
        argv = target.argv(port, state, self.loadgen.binary, compress=compress)
        server = ServerProcess(name, argv, port, log)
        server.state = state
        return server

    def _start(
        self,
        target: Target,
        port: int | None = None,
        state: Path | None = None,
        *,
        compress: bool = False,
    ) -> ServerProcess:
        return self._server_for(target, port, state, compress=compress).start()

    def prestart(self, targets: Iterable[Target], compressed: Iterable[Target] = ()) -> None:
        """Start shared servers side by side (when servers are not fresh per run).

        ``compressed``: targets whose compressing variant is needed too.
        Idle servers cost nothing measurable, and starting Python servers in
        parallel keeps the smoke run short.
        """
        if self.profile.fresh_servers:
            return
        wanted = [(t, False) for t in targets] + [(t, True) for t in compressed]
        fresh = [
            self._server_for(t, compress=z)
            for t, z in wanted
            if self._name(t, z) not in self._servers
        ]
        for server in fresh:  # start on both cores, then move to the server core
            self._servers[server.name] = server.spawn(pin=False)
        for server in fresh:
            server.wait_ready().pin()

    def _acquire(
        self, target: Target, *, fresh: bool | None = None, compress: bool = False
    ) -> ServerProcess:
        fresh = self.profile.fresh_servers if fresh is None else fresh
        if fresh:
            self.release()
        name = self._name(target, compress)
        server = self._servers.get(name)
        if server is not None and not server.alive():
            self.release(name)
            server = None
        if server is None:
            server = self._servers[name] = self._start(target, compress=compress)
        return server

    def release(self, key: str | None = None) -> None:
        """Stop the servers of ``key`` (and its variants; default: every server)."""
        names = [n for n in self._servers if key is None or n == key or n.startswith(f"{key}+")]
        for name in names:
            server = self._servers.pop(name, None)
            if server is not None:
                server.stop()

    def _news(self, server: ServerProcess) -> list[str]:
        """What the server logged since the last look that looks like trouble."""
        text = server.log_text()
        seen = self._log_seen.get(server.log, 0)
        self._log_seen[server.log] = len(text)
        return notable_log_lines(text[seen:])

    def _after_run(self, case: Case, server: ServerProcess) -> None:
        for line in self._news(server):
            note = f"server log: {line}"
            if note not in case.warnings:
                case.warnings.append(note)
        if not server.alive():
            tail = "\n".join(server.log_text().splitlines()[-15:])
            raise ChildError(f"{server.name} died during the run; log tail:\n{tail}")

    # -- one measurement ----------------------------------------------------------

    def _measure(
        self,
        server: ServerProcess,
        target: Target,
        mode: str,
        on_ready: Callable[[], None] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        marks: dict[str, Mark] = {}

        def on_mark(name: str) -> None:
            marks[name] = _mark(server)

        p = self.profile
        result = self.loadgen.measure(
            mode,
            timeout=60 + p.warmup + p.duration,
            on_mark=on_mark,
            on_ready=on_ready,
            port=server.port,
            dialect=target.dialect,
            duration=p.duration,
            warmup=p.warmup,
            concurrency=p.connect_concurrency,
            prefix=f"lg{next(self._ids)}",
            **options,
        )
        _add_cpu(result, marks, result.get("cpu"))
        return result

    def _repeat(self, case: Case, once: Callable[[], dict[str, Any]], runs: int) -> Case:
        while len(case.runs) < runs and self._attempt(case, once):
            pass
        return self.results.add(case)

    def _attempt(self, case: Case, once: Callable[[], dict[str, Any]]) -> bool:
        """One run of ``case``: kept, or discarded (busy machine); False if the case failed."""
        target = TARGETS[case.target]
        try:
            result = once()
        except (LoadgenError, ChildError, OSError, ValueError) as exc:
            case.error = str(exc)
            self.log(f"  {target.key} {case.label}: FAILED: {exc}")
            self.release(target.key)
            return False
        if result.get("messages") == 0 and "rate" in result:
            stall = f"nothing arrived during the {self.profile.duration:g} s window"
            closes = result.get("link_closes")
            if closes:
                stall += (
                    f"; the Python client reconnected {result.get('reconnects')} times, "
                    f"its links closed with: {'; '.join(closes)}"
                )
            if self.profile.duration >= 1.0:
                case.error = stall
                self.log(f"  {target.key} {case.label}: FAILED: {stall}")
                self.release(target.key)
                return False
            if stall not in case.warnings:
                case.warnings.append(stall)
        other = float(result.get("foreign_cpu") or 0.0)
        if other > NOISY and case.discarded < MAX_RETRIES_PER_CASE and self.retry_budget > 0:
            self.retry_budget -= 1
            case.discarded += 1
            self.log(
                f"  {target.key} {case.label}: other processes used {other:.0%} of a core "
                "during the window; run discarded, repeating"
            )
            time.sleep(2.0)
            return True
        case.runs.append(result)
        self._note_run(case, result)
        self.log(
            f"  {target.key} {case.label} run {len(case.runs)}/{self.profile.runs}: "
            f"{_summary(result)}"
        )
        return True

    def _note_run(self, case: Case, result: dict[str, Any]) -> None:
        """Turn what a run saw (big frames, link closes, error frames) into warnings."""
        notes = []
        biggest = int(result.get("max_frame_in") or 0)
        if biggest > CLIENT_MAX_SIZE:
            notes.append(
                f"server sent a {biggest}-byte frame, above the Python client's "
                f"max_message_size ({CLIENT_MAX_SIZE}): that client would close with 1009"
            )
        closes = result.get("link_closes") or (result.get("publisher") or {}).get("link_closes")
        notes += [f"Python client's link closed: {close}" for close in closes or []]
        notes += [f"client saw: {message}" for message in result.get("error_messages") or []]
        for note in notes:
            if note not in case.warnings:
                case.warnings.append(note)

    def _generator_case(
        self, target: Target, group: str, label: str, mode: str, **params: Any
    ) -> Case:
        case = Case(group, target.key, label, dict(params))

        def once() -> dict[str, Any]:
            server = self._acquire(target, compress=bool(params.get("deflate")))
            path = target.bcast_path if mode == "fanout" else target.echo_path
            result = self._measure(server, target, mode, path=path, **params)
            self._after_run(case, server)
            if params.get("deflate"):
                _check_deflate(result.get("deflate_refused"), result.get("negotiated"))
            return result

        return self._repeat(case, once, self.profile.runs)

    # -- workloads ----------------------------------------------------------------

    def ceiling(self) -> None:
        """The generator against the C sink: A, B and C."""
        sink = TARGETS[SINK]
        self._generator_case(sink, "A", "A", "echo", conns=1, inflight=1, size=64)
        self._generator_case(sink, "B", "B 64 B", "echo", conns=1, inflight=100, size=64)
        c = self.profile.c_conns
        self._generator_case(sink, "C", f"C {c} conns", "echo", conns=c, inflight=1, size=64)
        self.release(SINK)

    def request_response(self, target: Target) -> None:
        """A: one connection, one message in flight."""
        self._generator_case(target, "A", "A", "echo", conns=1, inflight=1, size=64)

    def pipelined(self, target: Target) -> None:
        """B: one connection, 100 in flight; the hub also with k messages per frame."""
        p = self.profile
        for size in (64,) if target.key in (HUB_MEM, HUB_FULL) else p.sizes:
            ks = (p.hub_k if size == 64 else p.hub_k_large) if target.is_hub else (1,)
            if target.key == HUB_MEM:
                ks = p.mem_k
            elif target.key == HUB_FULL:
                ks = p.full_sync_k
            for k in ks or (1,):
                label = f"B {size_label(size)}" + (f" k={k}" if target.is_hub else "")
                self._generator_case(
                    target, "B", label, "echo", conns=1, inflight=p.inflight, size=size, k=k
                )

    def closed_loop(self, target: Target) -> None:
        """C: many connections, one message in flight each."""
        c = self.profile.c_conns
        self._generator_case(target, "C", f"C {c} conns", "echo", conns=c, inflight=1, size=64)

    def fanout(self, target: Target) -> None:
        """D: one publisher, S subscribers."""
        p = self.profile
        ks = p.mem_k if target.key == HUB_MEM else p.fanout_k if target.is_hub else (1,)
        if target.key == HUB_FULL:
            ks = p.full_sync_k
        for k in ks:
            label = f"D 1->{p.d_subs}" + (f" k={k}" if target.is_hub else "")
            self._generator_case(
                target, "D", label, "fanout", subs=p.d_subs, inflight=p.inflight, size=64, k=k
            )

    def compressed(self, target: Target) -> None:
        """B 64 B and D (k=1) with the generator offering permessage-deflate, like a browser."""
        p = self.profile
        self._generator_case(
            target, "B", "B 64 B deflate", "echo",
            conns=1, inflight=p.inflight, size=64, k=1, deflate=True,
        )  # fmt: skip
        self._generator_case(
            target, "D", f"D 1->{p.d_subs} deflate", "fanout",
            subs=p.d_subs, inflight=p.inflight, size=64, k=1, deflate=True,
        )  # fmt: skip

    def python_client(self) -> None:
        """B and D with our Python client as the sender (on the client core)."""
        hub = TARGETS[HUB]
        p = self.profile
        for size in p.sizes:
            case = Case("py-B", HUB, f"py-B {size_label(size)}", {"size": size})
            self._repeat(case, functools.partial(self._py_echo, case, size), p.runs)
        case = Case("py-D", HUB, f"py-D 1->{p.d_subs}", {"subs": p.d_subs})
        self._repeat(case, lambda: self._py_fanout(case, hub), p.runs)

    def _pyclient(self, *args: str) -> LineChild:
        argv = pinned([sys.executable, "-m", "bench.pyclient", *args], CLIENT_CORE)
        return LineChild(argv, stderr=self.workdir / "logs" / "pyclient.log")

    def _py_echo(self, case: Case, size: int) -> dict[str, Any]:
        hub = TARGETS[HUB]
        server = self._acquire(hub)
        p = self.profile
        child = self._pyclient(
            "echo", "--url", _url(server, hub.echo_path), "--size", str(size),
            "--warmup", str(p.warmup), "--duration", str(p.duration),
        )  # fmt: skip
        marks: dict[str, Mark] = {}
        try:
            result = _read_json(child, 30 + p.warmup + p.duration, server, marks)
        finally:
            child.close(timeout=5)
        _add_cpu(result, marks, result.get("cpu"))
        self._after_run(case, server)
        return result

    def _py_fanout(self, case: Case, hub: Target) -> dict[str, Any]:
        server = self._acquire(hub)
        p = self.profile
        run_for = p.warmup + p.duration + max(0.5, p.duration / 2)
        publisher: list[LineChild] = []

        def start_publisher() -> None:
            url = _url(server, hub.bcast_path)
            publisher.append(self._pyclient("publish", "--url", url, "--run-for", str(run_for)))

        try:
            result = self._measure(
                server, hub, "fanout", on_ready=start_publisher, path=hub.bcast_path,
                subs=p.d_subs, no_pub=True, size=64,
            )  # fmt: skip
            if publisher:
                pub = _read_json(publisher[0], run_for + 30, server, {})
                result["publisher"] = pub
                result["collapse_factor"] = pub.get("collapse_factor")
                result["client_cpu"] = pub.get("cpu")
                if "foreign_cpu" in result and pub.get("cpu") is not None:
                    result["foreign_cpu"] = max(0.0, result["foreign_cpu"] - pub["cpu"])
        finally:
            for child in publisher:
                child.close(timeout=5)
        self._after_run(case, server)
        return result

    def in_process(self) -> None:
        """local: our loopback client vs an in-process component, in one process on one core.

        The cases are interleaved run by run (loopback, in-process, loopback,
        ...), so that each ratio compares runs measured moments apart.
        """
        p = self.profile
        plan = [("echo", size) for size in p.sizes] + [("request", 64)]
        cases = [
            Case(
                "local", HUB_MEM,
                f"local {scenario}" + (f" {size_label(size)}" if scenario == "echo" else "")
                + f", {label}",
                {"scenario": scenario, "via": via, "size": size},
            )
            for scenario, size in plan
            for via, label in VIA_LABELS.items()
        ]  # fmt: skip
        for n in range(p.runs):
            for case in cases:
                once = functools.partial(self._inproc_once, case)
                while case.error is None and len(case.runs) <= n and self._attempt(case, once):
                    pass
        for case in cases:
            self.results.add(case)

    def _inproc_once(self, case: Case) -> dict[str, Any]:
        p = self.profile
        argv = pinned(
            [
                sys.executable, "-m", "bench.inproc", case.params["scenario"],
                "--via", case.params["via"], "--size", str(case.params["size"]),
                "--warmup", str(p.warmup), "--duration", str(p.duration),
            ],
            SERVER_CORE,
        )  # fmt: skip
        log = self.workdir / "logs" / f"inproc-{next(self._ids)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        child = LineChild(argv, stderr=log)
        try:
            result = _read_json(child, 30 + p.warmup + p.duration, None, {})
        finally:
            code = child.close(timeout=10)
        notes = [f"log: {line}" for line in notable_log_lines(log.read_text(errors="replace"))]
        if code:
            notes.append(f"bench.inproc exited with {code} after its result")
        for note in notes:
            if note not in case.warnings:
                case.warnings.append(note)
        return result

    def memory(self, target: Target, *, deflate: bool = False) -> None:
        """M: RSS growth per idle connection at each count, in one server process.

        ``deflate``: the links negotiate permessage-deflate (at the counts of
        ``m_deflate_counts``), in a server process of their own.
        """
        p = self.profile
        counts = p.m_deflate_counts if deflate else p.m_counts
        extra = {"deflate": True} if deflate else {}
        suffix = " deflate" if deflate else ""
        cases = [
            Case("M", target.key, f"M {n} idle{suffix}", {"conns": n, **extra}) for n in counts
        ]
        idle: IdleClients | None = None
        try:
            if deflate:  # a server process of its own, whatever ran on it before
                self.release(target.key)
            server = self._acquire(target, compress=deflate)
            time.sleep(p.settle)
            rss0 = server.rss_kib()
            idle = IdleClients(
                self.loadgen, port=server.port, path=target.echo_path, dialect=target.dialect,
                conns=max(counts), prefix=f"m{next(self._ids)}",
                concurrency=p.connect_concurrency, timeout=240, deflate=deflate,
            )  # fmt: skip
            stop: str | None = None
            for case in cases:
                if stop is not None:
                    case.error = f"skipped: {stop}"
                    continue
                stop = self._memory_step(case, server, idle, rss0)
        except (LoadgenError, ChildError, OSError) as exc:
            for case in cases:
                if not case.runs and case.error is None:
                    case.error = str(exc)
        finally:
            if idle is not None:
                idle.close()
            for case in cases:
                self.results.add(case)
            self.release(target.key)

    def _memory_step(
        self, case: Case, server: ServerProcess, idle: IdleClients, rss0: int
    ) -> str | None:
        """Grow to the case's count; return why to stop, or None to go on."""
        n = case.params["conns"]
        target = TARGETS[case.target]
        try:
            grown = idle.grow(n, timeout=300)
            time.sleep(self.profile.settle)
            self._after_run(case, server)
            rss = server.rss_kib()
            now = idle.grow(0, timeout=10)
        except (LoadgenError, ChildError, OSError) as exc:
            case.error = str(exc)
            self.log(f"  {target.key} {case.label}: FAILED: {exc}")
            return f"the step to {n} connections failed"
        opened = grown.open
        problem = None
        if now.lost:
            problem = (
                f"the server closed {now.lost} idle links ({now.open} of {n} still open); "
                f"longest gap between two hub pings on a link {now.max_ping_gap:.2f} s "
                f"(interval 5 s), {now.late_pings} gaps over 6 s"
            )
        elif opened < n:
            problem = f"only {opened} of {n} connections could be opened ({grown.failed} failed)"
        elif case.params.get("deflate") and grown.refused:
            problem = f"the server refused permessage-deflate on {grown.refused} links"
        case.runs.append(
            {
                "conns": opened,
                "failed": grown.failed,
                "lost": now.lost,
                "connect_s": grown.seconds,
                "rss0_kib": rss0,
                "rss_kib": rss,
                "kib_per_conn": None if problem or not opened else (rss - rss0) / opened,
                "max_ping_gap_s": now.max_ping_gap,
                "late_pings": now.late_pings,
            }
        )
        self.log(
            f"  {target.key} {case.label}: {opened} open, {grown.failed} failed in "
            f"{grown.seconds:.1f} s, RSS {rss0 / 1024:.1f} -> {rss / 1024:.1f} MiB"
            + (f"; {problem}" if problem else "")
        )
        if problem:
            case.error = problem
        return problem

    def storm(self) -> None:
        """R: N genesis clients, kill -9 the hub, restart it on the same port."""
        hub = TARGETS[HUB]
        n = self.profile.r_conns
        case = Case("R", HUB, f"R {n} clients", {"conns": n})
        self.release()
        self._repeat(case, lambda: self._storm_once(case, hub, n), self.profile.runs)

    def _storm_once(self, case: Case, hub: Target, n: int) -> dict[str, Any]:
        first = self._start(hub)
        second: ServerProcess | None = None
        child = self.loadgen.spawn(
            "storm", stdin=True, port=first.port, path=hub.echo_path, dialect="genesis",
            conns=n, prefix=f"r{next(self._ids)}", concurrency=self.profile.connect_concurrency,
            timeout=120, backoff_cap=self.profile.r_backoff_cap,
        )  # fmt: skip
        try:
            line = child.readline(240)
            if line is None or not line.startswith("ready"):
                raise LoadgenError(f"storm clients did not connect: {line!r} {child.lines[-3:]}")
            connect_s = float(line.split()[2])
            t_kill = time.monotonic()
            first.kill()
            second = self._start(hub, port=first.port, state=first.state)
            t_up = time.monotonic()
            line = child.readline(150)
            if line is None or not line.startswith("{"):
                raise LoadgenError(f"storm: no result ({line!r})")
            result: dict[str, Any] = json.loads(line)
            self._after_run(case, second)
            if not result.get("ok"):
                raise LoadgenError(
                    f"only {result.get('rewelcomed')} of {n} clients got a new welcome "
                    f"within 120 s; errors: {result.get('error_messages')}"
                )
            result.update(
                connect_s=connect_s,
                restart_s=t_up - t_kill,
                first_welcome_s=result["t_first_welcome"] - t_kill,
                all_welcome_s=result["t_all_welcome"] - t_kill,
                after_restart_s=result["t_all_welcome"] - t_up,
            )
            return result
        finally:
            with contextlib.suppress(OSError):
                child.write("quit")
            child.close(timeout=5)
            first.kill()
            if second is not None:
                second.stop()


def _url(server: ServerProcess, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


Mark = tuple[float, float, float]
"""(monotonic time, the server's CPU seconds, the machine's busy CPU seconds)."""


def _mark(server: ServerProcess) -> Mark:
    return time.monotonic(), server.cpu_seconds(), machine_busy_seconds()


def _add_cpu(result: dict[str, Any], marks: dict[str, Mark], client_cpu: float | None) -> None:
    """Server CPU over the window, and what other processes used meanwhile."""
    if "start" not in marks or "end" not in marks:
        return
    (t0, s0, m0), (t1, s1, m1) = marks["start"], marks["end"]
    if t1 <= t0:
        return
    server = (s1 - s0) / (t1 - t0)
    result["server_cpu"] = server
    result["foreign_cpu"] = max(0.0, (m1 - m0) / (t1 - t0) - server - (client_cpu or 0.0))


def _read_json(
    child: LineChild,
    timeout: float,
    server: ServerProcess | None,
    marks: dict[str, Mark],
) -> dict[str, Any]:
    """Read a child's lines until its JSON result, sampling ``server``'s CPU at marks."""
    deadline = time.monotonic() + timeout
    while True:
        line = child.readline(max(0.1, deadline - time.monotonic()))
        if line is None:
            code = child.proc.poll()
            raise ChildError(f"Python client exited ({code}) without a result: {child.lines[-3:]}")
        if line.startswith("mark "):
            if server is not None:
                marks[line.split()[1]] = _mark(server)
        elif line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            if not result.get("ok") and "via" in result:
                raise ChildError(f"bench.inproc ({result['via']}) received nothing in the window")
            if not result.get("ok"):
                raise ChildError(
                    f"the Python client received {result.get('messages', 0)} messages in the "
                    f"window; it reconnected {result.get('reconnects')} times, links closed "
                    f"with: {'; '.join(result.get('link_closes') or []) or 'nothing'}"
                )
            return result


def _summary(result: dict[str, Any]) -> str:
    parts = []
    if "rate" in result:
        parts.append(f"{result['rate'] / 1000:.1f}k/s")
    if result.get("p50_us"):
        parts.append(f"p50 {result['p50_us']:.0f} us, p99 {result['p99_us']:.0f} us")
    if "server_cpu" in result:
        parts.append(f"server {result['server_cpu']:.0%} CPU")
    if "cpu" in result:
        who = "process (hub + load)" if "via" in result else "client"
        parts.append(f"{who} {result['cpu']:.0%} CPU")
    if "via" in result and "foreign_cpu" in result:
        parts.append(f"other processes {result['foreign_cpu']:.0%}")
    if "all_welcome_s" in result:
        parts.append(
            f"all {result['conns']} re-welcomed {result['all_welcome_s']:.2f} s after the kill "
            f"(hub back after {result['restart_s']:.2f} s)"
        )
    if result.get("negotiated"):
        parts.append(
            f"deflate: {result.get('z_frames_in', 0)} of {result.get('frames_in', 0)} frames "
            f"in compressed ({result['negotiated']})"
        )
    if result.get("errors"):
        parts.append(f"{result['errors']} errors")
    return ", ".join(parts)


def _check_deflate(refused: int | None, negotiated: str | None) -> None:
    """Fail a deflate run whose server did not accept permessage-deflate on every link."""
    if refused or not negotiated:
        raise LoadgenError(
            f"the server did not negotiate permessage-deflate ({refused or 'all'} links "
            "without it): no Sec-WebSocket-Extensions: permessage-deflate in its 101 response"
        )
