"""``GenesisHybridSystem``: the hub, its HTTP API, local components and housekeeping.

One nursery on one Trio scheduler runs Hypercorn (the WebSocket endpoint and
the HTTP API), the hub's own tasks (store, expiry, presence), the
in-process components you start with :meth:`GenesisHybridSystem.local`,
and memory housekeeping. ``genesis-trio serve`` is this class.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import trio

from .._api.access import is_loopback
from .._api.routes import TranscendentalAPI
from .._core.version import VERSION
from .._hub.hub import TranscendentalExternalWebSocket
from .._hub.local import LocalComponent
from .._runtime.groups import start_hidden
from ..stores import SessionStore
from .app import create_app
from .serve import TRIM_INTERVAL, ServeInfo, release_free_memory, serve_hub, tune_gc


class GenesisHybridSystem:
    """Hub, HTTP API, in-process components and housekeeping on one Trio scheduler.

    ``async with GenesisHybridSystem(port=0) as system:`` serves until the
    block ends (``system.info`` says where); or ``await nursery.start(system.run)``,
    which returns the :class:`ServeInfo`. Cancelling, leaving the block or
    :meth:`shutdown` stops everything gracefully (links closed with 1001).
    ``api_public``: without authentication, let the API answer clients that
    are not on loopback (docs/api.md). ``demos``: serve the demo pages and
    the dashboard (docs/quickstart.md). Without authentication on loopback,
    only requests naming a loopback host (or one of ``allowed_hosts``) are
    answered: DNS-rebinding protection (docs/security.md).
    """

    def __init__(
        self,
        hub: TranscendentalExternalWebSocket | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        store: SessionStore | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        gc_tuning: bool = False,
        api_public: bool = False,
        demos: bool = True,
        allowed_hosts: Iterable[str] = (),
        **hub_options: Any,
    ) -> None:
        if hub is not None and (store is not None or hub_options):
            raise ValueError("give the store and options to the hub, or no hub (one is made)")
        self.hub = (
            hub if hub is not None else TranscendentalExternalWebSocket(store=store, **hub_options)
        )
        self.host = host
        self.port = port
        self.gc_tuning = gc_tuning
        self.certfile, self.keyfile = certfile, keyfile
        self.info: ServeInfo | None = None
        """Where it listens, once started."""
        self._shutdown = trio.Event()
        self.api = TranscendentalAPI(
            self.hub,
            public=api_public,
            draining=self._shutdown.is_set,
            version=VERSION,
        )
        """The HTTP API (``/api``, ``/metrics``, ``/health``, ``/ready``)."""
        guard = self.hub.authenticator is None and is_loopback(host.strip("[]").lower())
        self.app = create_app(
            self.hub,
            api=self.api,
            demos=demos,
            allowed_hosts=frozenset(h.lower() for h in allowed_hosts) if guard else None,
        )
        """The ASGI app served."""
        self._nursery: trio.Nursery | None = None
        self._stack: AsyncExitStack | None = None

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`shutdown` was called."""
        return self._shutdown.is_set()

    def shutdown(self) -> None:
        """Begin a graceful shutdown (links closed with 1001)."""
        self._shutdown.set()

    def stop_now(self) -> None:
        """Stop without waiting for links to close (their sockets are dropped)."""
        self._shutdown.set()
        self.hub.abort_all()

    def local(self, component_id: str, **options: Any) -> LocalComponent:
        """An in-process component of this system's hub (``async with`` it, or start it).

        Started with :meth:`start_local`, it runs in the system's nursery.
        """
        return self.hub.local(component_id, **options)

    async def start_local(self, component_id: str, **options: Any) -> LocalComponent:
        """Start an in-process component in the system's nursery and return it (running)."""
        if self._nursery is None:
            raise RuntimeError("the system is not running")
        component = self.hub.local(component_id, **options)
        await self._nursery.start(component.run)
        return component

    async def run(
        self, *, task_status: trio.TaskStatus[ServeInfo] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled or shut down."""
        async with trio.open_nursery() as nursery:

            async def serve(task_status: trio.TaskStatus[ServeInfo]) -> None:
                await serve_hub(
                    self.hub,
                    host=self.host,
                    port=self.port,
                    app=self.app,
                    shutdown=self._shutdown,
                    certfile=self.certfile,
                    keyfile=self.keyfile,
                    task_status=task_status,
                )
                nursery.cancel_scope.cancel()  # served to the end: stop the rest too

            info: ServeInfo = await nursery.start(serve)
            self.info = info
            self._nursery = nursery
            if self.gc_tuning:
                tune_gc()
                nursery.start_soon(self._trim_periodically)
            try:
                task_status.started(info)
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def __aenter__(self) -> GenesisHybridSystem:
        self._stack = await start_hidden(self.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self.shutdown()
        stack, self._stack = self._stack, None
        if stack is not None:
            return await stack.__aexit__(exc_type, exc, tb)
        return None

    async def _trim_periodically(self) -> None:
        if not release_free_memory():
            return  # not glibc
        while True:
            await trio.sleep(TRIM_INTERVAL)
            release_free_memory()
