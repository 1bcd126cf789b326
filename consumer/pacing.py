"""Request pacing from the API's rate-limit headers, so 429s stay rare.

The budget is requests per window per key, possibly shared by several
workers. Each worker spreads what the API says is left evenly over the time
left in the window: with N workers doing the same, what is left shrinks
faster and each one slows down, so the key's budget is used up just as the
window ends instead of in a burst of 429s. `GR_RATE_LIMIT_PER_MINUTE` adds a
fixed cap of this worker's own. Clocks are injected: this module does no I/O.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Clock = Callable[[], float]
_MANY = 1 << 20  # "no bound": more slots than a worker has requests
_IDLE_MAX = 24  # the longest stretch of the key's requests looked at for the others' use
_FALSE_IDLE = 0.02  # how likely a stretch may be to look idle while the others are busy
_SOON_S = 0.05  # "soon", for `slots_soon`: at least this long (a few loop turns)


@functools.lru_cache(maxsize=256)
def _idle_sample_of(share_64ths: int) -> int:
    """The shortest stretch in which, with this share of the key, at most one request of
    the others' happens by chance with a probability under `_FALSE_IDLE`."""
    s = share_64ths / 64
    for n in range(3, _IDLE_MAX + 1):
        if s**n + n * (1 - s) * s ** (n - 1) <= _FALSE_IDLE:
            return n
    return _IDLE_MAX + 1  # a share this large: no stretch is long enough to tell


def _idle_sample(share: float) -> int:
    return _idle_sample_of(min(64, math.ceil(share * 64)))


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
        if limit <= 0 or remaining < 0 or not math.isfinite(reset):
            return None
        return RateLimitHeaders(limit, remaining, reset)


