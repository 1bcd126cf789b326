"""Request pacing from the API's rate-limit headers, so 429s stay rare.

The budget is requests per window per key, possibly shared by several
workers. Each worker spreads what the API says is left evenly over the time
left in the window: with N workers doing the same, what is left shrinks
faster and each one slows down, so the key's budget is used up just as the
window ends instead of in a burst of 429s. `GR_RATE_LIMIT_PER_MINUTE` adds a
fixed cap of this worker's own. Clocks are injected: this module does no I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    limit: int
    remaining: int
    reset_unix: float

    @staticmethod
    def parse(headers: Mapping[str, str]) -> RateLimitHeaders | None:
        """The three X-RateLimit-* headers, or None when any is missing or garbled."""
        try:
            limit = int(headers["X-RateLimit-Limit"])
            remaining = int(headers["X-RateLimit-Remaining"])
            reset = float(headers["X-RateLimit-Reset"])
        except (KeyError, ValueError, TypeError):
            return None
        if limit <= 0 or remaining < 0 or reset != reset:
            return None
        return RateLimitHeaders(limit, remaining, reset)


class Pacer:
    """Hands out send slots to delivery threads; thread-safe."""

    def __init__(
        self,
        *,
        cap_per_minute: int | None = None,
        monotonic: Clock = time.monotonic,
        wall: Clock = time.time,
        default_window_s: float = 60.0,
    ) -> None:
        self._lock = threading.Lock()
        self._mono = monotonic
        self._wall = wall
        self._cap_interval = 60.0 / cap_per_minute if cap_per_minute else 0.0
        self._window_s = default_window_s
        self._limit: int | None = None
        self._remaining = 0
        self._reset_unix: float | None = None
        self._reset_mono = 0.0
        self._sent_since_seen = 0
        self._next_slot = 0.0

    @property
    def remaining(self) -> int | None:
        """What the API last said is left (for the metric), None before any answer."""
        return None if self._limit is None else self._remaining

    @property
    def limit(self) -> int | None:
        return self._limit

    def reserve(self) -> float:
        """Claim the next slot; returns how long the caller must wait before sending."""
        with self._lock:
            now = self._mono()
            interval = self._cap_interval
            earliest = now
            if self._limit is not None:
                if now < self._reset_mono:
                    left = self._remaining - self._sent_since_seen
                    if left <= 0:
                        # Budget spent: the first slot is the new window.
                        earliest = self._reset_mono
                        interval = max(interval, self._window_s / self._limit)
                    else:
                        interval = max(interval, (self._reset_mono - now) / left)
                else:
                    interval = max(interval, self._window_s / self._limit)
            slot = max(earliest, self._next_slot)
            self._next_slot = slot + interval
            self._sent_since_seen += 1
            return slot - now

    def observe(self, rl: RateLimitHeaders) -> None:
        """Learn from a response's headers (answers may come back out of order)."""
        with self._lock:
            now_wall, now_mono = self._wall(), self._mono()
            if self._reset_unix is None or rl.reset_unix > self._reset_unix:
                if self._reset_unix is not None and rl.reset_unix - self._reset_unix < 3600:
                    self._window_s = rl.reset_unix - self._reset_unix
                self._reset_unix = rl.reset_unix
                self._remaining = rl.remaining
                self._sent_since_seen = 0
            elif rl.reset_unix == self._reset_unix:
                if rl.remaining < self._remaining:
                    self._sent_since_seen = max(
                        0, self._sent_since_seen - (self._remaining - rl.remaining)
                    )
                    self._remaining = rl.remaining
            else:
                return  # an answer from a window already gone
            self._limit = rl.limit
            self._reset_mono = now_mono + max(0.0, rl.reset_unix - now_wall)

    def hold(self, seconds: float) -> None:
        """After a 429: nobody sends before `seconds` from now."""
        with self._lock:
            now = self._mono()
            self._next_slot = max(self._next_slot, now + seconds)
            self._remaining = 0
            self._sent_since_seen = 0
