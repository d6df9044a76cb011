"""Stateful model test of the session layer over an unreliable simulated link.

A real :class:`ClientSession` (over an :class:`OutboundLog`) talks to a real
hub-side :class:`HubSession`, obtained from a real :class:`SessionTable` (so the
resume rules are the hub's own, :func:`resume_session`). Both writers are the
production ones: each side of each link has a real :class:`LinkProtocol`,
whose ``poll`` decides every frame (batch, window, frame cap, piggy-backed or
lone ack); the shells here only encode and queue what it says. The hub reads
as the hub does (``InboundTracker.admit`` with the window enforced, then one
``processed`` per body, then the recorder releases); the client reads as the
client does (``accept``, then the application releases). Handshakes travel
through the codec too.

The link is TCP-like: it never reorders. It can break (a frame and everything
after it in that direction vanish), die (both directions, noticed by the hub
now or later), lose the welcome mid-handshake, duplicate a frame, and re-batch
frames (split a batch, merge adjacent or overlapping ones), so that sequence
handling is exercised with every batching. Invariant after every step: what
each application received is a duplicate-free, in-order prefix of what the
other sent. After a clean reconnect and draining, it is all of it.

:class:`LossySessionMachine` uses tiny capacities and short retention: the hub
evicts and expires messages of a disconnected client. There the guarantee is:
within an epoch, in order without duplicates or gaps; a gap only over messages
the hub dropped, and only after a ``recovered=False`` welcome -- never silent.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from genesis_trio._core.codec import JSON, MSGPACK, Codec, EncodedBody
from genesis_trio._core.config import HubConfig
from genesis_trio._core.frames import Ack, Hello, MessageFrame, Welcome, parse_frame
from genesis_trio._core.link import Deliver, Idle, LinkProtocol, SendAck
from genesis_trio._core.session import ClientSession, OutboundLog
from genesis_trio._hub.journal import NullJournal
from genesis_trio._hub.sessions import HubSession, SessionTable

CID = "comp"
PEER = "peer"
DIRECTIONS = st.sampled_from(["c2h", "h2c"])
ANY_INDEX = st.integers(0, 1000)
BUDGETS = st.integers(0, 30)

Tag = tuple[str | None, int]
"""(sid, epoch): which stream a sequence number belongs to."""


class Handle:
    """The hub's handle of one link (``HubSession.connection``): identity is what counts."""

    def close_soon(self, code: int, reason: str) -> None:
        """Never asked here."""

    def committed(self, now: float) -> None:
        """Nothing to wake."""


class Link:
    """One WebSocket connection: two FIFO queues of encoded frames, a protocol per side."""

    def __init__(
        self,
        conn: Handle,
        session: HubSession,
        budget: int,
        client: LinkProtocol[bytes],
        hub: LinkProtocol[EncodedBody],
    ) -> None:
        self.conn = conn
        """The hub's handle of this connection (``HubSession.connection``)."""
        self.client = client
        self.hub = hub
        self.session = session
        self.queues: dict[str, list[bytes]] = {"c2h": [], "h2c": []}
        self.broken: dict[str, bool] = {"c2h": False, "h2c": False}
        self.delivered = 0
        self.budget = budget
        """Frames delivered before this link may fail (keeps failures from dominating)."""

    @property
    def may_fail(self) -> bool:
        return self.delivered >= self.budget

    def push(self, direction: str, frame: bytes) -> None:
        if not self.broken[direction]:
            self.queues[direction].append(frame)

    def break_at(self, direction: str, index: int) -> None:
        """Loss: this frame and every later one in ``direction`` vanish."""
        del self.queues[direction][index:]
        self.broken[direction] = True


def step(fn: Callable[..., None]) -> Callable[..., None]:
    """Mark the machine unclean while a rule runs (the invariant marks it clean)."""

    @functools.wraps(fn)
    def wrapper(self: SessionMachine, **kwargs: Any) -> None:
        self.clean = False
        fn(self, **kwargs)

    return wrapper


