"""Shared fixtures and the per-test deadline.

The deadline is a ``trio.fail_after`` wrapped around each async test (not
pytest-timeout's signal method, which corrupts Trio: DEPENDENCIES.md). Tests
on the mock clock are bounded by pytest-timeout's thread method instead.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator
from typing import Any

import pytest
import trio

from genesis_trio.testing import RunningHub, start_hub

DEFAULT_DEADLINE = 30.0
MOCK_CLOCK_FIXTURES = {"autojump_clock", "mock_clock"}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    fn = getattr(item, "obj", None)
    fixtures = set(getattr(item, "fixturenames", ()))
    if (
        fn is not None
        and inspect.iscoroutinefunction(fn)
        and not (fixtures & MOCK_CLOCK_FIXTURES)
        and item.get_closest_marker("no_deadline") is None
    ):
        marker = item.get_closest_marker("deadline")
        seconds = float(marker.args[0]) if marker is not None else DEFAULT_DEADLINE

        @functools.wraps(fn)
        async def bounded(**kwargs: Any) -> Any:
            with trio.fail_after(seconds):
                return await fn(**kwargs)

        item.obj = bounded  # type: ignore[attr-defined]
    return (yield)


@pytest.fixture
async def hub(nursery: trio.Nursery) -> RunningHub:
    """A hub with default settings, on a free port (the public testing kit's)."""
    return await start_hub(nursery)


@pytest.fixture
def hub_factory(nursery: trio.Nursery) -> Callable[..., Any]:
    """Start more hubs with custom settings: ``await hub_factory(window=10)``."""
    return functools.partial(start_hub, nursery)
