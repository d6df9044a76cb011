"""An independent client of wire protocol v1, on ``trio-websocket``.

Written from ``docs/protocol.md`` alone (no genesis_trio code), to check that
the document is enough. It does what §8 asks: hello/welcome (C1), numbering
per epoch and resending (C2), the window (C3), duplicates and ``hello.ack``
(C4), pongs (C5), no ``from`` (C6), the close codes (C7), prompt cumulative
acks of what the application took (C8), heartbeats (C9), reconnection with
exponential backoff and full jitter that resumes the session (C10), and a
``token`` (a string, or a function asked on every link: 4009).

    async with GenesisClient("ws://127.0.0.1:8000/ws", "me") as c:
        await c.send("me", "greeting", {"n": 1})
        print(await c.receive())  # {'type': 'greeting', ..., 'from': 'me'}

Run a hub, then: python examples/trio_websocket_client.py [ws://127.0.0.1:8000/ws]
"""

from __future__ import annotations

import json
import logging
import math
import random
import ssl
import sys
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import trio
import trio_websocket as tws

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8000/ws"
SUBPROTOCOL = "genesis.v1.json"
FATAL = {400, 403, 1002, 1008, 4000, 4001, 4008}  # HTTP refusals, and the close codes of C7
PAUSE = {1013, 4005, 4006}  # §5: reconnect "after a pause" / "later"
ACK_DELAY = 0.020  # C8: acknowledge within ~20 ms
SILENCE_GRACE = 5.0  # C9: a hub silent for hb + this many seconds is dead
WELCOME_FIELDS = ("v", "id", "sid", "epoch", "recovered", "ack", "hb", "window", "max_size")
Body = dict[str, Any]
Frame = dict[str, Any]
Link = tws.WebSocketConnection


class GenesisError(Exception):
    """The client stopped for good: a fatal close code or refusal."""


class _LinkLost(Exception):
    """This link is unusable (silent hub, sequence gap, no welcome): reconnect."""


@dataclass
class Stats:
    """What happened to the links; ``resumes`` counts ``recovered: true`` answers to a sid."""

    connects: int = 0
    reconnects: int = 0
    resumes: int = 0
    new_epochs: int = 0
    duplicates: int = 0
    errors: int = 0


def _encode(frame: Frame) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


