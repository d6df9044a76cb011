"""The hub's door: admits WebSocket connections, tracks handshakes, drains.

:class:`Gate` is the raw ASGI endpoint mounted at ``/ws``. It admits a
connection under the connection limits (HTTP 503 in all, 429 per address),
checks Origin and subprotocol (HTTP 403/400), accepts, and hands the
transport to :func:`.handshake.serve_link`. It keeps every accepted
transport and every handshake still waiting for its ``hello``, so a
shutdown can close them all within its bound (:meth:`end_handshakes` with
the close timeout) or at once (with 0).
"""

from __future__ import annotations

import trio

from .endpoint import AsgiTransport, Receive, Scope, Send, accept_websocket, client_address, deny
from .handshake import LinkHost, serve_link
from .limits import Admission


class Gate:
    """Admission, acceptance and the shutdown of links not yet attached."""

    def __init__(self, host: LinkHost) -> None:
        cfg = host.config
        self.host = host
        self.admission = Admission(cfg.max_connections, cfg.max_connections_per_address)
        """Live links in all and per client address (see :mod:`.limits`)."""
        self.handshakes: set[trio.CancelScope] = set()
        """Handshakes waiting for their ``hello``."""
        self.transports: set[AsgiTransport] = set()
        """Every accepted WebSocket not finished yet."""
        self.draining = False
        """True once the hub began shutting down: new links are refused with 1001."""

    @property
    def pending(self) -> int:
        """Accepted WebSockets (handshakes included) not finished yet."""
        return len(self.transports)

    def end_handshakes(self, within: float) -> None:
        """Refuse new links; close those in their handshake; every socket gone ``within`` s."""
        self.draining = True
        deadline = trio.current_time() + within
        for transport in self.transports:
            transport.deadline = min(transport.deadline, deadline)
        for scope in list(self.handshakes):
            scope.cancel()

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one WebSocket connection (raw ASGI)."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        del message
        host = self.host
        address = client_address(scope)
        refusal = self.admission.admit(address)
        if refusal is not None:
            host.counters.connections_refused += 1
            await deny(scope, send, refusal)
            return
        try:
            accepted = await accept_websocket(scope, receive, send, host.config.allowed_origins)
            if not isinstance(accepted, AsgiTransport):
                host.counters.handshake_failures += 1
                return
            self.transports.add(accepted)
            try:
                await serve_link(host, accepted)
            finally:
                with trio.CancelScope(shield=True):
                    await accepted.finish(host.config.close_timeout)
                self.transports.discard(accepted)
        finally:
            self.admission.release(address)
