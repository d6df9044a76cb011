"""Security (issue 11): authenticated identities, authorization, Origin, TLS, rate limits.

Real hubs on loopback sockets; raw links where the client must be hostile.
Rules H17 and H18 of docs/protocol.md §8 are checked here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from genesis_trio import (
    CloseCode,
    Connected,
    HandshakeError,
    LinkEvent,
    RemoteError,
    TranscendentalWebSocket,
    serve_hub,
)
from genesis_trio._hub.auth import (
    AuthRefused,
    AuthRequest,
    Identity,
    JWTAuthenticator,
    StaticTokens,
)
from genesis_trio._hub.hub import TranscendentalExternalWebSocket
from genesis_trio.testing import RunningHub, start_hub

from .support.processes import start_cli_hub
from .support.rawws import RawLink, Refused

AUDIENCE, ISSUER = "genesis-tests", "https://issuer.example"
PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = PRIVATE.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
PRIVATE_PEM = PRIVATE.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
)


def token(sub: str = "alice", *, lifetime: float = 600.0, **claims: Any) -> str:
    now = time.time()
    payload = {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "iat": int(now), "exp": now + lifetime}
    payload.update(claims)
    return jwt.encode(payload, PRIVATE_PEM, algorithm="RS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(alg: str, key: bytes | None) -> str:
    """A token signed outside PyJWT's protections (alg=none, HS256 with the public key)."""
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(
        json.dumps(
            {"sub": "alice", "aud": AUDIENCE, "iss": ISSUER, "exp": time.time() + 600}
        ).encode()
    )
    signing = f"{header}.{body}".encode()
    signature = b"" if key is None else hmac.new(key, signing, hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


def tampered() -> str:
    header, _, signature = token().split(".")
    body = b64(json.dumps({"sub": "mallory", "aud": AUDIENCE, "iss": ISSUER, "exp": 2e9}).encode())
    return f"{header}.{body}.{signature}"


def authenticator() -> JWTAuthenticator:
    return JWTAuthenticator(PUBLIC_PEM, ["RS256"], audience=AUDIENCE, issuer=ISSUER, leeway=5.0)


TOKENS: dict[str, Callable[[], str | None]] = {
    "valid": lambda: token(),
    "expired": lambda: token(lifetime=-60),
    "not-yet-valid": lambda: token(nbf=time.time() + 3600),
    "wrong-audience": lambda: token(aud="someone-else"),
    "wrong-issuer": lambda: token(iss="https://evil.example"),
    "alg-none": lambda: forged("none", None),
    "hs-rs-confusion": lambda: forged("HS256", PUBLIC_PEM),
    "tampered": tampered,
    "absent": lambda: None,
}
ORIGINS: dict[str, tuple[str | None, bool]] = {
    "allowed": ("https://app.example", True),
    "foreign": ("https://evil.example", False),
    "null": ("null", False),
    "absent": (None, True),
    "case": ("HTTPS://APP.EXAMPLE", True),
    "port": ("https://app.example:8443", False),
}


async def attempt(port: int, origin: str | None, credential: str | None) -> str:
    """What one connection attempt gets: 'welcome', 'http 403', 'close 1008'."""
    headers = [("Origin", origin)] if origin is not None else []
    try:
        link = await RawLink.open(port, headers=headers)
    except Refused as exc:
        return f"http {exc.status}"
    fields: dict[str, Any] = {"token": credential} if credential is not None else {}
    await link.send({"t": "hello", "v": 1, "id": "alice", **fields})
    frame = await link.receive()
    await link.drop()
    if frame is not None and frame["t"] == "welcome":
        return "welcome"
    return f"close {link.close_code}"


async def test_the_origin_by_token_matrix(nursery: trio.Nursery) -> None:
    """H17: only a valid token from an acceptable origin connects; the rest are told why."""
    running = await start_hub(
        nursery, authenticator=authenticator(), allowed_origins={"https://app.example"}
    )
    for origin_case, (origin, origin_ok) in ORIGINS.items():
        for token_case, make in TOKENS.items():
            got = await attempt(running.port, origin, make())
            if not origin_ok:
                expected = "http 403"
            elif token_case != "valid":
                expected = f"close {CloseCode.POLICY_VIOLATION}"
            else:
                expected = "welcome"
            assert got == expected, (origin_case, token_case)
    acceptable = sum(ok for _, ok in ORIGINS.values())
    stats = running.hub.statistics()
    assert stats.auth_failures == acceptable * (len(TOKENS) - 1)
    assert stats.connections_total == acceptable


async def test_without_an_allowlist_only_the_hubs_own_origin_connects(
    nursery: trio.Nursery,
) -> None:
    running = await start_hub(nursery)
    own = f"http://127.0.0.1:{running.port}"
    assert await attempt(running.port, own, None) == "welcome"
    assert await attempt(running.port, "http://evil.example", None) == "http 403"
    assert await attempt(running.port, f"http://127.0.0.1:{running.port + 1}", None) == "http 403"
    assert await attempt(running.port, None, None) == "welcome"  # not a browser
    anyone = await start_hub(nursery, allowed_origins={"*"})
    assert await attempt(anyone.port, "http://evil.example", None) == "welcome"


async def test_a_token_in_the_authorization_header(nursery: trio.Nursery) -> None:
    running = await start_hub(nursery, authenticator=authenticator())
    link = await RawLink.open(running.port, headers=[("Authorization", f"Bearer {token()}")])
    welcome = await link.hello("alice")
    assert welcome["id"] == "alice"
    await link.drop()


async def test_the_takeover_attack_is_refused(nursery: trio.Nursery) -> None:
    """H17: another identity can neither take a live component id nor resume its session."""
    running = await start_hub(nursery, authenticator=authenticator())
    async with TranscendentalWebSocket(
        running.url, "thermostat", token=token("thermostat")
    ) as owner:
        mallory = token("mallory", components=["*"])
        link = await RawLink.open(running.port)
        await link.send({"t": "hello", "v": 1, "id": "thermostat", "token": mallory})
        assert await link.receive() is None
        assert link.close_code == CloseCode.POLICY_VIOLATION
        link = await RawLink.open(running.port)
        stolen = owner.session_id
        await link.send(
            {"t": "hello", "id": "thermostat", "sid": stolen, "epoch": 1, "token": mallory}
        )
        assert await link.receive() is None
        assert link.close_code == CloseCode.POLICY_VIOLATION
        # the owner never noticed: still connected, still served
        await owner.send("thermostat", "still", "mine")
        assert (await owner.receive()).data == "mine"
        assert owner.statistics().reconnects == 0
        # an identity may not name a component id it does not own at all
        link = await RawLink.open(running.port)
        await link.send({"t": "hello", "id": "boiler", "token": token("thermostat")})
        assert await link.receive() is None
        assert link.close_code == CloseCode.POLICY_VIOLATION
    assert running.hub.statistics().auth_failures == 3


async def test_authorization_denials_are_answered_and_nothing_is_delivered(
    nursery: trio.Nursery,
) -> None:
    """H18: forbidden sends, publishes, subscriptions, requests and hub calls."""
    running = await start_hub(nursery, authenticator=authenticator())
    limited = token("limited", send=["peer"], publish=["public.*"], subscribe=["news"])
    async with (
        TranscendentalWebSocket(running.url, "peer", token=token("peer")) as peer,
        TranscendentalWebSocket(running.url, "other", token=token("other")) as other,
        TranscendentalWebSocket(running.url, "limited", token=limited) as ws,
    ):
        await other.subscribe("secret")
        with pytest.raises(RemoteError) as denied:
            await ws.request("other", "question", timeout=5)
        assert denied.value.code == "forbidden"
        with pytest.raises(RemoteError) as hub_call:
            await ws.request("$hub", "anything", timeout=5)
        assert hub_call.value.code == "forbidden"
        await ws.publish("secret", "leak", 1)
        await ws.publish("public.news", "ok", 2)
        await ws.subscribe("secret", "news")
        await ws.send("peer", "fine", 3)
        assert (await peer.receive()).data == 3
        await ws.flush()
        assert ws.topics == {"secret", "news"}  # the client's wish; the hub applied only news
        stats = running.hub.statistics()
        assert stats.forbidden == 4  # request, $hub call, publish, subscription
        rows = {row.component_id: row for row in running.hub.components()}
        assert rows["limited"].topics == ("news",)
        assert rows["other"].pending == 0  # nothing from "limited" reached it
    assert ws.last_error is not None


async def test_an_expired_token_is_refreshed_and_the_session_resumes_exactly(
    nursery: trio.Nursery,
) -> None:
    """H17: 4009 after the grace; the client's provider gives a fresh token; nothing lost."""
    running = await start_hub(nursery, authenticator=authenticator(), token_grace=0.5)
    issued: list[float] = []

    def provider() -> str:
        issued.append(time.time())
        return token("sensor", lifetime=1.5)

    events: list[LinkEvent] = []
    async with (
        TranscendentalWebSocket(running.url, "sink", token=token("sink")) as sink,
        TranscendentalWebSocket(
            running.url, "sensor", token=provider, on_link_event=events.append
        ) as sensor,
    ):
        sent = 0
        with trio.fail_after(15):
            while len(issued) < 2:  # until the hub closed 4009 and the client reconnected
                await sensor.send("sink", "n", sent)
                sent += 1
                await trio.sleep(0.05)
            for _ in range(5):
                await sensor.send("sink", "n", sent)
                sent += 1
            got = [(await sink.receive()).data for _ in range(sent)]
        assert got == list(range(sent))
        resumes = [e for e in events if isinstance(e, Connected) and not e.first]
        assert resumes
        assert all(e.recovered for e in resumes)
    assert running.hub.statistics().close_codes.get(CloseCode.CREDENTIALS_EXPIRED, 0) >= 1


async def test_static_tokens(nursery: trio.Nursery, tmp_path: Any) -> None:
    path = tmp_path / "tokens.json"
    secret = "a-static-token-of-some-length"
    path.write_text(
        json.dumps({"tokens": [{"token": secret, "sub": "robot", "components": ["robot-*"]}]})
    )
    running = await start_hub(nursery, authenticator=StaticTokens.from_file(path))
    async with TranscendentalWebSocket(running.url, "robot-1", token=secret) as robot:
        await robot.send("robot-1", "hi", 1)
        assert (await robot.receive()).data == 1
    with pytest.raises(Exception, match=r"1008|policy"):
        async with TranscendentalWebSocket(running.url, "robot-2", token="wrong-token-xxxxxxxx"):
            pass


async def test_refusal_reasons_are_words() -> None:
    jwt_auth = authenticator()
    no_audience = JWTAuthenticator(PUBLIC_PEM, ["RS256"], issuer=ISSUER)
    cases = [
        (jwt_auth, jwt.encode({"sub": "a", "exp": 2e9}, PRIVATE_PEM, "RS256"), "lacks the 'iss'"),
        (jwt_auth, "not.a.jwt", "not a well-formed JWT"),
        (jwt_auth, tampered(), "signature does not verify"),
        (no_audience, token(), "names an audience; the hub expects none"),
    ]
    for checker, credential, reason in cases:
        request = AuthRequest(credential, None, None)
        with pytest.raises(AuthRefused, match=reason):
            await checker.authenticate(request)


def test_jwt_authenticator_refuses_unsafe_configurations() -> None:
    with pytest.raises(ValueError, match="never 'none'"):
        JWTAuthenticator(PUBLIC_PEM, ["none"])
    with pytest.raises(ValueError, match="do not mix"):
        JWTAuthenticator(PUBLIC_PEM, ["RS256", "HS256"])
    with pytest.raises(ValueError, match="shared secret"):
        JWTAuthenticator(PUBLIC_PEM, ["HS256"])
    with pytest.raises(ValueError, match="PEM public key"):
        JWTAuthenticator("x" * 40, ["RS256"])
    with pytest.raises(ValueError, match="at least 32"):
        JWTAuthenticator("short", ["HS256"])
    # What would refuse every token later is refused at start-up (a stranger's finding:
    # a private key was accepted, then every valid token got 1008 "authentication failed").
    with pytest.raises(ValueError, match="not the private key"):
        JWTAuthenticator(PRIVATE_PEM, ["RS256"])
    with pytest.raises(ValueError, match="does not fit the algorithm ES256"):
        JWTAuthenticator(PUBLIC_PEM, ["ES256"])
    with pytest.raises(ValueError, match="PEM public key"):
        JWTAuthenticator(
            b"-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----", ["RS256"]
        )
    identity = Identity("sensor", components=("sensor-*",))
    assert identity.may_use("sensor-7")
    assert not identity.may_use("actuator-1")
    assert identity.default_component() is None
    assert Identity("solo").default_component() == "solo"


async def test_tls(nursery: trio.Nursery, tmp_path: Any) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    hub = TranscendentalExternalWebSocket()
    info = await nursery.start(
        lambda task_status: serve_hub(
            hub, port=0, certfile=str(certfile), keyfile=str(keyfile), task_status=task_status
        )
    )
    assert info.ws_url.startswith("wss://")
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    url = f"wss://localhost:{info.port}/ws"
    async with TranscendentalWebSocket(url, "secure", ssl_context=trusting) as ws:
        await ws.send("secure", "x", "over tls")
        assert (await ws.receive()).data == "over tls"
    with pytest.raises(HandshakeError, match=r"(?i)certificate|ssl|tls"):
        async with TranscendentalWebSocket(url, "naive", reconnect=False):
            pass  # the system's trust store does not know the test CA
    wrong_name = f"wss://127.0.0.2:{info.port}/ws"
    with pytest.raises((HandshakeError, OSError)):
        async with TranscendentalWebSocket(
            wrong_name, "mismatch", ssl_context=trusting, reconnect=False
        ):
            pass


async def test_rate_limits_slow_a_link_then_close_a_sustained_flood(nursery: trio.Nursery) -> None:
    running: RunningHub = await start_hub(
        nursery, rate_messages=200.0, rate_burst=0.5, flood_timeout=1.0
    )
    async with TranscendentalWebSocket(running.url, "bystander") as bystander:
        flooder = await RawLink.open(running.port)
        await flooder.hello("flooder")
        body = {"type": "x", "topic": "nowhere"}
        started = trio.current_time()
        seq = 0
        with trio.move_on_after(10):
            while flooder.close_code is None:
                try:
                    await flooder.send({"t": "msg", "seq": seq + 1, "m": body})
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                seq += 1
                if seq % 100 == 0:  # read what the hub says (acks, pongs; at last the close)
                    with trio.move_on_after(0.001):
                        while await flooder.receive() is not None:
                            pass
                    # meanwhile the bystander is served promptly
                    await bystander.send("bystander", "ping", seq)
                    assert (await bystander.receive()).data == seq
        stats = running.hub.statistics()
        assert stats.rate_limited >= 1
        assert stats.floods_closed == 1
        assert stats.close_codes.get(CloseCode.POLICY_VIOLATION) == 1
        assert trio.current_time() - started >= 1.0  # slowed, then closed after flood_timeout
        await flooder.drop()


async def test_tokens_never_appear_in_logs_errors_or_statistics(tmp_path: Any) -> None:
    secret, wrong = "the-real-secret-token-1234", "a-wrong-guess-token-5678"
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [{"token": secret, "sub": "robot"}]}))
    args = ("--store", "none", "--auth-token-file", str(path), "--log-level", "debug")
    async with start_cli_hub(*args) as hub:
        async with TranscendentalWebSocket(hub.url, "robot", token=secret) as robot:
            await robot.send("robot", "x", 1)
            assert (await robot.receive()).data == 1
        for credential in (wrong, secret):
            link = await RawLink.open(hub.port, headers=[("Authorization", f"Bearer {credential}")])
            await link.send({"t": "hello", "id": "not-robots", "token": credential})
            frames = []
            while (frame := await link.receive()) is not None:
                frames.append(frame)
            assert link.close_code == CloseCode.POLICY_VIOLATION
            assert credential not in json.dumps(frames)
        log = hub.log()
        # an audit line per refusal (bounded), without the credential
        assert "refused 'not-robots' from 127.0.0.1: authentication failed: unknown token" in log
        assert secret not in log
        assert wrong not in log