class GenesisClient:
    """One component's session with a hub, kept across dropped links."""

    def __init__(
        self,
        url: str,
        component_id: str | None,
        *,
        topics: Iterable[str] = (),
        token: str | Callable[[], str] | None = None,
        backoff_base: float = 0.1,
        backoff_cap: float = 10.0,
        rng: random.Random | None = None,
        connect_timeout: float = 10.0,
        max_size: int = 1 << 20,
        linger: float = 5.0,
    ) -> None:
        self.url, self.component_id, self.topics = url, component_id, list(topics)
        self._token_source = token
        self.stats = Stats()
        self.errors: deque[Frame] = deque(maxlen=100)  # the latest `error` frames
        self._backoff = (backoff_base, backoff_cap, rng or random.Random())
        self._connect_timeout, self._max_size, self._linger = connect_timeout, max_size, linger
        self._sid: str | None = None  # the session, as the next hello names it
        self._epoch = 0
        # (sid, epoch): the session and epoch the sequence numbers below belong to
        self._epoch_key: tuple[str | None, int] = (None, 0)
        self._outbox: deque[tuple[int, Body]] = deque()  # unacknowledged, consecutive numbers
        self._next_seq = 1
        self._hub_ack = 0  # highest of our numbers the hub has stored
        self._sent_upto = 0  # highest of our numbers sent on the current link
        self._received = 0  # R: highest contiguous hub number received
        self._delivered = 0  # highest hub number handed to the application
        self._ack_sent = 0
        self._inbox: deque[tuple[tuple[str | None, int], int, Body]] = deque()
        self._pongs: deque[int] = deque()
        self._window, self._hb, self._hub_max = 1, 5.0, 1 << 20  # from the last welcome
        self._welcomed = self._leaving = self._done = False
        self._fatal: GenesisError | None = None
        self._changed = trio.Event()
        self._cm: Any = None

    # ---- the application's side ------------------------------------------------
    async def send(self, to: str | None, type: str, data: Any = None, **fields: Any) -> None:
        """Queue a message to ``to`` (or to ``topic=...``); waits while the window is full."""
        if "from" in fields or (to is None) == ("topic" not in fields):
            raise ValueError("a body has `to` or `topic` (not both) and no `from` (C6)")
        body: Body = {"type": type, "data": data, **fields}
        if to is not None:
            body["to"] = to
        size = len(_encode({"t": "msg", "seq": 2**53, "ack": 2**53, "m": body}).encode())
        if size > self._hub_max:  # the hub would close 1009 (§1)
            raise ValueError(f"message larger than the hub's max_size ({self._hub_max})")
        await self._wait_for(lambda: len(self._outbox) < self._window)
        self._outbox.append((self._next_seq, body))
        self._next_seq += 1
        self._notify()

    async def reply(self, request: Body, data: Any = None, **error: str) -> None:
        """Answer a request (a body with an ``id``); ``code=..., msg=...`` for an error (C11)."""
        extra = {"error": error} if error else {}
        await self.send(request["from"], request["type"], data, re=request["id"], **extra)

    async def receive(self) -> Body:
        """The next message body, in order; it is acknowledged within ~20 ms."""
        await self._wait_for(lambda: bool(self._inbox))  # what arrived is handed out first
        key, seq, body = self._inbox.popleft()
        if key == self._epoch_key and seq > self._delivered:  # never ack another epoch's number
            self._delivered = seq
            self._notify()
        return body

    async def flush(self) -> None:
        """Wait until the hub has stored every message sent so far."""
        await self._wait_for(lambda: not self._outbox)

    async def __aenter__(self) -> GenesisClient:
        self._cm = self._lifetime()
        return await self._cm.__aenter__()  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._cm.__aexit__(*exc)  # type: ignore[no-any-return]

    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[GenesisClient]:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run)
                try:
                    await self._wait_for(lambda: self._welcomed)
                    yield self
                    with trio.move_on_after(self._linger), suppress(GenesisError):
                        await self.flush()  # leave: flush, bye, then the hub's 1000
                    self._leaving = True
                    self._notify()
                    with trio.move_on_after(self._linger):
                        await self._wait_for(lambda: self._done)
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # give the caller its own exception, unwrapped
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if self._fatal is not None:
                raise self._fatal
            await self._changed.wait()

    # ---- links -------------------------------------------------------------------
    async def _run(self) -> None:
        """Connect, and reconnect with backoff and full jitter until leaving or fatal."""
        attempt = 0
        while True:
            connects = self.stats.connects
            code = await self._link()
            if self._leaving:
                break
            if code in FATAL:
                self._fatal = GenesisError(f"the hub refused or closed the link with {code}")
                break
            if code == 4007:  # session violation: start over without sid (C7)
                self._sid, self._epoch, self._received = None, 0, 0
            attempt = 0 if self.stats.connects > connects else attempt + 1
            base, cap, rng = self._backoff
            delay = rng.uniform(0, min(cap, base * 2**attempt))  # full jitter (C10)
            await trio.sleep(delay + (1.0 if code in PAUSE else 0.0))
        self._done = True
        self._notify()

    async def _link(self) -> int | None:
        """One link: TCP, upgrade, hello/welcome, serve; return its close code or HTTP status.

        We own the TCP stream: trio-websocket 0.12 leaves it open when the peer
        closes or drops the link, and on a connect timeout."""
        url = urllib.parse.urlsplit(self.url)
        host, port = url.hostname or "localhost", url.port or (443 if url.scheme == "wss" else 80)
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
        code: int | None = None
        try:
            with trio.fail_after(self._connect_timeout):
                if url.scheme == "wss":
                    context = ssl.create_default_context()
                    stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context)
                else:
                    stream = await trio.open_tcp_stream(host, port)
            async with trio.open_nursery() as nursery:  # trio-websocket's reader task runs here
                code = await self._upgrade_and_serve(nursery, stream, url)
                nursery.cancel_scope.cancel()
        except* tws.ConnectionRejected as group:  # raised by the reader task: HTTP 4xx/5xx
            refusal = group.exceptions[0]
            code = refusal.status_code if isinstance(refusal, tws.ConnectionRejected) else None
        except* (OSError, trio.TooSlowError, trio.BrokenResourceError) as group:
            log.info("cannot connect: %r", group.exceptions[0])
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)
        return code

    async def _upgrade_and_serve(self, nursery: trio.Nursery, stream: Any, url: Any) -> int | None:
        resource = (url.path or "/") + (f"?{url.query}" if url.query else "")
        try:
            with trio.fail_after(self._connect_timeout):
                sub, limit = [SUBPROTOCOL], self._max_size
                ws = await tws.wrap_client_stream(
                    nursery, stream, url.netloc, resource, subprotocols=sub, max_message_size=limit
                )
                await self._handshake(ws)
        except tws.ConnectionClosed as exc:
            return exc.reason.code if exc.reason else 1006
        except (tws.HandshakeError, trio.TooSlowError, _LinkLost) as exc:
            log.info("no link: %r", exc)
            return None
        async with trio.open_nursery() as parts:
            parts.start_soon(self._writer, ws)
            code = await self._reader(ws)
            parts.cancel_scope.cancel()
        return code

    async def _handshake(self, ws: Link) -> None:
        if ws.subprotocol != SUBPROTOCOL:
            raise _LinkLost(f"the hub chose subprotocol {ws.subprotocol!r}")
        resuming = self._sid is not None
        hello = {"t": "hello", "v": 1, "id": self.component_id, "sid": self._sid}
        hello |= {"epoch": self._epoch, "ack": self._received, "topics": self.topics}
        if self._token_source is not None:  # asked on every link: 4009 wants a fresh one
            source = self._token_source
            hello["token"] = source() if callable(source) else source
        await ws.send_message(_encode(hello | {"max_size": self._max_size}))
        raw = await ws.get_message()
        try:
            w = json.loads(raw)
            if w["t"] != "welcome" or not all(k in w for k in WELCOME_FIELDS):
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise _LinkLost(f"expected a welcome, got {raw!r:.200}") from None
        self.component_id = w["id"]
        if w["recovered"]:  # same epoch; hello.ack acknowledged everything received
            self._ack_sent = max(self._ack_sent, self._received)
            self.stats.resumes += resuming
        else:  # a new session or epoch: both streams restart at 1, ours renumbered (C2)
            self.stats.new_epochs += resuming
            if resuming:
                log.warning("session not recovered (%s)", w.get("reason"))
            self._outbox = deque((n, body) for n, (_, body) in enumerate(self._outbox, 1))
            self._next_seq = len(self._outbox) + 1
            self._received = self._delivered = self._ack_sent = 0
        self._sid, self._epoch, self._epoch_key = w["sid"], w["epoch"], (w["sid"], w["epoch"])
        self._hub_ack = self._sent_upto = w["ack"]  # send again everything after welcome.ack
        while self._outbox and self._outbox[0][0] <= self._hub_ack:
            self._outbox.popleft()
        self._window, self._hb, self._hub_max = w["window"], w["hb"] / 1000, w["max_size"]
        self.stats.reconnects += self.stats.connects > 0
        self.stats.connects += 1
        self._welcomed = True
        self._notify()

    async def _reader(self, ws: Link) -> int | None:
        """Handle the hub's frames until the link ends; return its close code."""
        try:
            while True:
                with trio.move_on_after(self._hb + SILENCE_GRACE) as silence:
                    raw = await ws.get_message()
                if silence.cancelled_caught:
                    raise _LinkLost("the hub was silent for hb + grace (C9)")
                try:
                    self._on_frame(json.loads(raw))
                except (ValueError, TypeError, KeyError, AttributeError):
                    log.warning("malformed frame from the hub, ignored: %r", raw[:200])
                self._notify()
        except tws.ConnectionClosed as exc:
            return exc.reason.code if exc.reason else 1006
        except _LinkLost as exc:
            log.info("dropping the link: %s", exc)
            with trio.move_on_after(1.0):
                await ws.aclose(1001, str(exc))
            return None

    def _on_frame(self, frame: Frame) -> None:
        kind = frame["t"]
        if kind in ("msg", "batch"):
            for seq, body in enumerate([frame["m"]] if kind == "msg" else frame["m"], frame["seq"]):
                if seq <= self._received:  # C4: a duplicate, already handled
                    self.stats.duplicates += 1
                elif seq > self._received + 1:
                    raise _LinkLost(f"sequence gap: {seq} after {self._received}")
                else:
                    self._received = seq
                    self._inbox.append((self._epoch_key, seq, body))
            if "ack" in frame:
                self._take_ack(frame["ack"])
        elif kind == "ack":
            self._take_ack(frame["seq"])
        elif kind == "ping":  # C5
            self._pongs.append(frame["id"])
        elif kind == "error":
            self.stats.errors += 1
            self.errors.append(frame)
            log.warning("hub error %s: %s", frame.get("code"), frame.get("msg"))

    def _take_ack(self, seq: int) -> None:
        if seq > self._hub_ack:  # cumulative; a stale one is ignored
            self._hub_ack = seq
            while self._outbox and self._outbox[0][0] <= seq:
                self._outbox.popleft()

    async def _writer(self, ws: Link) -> None:
        with suppress(tws.ConnectionClosed):  # the reader reports how the link ended
            await self._write(ws)

    async def _write(self, ws: Link) -> None:
        """Send pongs, messages within the window, acks, pings, and finally bye."""
        last_sent, ack_due, ping_id = trio.current_time(), math.inf, 0
        while True:
            changed = self._changed  # whatever happens from now on wakes us
            now = trio.current_time()
            frames: list[Frame] = [{"t": "pong", "id": i} for i in self._pongs]
            self._pongs.clear()
            first = self._outbox[0][0] if self._outbox else self._next_seq
            start = max(self._sent_upto + 1 - first, 0)
            stop = min(len(self._outbox), self._hub_ack + self._window + 1 - first)  # C3
            msgs = [self._outbox[i] for i in range(start, stop)]
            owed = self._delivered - self._ack_sent
            if owed <= 0:
                ack_due = math.inf
            elif ack_due == math.inf:
                ack_due = now + ACK_DELAY
            ack = owed > 0 and (bool(msgs) or owed >= self._window // 2 or now >= ack_due)
            frames += [{"t": "msg", "seq": seq, "m": body} for seq, body in msgs]
            if ack:  # C8, riding on our first msg when there is one
                if msgs:
                    frames[-len(msgs)]["ack"] = self._delivered
                else:
                    frames.append({"t": "ack", "seq": self._delivered})
                self._ack_sent, ack_due = self._delivered, math.inf
            if msgs:
                self._sent_upto = msgs[-1][0]
            if self._leaving:
                frames.append({"t": "bye"})
            elif not frames and now - last_sent >= self._hb:  # C9: never silent for hb
                frames.append({"t": "ping", "id": ping_id})
                ping_id = (ping_id + 1) % 2**53
            for frame in frames:
                await ws.send_message(_encode(frame))
            if self._leaving:
                await trio.sleep_forever()  # until the reader sees the hub's 1000
            if frames:
                last_sent = trio.current_time()
                continue
            with trio.move_on_at(min(last_sent + self._hb, ack_due)):
                await changed.wait()


async def main(url: str = DEFAULT_URL) -> None:
    """Send three messages to ourselves and print them as they come back."""
    async with GenesisClient(url, "trio-ws-example") as client:
        for n in range(3):
            await client.send("trio-ws-example", "greeting", {"n": n})
        for _ in range(3):
            body = await client.receive()
            print(f"got {body['type']!r} from {body['from']!r}: {body['data']}")
        print("stats:", client.stats)


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else DEFAULT_URL)

