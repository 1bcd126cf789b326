"""The simulated world's clock: virtual time, one seeded RNG, and what is scheduled.

Time moves only inside a blocking call of the worker (`consume`, waiting on
the API's sockets, `sleep`, a producer poll, a synchronous commit): `block`
runs what is due and jumps to the next scheduled happening, or to the end of
the timeout, whichever comes first. Everything the world does is driven from
here, in an order fixed by (time, scheduling order), so a seed replays exactly.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable

WALL_ZERO = 1_800_000_000.0  # the Unix time the simulated clock starts at


class Livelock(BaseException):  # not an Exception: the worker must not catch it
    """The worker kept calling without letting time move."""


class World:
    """Implements the service's `Clock`; the simulation's seams block through it."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.blocked_calls = 0
        self._still = 0  # calls in a row that did not move time

    # ---- the Clock the worker is given ----

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_ZERO + self.now

    def sleep(self, seconds: float) -> None:
        self.block(seconds)

    # ---- scheduling ----

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (max(when, self.now), next(self._seq), action))

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self.at(self.now + delay, action)

    @property
    def next_event(self) -> float | None:
        return self._events[0][0] if self._events else None

    def run_due(self) -> None:
        """Run every happening due by now (they may schedule more)."""
        events = self._events
        while events and events[0][0] <= self.now:
            _, _, action = heapq.heappop(events)
            action()

    def block(self, timeout: float) -> None:
        """A blocking call: run what is due, then move to the next happening or the timeout."""
        self.blocked_calls += 1
        before = self.now
        self.run_due()
        target = self.now + max(0.0, timeout)
        nxt = self.next_event
        if nxt is not None and nxt < target:
            target = nxt
        self.now = target
        self.run_due()
        if self.now > before:
            self._still = 0
        else:
            self._still += 1
            if self._still > 20_000:
                raise Livelock(f"20,000 blocking calls at t={self.now:.3f}s without time moving")
