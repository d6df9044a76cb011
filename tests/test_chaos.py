"""Deterministic chaos on the mock clock: exactly-once, in order, through random faults."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from .support.chaos import run_chaos, seed_trio_scheduler


@pytest.mark.slow
async def test_chaos_100_clients_1000_messages(autojump_clock: trio.testing.MockClock) -> None:
    seed_trio_scheduler(20261127)
    result = await run_chaos(20261127, clients=100, messages=1000)
    print(f"\nchaos: {result}")
    report = result.report
    assert report.sent == 100_000
    assert report.delivered == 100_000
    assert (report.lost, report.duplicated, report.reordered, report.unexpected) == (0, 0, 0, 0)
    assert result.cuts >= 100
    assert result.resumes >= 100
    assert result.resumes_not_recovered == 0
    assert result.hub_stats["resumes_failed"] == 0


async def test_same_seed_same_run(autojump_clock: trio.testing.MockClock) -> None:
    fingerprints = []
    for _ in range(2):
        seed_trio_scheduler(7)
        result = await run_chaos(7, clients=10, messages=200, max_faults=60)
        assert result.report.ok
        fingerprints.append(result.fingerprint)
    assert fingerprints[0] == fingerprints[1]
