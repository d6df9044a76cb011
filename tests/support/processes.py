"""Start the real ``genesis-trio serve`` as a subprocess (for CLI and crash tests)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import trio


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HubProcess:
    """A running hub subprocess and its WebSocket URL."""

    def __init__(self, process: trio.Process, url: str, log_path: str) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path
        self.port = int(url.rsplit(":", 1)[1].split("/", 1)[0])

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def open_fds(self) -> int:
        """Descriptors the hub process holds open (from /proc)."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss_kib(self) -> int:
        """The hub process's resident memory, in KiB (from /proc)."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    async def health(self) -> dict[str, Any]:
        """``GET /health`` over a plain socket."""
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with stream:
            await stream.send_all(
                b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        result: dict[str, Any] = json.loads(body)
        return result

    def log(self) -> str:
        """What the hub logged so far (its stderr)."""
        with open(self.log_path, errors="replace") as log:
            return log.read()


async def wait_until(
    check: Callable[[], Awaitable[bool]], within: float, interval: float = 0.05
) -> None:
    """Poll ``check`` until it is true; fail after ``within`` seconds.

    For state in another process (a hub subprocess), which no event of ours
    can signal.
    """
    with trio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - another process's state: poll it
            await trio.sleep(interval)


async def _read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise EOFError(bytes(buffer))
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


def _limit_fds(n: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


@contextlib.asynccontextmanager
async def start_cli_hub(
    *args: str, port: int = 0, env: Mapping[str, str] | None = None, descriptors: int | None = None
) -> AsyncIterator[HubProcess]:
    """Run ``python -m genesis_trio serve --port PORT ARGS``; kill it on exit.

    ``descriptors``: the hub's RLIMIT_NOFILE (soft and hard), as ``ulimit -n`` would set.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_file = tempfile.NamedTemporaryFile(prefix="hub-", suffix=".log", delete=False)  # noqa: SIM115
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "genesis_trio", "serve", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=log_file,
        env=env,
        preexec_fn=None if descriptors is None else functools.partial(_limit_fds, descriptors),
    )
    log_file.close()
    try:
        assert process.stdout is not None
        buffer = bytearray()
        with trio.fail_after(20):
            while True:
                line = (await _read_line(process.stdout, buffer)).decode()
                if "hub ready at" in line:
                    url = line.split("hub ready at ", 1)[1].split()[0]
                    break
        yield HubProcess(process, url, log_file.name)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5, shield=True):
            await process.wait()
        if os.environ.get("GENESIS_KEEP_HUB_LOGS"):  # debugging: say where the log is
            print(f"hub log kept: {log_file.name}")
        else:
            with contextlib.suppress(OSError):
                os.unlink(log_file.name)