class SessionMachine(RuleBasedStateMachine):
    CLIENT_CAPACITY = 10_000
    HUB_RETENTION = 10_000
    RETENTION_SECONDS = 1e9
    SESSION_EXPIRY = 1e9
    WINDOW = 4
    MAX_BATCH = 5
    LOSSLESS = True
    """Retention is never exceeded: every resume must be exact."""
    CHECK_EVERY = 12
    """Messages sent between two mid-run drain-and-check steps."""

    def __init__(self) -> None:
        super().__init__()
        self.codec: Codec = JSON
        self.now = 0.0
        self.table = SessionTable(
            HubConfig(
                window=self.WINDOW,
                retention_messages=self.HUB_RETENTION,
                retention_seconds=self.RETENTION_SECONDS,
                session_expiry=self.SESSION_EXPIRY,
                anonymous_session_expiry=self.SESSION_EXPIRY,
            ),
            NullJournal(on_released=self.hub_released),
        )
        self.client: ClientSession[bytes] = ClientSession(
            CID, OutboundLog(capacity=self.CLIENT_CAPACITY)
        )
        self.link: Link | None = None
        self.window = self.WINDOW
        self.inbox: deque[tuple[Tag, int, int]] = deque()
        """Accepted by the client, not yet handed to its application: (tag, seq, data)."""
        self.client_sent: list[int] = []
        self.hub_sent: list[int] = []
        self.client_got: list[tuple[Tag, int]] = []
        self.hub_got: list[tuple[Tag, int]] = []
        self.hub_dropped: set[int] = set()
        """Hub messages dropped by retention (eviction, expiry, forgotten session)."""
        self.dropped_in_client_epoch = False
        """The hub dropped something since the client's current epoch began."""
        self.connects = 0
        self.checks = 0
        self.wakeups: list[float] = []
        """Instants the writers asked to be polled again (delayed acks)."""
        self.clean = True

    # -- helpers ---------------------------------------------------------------

    def hub_released(self, session: HubSession) -> None:
        """What the hub does when received messages become acknowledgeable."""
        link = self.link
        if link is not None and session.connection is link.conn:
            link.hub.released(self.now)

    @property
    def hub(self) -> HubSession | None:
        """The component's session on the hub, if any."""
        return self.table.by_id.get(CID)

    def client_tag(self) -> Tag:
        return (self.client.sid, self.client.epoch)

    @staticmethod
    def hub_tag(session: HubSession) -> Tag:
        return (session.sid, session.epoch)

    @staticmethod
    def retained(session: HubSession | None) -> dict[int, int]:
        """data -> seq of the hub messages a session still holds."""
        if session is None:
            return {}
        return {e.payload.body["data"]: e.seq for e in session.outbound.entries}

    def account_drops(self, before: dict[int, int], after: HubSession | None) -> None:
        lost = set(before) - set(self.retained(after))
        if lost:
            assert not self.LOSSLESS, f"retention dropped {sorted(lost)} in a lossless run"
            self.hub_dropped |= lost
            self.dropped_in_client_epoch = True

    def sent_total(self) -> int:
        return len(self.client_sent) + len(self.hub_sent)

    def live(self, direction: str) -> bool:
        return self.link is not None and bool(self.link.queues[direction])

    def hub_attached(self) -> bool:
        link = self.link
        return link is not None and link.session.connection is link.conn

    def rebuild(self, seq: int, bodies: list[Any], ack: int | None) -> bytes:
        codec = self.codec
        return codec.frame(
            "msg" if len(bodies) == 1 else "batch", seq, [codec.encode(b) for b in bodies], ack
        )

    # -- setup -----------------------------------------------------------------

    @initialize(codec=st.sampled_from([JSON, MSGPACK]), connect=st.booleans(), budget=BUDGETS)
    def setup(self, codec: Codec, connect: bool, budget: int = 0) -> None:
        self.codec = codec
        if connect:
            self.connect(welcome_lost=False, hub_notices=True, budget=budget)

    # -- the applications --------------------------------------------------------

    @precondition(lambda self: self.client.outbound.has_room)
    @rule()
    @step
    def client_sends(self) -> None:
        k = len(self.client_sent)
        body = {"type": "m", "to": PEER, "data": k}
        self.client.outbound.append(self.codec.encode(body), self.now)
        self.client_sent.append(k)

    @precondition(lambda self: self.hub is not None)
    @rule()
    @step
    def hub_sends(self) -> None:
        # Like TranscendentalExternalWebSocket._deliver: wait for room while the
        # target is connected (here: skip), evict the oldest while it is away.
        session = self.hub
        assert session is not None
        k = len(self.hub_sent)
        out = EncodedBody({"type": "m", "from": PEER, "to": CID, "data": k})
        if session.connected:
            if not session.outbound.has_room:
                return
            session.outbound.append(out, self.now)
        else:
            before = self.retained(session)
            session.outbound.append_evicting(out, self.now)
            self.account_drops(before, session)
        self.hub_sent.append(k)

    @precondition(lambda self: bool(self.inbox))
    @rule(n=st.integers(1, 4))
    @step
    def client_app_consumes(self, n: int) -> None:
        for _ in range(min(n, len(self.inbox))):
            tag, seq, data = self.inbox.popleft()
            self.client_got.append((tag, data))
            inbound = self.client.inbound
            # As the client's dispatcher: release what the application has taken.
            # The tag is (sid, epoch), not the epoch alone: a new session also
            # starts at epoch 1 (see test_core_client_inbox_epoch.py).
            if tag == self.client_tag() and seq > inbound.released:
                inbound.release(seq)
                if self.link is not None:
                    self.link.client.released(self.now)

    # -- writers -----------------------------------------------------------------

    @precondition(lambda self: self.link is not None)
    @rule(limit=st.integers(1, MAX_BATCH))
    @step
    def client_writes(self, limit: int) -> None:
        """The client's writer: one poll of its link protocol (at most ``limit`` per batch)."""
        assert self.link is not None
        self.write(self.link.client, "c2h", limit)

    @precondition(lambda self: self.hub_attached())
    @rule(limit=st.integers(1, MAX_BATCH))
    @step
    def hub_writes(self, limit: int) -> None:
        """The hub's writer: one poll of its link protocol."""
        assert self.link is not None
        self.write(self.link.hub, "h2c", limit)

    def write(self, protocol: LinkProtocol[Any], direction: str, limit: int) -> bool:
        """Poll once and queue the frame it asks for; False when it asks for nothing.

        Asking for nothing, it may still name an instant (a delayed ack): the
        drain lets time pass up to it.
        """
        assert self.link is not None
        protocol.max_batch = limit
        step = protocol.poll(self.now)
        codec = self.codec
        if type(step) is Deliver:
            assert not step.oversized
            self.link.push(direction, codec.frame(step.kind, step.seq, step.bodies, step.ack))
            return True
        if type(step) is SendAck:
            self.link.push(direction, codec.encode(Ack(step.seq).wire()))
            return True
        assert type(step) is Idle, step  # no fan-out window, no rate: nothing holds or yields
        self.wakeups.append(step.until)
        return False

    @rule(dt=st.sampled_from([0.001, 0.01, 0.03]))
    @step
    def clock_ticks(self, dt: float) -> None:
        """A little time passes (delayed acknowledgements fall due)."""
        self.now += dt

    # -- readers -----------------------------------------------------------------

    @precondition(lambda self: self.live("c2h"))
    @rule(n=st.integers(1, 3))
    @step
    def hub_reads(self, n: int) -> None:
        while n and self.live("c2h"):
            self.deliver_to_hub()
            n -= 1

    @precondition(lambda self: self.live("h2c"))
    @rule(n=st.integers(1, 3))
    @step
    def client_reads(self, n: int) -> None:
        while n and self.live("h2c"):
            self.deliver_to_client()
            n -= 1

    def deliver_to_hub(self) -> None:
        assert self.link is not None
        session = self.link.session
        assert session.connection is self.link.conn
        frame = parse_frame(self.codec.decode(self.link.queues["c2h"].pop(0)), sender="client")
        self.link.delivered += 1
        if isinstance(frame, MessageFrame):
            if frame.ack is not None:
                session.outbound.ack(frame.ack, sent_only=True)
            # As Router.admit: admitted (gap and window checked), routed body by body,
            # then the recorder releases what was processed (acknowledged once stored).
            inbound = session.inbound
            skip = inbound.admit(frame.seq, len(frame.bodies), self.WINDOW)
            for i in range(skip, len(frame.bodies)):
                body = frame.bodies[i]
                assert isinstance(body, dict)
                assert body.keys() == {"type", "to", "data"}
                self.hub_got.append((self.hub_tag(session), body["data"]))
                inbound.processed(frame.seq + i)
            if skip < len(frame.bodies):
                self.table.recorder.touched(session)
        else:
            assert isinstance(frame, Ack), frame
            session.outbound.ack(frame.seq, sent_only=True)

    def deliver_to_client(self) -> None:
        assert self.link is not None
        frame = parse_frame(self.codec.decode(self.link.queues["h2c"].pop(0)), sender="hub")
        self.link.delivered += 1
        client = self.client
        if isinstance(frame, MessageFrame):
            if frame.ack is not None:
                client.outbound.ack(frame.ack, sent_only=True)
            skip = client.inbound.accept(frame.seq, len(frame.bodies))
            for i in range(skip, len(frame.bodies)):
                body = frame.bodies[i]
                assert body["from"] == PEER
                self.inbox.append((self.client_tag(), frame.seq + i, body["data"]))
        else:
            assert isinstance(frame, Ack), frame
            client.outbound.ack(frame.seq, sent_only=True)

    # -- the unreliable link -------------------------------------------------------

    @precondition(lambda self: (self.live("c2h") or self.live("h2c")) and self.link.may_fail)  # type: ignore[union-attr]
    @rule(direction=DIRECTIONS, index=ANY_INDEX)
    @step
    def lose_frames(self, direction: str, index: int) -> None:
        assert self.link is not None
        queue = self.link.queues[direction]
        if queue:
            self.link.break_at(direction, index % len(queue))

    @precondition(lambda self: self.live("c2h") or self.live("h2c"))
    @rule(
        how=st.sampled_from(["duplicate", "split", "merge", "overlap"]),
        direction=DIRECTIONS,
        index=ANY_INDEX,
        other=ANY_INDEX,
    )
    @step
    def tamper(self, how: str, direction: str, index: int, other: int) -> None:
        """Duplicate a frame, or carry the same messages in other batches."""
        assert self.link is not None
        if not self.link.queues[direction]:
            return
        if how == "duplicate":
            self.duplicate_frame(direction, index, other)
        elif how == "split":
            self.split_batch(direction, index, other)
        elif how == "merge":
            self.merge_batches(direction, index)
        else:  # a copy of a frame merged with the next one: a partially new batch
            queue = self.link.queues[direction]
            i = index % len(queue)
            self.duplicate_frame(direction, i, 0)
            if i + 2 < len(queue):
                self.merge_batches(direction, i + 1)

    def duplicate_frame(self, direction: str, index: int, later: int) -> None:
        assert self.link is not None
        queue = self.link.queues[direction]
        if queue:
            i = index % len(queue)
            j = i + 1 + later % (len(queue) - i)
            queue.insert(j, queue[i])

    def split_batch(self, direction: str, index: int, at: int) -> None:
        assert self.link is not None
        queue = self.link.queues[direction]
        if not queue:
            return
        i = index % len(queue)
        frame = self.codec.decode(queue[i])
        if frame["t"] != "batch":
            return
        bodies, seq, ack = frame["m"], frame["seq"], frame.get("ack")
        k = 1 + at % (len(bodies) - 1)
        ack_first = at % 2 == 0
        first = self.rebuild(seq, bodies[:k], ack if ack_first else None)
        second = self.rebuild(seq + k, bodies[k:], None if ack_first else ack)
        queue[i : i + 1] = [first, second]

    def merge_batches(self, direction: str, index: int) -> None:
        assert self.link is not None
        queue = self.link.queues[direction]
        if len(queue) < 2:
            return
        i = index % (len(queue) - 1)
        a, b = self.codec.decode(queue[i]), self.codec.decode(queue[i + 1])
        if a["t"] not in ("msg", "batch") or b["t"] not in ("msg", "batch"):
            return
        a_bodies = [a["m"]] if a["t"] == "msg" else a["m"]
        b_bodies = [b["m"]] if b["t"] == "msg" else b["m"]
        offset = b["seq"] - a["seq"]
        if not 0 <= offset <= len(a_bodies):
            return  # only contiguous or overlapping runs merge into one frame
        assert a_bodies[offset : offset + len(b_bodies)] == b_bodies[: len(a_bodies) - offset]
        bodies = a_bodies + b_bodies[len(a_bodies) - offset :]
        acks = [f["ack"] for f in (a, b) if f.get("ack") is not None]
        ack = max(acks) if acks else None
        queue[i : i + 2] = [self.rebuild(a["seq"], bodies, ack)]

    @precondition(lambda self: self.link is not None and self.link.may_fail)
    @rule(hub_notices=st.booleans())
    @step
    def link_dies(self, hub_notices: bool) -> None:
        """Both directions lose everything in flight; the client notices now."""
        assert self.link is not None
        link, self.link = self.link, None
        if hub_notices and link.session.connection is link.conn:
            link.session.detach(self.now)

    @precondition(lambda self: self.hub_attached() and self.link.may_fail)  # type: ignore[union-attr]
    @rule()
    @step
    def hub_drops_link(self) -> None:
        """The hub gives up on the link (heartbeat); the client notices later."""
        assert self.link is not None
        for direction in ("c2h", "h2c"):
            self.link.break_at(direction, 0)
        self.link.session.detach(self.now)

    @precondition(
        lambda self: (
            self.hub is not None
            and self.hub.connected
            and (self.link is None or self.link.conn is not self.hub.connection)
        )
    )
    @rule()
    @step
    def hub_notices_dead_link(self) -> None:
        session = self.hub
        assert session is not None
        session.detach(self.now)

    @precondition(lambda self: not self.LOSSLESS)
    @rule(dt=st.sampled_from([0.5, 3.0, 20.0]), sweep=st.booleans())
    @step
    def time_passes(self, dt: float, sweep: bool) -> None:
        self.now += dt
        if sweep:
            before = self.retained(self.hub)
            self.table.expire(self.now)
            self.account_drops(before, self.hub)

    # -- handshake -----------------------------------------------------------------

    @precondition(lambda self: self.link is None)
    @rule(welcome_lost=st.booleans(), hub_notices=st.booleans(), budget=BUDGETS)
    @step
    def reconnect(self, welcome_lost: bool, hub_notices: bool, budget: int = 0) -> None:
        self.connect(welcome_lost=welcome_lost, hub_notices=hub_notices, budget=budget)

    def connect(self, *, welcome_lost: bool, hub_notices: bool, budget: int = 0) -> None:
        assert self.link is None
        codec = self.codec
        hello = parse_frame(codec.decode(codec.encode(self.client.hello().wire())), sender="client")
        assert isinstance(hello, Hello)
        assert hello == self.client.hello()
        old = self.hub
        before = self.retained(old)
        expect_replaced = old.connection if old is not None else None
        # Recovery is owed exactly when the hub still holds the client's epoch
        # and has dropped nothing from it (not even while answering this hello).
        owed = (
            old is not None
            and hello.sid is not None
            and self.hub_tag(old) == self.client_tag()
            and not self.dropped_in_client_epoch
        )
        opened = self.table.open(hello, self.now)
        session = opened.session
        assert self.hub is session
        assert opened.replaced is expect_replaced
        assert opened.resumed == (hello.sid is not None)
        assert not session.connected
        if opened.recovered:
            # hello.ack acknowledged (and removed) everything the client received.
            before = {d: s for d, s in before.items() if s > hello.ack}
        lost = set(before) - set(self.retained(session))
        self.account_drops(before, session)
        forgotten = old is not None and session is not old and hello.sid == old.sid
        assert opened.recovered == (owed and not lost and not forgotten), (opened, owed, lost)
        if self.LOSSLESS and hello.sid is not None:
            assert opened.recovered
        conn = Handle()
        session.attach(conn, self.now)  # as serve_link: the hub's acks restart at released
        welcome = Welcome(
            id=session.component_id,
            sid=session.sid,
            epoch=session.epoch,
            recovered=opened.recovered,
            ack=session.inbound.released,
            hb=5000,
            window=self.WINDOW,
            max_size=1 << 20,
            node="hub-test",
        )
        if welcome_lost:
            if hub_notices:
                session.detach(self.now)
            return
        parsed = parse_frame(codec.decode(codec.encode(welcome.wire())), sender="hub")
        assert parsed == welcome
        assert isinstance(parsed, Welcome)
        first = self.client.sid is None
        result = self.client.welcome(parsed)
        # As TranscendentalWebSocket._open_link: the hello's ack covered what we hold.
        self.client.inbound.acked = self.client.inbound.released
        assert result.recovered == opened.recovered
        assert result.first_connect == first
        assert self.client_tag() == self.hub_tag(session)
        out = self.client.outbound
        assert result.replay == out.unsent == out.last_seq - out.acked == len(out)
        if not result.recovered:
            self.dropped_in_client_epoch = False
            assert [e.seq for e in out.entries] == list(range(1, len(out) + 1))
        self.window = parsed.window
        client: LinkProtocol[bytes] = LinkProtocol(
            self.client.outbound,
            self.client.inbound,
            window=parsed.window,
            max_frame=parsed.max_size,
            encode=bytes,
            max_batch=self.MAX_BATCH,
        )
        codec = self.codec
        hub: LinkProtocol[EncodedBody] = LinkProtocol(
            session.outbound,
            session.inbound,
            window=self.WINDOW,
            max_frame=1 << 20,
            encode=lambda out: out.encoded(codec),
            max_batch=self.MAX_BATCH,
        )
        self.link = Link(conn, session, budget, client, hub)
        self.connects += 1

    # -- the guarantees ----------------------------------------------------------------

    @precondition(lambda self: self.sent_total() >= self.CHECK_EVERY * (self.checks + 1))
    @rule()
    @step
    def reconnect_drain_and_check(self) -> None:
        """After a clean reconnect and draining, everyone has everything."""
        self.checks += 1
        if self.link is not None:
            self.link_dies(hub_notices=True)
        if self.hub is not None and self.hub.connected:
            self.hub.detach(self.now)
        self.connect(welcome_lost=False, hub_notices=True)
        link = self.link
        assert link is not None
        session = link.session
        for _ in range(100_000):
            progress = False
            while self.write(link.client, "c2h", self.MAX_BATCH):
                progress = True
            while self.write(link.hub, "h2c", self.MAX_BATCH):
                progress = True
            for direction, deliver in (
                ("h2c", self.deliver_to_client),
                ("c2h", self.deliver_to_hub),
            ):
                while link.queues[direction]:
                    deliver()
                    progress = True
            if self.inbox:
                self.client_app_consumes(n=len(self.inbox))
                progress = True
            due = [t for t in self.wakeups if t > self.now and t != float("inf")]
            self.wakeups.clear()
            if not progress and due:
                self.now = min(due)  # a delayed ack falls due
                progress = True
            if not progress:
                break
        else:
            raise AssertionError("draining did not settle")
        # Everything was delivered and acknowledged.
        assert not link.queues["c2h"]
        assert not link.queues["h2c"]
        assert not self.inbox
        assert len(self.client.outbound) == 0
        assert len(session.outbound) == 0
        client_data = [d for _, d in self.client_got]
        hub_data = [d for _, d in self.hub_got]
        if self.LOSSLESS:
            assert client_data == self.hub_sent
            assert hub_data == self.client_sent
        else:
            assert set(client_data) | self.hub_dropped == set(self.hub_sent)
            assert set(hub_data) == set(self.client_sent)

    def teardown(self) -> None:
        if self.clean:
            self.reconnect_drain_and_check()

    @invariant()
    def streams_are_clean(self) -> None:
        self.clean = False
        if self.LOSSLESS:
            client_data = [d for _, d in self.client_got]
            hub_data = [d for _, d in self.hub_got]
            assert client_data == self.hub_sent[: len(client_data)]
            assert hub_data == self.client_sent[: len(hub_data)]
            assert not self.hub_dropped
        check_segments(self.client_got, len(self.hub_sent), self.hub_dropped)
        check_segments(self.hub_got, len(self.client_sent), set())
        self.clean = True

    @invariant()
    def bookkeeping_is_consistent(self) -> None:
        self.clean = False
        out = self.client.outbound
        assert 0 <= out.acked <= out.sent <= out.last_seq
        assert [e.seq for e in out.entries] == list(range(out.acked + 1, out.last_seq + 1))
        assert not out.truncated
        if self.link is not None:
            assert 0 <= out.in_flight <= self.window
        session = self.hub
        if session is not None:
            log = session.outbound
            assert 0 <= log.acked <= log.sent <= log.last_seq
            seqs = [e.seq for e in log.entries]
            assert seqs == list(range(log.acked + 1, log.last_seq + 1))
            if self.hub_attached():
                assert 0 <= log.in_flight <= self.window
            if self.hub_tag(session) == self.client_tag():
                # Acknowledgements never cover what the other side does not hold.
                if not log.truncated:  # dropping counts as acknowledged
                    assert log.acked <= self.client.inbound.received
                assert out.acked <= session.inbound.released
                assert session.inbound.received <= out.last_seq
                assert self.client.inbound.received <= log.last_seq
        self.clean = True


