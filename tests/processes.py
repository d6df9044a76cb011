"""Start the real ``genesis-trio serve`` as a subprocess (for CLI and crash tests)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import trio


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HubProcess:
    """A running hub subprocess and its WebSocket URL."""

    def __init__(self, process: trio.Process, url: str) -> None:
        self.process = process
        self.url = url


async def _read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise EOFError(bytes(buffer))
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


@contextlib.asynccontextmanager
async def start_cli_hub(*args: str, port: int = 0) -> AsyncIterator[HubProcess]:
    """Run ``python -m genesis_trio serve --port PORT ARGS``; kill it on exit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "genesis_trio", "serve", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert process.stdout is not None
        buffer = bytearray()
        with trio.fail_after(20):
            while True:
                line = (await _read_line(process.stdout, buffer)).decode()
                if "hub ready at" in line:
                    url = line.split("hub ready at ", 1)[1].split()[0]
                    break
        yield HubProcess(process, url)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5, shield=True):
            await process.wait()