def test_a_public_address_needs_an_authenticator() -> None:
    """Secure default: no binding beyond loopback without authentication (nothing is bound)."""
    from genesis_trio._cli import is_loopback

    assert is_loopback("127.0.0.1")
    assert is_loopback("127.1.2.3")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.168.1.10")
    assert not is_loopback("hub.example.com")
    result = subprocess.run(
        [sys.executable, "-m", "genesis_trio", "serve", "--host", "0.0.0.0", "--store", "none"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "refusing to serve 0.0.0.0 without authentication" in result.stderr
    assert "--insecure" in result.stderr


async def _get(port: int, path: str, host: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_dns_rebinding_a_hub_without_authentication_answers_loopback_names_only(
    tmp_path: Any,
) -> None:
    """A page whose DNS name re-binds to 127.0.0.1 reached a no-auth loopback hub as
    same-origin (Host and Origin both its own name): HTTP 101 and the whole API.
    Found by a security test written from the docs alone."""
    async with start_cli_hub("--store", "none", "--allowed-host", "dev.test") as hub:
        evil = f"evil.example:{hub.port}"
        status, body = await _get(hub.port, "/api/components", evil)
        assert status == 403
        assert b"not served here" in body
        stream = await trio.open_tcp_stream("127.0.0.1", hub.port)
        with pytest.raises(Refused) as refused:
            await RawLink.upgrade(stream, evil, headers=[("Origin", f"http://{evil}")])
        assert refused.value.status == 403
        await stream.aclose()
        for fine in (f"localhost:{hub.port}", f"127.0.0.1:{hub.port}", "[::1]", "dev.test:80"):
            assert (await _get(hub.port, "/api/stats", fine))[0] == 200, fine
        async with TranscendentalWebSocket(hub.url, "local") as ws:  # Host 127.0.0.1: fine
            await ws.send("local", "x", 1)
            assert (await ws.receive()).data == 1
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [{"token": "t" * 32, "sub": "robot"}]}))
    async with start_cli_hub("--store", "none", "--auth-token-file", str(path)) as hub:
        # with authentication a page cannot present a token: any Host is answered
        assert (await _get(hub.port, "/health", f"evil.example:{hub.port}"))[0] == 200