class Pacer:
    """Hands out send slots to delivery threads; thread-safe.

    Every `reserve()` must be matched by one `observe()` (an answer with the
    headers) or `unanswered()` (none: a transport error, headers missing, or
    the request never sent), so the pacer knows how many of its own requests
    the API has not counted yet.
    """

    _MIN_SHARE = 1 / 64
    _SHARED_MARGIN = 0.03
    # requests seen in a first window (the key's, this worker's) before a share is guessed
    _SHARE_SAMPLE = 8
    _OWN_SAMPLE = 4

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
        self._in_flight = 0
        self._next_slot = 0.0
        # This worker's share of the key's use, learnt from how fast
        # `remaining` falls against its own answered requests.
        self._share = 1.0
        self._share_known = False  # measured or guessed from the key's use, not assumed
        self._windows_measured = 0  # whole windows whose share was measured at their end
        self._window_lower = 0.0
        self._window_upper = default_window_s
        self._window_first_remaining = 0
        self._own_in_window = 0
        # (own, used) at each of this window's answers: the others' recent use
        self._marks: deque[tuple[int, int]] = deque(maxlen=_IDLE_MAX + 8)
        # the requests this worker still has to send for everything there is to read, when
        # it knows (`set_demand`); None: more may come than it holds
        self._demand: int | None = None

    @property
    def remaining(self) -> int | None:
        """What the API last said is left (for the metric), None before any answer."""
        return None if self._limit is None else self._remaining

    @property
    def limit(self) -> int | None:
        return self._limit

    @property
    def share(self) -> float:
        return self._share

    def set_demand(self, requests: int | None) -> None:
        """What this worker has left to send when that is all there is (its partitions read
        to their end), or None while more may come.

        Spreading what is left over the rest of the window is for a demand not known:
        events read later fill the requests that wait. A known demand that fits in this
        worker's part of what is left goes at once: spread, the tail of a drain took the
        window's pace (31 requests, 5 s) with the key's budget idle behind it."""
        with self._lock:
            self._demand = None if requests is None else max(0, requests)

    def reserve(self) -> float:
        """Claim the next slot; returns how long the caller must wait before sending."""
        with self._lock:
            now = self._mono()
            slot, interval = self._next(now)
            self._claim(slot, interval)
            return slot - now

    def try_reserve(self) -> bool:
        """Claim the next slot only if it is free now (`reserve()` would wait <= 0).

        True: the slot is claimed and counted exactly as `reserve()` counts it (so
        it needs its `observe()` or `unanswered()`). False: nothing changed.
        """
        with self._lock:
            now = self._mono()
            slot, interval = self._next(now)
            if slot > now:
                return False
            self._claim(slot, interval)
            return True

    def wait_s(self) -> float:
        """How long until `try_reserve()` would find a slot free, as things stand (claims
        nothing: the pace may change before then)."""
        with self._lock:
            now = self._mono()
            slot, _ = self._next(now)
            return slot - now

    def slots_soon(self) -> tuple[int, float]:
        """How many slots fall within one spacing from now (50 ms at least), and when
        (seconds) that count next grows if it is 0. Claims nothing.

        What a worker cuts into requests is what it can send this soon: a batch cut
        earlier waits for its slot while the events behind it could have filled it.
        One spacing ahead leaves one request cut and waiting for the slot after the one
        free now, so the slot is taken on its own timer and none is lost to the loop.
        The floor is for a key whose spacing is shorter than a loop turn (a limit of a
        billion a minute spaces requests 60 ns apart): one spacing there allowed two
        requests a turn, and the worker forwarded half what it did without a limit."""
        with self._lock:
            now = self._mono()
            slot, interval = self._next(now)
            if interval <= 0.0:
                return (_MANY, 0.0) if slot <= now else (0, slot - now)
            ahead = now + max(interval, _SOON_S) - slot
            if ahead < 0:
                return 0, -ahead
            return min(_MANY, 1 + int(ahead / interval)), 0.0

    def _next(self, now: float) -> tuple[float, float]:
        """The next slot and the spacing after it; changes nothing. Lock held."""
        interval = self._cap_interval
        start = max(now, self._next_slot)
        if self._limit is None:
            return start, interval
        per_window = self._window_s / (self._limit * self._share)
        # a share only assumed (nothing heard of the others yet) is no ground to hurry
        demand = self._demand if self._share_known else None
        if start >= self._reset_mono:
            if demand and demand + self._in_flight <= self._limit * self._share * self._margin():
                return start, interval  # a new window: all of this worker's part is left
            return start, max(interval, per_window)
        # The key's requests not yet in the `remaining` we last heard: ours in
        # flight stand for in_flight / share of the key's, and since that answer
        # the other workers have sent about (1 - share) / share more. Without
        # that, every worker takes the window's last slots for itself: a 429
        # per worker per window.
        left = self._remaining - (self._in_flight + 1) / self._share + 1
        if self._share < 1.0:
            # Shared key: the share is an estimate, so keep a little back.
            left = (left - 1) * self._margin()
        if left <= 0:
            # Budget spent: the first slot is the new window.
            return max(start, self._reset_mono), max(interval, per_window)
        if demand and demand <= left * self._share:
            # All this worker has to send fits in its part of what is left: no reason to wait.
            return start, interval
        # Spread what is left from this slot, not from now: when slots are
        # already handed out ahead of now (threads waiting for theirs), a
        # spacing worked out over reset - now but counted from the later slot
        # is too long, the last slots fall past the reset and the end of the
        # window goes unused (one worker used 94% of its budget so).
        # Never more than two of the new window's spacings past its start, though: with a
        # sliver left (a small share, a little budget) the spacing ran to minutes, and the
        # slot after it stayed there when the new window came (a worker sent nothing for
        # 190 s with a backlog waiting).
        spread = (self._reset_mono - start) / (left * self._share)
        return start, max(interval, min(spread, self._reset_mono - start + 2 * per_window))

    def _margin(self) -> float:
        """What is taken of what is left: all of it alone, a little less when shared."""
        return 1.0 if self._share >= 1.0 else 1.0 - self._SHARED_MARGIN

    def _claim(self, slot: float, interval: float) -> None:
        self._next_slot = slot + interval
        self._in_flight += 1
        if self._demand:
            self._demand -= 1  # one of them is on its way (the worker says it again soon)

    def unanswered(self) -> None:
        """A reserved request that got no rate-limit headers (or was never sent)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def observe(self, rl: RateLimitHeaders) -> None:
        """Learn from a response's headers (answers may come back out of order)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            now_wall, now_mono = self._wall(), self._mono()
            if self._reset_unix is None or rl.reset_unix > self._reset_unix:
                used = self._window_first_remaining - self._remaining
                if self._reset_unix is not None and used >= 1:
                    # Our share of the key over the whole window that just ended:
                    # every worker measures the same stretch, so the shares add up.
                    # Measured from any use at all: a share learnt while others were
                    # busy must recover once they leave, when the key's use in a window
                    # is only ours (a threshold of 10 requests once kept a worker at
                    # 1/64 of a key it had to itself).
                    share = self._own_in_window / used
                    self._share = min(1.0, max(self._floor(rl.limit), share))
                    self._share_known = True
                    if used >= self._SHARE_SAMPLE:
                        self._windows_measured += 1
                if self._reset_unix is not None:
                    # Two resets bound the window from above (idle windows in
                    # between make the gap longer, never shorter).
                    gap = rl.reset_unix - self._reset_unix
                    if 0 < gap < self._window_upper:
                        self._window_upper = gap
                self._reset_unix = rl.reset_unix
                self._remaining = rl.remaining
                self._window_first_remaining = rl.remaining
                self._own_in_window = 0
                self._marks.clear()
            elif rl.reset_unix == self._reset_unix:
                self._own_in_window += 1
                self._remaining = min(self._remaining, rl.remaining)
                used = self._window_first_remaining - self._remaining
                own = self._own_in_window
                # Until a whole window has told the share (the first one seen is only
                # part of one), guess it as the window goes: at start-up every worker
                # would think the key its own, and a window at that pace ends in 429s.
                if (
                    self._windows_measured < 2
                    and own >= self._OWN_SAMPLE
                    and used >= self._SHARE_SAMPLE
                ):
                    self._share = min(1.0, max(self._floor(rl.limit), own / used))
                    self._share_known = True
                self._others_gone(own, used)
            else:
                return  # an answer from a window already gone
            self._limit = rl.limit
            to_reset = rl.reset_unix - now_wall
            self._reset_mono = now_mono + max(0.0, to_reset)
            # Every answer bounds the window from below (it is at least as long as
            # the time to its reset). Until the window is known the pacer takes that
            # lower bound: too long a guess spreads a new window's first slots far
            # past its end, too short a one only bunches the few requests sent before
            # its first answer. A gap between two resets is a whole number of
            # windows; with a lower bound above half of it, it is exactly one.
            lower = self._window_lower = max(self._window_lower, to_reset)
            upper = self._window_upper
            self._window_s = upper if lower > upper / 2 else max(1.0, lower)

    def _others_gone(self, own: int, used: int) -> None:
        """Raise the share at once when a recent stretch of the key's requests was all ours
        but one: the others stopped (a scale-in, their backlog drained). Measured only at a
        window's end, the share kept this worker at its old part of the key for the rest of
        the window and most of the next (a three-worker drain's last 10 s at half speed).
        The stretch is long enough (`_idle_sample`) that the others, busy at their share,
        would look so idle by chance less than once in 50 looks; a false rise costs a
        429 or two at the window's end, a late one seconds of the key unused."""
        marks = self._marks
        marks.append((own, used))
        if self._share >= 1.0:
            return
        sample = _idle_sample(self._share)
        for own_then, used_then in marks:
            if used - used_then < sample:
                break
            if (used - used_then) - (own - own_then) <= 1:
                self._share = max(self._share, min(1.0, (own - own_then) / (used - used_then)))
                return

    def _floor(self, limit: int) -> float:
        """The smallest share: 1/64, and never under two requests a window, so a worker
        always hears two answers in a window and can measure its share again."""
        return max(self._MIN_SHARE, min(1.0, 2 / limit))

    def hold(self, seconds: float) -> None:
        """After a 429: nobody sends before `seconds` from now."""
        with self._lock:
            now = self._mono()
            self._next_slot = max(self._next_slot, now + seconds)
