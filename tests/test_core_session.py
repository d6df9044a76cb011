"""Unit tests of the sans-IO session core: OutboundLog, InboundTracker, ClientSession,
and the hub's SessionTable resume rules (docs/protocol.md sections 3 and 4)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genesis_trio._core.config import HubConfig
from genesis_trio._core.errors import CloseCode, ErrorCode, LocalProtocolError, RemoteProtocolError
from genesis_trio._core.frames import Hello, Welcome
from genesis_trio._core.session import (
    NO_ENTRIES,
    UNBOUNDED,
    ClientSession,
    InboundTracker,
    OutboundLog,
    ResumeResult,
    new_session_id,
)
from genesis_trio._hub.journal import NullJournal
from genesis_trio._hub.sessions import EncodedBody, HubSession, SessionTable

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None)
"""Hypothesis runs the same examples every time (no flaky runs, no example database)."""


def seqs(log: OutboundLog[Any]) -> list[int]:
    return [e.seq for e in log.entries]


def filled(n: int, capacity: int = 100, stamp: float = 0.0) -> OutboundLog[str]:
    log: OutboundLog[str] = OutboundLog(capacity=capacity)
    for i in range(1, n + 1):
        assert log.append(f"p{i}", stamp) == i
    return log


def assert_violation(excinfo: pytest.ExceptionInfo[RemoteProtocolError]) -> None:
    assert excinfo.value.code is ErrorCode.SEQUENCE
    assert excinfo.value.close_code is CloseCode.SESSION_VIOLATION


# --------------------------------------------------------------------------- OutboundLog


class TestOutboundLog:
    def test_empty_log(self) -> None:
        log: OutboundLog[str] = OutboundLog(capacity=3)
        assert len(log) == 0
        assert log.has_room
        assert (log.last_seq, log.acked, log.sent) == (0, 0, 0)
        assert log.unsent == 0
        assert log.in_flight == 0
        assert log.take(10) == []
        assert not log.truncated
        assert list(log.payloads()) == []

    def test_append_numbers_from_one_and_records_stamp(self) -> None:
        log: OutboundLog[str] = OutboundLog(capacity=5)
        assert log.append("a", 1.5) == 1
        assert log.append("b", 2.5) == 2
        assert seqs(log) == [1, 2]
        assert [e.stamp for e in log.entries] == [1.5, 2.5]
        assert list(log.payloads()) == ["a", "b"]
        assert log.last_seq == 2
        assert log.unsent == 2

    def test_append_when_full_is_a_local_error(self) -> None:
        log = filled(2, capacity=2)
        assert not log.has_room
        with pytest.raises(LocalProtocolError):
            log.append("x", 0.0)
        assert log.last_seq == 2
        assert len(log) == 2

    def test_take_in_order_respecting_limit(self) -> None:
        log = filled(5)
        first = log.take(2)
        assert [e.seq for e in first] == [1, 2]
        assert [e.payload for e in first] == ["p1", "p2"]
        assert log.sent == 2
        assert log.unsent == 3
        assert log.in_flight == 2
        assert [e.seq for e in log.take(10)] == [3, 4, 5]
        assert log.take(10) == []
        assert log.in_flight == 5
        assert log.unsent == 0

    def test_take_zero_or_negative_limit_takes_nothing(self) -> None:
        log = filled(3)
        assert log.take(0) == []
        assert log.take(-1) == []
        assert log.sent == 0

    def test_take_after_partial_ack(self) -> None:
        log = filled(6)
        log.take(3)
        assert log.ack(2) == 2
        assert [e.seq for e in log.take(2)] == [4, 5]
        assert [e.seq for e in log.take(5)] == [6]

    def test_ack_releases_cumulatively(self) -> None:
        log = filled(5)
        log.take(5)
        assert log.ack(3) == 3
        assert seqs(log) == [4, 5]
        assert log.acked == 3
        assert log.in_flight == 2
        assert log.ack(5) == 2
        assert len(log) == 0
        assert log.in_flight == 0
        assert log.has_room

    def test_stale_and_repeated_acks_are_ignored(self) -> None:
        log = filled(5)
        log.take(5)
        log.ack(3)
        assert log.ack(3) == 0
        assert log.ack(1) == 0
        assert log.ack(0) == 0
        assert log.acked == 3
        assert seqs(log) == [4, 5]

    def test_ack_of_unsent_message_advances_sent(self) -> None:
        # The peer may acknowledge what an earlier link carried (after rewind).
        log = filled(4)
        log.take(4)
        log.rewind()
        assert log.sent == 0
        assert log.ack(2) == 2
        assert log.sent == 2
        assert [e.seq for e in log.take(10)] == [3, 4]

    @pytest.mark.parametrize(("appended", "ack"), [(0, 1), (3, 4), (3, 100)])
    def test_ack_beyond_last_seq_is_a_session_violation(self, appended: int, ack: int) -> None:
        log = filled(appended)
        log.take(appended)
        with pytest.raises(RemoteProtocolError) as excinfo:
            log.ack(ack)
        assert_violation(excinfo)
        assert log.acked == 0
        assert len(log) == appended

    def test_rewind_replays_everything_unacknowledged(self) -> None:
        log = filled(5)
        log.take(5)
        log.ack(2)
        log.rewind()
        assert log.sent == 2
        assert log.unsent == 3
        assert log.in_flight == 0
        assert [e.seq for e in log.take(10)] == [3, 4, 5]

    def test_renumber_starts_a_new_epoch(self) -> None:
        log = filled(6)
        log.take(6)
        log.ack(4)
        log.renumber()
        assert seqs(log) == [1, 2]
        assert list(log.payloads()) == ["p5", "p6"]
        assert (log.last_seq, log.acked, log.sent) == (2, 0, 0)
        assert [e.payload for e in log.take(10)] == ["p5", "p6"]
        assert log.append("p7", 0.0) == 3

    def test_renumber_clears_truncated(self) -> None:
        log = filled(2, capacity=2)
        log.append_evicting("p3", 0.0)
        assert log.truncated
        log.renumber()
        assert not log.truncated
        assert seqs(log) == [1, 2]
        assert list(log.payloads()) == ["p2", "p3"]

    def test_renumber_of_empty_log(self) -> None:
        log = filled(3)
        log.take(3)
        log.ack(3)
        log.renumber()
        assert (log.last_seq, log.acked, log.sent) == (0, 0, 0)
        assert log.append("x", 0.0) == 1

    def test_append_evicting_with_room_drops_nothing(self) -> None:
        log = filled(1, capacity=3)
        assert log.append_evicting("p2", 0.0) == (2, 0)
        assert not log.truncated

    def test_append_evicting_drops_oldest_and_marks_truncated(self) -> None:
        log = filled(3, capacity=3)
        assert log.append_evicting("p4", 0.0) == (4, 1)
        assert log.truncated
        assert seqs(log) == [2, 3, 4]
        # The dropped message counts as gone: acked and sent move past it.
        assert log.acked == 1
        assert log.sent == 1
        assert [e.seq for e in log.take(10)] == [2, 3, 4]

    def test_append_evicting_after_partial_send(self) -> None:
        log = filled(3, capacity=3)
        log.take(2)
        log.append_evicting("p4", 0.0)
        assert log.sent == 2  # not moved backwards
        assert [e.seq for e in log.take(10)] == [3, 4]

    def test_stale_ack_for_evicted_message_is_ignored(self) -> None:
        log = filled(2, capacity=2)
        log.append_evicting("p3", 0.0)
        assert log.ack(1) == 0
        assert log.ack(2) == 1
        assert seqs(log) == [3]

    def test_expire_drops_only_messages_older_than_cutoff(self) -> None:
        log: OutboundLog[str] = OutboundLog(capacity=10)
        for i, stamp in enumerate([1.0, 2.0, 3.0, 4.0], start=1):
            log.append(f"p{i}", stamp)
        assert log.expire(1.0) == 0  # strictly older only
        assert not log.truncated
        assert log.expire(3.0) == 2
        assert log.truncated
        assert seqs(log) == [3, 4]
        assert log.acked == 2
        assert log.expire(100.0) == 2
        assert len(log) == 0
        assert log.acked == 4
        assert log.take(5) == []

    def test_durable_bounds_what_may_be_sent(self) -> None:
        log = filled(5)
        assert log.durable == UNBOUNDED  # no store: everything is sendable
        log.durable = 2
        assert [e.seq for e in log.take(10)] == [1, 2]
        assert log.take(10) == []
        log.durable = 4
        assert [e.seq for e in log.take(10)] == [3, 4]
        log.durable = 3  # never below what was already sent
        assert log.take(10) == []
        log.durable = 10
        assert [e.seq for e in log.take(10)] == [5]

    def test_durable_and_rewind(self) -> None:
        log = filled(4)
        log.durable = 3
        log.take(10)
        log.ack(1)
        log.rewind()
        assert [e.seq for e in log.take(10)] == [2, 3]

    def test_max_bytes_bounds_room_and_eviction(self) -> None:
        log: OutboundLog[str] = OutboundLog(capacity=100, max_bytes=10)
        log.append("a", 0.0, 4)
        log.append("b", 0.0, 4)
        assert log.has_room  # under the bound: one more may go in
        assert log.size == 8
        log.append("c", 0.0, 4)
        assert not log.has_room
        assert log.size == 12
        with pytest.raises(LocalProtocolError):
            log.append("d", 0.0, 1)
        assert log.append_evicting("e", 0.0, 5) == (4, 2)  # a and b make room
        assert [e.payload for e in log.entries] == ["c", "e"]
        assert log.size == 9
        assert log.truncated
        log.ack(3)
        assert log.size == 5
        log.ack(4)
        assert log.size == 0
        assert log.has_room

    def test_one_message_larger_than_max_bytes_still_fits_an_empty_log(self) -> None:
        log: OutboundLog[str] = OutboundLog(capacity=100, max_bytes=10)
        assert log.append_evicting("huge", 0.0, 50) == (1, 0)
        assert log.size == 50
        assert not log.has_room
        assert log.append_evicting("next", 0.0, 1) == (2, 1)
        assert log.size == 1

    def test_expire_on_empty_log(self) -> None:
        log: OutboundLog[str] = OutboundLog(capacity=1)
        assert log.expire(1e9) == 0
        assert not log.truncated

    @DETERMINISTIC
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("append")),
                st.tuples(st.just("take"), st.integers(0, 4)),
                st.tuples(st.just("ack"), st.integers(0, 40)),
                st.tuples(st.just("rewind")),
                st.tuples(st.just("evict")),
            ),
            max_size=60,
        )
    )
    def test_bookkeeping_invariants(self, ops: list[tuple[Any, ...]]) -> None:
        log: OutboundLog[int] = OutboundLog(capacity=5)
        taken: list[int] = []
        for op in ops:
            if op[0] == "append" and log.has_room:
                log.append(log.last_seq + 1, 0.0)
            elif op[0] == "take":
                out = log.take(op[1])
                got = [e.seq for e in out]
                # Contiguous, starting right after what was sent before.
                assert got == list(range(log.sent - len(got) + 1, log.sent + 1))
                taken.extend(got)
            elif op[0] == "ack":
                if op[1] > log.last_seq:
                    with pytest.raises(RemoteProtocolError):
                        log.ack(op[1])
                else:
                    log.ack(op[1])
            elif op[0] == "rewind":
                log.rewind()
            elif op[0] == "evict":
                log.append_evicting(log.last_seq + 1, 0.0)
            assert 0 <= log.acked <= log.sent <= log.last_seq
            assert len(log) <= log.capacity
            assert seqs(log) == list(range(log.acked + 1, log.last_seq + 1))
            assert [e.payload for e in log.entries] == seqs(log)
            if not log.truncated:
                assert len(log) == log.last_seq - log.acked


# --------------------------------------------------------------------------- InboundTracker


class TestInboundTracker:
    def test_in_order_messages_are_accepted(self) -> None:
        t = InboundTracker()
        assert t.accept(1) == 0
        assert t.accept(2, 3) == 0
        assert t.received == 4
        assert t.released == 0

    def test_duplicates_are_skipped(self) -> None:
        t = InboundTracker()
        t.accept(1, 5)
        assert t.accept(3) == 1
        assert t.accept(1, 5) == 5
        assert t.accept(5) == 1
        assert t.received == 5

    def test_partial_duplicate_batch_skips_leading_part(self) -> None:
        t = InboundTracker()
        t.accept(1, 5)
        assert t.accept(4, 4) == 2  # 4, 5 are duplicates; 6, 7 are new
        assert t.received == 7
        assert t.accept(7, 1) == 1
        assert t.accept(8, 0) == 0
        assert t.received == 7

    @pytest.mark.parametrize(("received", "seq"), [(0, 2), (5, 7), (5, 100)])
    def test_gap_is_a_session_violation(self, received: int, seq: int) -> None:
        t = InboundTracker()
        if received:
            t.accept(1, received)
        with pytest.raises(RemoteProtocolError) as excinfo:
            t.accept(seq, 3)
        assert_violation(excinfo)
        assert t.received == received

    def test_admit_then_process_one_by_one(self) -> None:
        t = InboundTracker()
        assert t.admit(1, 3, window=10) == 0
        assert (t.admitted, t.received) == (3, 0)
        assert t.admit(2, 4, window=10) == 2  # 2, 3 already admitted; 4, 5 are new
        assert t.admitted == 5
        t.processed(1)
        t.processed(2)
        assert t.received == 2
        with pytest.raises(RemoteProtocolError) as excinfo:
            t.admit(7, 1, window=10)  # 6 is missing
        assert_violation(excinfo)

    def test_admit_enforces_the_window_from_the_last_ack_sent(self) -> None:
        t = InboundTracker()
        t.admit(1, 4, window=4)
        with pytest.raises(RemoteProtocolError) as excinfo:
            t.admit(5, 1, window=4)  # five unacknowledged: one too many
        assert_violation(excinfo)
        for n in range(1, 5):
            t.processed(n)
        t.release(4)
        t.take_ack()
        assert t.admit(5, 4, window=4) == 0  # the ack made room for four more

    def test_new_link_forgets_what_was_admitted_but_not_processed(self) -> None:
        t = InboundTracker()
        t.admit(1, 5, window=10)
        t.processed(1)
        t.release(1)
        t.new_link()
        assert (t.admitted, t.received, t.acked) == (1, 1, 1)
        assert t.admit(2, 4, window=10) == 0  # sent again after the resume: not duplicates

    def test_release_and_take_ack(self) -> None:
        t = InboundTracker()
        t.accept(1, 4)
        assert t.released == 0  # received is not released
        t.release(2)
        assert t.take_ack() == 2
        assert t.acked == 2
        t.release(4)
        assert t.take_ack() == 4
        assert t.acked == t.released == 4

    def test_release_never_goes_backwards(self) -> None:
        t = InboundTracker()
        t.accept(1, 4)
        t.release(4)
        t.release(2)
        assert t.released == 4

    def test_release_beyond_received_is_a_local_error(self) -> None:
        t = InboundTracker()
        t.accept(1, 2)
        with pytest.raises(LocalProtocolError):
            t.release(3)
        assert t.released == 0

    def test_reset(self) -> None:
        t = InboundTracker()
        t.accept(1, 3)
        t.release(3)
        t.take_ack()
        t.reset()
        assert (t.received, t.released, t.acked) == (0, 0, 0)
        assert t.accept(1) == 0

    @DETERMINISTIC
    @given(st.lists(st.tuples(st.integers(1, 30), st.integers(1, 6)), max_size=40))
    def test_accept_matches_a_set_model(self, frames: list[tuple[int, int]]) -> None:
        t = InboundTracker()
        have: list[int] = []
        for seq, count in frames:
            if seq > t.received + 1:
                with pytest.raises(RemoteProtocolError):
                    t.accept(seq, count)
                continue
            skip = t.accept(seq, count)
            new = [n for n in range(seq, seq + count) if n not in have]
            assert new == list(range(seq + skip, seq + count))
            have.extend(new)
            assert have == list(range(1, t.received + 1))


# --------------------------------------------------------------------------- ClientSession


def welcome(
    sid: str = "S1",
    epoch: int = 1,
    *,
    recovered: bool = False,
    ack: int = 0,
    cid: str = "comp",
) -> Welcome:
    return Welcome(
        id=cid,
        sid=sid,
        epoch=epoch,
        recovered=recovered,
        ack=ack,
        hb=5000,
        window=100,
        max_size=1 << 20,
    )


def client(n_msgs: int = 0, cid: str | None = "comp") -> ClientSession[str]:
    session: ClientSession[str] = ClientSession(cid, OutboundLog(capacity=100))
    for i in range(1, n_msgs + 1):
        session.outbound.append(f"c{i}", 0.0)
    return session


class TestClientSession:
    def test_new_session_id_is_unique_and_url_safe(self) -> None:
        ids = {new_session_id() for _ in range(50)}
        assert len(ids) == 50
        for sid in ids:
            assert len(sid) >= 20
            assert set(sid) <= set(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            )

    def test_first_hello(self) -> None:
        s = client()
        s.topics = {"b.2", "a.1"}
        h = s.hello("tok")
        assert h == Hello(
            id="comp", sid=None, epoch=0, ack=0, topics=("a.1", "b.2"), token="tok", v=1
        )
        assert s.hello().token is None

    def test_first_welcome_adopts_session_and_keeps_queued_messages(self) -> None:
        s = client(3)
        result = s.welcome(welcome("S1", 1))
        assert result == ResumeResult(recovered=False, replay=3, first_connect=True)
        assert (s.sid, s.epoch) == ("S1", 1)
        assert seqs(s.outbound) == [1, 2, 3]
        assert [e.payload for e in s.outbound.take(10)] == ["c1", "c2", "c3"]

    def test_anonymous_client_adopts_assigned_id(self) -> None:
        s = client(cid=None)
        assert s.hello().id is None
        s.welcome(welcome(cid="anon-abc"))
        assert s.component_id == "anon-abc"
        assert s.hello().id == "anon-abc"

    def test_hello_after_welcome_carries_session_and_received(self) -> None:
        s = client()
        s.welcome(welcome("S1", 3))
        s.inbound.accept(1, 7)
        s.inbound.release(5)
        h = s.hello()
        assert (h.sid, h.epoch) == ("S1", 3)
        assert h.ack == 7  # highest received, not released (docs/protocol.md 2.1)

    def test_recovered_welcome_acks_and_rewinds(self) -> None:
        s = client()
        s.welcome(welcome("S1", 1))
        for i in range(1, 6):
            s.outbound.append(f"c{i}", 0.0)
        s.outbound.take(5)
        s.outbound.ack(1)
        s.inbound.accept(1, 4)
        result = s.welcome(welcome("S1", 1, recovered=True, ack=3))
        assert result == ResumeResult(recovered=True, replay=2, first_connect=False)
        assert s.outbound.acked == 3
        assert [e.seq for e in s.outbound.take(10)] == [4, 5]  # same sequence numbers
        assert s.inbound.received == 4  # kept: the hub resumes after it

    def test_recovered_welcome_with_stale_ack_replays_from_our_ack(self) -> None:
        s = client()
        s.welcome(welcome("S1", 1))
        for i in range(1, 5):
            s.outbound.append(f"c{i}", 0.0)
        s.outbound.take(4)
        s.outbound.ack(3)
        result = s.welcome(welcome("S1", 1, recovered=True, ack=1))
        assert result.replay == 1
        assert [e.seq for e in s.outbound.take(10)] == [4]

    def test_recovered_welcome_acking_unsent_message_is_a_violation(self) -> None:
        s = client()
        s.welcome(welcome("S1", 1))
        s.outbound.append("c1", 0.0)
        with pytest.raises(RemoteProtocolError) as excinfo:
            s.welcome(welcome("S1", 1, recovered=True, ack=2))
        assert_violation(excinfo)

    def test_new_epoch_renumbers_unacked_and_resets_inbound(self) -> None:
        s = client()
        s.welcome(welcome("S1", 1))
        for i in range(1, 7):
            s.outbound.append(f"c{i}", 0.0)
        s.outbound.take(6)
        s.outbound.ack(4)
        s.inbound.accept(1, 9)
        s.inbound.release(9)
        s.inbound.take_ack()
        result = s.welcome(welcome("S1", 2, recovered=False))
        assert result == ResumeResult(recovered=False, replay=2, first_connect=False)
        assert (s.sid, s.epoch) == ("S1", 2)
        assert seqs(s.outbound) == [1, 2]
        assert [e.payload for e in s.outbound.take(10)] == ["c5", "c6"]
        assert (s.inbound.received, s.inbound.released, s.inbound.acked) == (0, 0, 0)
        assert s.hello().ack == 0

    def test_new_session_after_unknown_sid(self) -> None:
        s = client()
        s.welcome(welcome("S1", 1))
        s.outbound.append("c1", 0.0)
        result = s.welcome(welcome("S2", 1, recovered=False))
        assert not result.recovered
        assert not result.first_connect
        assert (s.sid, s.epoch) == ("S2", 1)
        assert [e.seq for e in s.outbound.take(5)] == [1]

    @pytest.mark.parametrize(
        ("held", "claimed"),
        [
            ((None, 0), ("S1", 0)),  # first connect: we hold nothing
            (("S1", 1), ("S2", 1)),  # another session
            (("S1", 1), ("S1", 2)),  # another epoch
        ],
    )
    def test_welcome_claiming_recovery_of_unknown_session_is_a_violation(
        self, held: tuple[str | None, int], claimed: tuple[str, int]
    ) -> None:
        s = client(2)
        if held[0] is not None:
            s.welcome(welcome(held[0], held[1]))
        before = (s.sid, s.epoch, s.outbound.last_seq)
        with pytest.raises(RemoteProtocolError) as excinfo:
            s.welcome(welcome(claimed[0], claimed[1], recovered=True))
        assert_violation(excinfo)
        assert (s.sid, s.epoch, s.outbound.last_seq) == before

    def test_welcome_for_another_component_is_a_violation(self) -> None:
        s = client(cid="comp")
        with pytest.raises(RemoteProtocolError) as excinfo:
            s.welcome(welcome(cid="other"))
        assert_violation(excinfo)
        assert s.sid is None


# --------------------------------------------------------------------------- SessionTable


CONNECTED = object()  # stands in for a HubConnection: only identity matters here


def table(**options: Any) -> SessionTable:
    return SessionTable(HubConfig(**options), NullJournal(on_released=lambda session: None))


def push(session: HubSession, n: int, now: float = 0.0) -> None:
    for _ in range(n):
        i = session.outbound.last_seq + 1
        session.outbound.append(EncodedBody({"type": "m", "data": i}), now)


def datas(session: HubSession) -> list[Any]:
    return [p.body["data"] for p in session.outbound.payloads()]


def attach(session: HubSession) -> None:
    session.connection = CONNECTED  # type: ignore[assignment]


class TestSessionTable:
    def test_new_session(self) -> None:
        t = table()
        opened = t.open(Hello(id="a", topics=("x", "y")), 10.0)
        s = opened.session
        assert (opened.recovered, opened.resumed, opened.replaced, opened.carried_over) == (
            False,
            False,
            None,
            0,
        )
        assert s.component_id == "a"
        assert s.epoch == 1
        assert s.sid
        assert t.by_id == {"a": s}
        assert t.by_sid == {s.sid: s}
        assert len(t) == 1
        assert s.topics == {"x", "y"}
        assert t.subscribers == {"x": {s}, "y": {s}}
        assert s.disconnected_at is None
        assert not s.connected
        assert s.outbound.capacity == HubConfig().retention_messages

    def test_anonymous_hello_gets_an_assigned_id(self) -> None:
        t = table()
        a = t.open(Hello(), 0.0).session
        b = t.open(Hello(), 0.0).session
        assert a.component_id.startswith("anon-")
        assert b.component_id.startswith("anon-")
        assert a.component_id != b.component_id
        assert len(t) == 2

    def test_anonymous_hello_with_known_sid_resumes(self) -> None:
        t = table()
        s = t.open(Hello(), 0.0).session
        push(s, 2)
        s.outbound.take(2)
        s.detach(1.0)
        opened = t.open(Hello(sid=s.sid, epoch=1, ack=1), 2.0)
        assert opened.session is s
        assert opened.recovered
        assert len(t) == 1

    def test_exact_resume(self) -> None:
        t = table()
        s = t.open(Hello(id="a"), 0.0).session
        attach(s)
        push(s, 5)
        s.outbound.take(5)
        s.inbound.accept(1, 3)
        s.inbound.release(3)
        s.detach(1.0)
        assert s.disconnected_at == 1.0
        opened = t.open(Hello(id="a", sid=s.sid, epoch=1, ack=2, topics=("t",)), 2.0)
        assert opened.session is s
        assert (opened.recovered, opened.resumed, opened.replaced, opened.carried_over) == (
            True,
            True,
            None,
            0,
        )
        assert s.epoch == 1
        assert s.outbound.acked == 2
        assert s.outbound.unsent == 3  # rewound: 3, 4, 5 go again
        assert [e.seq for e in s.outbound.take(10)] == [3, 4, 5]
        assert s.inbound.released == 3  # kept: the welcome's ack
        assert s.disconnected_at is None
        assert s.topics == {"t"}

    @pytest.mark.parametrize("ack", [0, 5])
    def test_exact_resume_at_ack_bounds(self, ack: int) -> None:
        t = table()
        s = t.open(Hello(id="a"), 0.0).session
        push(s, 5)
        s.outbound.take(5)
        assert t.open(Hello(id="a", sid=s.sid, epoch=1, ack=ack), 0.0).recovered

    @pytest.mark.parametrize("epoch", [0, 2, 7])
    def test_resume_with_stale_epoch_starts_new_epoch(self, epoch: int) -> None:
        t = table()
        s = t.open(Hello(id="a"), 0.0).session
        push(s, 4)
        s.outbound.take(4)
        s.outbound.ack(1)
        s.inbound.accept(1, 3)
        s.inbound.release(3)
        opened = t.open(Hello(id="a", sid=s.sid, epoch=epoch, ack=1), 1.0)
        assert opened.session is s
        assert not opened.recovered
        assert opened.resumed
        assert s.epoch == 2
        assert t.by_sid[s.sid] is s
        # Unacknowledged messages are kept and renumbered from 1.
        assert seqs(s.outbound) == [1, 2, 3]
        assert datas(s) == [2, 3, 4]
        assert (s.outbound.acked, s.outbound.sent) == (0, 0)
        assert (s.inbound.received, s.inbound.released, s.inbound.acked) == (0, 0, 0)

    def test_resume_with_a_stale_ack_is_exact_and_ignores_it(self) -> None:
        t = table()
        s = t.open(Hello(id="a"), 0.0).session
        push(s, 5)
        s.outbound.take(5)
        s.outbound.ack(2)
        opened = t.open(Hello(id="a", sid=s.sid, epoch=1, ack=1), 1.0)  # behind ack 2
        assert opened.session is s
        assert opened.recovered
        assert opened.reason is None
        assert s.epoch == 1
        assert (s.outbound.acked, s.outbound.sent) == (2, 2)  # replay from 3

    def test_resume_with_an_impossible_ack_starts_a_new_epoch_and_says_why(self) -> None:
        t = table()
        s = t.open(Hello(id="a"), 0.0).session
        push(s, 5)
        s.outbound.take(5)
        opened = t.open(Hello(id="a", sid=s.sid, epoch=1, ack=6), 1.0)  # 6 was never sent
        assert opened.session is s
        assert not opened.recovered
        assert opened.reason == "ack"
        assert s.epoch == 2
        assert s.outbound.last_seq == 5

    def test_unknown_sid_and_unknown_component_starts_new_session(self) -> None:
        t = table()
        opened = t.open(Hello(id="a", sid="gone", epoch=4, ack=9), 0.0)
        assert not opened.recovered
        assert opened.resumed
        assert opened.session.sid != "gone"
        assert opened.session.epoch == 1
        assert opened.carried_over == 0

    def test_unknown_sid_for_known_component_replaces_and_carries_over(self) -> None:
        t = table()
        old = t.open(Hello(id="a", topics=("x",)), 0.0).session
        push(old, 5)
        old.outbound.take(5)
        old.outbound.ack(2)
        old.detach(1.0)
        opened = t.open(Hello(id="a", sid="stale", epoch=1), 2.0)
        new = opened.session
        assert new is not old
        assert not opened.recovered
        assert opened.resumed
        assert opened.replaced is None
        assert opened.carried_over == 3
        assert datas(new) == [3, 4, 5]
        assert seqs(new.outbound) == [1, 2, 3]
        assert new.epoch == 1
        assert t.by_id == {"a": new}
        assert t.by_sid == {new.sid: new}
        assert old.topics == set()
        assert t.subscribers == {}

    def test_hello_without_sid_replaces_live_connection(self) -> None:
        t = table()
        old = t.open(Hello(id="a", topics=("x",)), 0.0).session
        attach(old)
        push(old, 2)
        old.outbound.take(2)
        opened = t.open(Hello(id="a", topics=("y",)), 1.0)
        new = opened.session
        assert new is not old
        assert opened.replaced is CONNECTED
        assert not opened.recovered
        assert not opened.resumed
        assert opened.carried_over == 2
        assert datas(new) == [1, 2]
        assert new.outbound.unsent == 2
        assert not new.connected
        assert t.subscribers == {"y": {new}}

    def test_resume_of_connected_session_takes_it_over(self) -> None:
        t = table()
        s = t.open(Hello(id="a"), 0.0).session
        attach(s)
        push(s, 3)
        s.outbound.take(3)
        opened = t.open(Hello(id="a", sid=s.sid, epoch=1, ack=1), 1.0)
        assert opened.session is s
        assert opened.recovered
        assert opened.replaced is CONNECTED
        assert not s.connected
        assert s.disconnected_at is None
        assert [e.seq for e in s.outbound.take(10)] == [2, 3]

    def test_truncated_log_is_not_recovered(self) -> None:
        t = table(retention_messages=3)
        s = t.open(Hello(id="a"), 0.0).session
        attach(s)
        push(s, 2)
        s.outbound.take(2)
        s.detach(1.0)
        for i in (3, 4, 5):
            s.outbound.append_evicting(EncodedBody({"type": "m", "data": i}), 1.0)
        assert s.outbound.truncated
        opened = t.open(Hello(id="a", sid=s.sid, epoch=1, ack=0), 2.0)
        assert opened.session is s
        assert not opened.recovered
        assert s.epoch == 2
        assert not s.outbound.truncated
        assert datas(s) == [3, 4, 5]
        assert seqs(s.outbound) == [1, 2, 3]

    def test_truncation_even_of_received_messages_is_not_recovered(self) -> None:
        # The client received 1 and 2 (hello.ack=2), but dropped messages make the
        # hub conservative: whatever was dropped, the epoch restarts.
        t = table(retention_messages=2)
        s = t.open(Hello(id="a"), 0.0).session
        push(s, 2)
        s.outbound.take(2)
        s.detach(0.0)
        s.outbound.append_evicting(EncodedBody({"type": "m", "data": 3}), 0.0)
        opened = t.open(Hello(id="a", sid=s.sid, epoch=1, ack=2), 1.0)
        assert not opened.recovered

    def test_retention_seconds_expire_messages_on_resume(self) -> None:
        t = table(retention_seconds=10.0, session_expiry=100.0)
        s = t.open(Hello(id="a"), 0.0).session
        attach(s)
        push(s, 2, now=0.0)
        s.detach(1.0)
        push(s, 1, now=8.0)
        opened = t.open(Hello(id="a", sid=s.sid, epoch=1, ack=0), 15.0)
        assert opened.session is s
        assert not opened.recovered
        assert datas(s) == [3]

    def test_resume_within_retention_seconds_is_recovered(self) -> None:
        t = table(retention_seconds=10.0, session_expiry=100.0)
        s = t.open(Hello(id="a"), 0.0).session
        push(s, 2, now=0.0)
        s.detach(1.0)
        assert t.open(Hello(id="a", sid=s.sid, epoch=1, ack=0), 9.9).recovered

    def test_expired_session_is_forgotten_on_resume(self) -> None:
        t = table(retention_seconds=10.0, session_expiry=50.0)
        s = t.open(Hello(id="a", topics=("x",)), 0.0).session
        push(s, 3)
        s.detach(0.0)
        opened = t.open(Hello(id="a", sid=s.sid, epoch=1), 50.0)
        assert opened.session is not s
        assert not opened.recovered
        assert opened.resumed
        assert opened.carried_over == 0
        assert opened.session.sid != s.sid
        assert s.sid not in t.by_sid

    def test_connected_session_is_never_expired(self) -> None:
        t = table(retention_seconds=1.0, session_expiry=2.0)
        s = t.open(Hello(id="a"), 0.0).session
        attach(s)
        push(s, 2)
        assert t.expire(1000.0) == (0, 0)
        assert t.open(Hello(id="a", sid=s.sid, epoch=1), 1000.0).recovered

    def test_expire_sweep(self) -> None:
        t = table(retention_seconds=10.0, session_expiry=100.0)
        a = t.open(Hello(id="a"), 0.0).session
        b = t.open(Hello(id="b"), 0.0).session
        c = t.open(Hello(id="c"), 0.0).session
        attach(c)
        push(a, 2, now=0.0)
        push(b, 2, now=15.0)
        push(c, 2, now=0.0)
        a.detach(0.0)
        b.detach(15.0)
        assert t.expire(20.0) == (0, 2)  # a's messages are too old
        assert a.outbound.truncated
        assert not b.outbound.truncated
        assert t.expire(100.0) == (1, 2)  # a forgotten (0 left), b's two expire
        assert set(t.by_id) == {"b", "c"}
        assert t.expire(115.0) == (1, 0)
        assert set(t.by_id) == {"c"}

    def test_topics_follow_hello_and_remove(self) -> None:
        t = table()
        s = t.open(Hello(id="a", topics=("x", "y")), 0.0).session
        t.subscribe(s, ["z"])
        t.unsubscribe(s, ["x", "never"])
        assert s.topics == {"y", "z"}
        assert set(t.subscribers) == {"y", "z"}
        s.detach(0.0)
        t.open(Hello(id="a", sid=s.sid, epoch=1, topics=("x",)), 0.0)
        assert t.subscribers == {"x": {s}}
        t.remove(s)
        assert t.subscribers == {}
        assert len(t) == 0
        assert t.by_sid == {}

    def test_remove_of_replaced_session_keeps_the_new_one(self) -> None:
        t = table()
        old = t.open(Hello(id="a"), 0.0).session
        new = t.open(Hello(id="a"), 0.0).session
        t.remove(old)
        assert t.by_id == {"a": new}

    def test_outgoing_loaded_from_store_decodes_lazily(self) -> None:
        from genesis_trio._core.codec import JSON, MSGPACK

        packed = MSGPACK.encode({"type": "m", "data": "é"})
        out = EncodedBody.stored(7, packed)
        assert out.msg_id == 7
        assert out.encoded(MSGPACK) is packed  # no re-encoding for MessagePack clients
        assert JSON.decode(out.encoded(JSON)) == {"type": "m", "data": "é"}
        assert out.body == {"type": "m", "data": "é"}

    def test_table_without_journal_makes_logs_sendable_at_once(self) -> None:
        s = table().open(Hello(id="a"), 0.0).session
        assert s.outbound.durable == UNBOUNDED

    def test_outgoing_encodes_once_per_codec(self) -> None:
        from genesis_trio._core.codec import JSON, MSGPACK

        out = EncodedBody({"type": "m", "data": [1, 2]})
        j = out.encoded(JSON)
        m = out.encoded(MSGPACK)
        assert out.encoded(JSON) is j
        assert out.encoded(MSGPACK) is m
        assert JSON.decode(j) == MSGPACK.decode(m) == {"type": "m", "data": [1, 2]}


def test_an_empty_log_shares_one_empty_entries_and_gives_its_own_back() -> None:
    log: OutboundLog[str] = OutboundLog(capacity=10)
    other: OutboundLog[str] = OutboundLog(capacity=10)
    assert log.entries is NO_ENTRIES
    assert other.entries is NO_ENTRIES
    log.append("a", 0.0)
    log.append("b", 0.0)
    assert log.entries is not NO_ENTRIES
    assert other.entries is NO_ENTRIES
    assert not NO_ENTRIES
    assert log.take(10)[0].payload == "a"
    assert log.ack(1) == 1
    assert [e.payload for e in log.entries] == ["b"]
    assert log.ack(2) == 1
    assert log.entries is NO_ENTRIES
    assert log.size == 0
    assert log.append("c", 0.0) == 3
    assert [e.payload for e in log.entries] == ["c"]
    log.restore(4, "d", 0.0)
    assert [e.seq for e in log.entries] == [3, 4]
    with pytest.raises(AssertionError):
        NO_ENTRIES.append("x")
    assert not NO_ENTRIES