def check_segments(got: list[tuple[Tag, int]], n_sent: int, dropped: set[int]) -> None:
    """Per epoch: in order, no duplicates, no gaps; gaps only over dropped messages."""
    seen_tags: set[Tag] = set()
    received: set[int] = set()
    prev_tag: Tag | None = None
    prev = -1
    for tag, d in got:
        assert 0 <= d < n_sent
        if tag == prev_tag:
            assert d == prev + 1, f"epoch {tag}: {d} after {prev}"
        else:
            assert tag not in seen_tags, f"epoch {tag} came back"
            seen_tags.add(tag)
        received.add(d)
        prev_tag, prev = tag, d
    if received:
        missing = set(range(max(received) + 1)) - received
        assert missing <= dropped, f"silent gap: {sorted(missing - dropped)}"


class LossySessionMachine(SessionMachine):
    """Tiny capacities and short retention: eviction and expiry while away."""

    CLIENT_CAPACITY = 3
    HUB_RETENTION = 3
    RETENTION_SECONDS = 10.0
    SESSION_EXPIRY = 40.0
    WINDOW = 2
    MAX_BATCH = 3
    LOSSLESS = False
    CHECK_EVERY = 8


STATEFUL = settings(
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    derandomize=True,
    database=None,
)

TestSessionOverUnreliableLink = SessionMachine.TestCase
TestSessionOverUnreliableLink.settings = STATEFUL
TestSessionWithTinyRetention = LossySessionMachine.TestCase
TestSessionWithTinyRetention.settings = STATEFUL