# Notes for the protocol authors: where docs/protocol.md left me guessing.
# 1. recovered:false and the client's inbox (§4): messages received but not yet
#    handed to the application come again, renumbered, if the hub still held
#    them; the client cannot match them. Discard the undelivered buffer (losing
#    what the hub no longer held) or keep it (duplicates)? I keep it.
# 2. hello.ack is what was *received* (C4), ack frames what was *handed to the
#    application* (§2.5): a recovered resume acknowledges messages still queued
#    in the client. Intended? Say so.
# 3. Is welcome.ack always 0 when recovered is false? C2 assumes it.
# 4. Closes by the client are not described (§5 lists the hub's): which code to
#    abandon a link (silent hub, a gap in the hub's numbers), and does a close
#    without bye, even 1000, keep the session? I send 1001 and assume it does.
# 5. A gap in the hub's numbers (§3, "reconnect"): resume with hello.ack = R,
#    or drop the sid as after 4007? I resume.
# 6. 1009, "don't resend it": skipping that number makes a gap (4007). I refuse
#    a body whose msg frame (UTF-8 JSON) exceeds welcome.max_size before numbering.
# 7. C9's "a few seconds": a number? (I use 5 s.) Does the hub keep pinging while
#    it stops reading a link under backpressure (§3)?
# 8. unknown_target / no_target / forbidden "consume" the number: say it is also
#    acknowledged (I observed it is), so the sender can drop it.
# 9. "After a pause" / "later" (1013, 4005, 4006): how long? (I add 1 s.) HTTP 429
#    and 503: retry? (I do; 400 and 403 are final.)
# 10. A resume whose welcome.window is below the client's unacknowledged count:
#    I send up to welcome.ack + window and wait; say so.
