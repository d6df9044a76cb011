"""Which ``Host`` names a hub without authentication answers (DNS-rebinding protection).

A hub with no authenticator on loopback trusts whoever reaches it. A web
page can reach it anyway: its site's DNS name, re-bound to 127.0.0.1, makes
the browser send requests (and WebSocket upgrades, whose Origin then equals
the Host) to the hub as if same-origin. Such requests carry the page's name
in ``Host``; answering only loopback names (and those you list) stops them.
With authentication the check is off: a page cannot present a token.
"""

from __future__ import annotations

import json

from .._api.access import is_loopback
from .._hub.endpoint import Receive, Scope, Send, deny
from .._hub.limits import Refusal


def host_name(header: str) -> str:
    """The name in a ``Host`` header, lower case, without its port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    name, _, port = header.rpartition(":")
    return name if name and port.isdigit() else header


def host_allowed(header: str | None, extra: frozenset[str]) -> bool:
    """A request without ``Host``, or naming loopback or one of ``extra``."""
    if header is None:
        return True
    name = host_name(header)
    return is_loopback(name) or name in extra


def host_header(scope: Scope) -> str | None:
    """The request's ``Host`` header (None without one)."""
    for key, value in scope.get("headers") or ():
        if key == b"host":
            return bytes(value).decode("latin-1")
    return None


async def refuse_host(scope: Scope, receive: Receive, send: Send, header: str) -> None:
    """Answer 403: an HTTP problem, or a refused WebSocket upgrade."""
    reason = (
        f"host {host_name(header)[:100]!r} is not served here: this hub has no authentication "
        "and answers loopback names only (--allowed-host NAME adds one; docs/security.md)"
    )
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await deny(scope, send, Refusal(403, reason))
        return
    body = json.dumps({"title": "Forbidden", "status": 403, "detail": reason}).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})
