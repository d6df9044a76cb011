"""Serving the hub on Hypercorn's Trio worker; process-wide memory tuning."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import logging
import resource
from collections.abc import Callable
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from .._core.config import HubConfig
from .._hub.hub import TranscendentalExternalWebSocket
from .._hub.hypercorn import serving_context
from .app import create_app

log = logging.getLogger("genesis_trio.serve")


SHUTDOWN_GRACE = 3.0
"""Seconds a graceful shutdown may take beyond ``close_timeout`` before it is cut short."""


@attrs.frozen
class ServeInfo:
    """Where a started hub listens."""

    host: str
    port: int
    urls: tuple[str, ...]
    tls: bool = False
    """True when it serves TLS (``wss://``, ``https://``)."""

    @property
    def ws_url(self) -> str:
        """The WebSocket URL of the hub (``ws://host:port/ws``, or ``wss://``)."""
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        """The base HTTP URL (``http://host:port``, or ``https://``)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


def hypercorn_config(
    host: str, port: int, hub_config: HubConfig, **overrides: Any
) -> HypercornConfig:
    """A Hypercorn config bound to ``host:port`` with the hub's message limit."""
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.websocket_max_message_size = hub_config.max_message_size
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = hub_config.close_timeout + 1.0  # each link closes within it
    config.backlog = 4096  # a reconnect storm after a restart arrives all at once
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


async def serve_hub(
    hub: TranscendentalExternalWebSocket,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    app: Any = None,
    shutdown: trio.Event | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    task_status: trio.TaskStatus[ServeInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``hub`` (and ``app``, default :func:`create_app`) until cancelled or ``shutdown``.

    Starts ``hub.run`` beside Hypercorn; ``task_status.started`` gets the
    bound address (bind port 0 for a free one). ``certfile``/``keyfile``
    (PEM) serve TLS. On shutdown every link is closed with 1001 (going away)
    so clients resume elsewhere.
    """
    asgi = app if app is not None else create_app(hub)
    tls = {"certfile": certfile, "keyfile": keyfile} if certfile else {}
    config = hypercorn_config(host, port, hub.config, **tls)
    stop = shutdown if shutdown is not None else trio.Event()

    async def trigger() -> None:
        await stop.wait()
        hub.drain()

    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)

        async def run_hypercorn(task_status: trio.TaskStatus[list[str]]) -> None:
            await hypercorn_serve(
                asgi,  # type: ignore[arg-type]  # Starlette is an ASGI app
                config,
                shutdown_trigger=trigger,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()  # graceful shutdown finished: stop hub.run too

        with serving_context(
            hub.config.max_message_size,
            hub.serving_observer,
            deflate=hub.config.compression == "deflate",
        ):
            urls = tuple(await nursery.start(run_hypercorn))
        bound_host, _, bound_port = urls[0].rpartition(":")
        bound_host = bound_host.split("//", 1)[-1].strip("[]")
        tls_on = urls[0].startswith("https")
        task_status.started(ServeInfo(bound_host, int(bound_port), urls, tls_on))


DESCRIPTOR_RESERVE = 64
"""Descriptors kept for the hub itself (listener, store files, Redis, probes, logs)."""


def fit_descriptors(max_connections: int) -> int:
    """Raise this process's descriptor limit to its hard limit; return the links it affords.

    Each link holds a descriptor. Past the limit, ``accept`` fails (EMFILE)
    and clients wait in the listen backlog unanswered; below
    ``max_connections`` the next one gets the documented 503 instead. So
    ``max_connections`` is lowered (with a warning) to what the limit leaves
    after :data:`DESCRIPTOR_RESERVE`. Process-wide: ``genesis-trio serve``
    calls it; opt-in for library users.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return max_connections
    affords = soft - DESCRIPTOR_RESERVE if soft > 2 * DESCRIPTOR_RESERVE else soft // 2
    if max_connections > affords:
        log.warning(
            "the descriptor limit (%d) affords %d links: max_connections lowered from %d "
            "(raise it with ulimit -n, or LimitNOFILE= under systemd)",
            soft, affords, max_connections,
        )  # fmt: skip
        return affords
    return max_connections


GC_THRESHOLDS = (50_000, 50, 100)
"""Collector thresholds ``tune_gc`` installs (CPython's defaults: 700, 10, 10)."""


def tune_gc() -> None:
    """Freeze what start-up allocated and make young collections rare.

    The cyclic collector took 29-44 % of a Trio WebSocket server's CPU with
    many connections (PERFORMANCE.md); our hot path makes few cycles, so
    collecting every 50 000 allocations instead of 700 costs little memory.
    Process-wide: called by ``genesis-trio serve``, opt-in for library users.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


TRIM_INTERVAL = 10.0
"""Seconds between returns of freed memory to the OS (with ``gc_tuning``)."""


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc only
    return trim


def release_free_memory() -> bool:
    """Give memory the process freed back to the OS (glibc ``malloc_trim``); False if n/a.

    CPython allocates message bodies over 512 bytes with ``malloc``; after a
    burst (a slow consumer's full buffer, an expired session) glibc keeps
    the freed heap, so RSS stays at its peak though nothing is in use. A trim
    costs milliseconds.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
