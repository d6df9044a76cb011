"""Who may use the HTTP API (and ``/metrics``).

With an authenticator configured on the hub, every request needs an
``Authorization: Bearer`` token whose identity has ``admin`` (401 without a
valid token, 403 without the claim). Without one, the API answers clients
on loopback only (403 otherwise) unless it was made public.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

import trio
from starlette.requests import Request

from .._hub.auth import Authenticator, AuthRefused, AuthRequest, Identity
from .problems import Problem

log = logging.getLogger("genesis_trio.api")


def is_loopback(host: str | None) -> bool:
    """True for an address or name only this machine reaches (127.0.0.0/8, [::1], localhost)."""
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Access:
    """The API's access rule (see the module docstring)."""

    def __init__(
        self,
        authenticator: Authenticator | None,
        *,
        public: bool,
        timeout: float = 5.0,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.public = public
        self.timeout = timeout
        self.on_refused = on_refused or (lambda: None)
        """Told of every 401 (the hub counts them in ``auth_failures``)."""

    async def check(self, request: Request) -> None:
        """Raise a 401/403 :class:`Problem` unless ``request`` may use the API."""
        address = request.client.host if request.client is not None else None
        authenticator = self.authenticator
        if authenticator is None:
            if not self.public and not is_loopback(address):
                raise Problem(403, "the API answers loopback clients only (see docs/api.md)")
            return
        try:
            identity = await self._identity(request, authenticator, address)
        except Problem:
            self.on_refused()
            raise
        if not identity.admin:
            raise Problem(403, f"identity {identity.subject!r} is not an admin")

    async def _identity(
        self, request: Request, authenticator: Authenticator, address: str | None
    ) -> Identity:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(401, "send Authorization: Bearer <token> of an admin identity")
        try:
            with trio.fail_after(self.timeout):
                identity = await authenticator.authenticate(
                    AuthRequest(token.strip(), None, address)
                )
        except AuthRefused as exc:
            raise Problem(401, f"token refused: {exc}"[:200]) from None
        except trio.TooSlowError:
            raise Problem(401, "token refused: no answer in time") from None
        except Exception:  # an authenticator's bug is not the caller's
            log.exception("authenticator failed on an API request (contained)")
            raise Problem(401, "token refused: authentication failed") from None
        return identity
