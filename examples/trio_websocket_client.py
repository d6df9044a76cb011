"""An independent client of wire protocol v1, on ``trio-websocket``.

Written from ``docs/protocol.md`` alone (no genesis_trio code), as a check
that the document is enough. It does what §8 asks of a client: ``hello`` /
``welcome`` (C1), per-epoch numbering with a resend buffer (C2), the window
(C3), duplicate dropping and ``hello.ack`` (C4), ``pong`` (C5), no ``from``
(C6), the close codes (C7), prompt cumulative acks of what the application
took (C8), heartbeats both ways (C9), and reconnection with exponential
backoff and full jitter that resumes the session (C10).

    async with GenesisClient("ws://127.0.0.1:8000/ws", "me") as c:
        await c.send("me", "greeting", {"n": 1})
        print(await c.receive())    # {'type': 'greeting', 'to': 'me', 'from': 'me', ...}

Run a hub, then: python examples/trio_websocket_client.py [ws://127.0.0.1:8000/ws]
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, open_websocket_url

log = logging.getLogger(__name__)

SUBPROTOCOL = "genesis.v1.json"
FATAL_CODES = {400, 403, 1002, 1008, 4000, 4001, 4008}  # HTTP refusals, and C7
PAUSE_CODES = {1013, 4005, 4006}  # §5: "after a pause" / "later"
ACK_DELAY = 0.020  # C8: acknowledge within ~20 ms
SILENCE_GRACE = 5.0  # C9: a hub silent for hb + this many seconds is dead
WELCOME_TIMEOUT = 10.0
Body = dict[str, Any]


class GenesisError(Exception):
    """The client stopped for good (a fatal close code or refusal)."""


class _LinkLost(Exception):
    """This link is unusable (silent hub, sequence gap, bad welcome): reconnect."""


@dataclass
class Stats:
    """What happened to the links. ``resumes`` counts ``recovered: true`` answers to a sid."""

    connects: int = 0
    reconnects: int = 0
    resumes: int = 0
    new_epochs: int = 0
    duplicates: int = 0
    errors: int = 0


def _encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


class GenesisClient:
    """One component's session with a hub, kept alive across dropped links."""

    def __init__(
        self,
        url: str,
        component_id: str | None,
        *,
        topics: Iterable[str] = (),
        backoff_base: float = 0.1,
        backoff_cap: float = 10.0,
        rng: random.Random | None = None,
        max_size: int = 1 << 20,
        linger: float = 5.0,
    ) -> None:
        self.url, self.component_id, self.topics = url, component_id, list(topics)
        self.stats = Stats()
        self.errors: deque[dict[str, Any]] = deque(maxlen=100)  # recent `error` frames
        self._backoff = (backoff_base, backoff_cap, rng or random.Random())
        self._max_size, self._linger = max_size, linger
        # Session, as the next hello states it.
        self._sid: str | None = None
        self._epoch = 0
        self._token: tuple[str | None, int] = (None, 0)  # (sid, epoch) the counters below belong to
        # Outgoing stream: unacknowledged (seq, body), consecutive numbers.
        self._outbox: deque[tuple[int, Body]] = deque()
        self._next_seq = 1
        self._hub_ack = 0  # highest of our numbers the hub stored
        self._sent_upto = 0  # highest of our numbers sent on this link
        # Incoming stream.
        self._received = 0  # R: highest contiguous hub number received
        self._delivered = 0  # highest number handed to the application
        self._ack_sent = 0
        self._inbox: deque[tuple[tuple[str | None, int], int, Body]] = deque()
        self._pongs: deque[int] = deque()
        # Link parameters from the last welcome.
        self._window, self._hb, self._hub_max = 1, 5.0, 1 << 20
        self._welcomed = self._leaving = self._done = False
        self._fatal: GenesisError | None = None
        self._changed = trio.Event()
        self._cm: Any = None

    # ---- public API -------------------------------------------------------
    async def send(self, to: str | None, type: str, data: Any = None, **fields: Any) -> int:
        """Queue a message (``to`` a component, or ``topic=`` in fields); return its number.

        Waits while ``window`` messages are unacknowledged (backpressure).
        """
        if "from" in fields or (to is not None and "topic" in fields):
            raise ValueError("a body carries no 'from', and not both 'to' and 'topic' (C6)")
        body: Body = {"type": type, **({"to": to} if to is not None else {}), "data": data, **fields}
        if len(_encode({"t": "msg", "seq": 2**53, "ack": 2**53, "m": body}).encode()) > self._hub_max:
            raise ValueError(f"message larger than the hub's max_size ({self._hub_max})")
        await self._wait_for(lambda: len(self._outbox) < self._window)
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        self._outbox.append((seq, body))
        self._notify()
        return seq

    async def reply(self, request: Body, data: Any = None, error: dict[str, str] | None = None) -> None:
        """Answer a request body (one with an ``id``), as §2.3 describes (C11)."""
        extra = {"error": error} if error is not None else {}
        await self.send(request["from"], request["type"], data, re=request["id"], **extra)

    async def receive(self) -> Body:
        """The next message body, in order; it is acknowledged soon after."""
        await self._wait_for(lambda: bool(self._inbox))  # what arrived is handed out first
        token, seq, body = self._inbox.popleft()
        if token == self._token and seq > self._delivered:  # never ack an older epoch's number
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
                    with trio.move_on_after(self._linger):  # leave politely: flush, bye, 1000
                        await self.flush()
                    self._leaving = True
                    self._notify()
                    with trio.move_on_after(self._linger):
                        await self._wait_for(lambda: self._done)
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # show the caller its own exception, unwrapped
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    # ---- plumbing ---------------------------------------------------------
    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if self._fatal is not None:
                raise self._fatal
            await self._changed.wait()

    async def _run(self) -> None:
        """Connect, and reconnect with backoff and full jitter until leaving or fatal."""
        attempt = 0
        while not self._leaving:
            connects = self.stats.connects
            code = await self._link()
            if self._leaving:
                break
            if code in FATAL_CODES:
                self._fail(f"hub refused or closed the link with {code}")
                return
            if code == 4007:  # session violation: start over without sid (C7)
                self._sid, self._epoch, self._received = None, 0, 0
            attempt = 0 if self.stats.connects > connects else attempt + 1
            base, cap, rng = self._backoff
            delay = rng.uniform(0, min(cap, base * 2**attempt))  # full jitter (C10)
            await trio.sleep(delay + (1.0 if code in PAUSE_CODES else 0.0))
        self._done = True
        self._notify()

    async def _link(self) -> int | None:
        """One link: upgrade, hello/welcome, serve; return the close code or HTTP status."""
        ws = None
        try:
            async with open_websocket_url(
                self.url, subprotocols=[SUBPROTOCOL], max_message_size=self._max_size,
                connect_timeout=WELCOME_TIMEOUT, disconnect_timeout=1.0,
            ) as ws:
                await self._handshake(ws)
                return await self._serve_link(ws)
        except ConnectionRejected as exc:
            log.info("upgrade refused: HTTP %s %r", exc.status_code, exc.body)
            return exc.status_code
        except ConnectionClosed as exc:
            return exc.reason.code if exc.reason else 1006
        except (HandshakeError, OSError, trio.TooSlowError, _LinkLost) as exc:
            log.info("link failed: %r", exc)
            return None
        finally:
            if ws is not None:  # trio-websocket 0.12 leaves the TCP stream open when the peer
                await trio.aclose_forcefully(ws._stream)  # closes or drops the link
    def _fail(self, why: str) -> None:
        self._fatal = GenesisError(why)
        self._done = True
        self._notify()

    async def _handshake(self, ws: Any) -> None:
        if ws.subprotocol != SUBPROTOCOL:
            raise _LinkLost(f"hub chose subprotocol {ws.subprotocol!r}")
        resuming = self._sid is not None
        await ws.send_message(_encode({
            "t": "hello", "v": 1, "id": self.component_id, "sid": self._sid, "epoch": self._epoch,
            "ack": self._received, "topics": self.topics, "max_size": self._max_size,
        }))
        with trio.fail_after(WELCOME_TIMEOUT):
            raw = await ws.get_message()
        try:
            w = json.loads(raw)
            fields = [w[k] for k in ("t", "id", "sid", "epoch", "recovered", "ack", "hb", "window", "max_size")]
        except (ValueError, TypeError, KeyError):
            fields = []
        if not fields or fields[0] != "welcome":
            raise _LinkLost(f"expected a welcome, got {raw!r:.200}")
        self.component_id = w["id"]
        if w["recovered"]:  # same epoch: hello.ack acknowledged all we received
            self._ack_sent = max(self._ack_sent, self._received)
            self.stats.resumes += resuming
        else:  # new session or epoch: both streams restart at 1, ours renumbered (C2)
            self.stats.new_epochs += resuming
            if resuming:
                log.warning("session not recovered: %s", w.get("reason"))
            self._outbox = deque((i, body) for i, (_, body) in enumerate(self._outbox, 1))
            self._next_seq = len(self._outbox) + 1
            self._received = self._delivered = self._ack_sent = 0
        self._sid, self._epoch = w["sid"], w["epoch"]
        self._token = (self._sid, self._epoch)
        self._take_ack(w["ack"])
        self._sent_upto = self._hub_ack
        self._window, self._hb, self._hub_max = w["window"], w["hb"] / 1000, w["max_size"]
        self.stats.reconnects += self.stats.connects > 0
        self.stats.connects += 1
        self._welcomed = True
        self._notify()

    async def _serve_link(self, ws: Any) -> int | None:
        """Run reader and writer until the link ends; return its close code."""
        ended: list[int | None] = []

        async def guard(part: Callable[[Any], Any]) -> None:
            try:
                await part(ws)
            except ConnectionClosed as exc:
                ended.append(exc.reason.code if exc.reason else 1006)
            except _LinkLost as exc:
                log.info("dropping link: %s", exc)
                ended.append(None)
                with trio.move_on_after(1.0) as scope:
                    scope.shield = True
                    await ws.aclose(1001, str(exc))
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guard, self._reader)
            nursery.start_soon(guard, self._writer)
        return ended[0] if ended else None

    async def _reader(self, ws: Any) -> None:
        while True:
            with trio.move_on_after(self._hb + SILENCE_GRACE) as silence:
                raw = await ws.get_message()
            if silence.cancelled_caught:
                raise _LinkLost("hub silent for hb + grace (C9)")
            try:
                self._on_frame(json.loads(raw))
            except (ValueError, TypeError, KeyError, AttributeError):
                log.warning("malformed frame from the hub, ignored: %r", raw[:200])
            self._notify()

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame["t"]
        if kind in ("msg", "batch"):
            bodies = [frame["m"]] if kind == "msg" else frame["m"]
            for seq, body in enumerate(bodies, frame["seq"]):
                if seq <= self._received:  # C4: a duplicate, already handled
                    self.stats.duplicates += 1
                elif seq > self._received + 1:
                    raise _LinkLost(f"sequence gap: got {seq} after {self._received}")
                else:
                    self._received = seq
                    self._inbox.append((self._token, seq, body))
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

    async def _writer(self, ws: Any) -> None:
        last_sent, ack_due, ping_id = trio.current_time(), math.inf, 0
        while True:
            changed = self._changed  # anything that happens from here on wakes us
            now = trio.current_time()
            frames: list[dict[str, Any]] = [{"t": "pong", "id": i} for i in self._pongs]
            self._pongs.clear()
            # C3: only numbers up to the hub's last ack + window.
            first = self._outbox[0][0] if self._outbox else self._next_seq
            start = self._sent_upto + 1 - first
            stop = min(len(self._outbox), self._hub_ack + self._window + 1 - first)
            msgs = [self._outbox[i] for i in range(max(start, 0), stop)]
            owed = self._delivered - self._ack_sent
            if owed > 0 and ack_due == math.inf:
                ack_due = now + ACK_DELAY
            ack = owed > 0 and (bool(msgs) or owed >= self._window // 2 or now >= ack_due)
            for seq, body in msgs:
                frames.append({"t": "msg", "seq": seq, "m": body})
            if ack:  # C8: ride on our own msg when there is one
                if msgs:
                    frames[-len(msgs)]["ack"] = self._delivered
                else:
                    frames.append({"t": "ack", "seq": self._delivered})
                self._ack_sent, ack_due = self._delivered, math.inf
            if msgs:
                self._sent_upto = msgs[-1][0]
            if self._leaving:
                frames.append({"t": "bye"})
            elif not frames and now - last_sent >= self._hb:  # C9: not silent for hb
                frames.append({"t": "ping", "id": ping_id})
                ping_id = (ping_id + 1) % 2**53
            for frame in frames:
                await ws.send_message(_encode(frame))
            if self._leaving:
                await trio.sleep_forever()  # the reader sees the hub's 1000
            if frames:
                last_sent = trio.current_time()
                continue
            with trio.move_on_at(min(last_sent + self._hb, ack_due)):
                await changed.wait()


async def main(url: str = "ws://127.0.0.1:8000/ws") -> None:
    """Send three messages to ourselves and print them as they come back."""
    async with GenesisClient(url, "trio-ws-example") as client:
        for n in range(3):
            await client.send("trio-ws-example", "greeting", {"n": n})
        for _ in range(3):
            body = await client.receive()
            print(f"got {body['type']!r} from {body['from']!r}: {body['data']}")
        print("stats:", client.stats)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:2])

# Notes for the protocol authors (places where docs/protocol.md left me guessing):
# TBD
