"""Processes: pinning, free ports, servers under test, line-based child I/O."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVER_CORE = 0
CLIENT_CORE = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def can_pin() -> bool:
    """True when ``taskset`` exists and we may use cores 0 and 1."""
    return shutil.which("taskset") is not None and {0, 1} <= os.sched_getaffinity(0)


def pinned(argv: Sequence[str], core: int) -> list[str]:
    """``argv`` prefixed with ``taskset -c core`` (unchanged if pinning is impossible)."""
    return ["taskset", "-c", str(core), *argv] if can_pin() else list(argv)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine_busy_seconds() -> float:
    """CPU time processes have used since boot, summed over cores (from /proc/stat).

    Counts user, nice, system and steal time; not irq/softirq time, which is
    mostly the kernel moving our own loopback traffic and is charged to no
    process.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + steal) / CLOCK_TICKS


def raise_fd_limit() -> int:
    """Raise our soft RLIMIT_NOFILE to the hard limit (inherited by children)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def child_env() -> dict[str, str]:
    """The environment of every child: the repo importable, no bytecode noise."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class ChildError(RuntimeError):
    """A child process misbehaved (died, timed out, printed garbage)."""


class LineChild:
    """A child process whose stdout is read line by line with timeouts."""

    def __init__(self, argv: Sequence[str], *, stdin: bool = False, stderr: Path | None = None):
        self.argv = list(argv)
        self._stderr = open(stderr, "ab") if stderr else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=REPO,
            env=child_env(),
        )
        self._buf = b""
        self.lines: list[str] = []

    def readline(self, timeout: float) -> str | None:
        """The next stdout line (without newline); None at EOF; ChildError on timeout."""
        deadline = time.monotonic() + timeout
        out = self.proc.stdout
        assert out is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f"no output from {self.argv[0:4]} within {timeout:.0f} s")
            ready, _, _ = select.select([out], [], [], left)
            if not ready:
                continue
            chunk = os.read(out.fileno(), 65536)
            if not chunk:
                if self._buf:
                    line, self._buf = self._buf.decode(errors="replace"), b""
                    self.lines.append(line)
                    return line
                return None
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\n", 1)
        line = raw.decode(errors="replace")
        self.lines.append(line)
        return line

    def write(self, line: str) -> None:
        """Send one line to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def close(self, timeout: float = 5.0) -> int | None:
        """Close stdin, wait a little, then kill; return the exit code."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._stderr is not subprocess.DEVNULL:
            self._stderr.close()  # type: ignore[union-attr]
        return code


class ServerProcess:
    """A server under test: one process pinned to the server core."""

    def __init__(self, name: str, argv: Sequence[str], port: int, log: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.state: Path | None = None
        """A directory of the server's own (the hub's session store lives there)."""

    def spawn(self, *, pin: bool = True) -> ServerProcess:
        """Start the process (without waiting for it to listen).

        ``pin=False`` starts it on any core; call :meth:`pin` once it is up.
        """
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                pinned(self.argv, SERVER_CORE) if pin else self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=child_env(),
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 20.0) -> ServerProcess:
        """Wait until the server accepts TCP connections."""
        wait_accepting(self.port, self.proc, timeout, self.name)
        return self

    def start(self, timeout: float = 20.0) -> ServerProcess:
        """Start the process and wait until it accepts TCP connections."""
        return self.spawn().wait_ready(timeout)

    def pin(self) -> None:
        """Move every thread of the running server to the server core."""
        if not can_pin():
            return
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), {SERVER_CORE})

    @property
    def pid(self) -> int:
        """The server's PID (taskset execs, so this is the server itself)."""
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        """Resident set size (VmRSS) in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise ChildError(f"{self.name}: no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU time consumed so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (graceful), then SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_text(self) -> str:
        """Everything the server printed."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_accepting(
    port: int, proc: subprocess.Popen[bytes] | None, timeout: float, name: str = "server"
) -> float:
    """Poll until ``127.0.0.1:port`` accepts; return the time it took."""
    start = time.monotonic()
    while True:
        if proc is not None and proc.poll() is not None:
            raise ChildError(f"{name} exited with code {proc.returncode} before listening")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            try:
                sock.connect(("127.0.0.1", port))
                return time.monotonic() - start
            except OSError:
                pass
        if time.monotonic() - start > timeout:
            raise ChildError(f"{name} did not accept connections on port {port} in {timeout} s")
        time.sleep(0.01)