# --------------------------------------------------------------------------- scripted


def test_overflow_while_disconnected_is_never_a_silent_gap() -> None:
    m = LossySessionMachine()
    m.setup(codec=MSGPACK, connect=True)
    for _ in range(2):
        m.hub_sends()
    m.hub_writes(limit=1)
    m.deliver_to_client()  # the client holds message 0
    m.link_dies(hub_notices=True)
    for _ in range(4):
        m.hub_sends()  # 0, 1 and 2 are evicted: the log holds 3, 4, 5
    assert m.hub_dropped == {0, 1, 2}
    assert m.hub is not None
    assert m.hub.outbound.truncated
    m.client_sends()
    m.reconnect(welcome_lost=False, hub_notices=True)  # asserts recovered == False
    assert m.client.epoch == 2
    m.reconnect_drain_and_check()
    assert [d for _, d in m.client_got] == [0, 3, 4, 5]
    assert [tag[1] for tag, _ in m.client_got] == [1, 2, 2, 2]
    assert [d for _, d in m.hub_got] == [0]
    m.streams_are_clean()
    m.bookkeeping_is_consistent()


def test_welcome_lost_then_resume() -> None:
    m = SessionMachine()
    m.setup(codec=JSON, connect=True)
    m.client_sends()
    m.hub_sends()
    m.client_writes(limit=5)
    m.hub_writes(limit=5)
    m.deliver_to_hub()
    m.deliver_to_client()
    m.link_dies(hub_notices=False)
    m.reconnect(welcome_lost=True, hub_notices=False)  # hub took the session over
    m.hub_sends()
    m.reconnect(welcome_lost=False, hub_notices=False)
    assert m.client.epoch == 1
    m.reconnect_drain_and_check()
    assert [d for _, d in m.client_got] == [0, 1]
    assert [d for _, d in m.hub_got] == [0]


def test_rebatching_and_duplicates_are_tolerated() -> None:
    m = SessionMachine()
    m.setup(codec=JSON, connect=True)
    for _ in range(4):
        m.hub_sends()
    m.hub_writes(limit=4)  # one batch: 1..4
    m.split_batch(direction="h2c", index=0, at=1)  # 1..2 | 3..4
    m.duplicate_frame(direction="h2c", index=0, later=1)  # 1..2 | 3..4 | 1..2
    m.merge_batches(direction="h2c", index=1)  # 1..2 | 3..4 + 1..2 do not merge
    m.client_reads(n=1)
    m.merge_batches(direction="h2c", index=0)  # 3..4 | 1..2 (not contiguous)
    m.client_reads(n=2)
    assert [d for _, seq, d in m.inbox] == [0, 1, 2, 3]
    m.reconnect_drain_and_check()
