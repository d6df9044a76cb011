"""Who a client is, and what it may do: authentication and authorization.

An :class:`Authenticator` turns the credential a client presents (``hello.token``,
or ``Authorization: Bearer`` on the upgrade) into an :class:`Identity`, or
refuses it (:class:`AuthRefused`: the link is closed with 1008). Built in:

* :class:`JWTAuthenticator` -- JSON Web Tokens through PyJWT: HMAC (HS256,
  HS384, HS512) with a shared secret, or RSA/ECDSA (RS*, PS*, ES*) with a
  public key; the accepted algorithms are fixed by configuration (``none``
  is never accepted, and one authenticator never mixes HMAC with public-key
  algorithms, so a public key can never be used as an HMAC secret);
  ``exp``, ``nbf``, ``aud`` and ``iss`` are checked with a bounded leeway.
* :class:`StaticTokens` -- a JSON file of tokens for small setups.

An identity owns component ids (patterns such as ``sensor-*``) and carries
what it may send to, publish to and subscribe to; an :class:`Authorizer`
decides each of those (the default, :class:`PatternAuthorizer`, reads the
identity's patterns). Tokens never appear in logs, errors or statistics.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import attrs
import jwt

from .._core.errors import GenesisError
from .._core.frames import STATS_TOPIC

HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MAX_LEEWAY: Final = 300.0
"""The most clock skew a JWT check tolerates, in seconds."""


class AuthRefused(GenesisError):
    """A credential was refused; the message says why (never the credential itself)."""


def _patterns(value: object, claim: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise AuthRefused(f"claim {claim!r} must be a string or a list of strings")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


@attrs.frozen
class Identity:
    """An authenticated principal and what it may do.

    Patterns use ``*`` and ``?`` (``sensor-*``). ``components`` empty means
    the subject itself is the one component id it owns.
    """

    subject: str
    """Who it is (a JWT's ``sub``)."""
    components: tuple[str, ...] = ()
    """Component ids (patterns) it may connect as; empty: just ``subject``."""
    send: tuple[str, ...] = ("*",)
    """Component ids (patterns, ``$hub`` included) it may send messages to."""
    publish: tuple[str, ...] = ("*",)
    """Topics (patterns) it may publish to."""
    subscribe: tuple[str, ...] = ("*",)
    """Topics (patterns) it may subscribe to."""
    admin: bool = False
    """May use the hub's administration API."""
    expires_at: float | None = None
    """When its credential expires (wall clock, seconds since the epoch)."""

    def may_use(self, component_id: str) -> bool:
        """True when it may connect as ``component_id``."""
        return _matches(component_id, self.components or (self.subject,))

    def default_component(self) -> str | None:
        """The component id a hello without one stands for: its only literal one."""
        owned = self.components or (self.subject,)
        if len(owned) == 1 and not any(c in owned[0] for c in "*?["):
            return owned[0]
        return None

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Identity:
        """An identity from token claims (``sub``, ``components``, ``send``, ...)."""
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthRefused("the credential names no subject (sub)")
        expires = claims.get("exp")
        return cls(
            subject=subject,
            components=_patterns(claims.get("components", ()), "components"),
            send=_patterns(claims.get("send", "*"), "send"),
            publish=_patterns(claims.get("publish", "*"), "publish"),
            subscribe=_patterns(claims.get("subscribe", "*"), "subscribe"),
            admin=claims.get("admin") is True,
            expires_at=float(expires) if isinstance(expires, int | float) else None,
        )


@attrs.frozen
class AuthRequest:
    """What a client presents at the handshake."""

    token: str | None
    """``hello.token``, else the ``Authorization: Bearer`` header of the upgrade."""
    component_id: str | None
    """``hello.id``."""
    address: str | None
    """The client's address."""


class Authenticator(Protocol):
    """Turns a credential into an identity (or refuses it)."""

    async def authenticate(self, request: AuthRequest) -> Identity:
        """The identity behind ``request``; raise :class:`AuthRefused` to refuse it."""
        ...


class Authorizer(Protocol):
    """Decides, for an identity, each send, publish and subscription."""

    def may_send(self, identity: Identity, to: str, type: str) -> bool:
        """May ``identity`` send a message of ``type`` to component ``to`` (or ``$hub``)?"""
        ...

    def may_publish(self, identity: Identity, topic: str, type: str) -> bool:
        """May ``identity`` publish a message of ``type`` to ``topic``?"""
        ...

    def may_subscribe(self, identity: Identity, topic: str) -> bool:
        """May ``identity`` subscribe to ``topic``?"""
        ...


class PatternAuthorizer:
    """The default authorizer: the identity's own patterns decide."""

    def may_send(self, identity: Identity, to: str, type: str) -> bool:
        """``to`` matches one of ``identity.send``."""
        return _matches(to, identity.send)

    def may_publish(self, identity: Identity, topic: str, type: str) -> bool:
        """``topic`` matches one of ``identity.publish``."""
        return _matches(topic, identity.publish)

    def may_subscribe(self, identity: Identity, topic: str) -> bool:
        """``topic`` matches one of ``identity.subscribe``; ``$stats`` needs ``admin`` too."""
        if topic == STATS_TOPIC and not identity.admin:
            return False
        return _matches(topic, identity.subscribe)


class JWTAuthenticator:
    """Validates JSON Web Tokens (see the module docstring).

    ``key``: the HMAC secret, or the PEM public key, for ``algorithms``
    (all HMAC or all public-key). ``audience``/``issuer``: required values of
    ``aud``/``iss`` when given. ``leeway``: clock skew tolerated (at most
    :data:`MAX_LEEWAY`). ``exp`` and ``sub`` are required.
    """

    def __init__(
        self,
        key: str | bytes,
        algorithms: Sequence[str],
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 30.0,
    ) -> None:
        chosen = frozenset(algorithms)
        if not chosen:
            raise ValueError("name the accepted JWT algorithms")
        unknown = chosen - HMAC_ALGORITHMS - PUBLIC_KEY_ALGORITHMS
        if unknown:
            raise ValueError(f"JWT algorithms not accepted: {sorted(unknown)} (never 'none')")
        if chosen & HMAC_ALGORITHMS and chosen & PUBLIC_KEY_ALGORITHMS:
            raise ValueError("do not mix HMAC and public-key JWT algorithms in one authenticator")
        pem = key if isinstance(key, bytes) else key.encode()
        if chosen <= HMAC_ALGORITHMS and b"-----BEGIN" in pem:
            raise ValueError("an HMAC algorithm needs a shared secret, not a PEM key")
        if chosen <= PUBLIC_KEY_ALGORITHMS:
            _check_public_key(pem, chosen)
        if chosen <= HMAC_ALGORITHMS and len(pem) < 32:
            raise ValueError("an HMAC secret must be at least 32 bytes")
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} s")
        self._key = key
        self.algorithms = sorted(chosen)
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], algorithms: Sequence[str], **options: Any
    ) -> JWTAuthenticator:
        """Read the secret or the public key from a file."""
        with open(path, "rb") as file:
            key = file.read().strip()
        return cls(key, algorithms, **options)

    async def authenticate(self, request: AuthRequest) -> Identity:
        """Validate ``request.token``; its claims become the identity."""
        if not request.token:
            raise AuthRefused("no credential (hello.token or Authorization: Bearer)")
        try:
            claims = jwt.decode(
                request.token,
                self._key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthRefused("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthRefused("the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            if self.audience is None:  # PyJWT refuses an aud nobody asked to check
                raise AuthRefused("the token names an audience; the hub expects none") from None
            raise AuthRefused("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthRefused("the token is from another issuer") from None
        except jwt.InvalidAlgorithmError:
            raise AuthRefused("the token's algorithm is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthRefused(f"the token lacks the '{exc.claim}' claim") from None
        except jwt.InvalidSignatureError:
            raise AuthRefused("the token's signature does not verify") from None
        except jwt.DecodeError:
            raise AuthRefused("the credential is not a well-formed JWT") from None
        except jwt.InvalidTokenError as exc:
            raise AuthRefused(f"invalid token ({type(exc).__name__})") from None
        return Identity.from_claims(claims)


def _check_public_key(pem: bytes, algorithms: frozenset[str]) -> None:
    """Refuse at start-up what would refuse every token later: not a public key, or the
    wrong kind for the algorithms (a private key given by mistake, an RSA key for ES256)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if b"PRIVATE KEY" in pem:
        raise ValueError("give the PEM public key, not the private key (it signs; the hub checks)")
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise ValueError(f"a public-key algorithm needs a PEM public key ({exc})") from None
    kinds: dict[str, tuple[type, ...]] = {
        "RS": (rsa.RSAPublicKey,),
        "PS": (rsa.RSAPublicKey,),
        "ES": (ec.EllipticCurvePublicKey,),
        "Ed": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
    }
    for algorithm in algorithms:
        if not isinstance(key, kinds[algorithm[:2]]):
            raise ValueError(f"a {type(key).__name__} does not fit the algorithm {algorithm}")


class StaticTokens:
    """Tokens listed in a JSON file: ``{"tokens": [{"token": ..., "sub": ..., ...}]}``.

    Each entry may carry the claims :meth:`Identity.from_claims` reads
    (``components``, ``send``, ``publish``, ``subscribe``, ``admin``). Tokens
    are kept only as SHA-256 digests; a lookup does not compare secrets.
    """

    def __init__(self, entries: Iterable[Mapping[str, Any]]) -> None:
        self._by_digest: dict[bytes, Identity] = {}
        for entry in entries:
            token = entry.get("token")
            if not isinstance(token, str) or len(token) < 16:
                raise ValueError("every entry needs a 'token' of at least 16 characters")
            claims = {k: v for k, v in entry.items() if k != "token"}
            self._by_digest[_digest(token)] = Identity.from_claims(claims)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> StaticTokens:
        """Read the JSON token file."""
        with open(path, "rb") as file:
            data = json.load(file)
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise ValueError(f'{path}: expected {{"tokens": [...]}}')
        return cls(data["tokens"])

    async def authenticate(self, request: AuthRequest) -> Identity:
        """The identity listed for ``request.token``."""
        if not request.token:
            raise AuthRefused("no credential (hello.token or Authorization: Bearer)")
        identity = self._by_digest.get(_digest(request.token))
        if identity is None:
            raise AuthRefused("unknown token")
        return identity


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def wall_to_trio(wall: float, trio_now: float) -> float:
    """A wall-clock instant on the Trio clock (for expiry deadlines)."""
    return trio_now + (wall - time.time())
