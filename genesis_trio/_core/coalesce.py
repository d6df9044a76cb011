"""Adaptive coalescing: how long a writer waits for more messages (sans-IO).

A writer that finds messages to send writes them at once while traffic is
light (no added latency). When the measured arrival rate is high, waiting a
little lets a batch pile up and leave in one frame: on a frame-bound stack
(one frame costs ~150 us of server CPU, one more message in it ~0.3 us) that
multiplies throughput. The wait is bounded (``max_delay``, ~1 ms), aims at
``target`` messages per frame, and ends early as soon as two passes of the
scheduler bring nothing new (a peer limited by its window is not kept
waiting). The rate is estimated from what the writer sees when it wakes (not
per message), so it costs nothing per message.
"""

from __future__ import annotations

import attrs


@attrs.define(eq=False)
class Coalescer:
    """Decides the coalescing delay from the observed arrival rate."""

    max_delay: float = 0.001
    """Longest wait for a batch to form, in seconds."""
    target: int = 64
    """Messages per frame worth waiting for."""
    min_rate: float = 4000.0
    """Below this rate (messages/s) never wait."""
    tau: float = 0.01
    """Time constant of the rate's moving average, in seconds."""
    rate: float = 0.0
    """Current estimate of the arrival rate, messages/s."""
    _seen: int = 0
    _at: float | None = None
    """When the writer last woke (None: not yet; the first wake-up only starts the clock)."""
    _until: float | None = None
    _grown: int = 0
    _idle: int = 0

    def observe(self, now: float, appended: int) -> None:
        """The writer woke at ``now``; ``appended`` messages have arrived in total."""
        if self._at is None:  # no interval yet (and none from the clock's origin)
            self._seen, self._at = appended, now
            return
        dt = now - self._at
        if appended < self._seen:  # the count restarted (a new epoch)
            self._seen = appended
        if dt <= 0.0:
            return
        instant = (appended - self._seen) / dt
        weight = dt / self.tau if dt < self.tau else 1.0
        self.rate += (instant - self.rate) * weight
        self._seen, self._at = appended, now

    def delay(self, pending: int) -> float:
        """Seconds to wait before writing ``pending`` messages (0: write now)."""
        if pending >= self.target or self.rate < self.min_rate:
            return 0.0
        return min(self.max_delay, (self.target - pending) / self.rate)

    def should_wait(self, now: float, appended: int, pending: int) -> bool:
        """True: yield one scheduler pass and ask again; False: write now.

        Starts waiting under a high arrival rate on this link; keeps waiting
        while each pass brings more, up to ``target`` messages or ``max_delay``.
        """
        if self._until is None:
            self.observe(now, appended)
            pause = self.delay(pending)
            if pause <= 0.0:
                return False
            self._until, self._grown, self._idle = now + pause, appended, 0
            return True
        if now < self._until and pending < self.target:
            if appended > self._grown:
                self._grown, self._idle = appended, 0
                return True
            self._idle += 1
            if self._idle < 2:  # Trio may have run us before the producer in this pass
                return True
        self._until = None
        return False


@attrs.define(eq=False)
class FanoutWindow:
    """Marks a short period after a wide fan-out (O(1) to check).

    When one message was just appended to many links at once, more usually
    follows (a publisher streaming to a topic): their writers then sleep
    ``hold`` once so batches form. Independent links with one message each
    (request/response) are not slowed down.
    """

    wide: int = 32
    """Targets in one append that count as a wide fan-out."""
    hold: float = 0.005
    """How long after a wide fan-out writers keep coalescing, in seconds."""
    until: float = -1.0

    def appended(self, targets: int, now: float) -> None:
        """One message was appended to ``targets`` links at ``now``."""
        if targets >= self.wide:
            self.until = now + self.hold

    def active(self, now: float) -> bool:
        """True shortly after a wide fan-out."""
        return now < self.until
