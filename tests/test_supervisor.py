"""The supervisor primitive, on the autojump clock with exact virtual times."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
import trio

from genesis_trio._runtime.supervisor import Escalation, RestartPolicy, Supervisor


def fixed(*delays: float) -> Iterable[float]:
    return itertools.chain(delays, itertools.repeat(delays[-1]))


class Flaky:
    """Fails ``failures`` times (recording when it started), then succeeds."""

    def __init__(self, failures: int, runtime: float = 0.0) -> None:
        self.failures = failures
        self.runtime = runtime
        self.starts: list[float] = []

    async def __call__(self) -> None:
        self.starts.append(trio.current_time())
        if self.runtime:
            await trio.sleep(self.runtime)
        if len(self.starts) <= self.failures:
            raise ConnectionError(f"failure {len(self.starts)}")


async def test_restarts_follow_the_schedule_exactly(autojump_clock: trio.testing.MockClock) -> None:
    target = Flaky(3)
    sup = Supervisor("t", RestartPolicy(backoff_factory=lambda: fixed(1, 2, 4)))
    await sup.run(target)
    assert target.starts == [0, 1, 3, 7]
    stats = sup.statistics()
    assert (stats.starts, stats.restarts, stats.failures, stats.clean_exits) == (4, 3, 3, 1)
    assert stats.last_error == "ConnectionError('failure 3')"


async def test_escalates_past_the_restart_budget(autojump_clock: trio.testing.MockClock) -> None:
    target = Flaky(100)
    sup = Supervisor(
        "t", RestartPolicy(max_restarts=2, window=10, backoff_factory=lambda: fixed(1))
    )
    with pytest.raises(Escalation) as info:
        await sup.run(target)
    assert trio.current_time() == 2
    assert target.starts == [0, 1, 2]
    assert isinstance(info.value.__cause__, ConnectionError)
    assert sup.statistics().escalations == 1


async def test_restarts_outside_the_window_do_not_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    target = Flaky(6)
    sup = Supervisor(
        "t", RestartPolicy(max_restarts=2, window=10, backoff_factory=lambda: fixed(6))
    )
    await sup.run(target)
    assert target.starts == [0, 6, 12, 18, 24, 30, 36]


async def test_a_healthy_run_resets_the_backoff(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[float] = []

    async def target() -> None:
        calls.append(trio.current_time())
        if len(calls) == 3:
            await trio.sleep(30)  # healthy for healthy_after seconds, then fails
        if len(calls) < 5:
            raise OSError("down")

    sup = Supervisor(
        "t", RestartPolicy(healthy_after=30, backoff_factory=lambda: iter([1, 2, 4, 8, 16]))
    )
    await sup.run(target)
    # 0 fail, +1 -> 1 fail, +2 -> 3 runs 30 s, fails at 33: schedule restarts at 1 -> 34.
    assert calls == [0, 1, 3, 34, 36]


async def test_no_restart_policy_contains_and_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[BaseException] = []
    sup = Supervisor("t", RestartPolicy(restart=False), on_error=seen.append)
    target = Flaky(5)
    await sup.run(target)
    assert target.starts == [0]
    assert len(seen) == 1
    assert isinstance(seen[0], ConnectionError)
    assert sup.statistics().failures == 1


async def test_unwanted_failures_propagate(autojump_clock: trio.testing.MockClock) -> None:
    sup = Supervisor("t", RestartPolicy(restart_on=lambda exc: isinstance(exc, OSError)))

    async def target() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await sup.run(target)
    assert sup.statistics().restarts == 0


async def test_cleanup_is_shielded_and_bounded(autojump_clock: trio.testing.MockClock) -> None:
    cleanups: list[tuple[str, float]] = []

    async def target() -> None:
        await trio.sleep_forever()

    async def slow_cleanup() -> None:
        cleanups.append(("start", trio.current_time()))
        await trio.sleep(100)  # must be cut at the deadline, even though we were cancelled
        cleanups.append(("end", trio.current_time()))  # pragma: no cover

    sup = Supervisor("t", cleanup_timeout=2.0)
    with trio.move_on_after(5):
        await sup.run(target, cleanup=slow_cleanup)
    assert cleanups == [("start", 5)]
    assert trio.current_time() == 7
    assert sup.statistics().cleanup_timeouts == 1
    assert sup.statistics().failures == 0  # cancellation is never contained


async def test_cleanup_runs_after_every_attempt(autojump_clock: trio.testing.MockClock) -> None:
    cleaned: list[float] = []

    async def cleanup() -> None:
        await trio.sleep(0.5)
        cleaned.append(trio.current_time())

    sup = Supervisor("t", RestartPolicy(backoff_factory=lambda: fixed(1)))
    await sup.run(Flaky(2), cleanup=cleanup)
    assert cleaned == [0.5, 2.0, 3.5]
    assert sup.statistics().running == 0
