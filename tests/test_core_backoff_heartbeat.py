"""Unit tests of the reconnect schedule, the circuit breaker and the heartbeat logic."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genesis_trio._core.backoff import BreakerState, CircuitBreaker, backoff
from genesis_trio._core.frames import Ping
from genesis_trio._core.heartbeat import Heartbeat, RttEstimator

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None)
"""Hypothesis runs the same examples every time (no flaky runs, no example database)."""

# --------------------------------------------------------------------------- backoff


@DETERMINISTIC
@given(
    initial=st.floats(0.001, 5.0),
    factor=st.floats(1.0, 4.0),
    extra=st.floats(0.0, 50.0),
    seed=st.integers(0, 2**32),
)
def test_backoff_bounds(initial: float, factor: float, extra: float, seed: int) -> None:
    cap = initial + extra
    delays = list(itertools.islice(backoff(initial, factor, cap, rng=random.Random(seed)), 40))
    assert len(delays) == 40
    for n, d in enumerate(delays):
        bound = min(cap, initial * factor**n)
        assert 0.0 <= d <= bound * (1 + 1e-9)


def test_backoff_is_deterministic_with_a_seeded_rng() -> None:
    a = list(itertools.islice(backoff(0.1, 2.0, 10.0, rng=random.Random(42)), 30))
    b = list(itertools.islice(backoff(0.1, 2.0, 10.0, rng=random.Random(42)), 30))
    c = list(itertools.islice(backoff(0.1, 2.0, 10.0, rng=random.Random(43)), 30))
    assert a == b
    assert a != c


def test_backoff_draws_uniformly_up_to_the_ceiling() -> None:
    rng = random.Random(7)
    expected_rng = random.Random(7)
    delays = list(itertools.islice(backoff(1.0, 3.0, 20.0, rng=rng), 5))
    ceilings = [1.0, 3.0, 9.0, 20.0, 20.0]
    assert delays == [expected_rng.uniform(0.0, c) for c in ceilings]


def test_backoff_reaches_the_cap() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    delays = list(itertools.islice(backoff(0.5, 2.0, 3.0, rng=Top()), 6))
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_backoff_factor_one_is_constant_ceiling() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    assert list(itertools.islice(backoff(2.0, 1.0, 2.0, rng=Top()), 4)) == [2.0] * 4


def test_backoff_without_rng_is_bounded() -> None:
    for d in itertools.islice(backoff(), 50):
        assert 0.0 <= d <= 10.0


@pytest.mark.parametrize(
    ("initial", "factor", "cap"),
    [(0.0, 2.0, 10.0), (-1.0, 2.0, 10.0), (0.1, 0.99, 10.0), (0.1, 2.0, 0.05), (1.0, -2.0, 5.0)],
)
def test_backoff_invalid_arguments_raise(initial: float, factor: float, cap: float) -> None:
    # A generator: the check runs when the first delay is drawn.
    with pytest.raises(ValueError, match="initial"):
        next(backoff(initial, factor, cap))


# --------------------------------------------------------------------------- CircuitBreaker


def test_breaker_starts_closed_and_allows() -> None:
    b = CircuitBreaker(threshold=3, reset_timeout=10.0)
    assert b.state is BreakerState.CLOSED
    assert b.allow(0.0)
    assert b.times_opened == 0


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    b = CircuitBreaker(threshold=3, reset_timeout=10.0)
    b.failure(1.0)
    b.failure(2.0)
    assert b.state is BreakerState.CLOSED
    assert b.allow(2.5)
    b.failure(5.0)
    assert b.state is BreakerState.OPEN
    assert b.times_opened == 1
    assert b.opened_at == 5.0
    assert b.retry_at() == 15.0
    assert not b.allow(5.0)
    assert not b.allow(14.999)
    assert b.state is BreakerState.OPEN


def test_success_resets_the_failure_count() -> None:
    b = CircuitBreaker(threshold=3, reset_timeout=10.0)
    b.failure(1.0)
    b.failure(2.0)
    b.success()
    assert b.failures == 0
    b.failure(3.0)
    b.failure(4.0)
    assert b.state is BreakerState.CLOSED


def test_breaker_half_opens_after_reset_timeout_then_closes_on_success() -> None:
    b = CircuitBreaker(threshold=2, reset_timeout=10.0)
    b.failure(0.0)
    b.failure(1.0)
    assert b.allow(11.0)  # exactly reset_timeout later
    assert b.state is BreakerState.HALF_OPEN
    b.success()
    assert b.state is BreakerState.CLOSED
    assert b.failures == 0
    assert b.allow(11.5)
    b.failure(12.0)
    assert b.state is BreakerState.CLOSED  # the count restarted


def test_half_open_failure_reopens_at_once() -> None:
    b = CircuitBreaker(threshold=5, reset_timeout=10.0)
    for t in range(5):
        b.failure(float(t))
    assert b.state is BreakerState.OPEN
    assert b.allow(14.0)
    assert b.state is BreakerState.HALF_OPEN
    b.failure(15.0)
    assert b.state is BreakerState.OPEN
    assert b.opened_at == 15.0
    assert b.times_opened == 2
    assert b.retry_at() == 25.0
    assert not b.allow(24.0)
    assert b.allow(25.0)


def test_failure_while_open_restarts_the_timer_without_counting_an_opening() -> None:
    b = CircuitBreaker(threshold=1, reset_timeout=10.0)
    b.failure(0.0)
    assert b.times_opened == 1
    b.failure(3.0)
    assert b.state is BreakerState.OPEN
    assert b.times_opened == 1
    assert b.opened_at == 3.0
    assert not b.allow(12.0)
    assert b.allow(13.0)


@DETERMINISTIC
@given(
    st.lists(
        st.tuples(st.sampled_from(["allow", "success", "failure"]), st.floats(0.0, 5.0)),
        max_size=50,
    )
)
def test_breaker_matches_a_model(ops: list[tuple[str, float]]) -> None:
    threshold, reset = 3, 4.0
    b = CircuitBreaker(threshold=threshold, reset_timeout=reset)
    now = 0.0
    state, failures, opened_at, openings = "closed", 0, 0.0, 0
    for op, dt in ops:
        now += dt
        if op == "allow":
            if state == "open" and now - opened_at < reset:
                expected = False
            else:
                expected = True
                if state == "open":
                    state = "half_open"
            assert b.allow(now) is expected
        elif op == "success":
            b.success()
            state, failures = "closed", 0
        else:
            b.failure(now)
            failures += 1
            if state == "half_open" or failures >= threshold:
                if state != "open":
                    openings += 1
                state, opened_at = "open", now
        assert b.state.value == state
        assert b.failures == failures
        assert b.times_opened == openings
        if state == "open":
            assert b.retry_at() == opened_at + reset


# --------------------------------------------------------------------------- RttEstimator


def test_rtt_first_sample_and_ewma() -> None:
    r = RttEstimator()
    assert r.srtt is None
    assert r.percentile(0.5) is None
    r.add(0.1)
    assert r.srtt == 0.1
    assert r.rttvar == 0.05
    r.add(0.3)
    assert r.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    assert r.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)
    assert r.count == 2


def test_rtt_negative_samples_clamp_to_zero() -> None:
    r = RttEstimator()
    r.add(-5.0)
    assert r.srtt == 0.0
    assert list(r.samples) == [0.0]


def test_rtt_window_keeps_recent_samples() -> None:
    r = RttEstimator(window=4)
    for i in range(10):
        r.add(float(i))
    assert list(r.samples) == [6.0, 7.0, 8.0, 9.0]
    assert r.count == 10


def test_rtt_percentiles() -> None:
    r = RttEstimator(window=100)
    for i in range(1, 101):
        r.add(float(i))
    assert r.percentile(0.0) == 1.0
    assert r.percentile(0.5) == 51.0
    assert r.percentile(0.99) == 100.0
    assert r.percentile(1.0) == 100.0


# --------------------------------------------------------------------------- Heartbeat


def hb(now: float = 100.0) -> Heartbeat:
    return Heartbeat(5.0, 2.0, 30.0, now=now)


def test_ping_schedule() -> None:
    h = hb(100.0)
    assert h.next_ping == 105.0
    assert h.ping_due(104.999) is None
    assert h.ping_due(105.0) == Ping(1)
    assert h.next_ping == 110.0
    assert h.ping_due(105.0) is None
    assert h.ping_due(109.0) is None
    assert h.ping_due(112.0) == Ping(2)  # late: the next one is an interval later
    assert h.next_ping == 117.0
    assert h.ping_due(117.0) == Ping(3)


def test_deadline_without_rtt_samples_allows_one_interval_of_grace() -> None:
    h = hb(100.0)
    assert h.grace() == 5.0
    assert h.timeout() == 10.0
    assert h.deadline() == 110.0
    assert not h.dead(109.999)
    assert h.dead(110.0)
    h.received(108.0)
    assert h.deadline() == 118.0
    assert not h.dead(117.0)
    assert h.next_wakeup() == 105.0


def test_a_silent_only_heartbeat_pings_after_silence() -> None:
    h = Heartbeat(5.0, 2.0, 30.0, now=0.0, when_silent=True)
    h.received(4.0)
    assert h.ping_due(5.0) is None  # heard from the peer 1 s ago
    assert h.ping_due(8.999) is None
    assert h.ping_due(9.0) is not None  # 5 s of silence
    assert h.ping_due(10.0) is None  # one ping per interval
    h.received(9.5)
    assert h.next_ping == 14.5


def test_grace_follows_srtt_while_samples_are_few_clamped() -> None:
    h = hb()
    h.rtt.add(0.1)  # 0.1 + 4 * 0.05 = 0.3 -> floor
    assert h.grace() == 2.0
    assert h.timeout() == 7.0
    h = hb()
    h.rtt.add(1.0)  # 1 + 4 * 0.5 = 3.0
    assert h.grace() == pytest.approx(3.0)
    h = hb()
    h.rtt.add(20.0)  # 20 + 40 -> ceiling
    assert h.grace() == 30.0
    assert h.timeout() == 35.0


def test_grace_follows_p99_once_eight_samples() -> None:
    h = hb()
    for _ in range(7):
        h.rtt.add(1.0)
    srtt_based = h.grace()
    h.rtt.add(1.0)
    assert h.rtt.count == 8
    assert h.grace() == pytest.approx(4.0)  # 4 x p99
    assert srtt_based == pytest.approx(2.0)  # srtt 1 + 4 * small var, floored
    for _ in range(64):
        h.rtt.add(0.01)
    assert h.grace() == 2.0  # floor
    h.rtt.add(9.0)
    assert h.grace() == 30.0  # 4 x 9 = 36, clamped to the ceiling
    h.received(200.0)
    assert h.deadline() == 235.0


@DETERMINISTIC
@given(st.lists(st.floats(-1.0, 100.0), max_size=80))
def test_timeout_stays_between_floor_and_ceiling(samples: list[float]) -> None:
    h = Heartbeat(5.0, 2.0, 30.0, now=0.0)
    for s in samples:
        h.rtt.add(s)
        assert 2.0 <= h.grace() <= 30.0
        assert 7.0 <= h.timeout() <= 35.0
        assert h.deadline() == h.last_received + h.timeout()


def test_pong_matching_records_rtt() -> None:
    h = hb(0.0)
    p1 = h.ping_due(5.0)
    p2 = h.ping_due(10.0)
    assert p1 is not None
    assert p2 is not None
    assert h.pong(p2.id, 10.25) == pytest.approx(0.25)
    assert h.pong(p1.id, 10.5) == pytest.approx(5.5)
    assert h.rtt.count == 2
    assert h.pong(p1.id, 11.0) is None  # answered already
    assert h.rtt.count == 2


def test_unknown_pong_ids_are_ignored() -> None:
    h = hb(0.0)
    h.ping_due(5.0)
    before = (h.rtt.count, h.rtt.srtt, h.last_received, h.next_ping)
    assert h.pong(99, 6.0) is None
    assert h.pong(0, 6.0) is None
    assert (h.rtt.count, h.rtt.srtt, h.last_received, h.next_ping) == before


def test_outstanding_pings_are_bounded() -> None:
    h = hb(0.0)
    pings = [h.ping_due(5.0 * i) for i in range(1, 11)]
    ids = [p.id for p in pings if p is not None]
    assert ids == list(range(1, 11))
    assert h.pong(1, 60.0) is None  # forgotten: only 8 remembered
    assert h.pong(2, 60.0) is None
    assert h.pong(3, 60.0) == pytest.approx(45.0)
    assert h.pong(10, 60.0) == pytest.approx(10.0)


def test_pong_does_not_count_as_received_by_itself() -> None:
    # The caller marks every frame as received; pong() only measures.
    h = hb(0.0)
    p = h.ping_due(5.0)
    assert p is not None
    h.pong(p.id, 6.0)
    assert h.last_received == 0.0


def test_next_wakeup_is_the_earlier_of_ping_and_deadline() -> None:
    h = Heartbeat(50.0, 1.0, 2.0, now=0.0)
    assert h.next_wakeup() == 50.0  # ping at 50, deadline at 52
    h.ping_due(50.0)
    assert h.next_wakeup() == 52.0  # next ping at 100, deadline still 52
    h.received(60.0)
    assert h.next_wakeup() == 100.0
    assert math.isfinite(h.next_wakeup())
