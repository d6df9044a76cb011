"""Supervision: restart with backoff, contain failures, bounded cleanup.

A :class:`Supervisor` runs a target coroutine function. When the target
fails with an exception the policy wants restarted, the failure is contained
(counted, logged, handed to ``on_error``), cleanup runs shielded under a
deadline, and the target starts again after a delay from the backoff
schedule (full jitter, reset once a run has been healthy for
``healthy_after`` seconds). More than ``max_restarts`` restarts within
``window`` seconds escalate: :class:`Escalation` is raised with the last
failure as its cause. Cancellation is never contained.

The hub runs every connection under one supervisor with ``restart=False``
(a server cannot restart a client's connection, but a crash in it is
contained and its cleanup bounded); the client runs its link under one with
restarts (that is reconnection).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator

import attrs
import trio

from .._core.backoff import backoff
from .._core.errors import GenesisError

log = logging.getLogger("genesis_trio.supervisor")


class Escalation(GenesisError):
    """A supervisor exceeded its restart budget; ``__cause__`` is the last failure."""


def _default_backoff() -> Iterable[float]:
    return backoff(0.1, 2.0, 10.0)


def _restart_any(exc: BaseException) -> bool:
    return True


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """When and how fast a supervised target is restarted."""

    restart: bool = True
    """False: contain and record a failure, but do not restart."""
    max_restarts: int | None = 10
    """Restarts allowed within ``window`` before escalating (None: unlimited)."""
    window: float = 60.0
    """The sliding window, in seconds, for ``max_restarts``."""
    healthy_after: float = 30.0
    """A run lasting this long resets the backoff schedule."""
    backoff_factory: Callable[[], Iterable[float]] = _default_backoff
    """Makes a fresh delay schedule (injectable in tests)."""
    restart_on: Callable[[BaseException], bool] = _restart_any
    """Which failures to restart after; others propagate at once."""


NO_RESTART = RestartPolicy(restart=False)
"""Contain failures, never restart."""


@attrs.frozen
class SupervisorStatistics:
    """A snapshot of one supervisor's counters."""

    name: str
    """The supervisor's name."""
    running: int
    """Targets running right now."""
    starts: int
    """Times a target was started (restarts included)."""
    restarts: int
    """Times a target was started again after a failure."""
    failures: int
    """Failures contained."""
    clean_exits: int
    """Targets that returned normally."""
    escalations: int
    """Times the restart budget was exceeded."""
    cleanup_timeouts: int
    """Cleanups cut short by their deadline."""
    last_error: str | None
    """``repr`` of the most recent failure."""


class Supervisor:
    """Runs targets under a :class:`RestartPolicy` (see the module docstring)."""

    def __init__(
        self,
        name: str,
        policy: RestartPolicy | None = None,
        *,
        cleanup_timeout: float = 2.0,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy if policy is not None else RestartPolicy()
        self.cleanup_timeout = cleanup_timeout
        self.on_error = on_error
        self._running = 0
        self._starts = 0
        self._restarts = 0
        self._failures = 0
        self._clean = 0
        self._escalations = 0
        self._cleanup_timeouts = 0
        self._last_error: str | None = None

    def statistics(self) -> SupervisorStatistics:
        """A frozen snapshot of the counters."""
        return SupervisorStatistics(
            self.name,
            self._running,
            self._starts,
            self._restarts,
            self._failures,
            self._clean,
            self._escalations,
            self._cleanup_timeouts,
            self._last_error,
        )

    async def run(
        self,
        target: Callable[[], Awaitable[None]],
        *,
        cleanup: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Run ``target`` until it returns, restarting it after failures per the policy.

        Returns when the target returns normally, or (with ``restart=False``)
        after one contained failure. Raises :class:`Escalation` when the
        restart budget is exceeded, and any failure ``restart_on`` rejects.
        """
        policy = self.policy
        delays: Iterator[float] | None = None  # made on the first restart (most never need one)
        recent: deque[float] | None = None
        while True:
            started = trio.current_time()
            self._starts += 1
            self._running += 1
            failure: Exception | None = None
            try:
                await target()
            except Exception as exc:
                failure = exc
            finally:
                self._running -= 1
                if cleanup is not None:
                    with trio.move_on_after(self.cleanup_timeout, shield=True) as scope:
                        await cleanup()
                    if scope.cancelled_caught:
                        self._cleanup_timeouts += 1
                        log.warning("%s: cleanup exceeded %.1f s", self.name, self.cleanup_timeout)
            if failure is None:
                self._clean += 1
                return
            if not policy.restart_on(failure):
                raise failure
            self._failures += 1
            self._last_error = repr(failure)
            if self.on_error is not None:
                self.on_error(failure)
            if not policy.restart:
                log.debug("%s: contained %r", self.name, failure)
                return
            now = trio.current_time()
            if delays is None or now - started >= policy.healthy_after:
                delays = iter(policy.backoff_factory())
            if recent is None:
                recent = deque()
            while recent and recent[0] <= now - policy.window:
                recent.popleft()
            if policy.max_restarts is not None and len(recent) >= policy.max_restarts:
                self._escalations += 1
                raise Escalation(
                    f"{self.name}: more than {policy.max_restarts} restarts in {policy.window} s"
                ) from failure
            recent.append(now)
            delay = next(delays, math.inf)
            log.debug("%s: restarting in %.3f s after %r", self.name, delay, failure)
            await trio.sleep(delay)
            self._restarts += 1
