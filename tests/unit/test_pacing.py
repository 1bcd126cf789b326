"""Pacer and RateLimitHeaders: pacing from the API's rate-limit headers, with fake clocks."""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.pacing import Pacer, RateLimitHeaders
from consumer.policy import wait_after_429

# A wall-clock instant on a whole minute; the monotonic clock starts at 0.
WALL0 = 1_700_000_040.0


class FakeClock:
    """One simulated time, read as a monotonic clock (from 0) and a wall clock (from WALL0)."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL0 + self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _pacer(clock: FakeClock, cap: int | None = None, window: float = 60.0) -> Pacer:
    return Pacer(cap_per_minute=cap, monotonic=clock.mono, wall=clock.wall, default_window_s=window)


def _rl(limit: int, remaining: int, reset_in: float, clock: FakeClock) -> RateLimitHeaders:
    return RateLimitHeaders(limit, remaining, clock.wall() + reset_in)


# ---- RateLimitHeaders.parse ----


def _headers(
    limit: str = "100", remaining: str = "42", reset: str = "1700000100"
) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": limit,
        "X-RateLimit-Remaining": remaining,
        "X-RateLimit-Reset": reset,
    }


def test_parse_the_three_headers() -> None:
    assert RateLimitHeaders.parse(_headers()) == RateLimitHeaders(100, 42, 1_700_000_100.0)


def test_parse_fractional_reset_and_zero_remaining() -> None:
    parsed = RateLimitHeaders.parse(_headers(remaining="0", reset="1700000100.5"))
    assert parsed == RateLimitHeaders(100, 0, 1_700_000_100.5)


def test_parse_tolerates_blanks_around_numbers() -> None:
    parsed = RateLimitHeaders.parse(_headers(limit=" 1000 ", remaining=" 7", reset="1700000100 "))
    assert parsed == RateLimitHeaders(1000, 7, 1_700_000_100.0)


@pytest.mark.parametrize(
    "missing", ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]
)
def test_parse_needs_all_three(missing: str) -> None:
    headers = _headers()
    del headers[missing]
    assert RateLimitHeaders.parse(headers) is None


def test_parse_of_no_headers() -> None:
    assert RateLimitHeaders.parse({}) is None


@pytest.mark.parametrize(
    "headers",
    [
        _headers(limit="abc"),
        _headers(limit="100.0"),
        _headers(limit=""),
        _headers(remaining="many"),
        _headers(reset="soon"),
        _headers(reset="Wed, 21 Oct 2015 07:28:00 GMT"),
        _headers(limit="0"),
        _headers(limit="-100"),
        _headers(remaining="-1"),
        _headers(reset="nan"),
    ],
)
def test_parse_garbled_gives_none(headers: dict[str, str]) -> None:
    assert RateLimitHeaders.parse(headers) is None


@pytest.mark.parametrize("reset", ["inf", "Infinity", "-inf", "1e999"])
def test_parse_non_finite_reset_gives_none(reset: str) -> None:
    assert RateLimitHeaders.parse(_headers(reset=reset)) is None


def test_parse_case_insensitive_mapping() -> None:
    """The HTTP client hands over urllib3's case-insensitive headers."""
    from urllib3 import HTTPHeaderDict

    headers = HTTPHeaderDict(
        {"x-ratelimit-limit": "100", "x-ratelimit-remaining": "3", "x-ratelimit-reset": "17"}
    )
    assert RateLimitHeaders.parse(headers) == RateLimitHeaders(100, 3, 17.0)


# ---- Pacer: the scenarios ----


def test_no_headers_and_no_cap_means_no_wait() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    assert [pacer.reserve() for _ in range(20)] == [0.0] * 20
    assert pacer.remaining is None
    assert pacer.limit is None


def test_cap_60_per_minute_spaces_one_second_apart() -> None:
    clock = FakeClock()
    pacer = _pacer(clock, cap=60)
    assert [pacer.reserve() for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]
    # the caller slept; slots keep their 1 s spacing from the last one handed out (3.0)
    clock.advance(3.25)
    assert pacer.reserve() == pytest.approx(0.75)  # slot at 4.0
    clock.advance(10.0)  # idle: next slot (5.0) is in the past, send at once
    assert pacer.reserve() == 0.0
    assert pacer.reserve() == pytest.approx(1.0)


def test_cap_120_per_minute_spaces_half_a_second() -> None:
    clock = FakeClock()
    pacer = _pacer(clock, cap=120)
    assert [pacer.reserve() for _ in range(3)] == [0.0, 0.5, 1.0]


def test_remaining_zero_waits_until_the_reset() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 0, 30.0, clock))
    assert pacer.remaining == 0
    assert pacer.limit == 100
    assert pacer.reserve() == pytest.approx(30.0)
    # the next window's slots follow at window/limit = 60/100 s
    assert pacer.reserve() == pytest.approx(30.6)
    clock.advance(10.0)
    assert pacer.reserve() == pytest.approx(21.2)  # slot at 31.2, now 10


def test_remaining_zero_when_part_of_the_window_already_passed() -> None:
    clock = FakeClock(start=100.0)
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 0, 12.5, clock))
    clock.advance(2.5)
    assert pacer.reserve() == pytest.approx(10.0)


def test_remaining_budget_is_spread_over_the_time_left() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 10, 10.0, clock))  # 10 left, 10 s left: 1 s apart
    assert pacer.reserve() == 0.0
    # second reservation at the same instant: 9 left over 10 s
    assert pacer.reserve() == pytest.approx(1.0)
    assert pacer.reserve() == pytest.approx(1.0 + 10 / 9)


def test_spreading_follows_the_caller_sleeping() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 50, 25.0, clock))
    slots: list[float] = []
    for _ in range(50):
        wait = pacer.reserve()
        assert wait >= 0.0
        clock.advance(wait)
        slots.append(clock.t)
    # 50 requests spread over the 25 s: the first at once, the last at the reset
    assert slots[0] == 0.0
    assert slots[1] == pytest.approx(0.5)
    assert slots[-1] == pytest.approx(25.0)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) == pytest.approx(0.5)
    assert max(gaps) < 0.52


def test_budget_spent_by_own_sends_waits_for_the_reset() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 2, 20.0, clock))
    assert pacer.reserve() == 0.0
    assert pacer.reserve() == pytest.approx(10.0)  # 1 left over 20 s... spacing 20/1 from now
    # no answer yet: both remaining slots are claimed, the third waits for the new window
    assert pacer.reserve() == pytest.approx(30.0)


def test_cap_and_headers_the_stricter_wins() -> None:
    clock = FakeClock()
    loose_headers = _pacer(clock, cap=60)
    loose_headers.observe(_rl(1000, 1000, 60.0, clock))  # 0.06 s would do
    assert [loose_headers.reserve() for _ in range(3)] == [0.0, 1.0, 2.0]
    strict_headers = _pacer(clock, cap=600)  # 0.1 s
    strict_headers.observe(_rl(100, 10, 60.0, clock))  # 6 s
    assert strict_headers.reserve() == 0.0
    assert strict_headers.reserve() == pytest.approx(6.0)


def test_after_the_reset_without_news_the_spacing_is_window_over_limit() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 40, 5.0, clock))
    clock.advance(6.0)  # the window ended; no answer from the next one yet
    assert [pacer.reserve() for _ in range(3)] == pytest.approx([0.0, 0.6, 1.2])


def test_default_window_is_used_until_one_is_learned() -> None:
    clock = FakeClock()
    pacer = _pacer(clock, window=10.0)
    pacer.observe(_rl(20, 0, 4.0, clock))
    assert pacer.reserve() == pytest.approx(4.0)
    assert pacer.reserve() == pytest.approx(4.5)  # 10 s / 20


def test_window_length_is_learned_from_successive_resets() -> None:
    clock = FakeClock()
    pacer = _pacer(clock, window=60.0)
    pacer.observe(_rl(100, 50, 10.0, clock))  # reset at WALL0+10
    clock.advance(10.5)
    pacer.observe(RateLimitHeaders(100, 99, WALL0 + 40.0))  # next reset 30 s later
    clock.advance(30.0)  # that window is over too, nothing heard since
    # spacing is now 30 s / 100
    assert [pacer.reserve() for _ in range(3)] == pytest.approx([0.0, 0.3, 0.6])


def test_hold_after_a_429_with_no_headers() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.hold(5.0)
    assert pacer.reserve() == pytest.approx(5.0)
    clock.advance(5.0)
    assert pacer.reserve() == 0.0


def test_hold_after_a_429_with_a_cap() -> None:
    clock = FakeClock()
    pacer = _pacer(clock, cap=60)
    pacer.hold(5.0)
    assert pacer.reserve() == pytest.approx(5.0)
    assert pacer.reserve() == pytest.approx(6.0)


def test_hold_never_shortens_a_wait_already_given() -> None:
    clock = FakeClock()
    pacer = _pacer(clock, cap=6)  # 10 s spacing
    assert pacer.reserve() == 0.0
    pacer.hold(2.0)
    assert pacer.reserve() == pytest.approx(10.0)


def test_hold_at_the_end_of_a_spent_window() -> None:
    """The usual 429: budget gone, Retry-After = time to the reset."""
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 0, 30.0, clock))
    pacer.hold(30.0)
    assert pacer.reserve() == pytest.approx(30.0)
    assert pacer.reserve() == pytest.approx(30.6)


def test_hold_honours_the_retry_after_even_when_the_window_is_known() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 40, 30.0, clock))
    pacer.hold(5.0)
    assert pacer.reserve() == pytest.approx(5.0)


def test_out_of_order_answer_from_an_older_window_is_ignored() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(RateLimitHeaders(100, 90, WALL0 + 60.0))
    pacer.observe(RateLimitHeaders(100, 0, WALL0))  # late answer from the previous window
    pacer.observe(RateLimitHeaders(500, 3, WALL0 - 60.0))
    assert pacer.remaining == 90
    assert pacer.limit == 100
    # pacing still follows the newer window: 90 left over 60 s
    assert pacer.reserve() == 0.0
    assert pacer.reserve() == pytest.approx(60 / 90)


def test_stale_answer_from_the_same_window_is_ignored() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 50, 60.0, clock))
    pacer.observe(_rl(100, 70, 60.0, clock))  # sent earlier, answered later
    assert pacer.remaining == 50


def test_answers_count_against_the_sends_already_reserved() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 10, 10.0, clock))
    assert pacer.reserve() == 0.0
    assert pacer.reserve() == pytest.approx(1.0)
    assert pacer.reserve() == pytest.approx(1.0 + 10 / 9)
    # two of the three sends were answered: 8 left, one of ours still unanswered
    pacer.observe(_rl(100, 9, 10.0, clock))
    pacer.observe(_rl(100, 8, 10.0, clock))
    assert pacer.remaining == 8
    # next slot was set at 1 + 10/9 + 10/8; left = 8 - 1 = 7
    assert pacer.reserve() == pytest.approx(1.0 + 10 / 9 + 10 / 8)
    assert pacer.reserve() == pytest.approx(1.0 + 10 / 9 + 10 / 8 + 10 / 7)


def test_a_new_window_resets_the_count_of_sends() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 1, 1.0, clock))
    pacer.reserve()
    pacer.reserve()  # over budget: waits for the reset
    clock.advance(1.5)
    pacer.observe(RateLimitHeaders(100, 100, WALL0 + 61.0))
    assert pacer.remaining == 100
    wait = pacer.reserve()
    assert wait <= 60.0 / 100 + 1e-9


def test_idle_windows_do_not_stretch_the_learned_window() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(RateLimitHeaders(100, 99, WALL0 + 60.0))
    assert pacer.reserve() == 0.0
    clock.t = 1810.0  # idle for half an hour
    assert pacer.reserve() == 0.0
    clock.advance(0.1)
    pacer.observe(RateLimitHeaders(100, 99, WALL0 + 1860.0))
    clock.t = 1861.0  # next window, no answer from it yet
    assert pacer.reserve() == 0.0
    clock.advance(0.1)
    pacer.observe(RateLimitHeaders(100, 99, WALL0 + 1920.0))
    # 99 left for ~59 s: about 0.6 s apart, certainly not 18 s
    assert pacer.reserve() <= 1.0


def test_reserve_is_thread_safe_every_slot_distinct() -> None:
    clock = FakeClock()
    pacer = _pacer(clock, cap=60)
    waits: list[float] = []
    lock = threading.Lock()

    def claim() -> None:
        mine = [pacer.reserve() for _ in range(50)]
        with lock:
            waits.extend(mine)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(waits) == [float(i) for i in range(400)]


# ---- N workers sharing one key against a fixed-window server ----


@dataclass
class SimResult:
    workers: int
    senders: int
    limit: int
    requests: int = 0
    accepted: int = 0
    rejected_429: int = 0
    first_window_429: int = 0  # the partial window the run starts in, before any headers
    fills: list[float] = field(default_factory=list)  # accepted/limit per full window
    window_429: list[int] = field(default_factory=list)  # 429s per full window
    exhausted_at: list[float] = field(default_factory=list)  # last 200, s into the window

    @property
    def rate_429(self) -> float:
        return self.rejected_429 / self.requests

    @property
    def max_429_per_sender_window(self) -> float:
        return max(self.window_429) / (self.workers * self.senders)

    def line(self) -> str:
        return (
            f"workers={self.workers} senders/worker={self.senders} limit={self.limit}/min: "
            f"requests={self.requests} accepted={self.accepted} 429={self.rejected_429} "
            f"({self.rate_429:.1%}; first window {self.first_window_429}; "
            f"per full window {self.window_429}, "
            f"max {self.max_429_per_sender_window:.2f}/sender) "
            f"budget used per full window min={min(self.fills):.3f}, "
            f"spent at {min(self.exhausted_at):.1f}-{max(self.exhausted_at):.1f} s of 60"
        )


def simulate(
    workers: int,
    senders: int,
    limit: int,
    *,
    windows: int = 6,
    rtt: float = 0.08,
    start_offset: float = 17.0,
    cap: int | None = None,
    window: float = 60.0,
) -> SimResult:
    """Every sender always has a batch ready; each worker has one Pacer, the key one budget.

    The server counts requests per fixed window aligned on the wall clock, like the
    simulator: over the limit it answers 429 with Retry-After to the window's end. A
    sender does what delivery does: reserve(), sleep, send, observe(); on 429 hold()
    and sleep the wait_after_429 time, then reserve again.
    """
    clock = FakeClock()

    def wall() -> float:
        return WALL0 + start_offset + clock.t

    pacers = [Pacer(cap_per_minute=cap, monotonic=clock.mono, wall=wall) for _ in range(workers)]
    used: dict[float, int] = {}
    ok: dict[float, int] = {}
    too_many: dict[float, int] = {}
    last_ok: dict[float, float] = {}
    result = SimResult(workers, senders, limit)
    events: list[tuple[float, int, str, int, dict[str, str]]] = []
    seq = 0
    for w in range(workers):
        for _ in range(senders):
            heapq.heappush(events, (0.0, seq, "ready", w, {}))
            seq += 1
    end = windows * window
    while events:
        t, _, kind, w, headers = heapq.heappop(events)
        if t >= end:
            continue
        clock.t = t
        pacer = pacers[w]
        if kind == "ready":
            wait = pacer.reserve()
            assert wait >= 0.0
            heapq.heappush(events, (t + wait, seq, "send", w, {}))
        elif kind == "send":
            arrival = wall() + rtt / 2
            start = math.floor(arrival / window) * window
            used[start] = used.get(start, 0) + 1
            answer = {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(max(0, limit - used[start])),
                "X-RateLimit-Reset": str(math.ceil(start + window)),
            }
            result.requests += 1
            if used[start] > limit:
                result.rejected_429 += 1
                too_many[start] = too_many.get(start, 0) + 1
                answer["Retry-After"] = str(max(1, math.ceil(start + window - arrival)))
                heapq.heappush(events, (t + rtt, seq, "429", w, answer))
            else:
                result.accepted += 1
                ok[start] = ok.get(start, 0) + 1
                last_ok[start] = arrival - start
                heapq.heappush(events, (t + rtt, seq, "200", w, answer))
        else:
            parsed = RateLimitHeaders.parse(headers)
            assert parsed is not None
            pacer.observe(parsed)
            wait = 0.0
            if kind == "429":
                wait = wait_after_429(headers, wall(), 1.0)
                pacer.hold(wait)
            heapq.heappush(events, (t + wait, seq, "ready", w, {}))
        seq += 1
    spans = sorted(used)
    full = spans[1:-1]  # the first and last windows are partial
    result.first_window_429 = too_many.get(spans[0], 0)
    result.fills = [ok.get(s, 0) / limit for s in full]
    result.window_429 = [too_many.get(s, 0) for s in full]
    result.exhausted_at = [last_ok[s] for s in full]
    return result


def test_simulation_one_worker_never_sees_a_429() -> None:
    for senders in (1, 4):
        result = simulate(1, senders, 100)
        print(result.line())
        assert result.rejected_429 == 0
        # requests still in flight at the window's end are held back, never wasted on a 429
        assert min(result.fills) >= 0.99 - (senders - 1) / 100
        # one worker spreads the window's budget over all of it
        assert min(result.exhausted_at) > 55.0


@pytest.mark.parametrize(
    ("workers", "senders", "limit"),
    [(2, 1, 100), (4, 1, 100), (4, 2, 100), (8, 2, 100), (4, 4, 1000), (10, 2, 1000)],
)
def test_simulation_shared_budget_few_429s_full_use(workers: int, senders: int, limit: int) -> None:
    result = simulate(workers, senders, limit)
    print(result.line())
    # budget used: every full window's budget is spent
    assert min(result.fills) >= 0.98
    # 429s: about one per sender per window (its one slot claimed before it heard
    # the budget was gone), never a burst
    assert max(result.window_429) <= workers * senders
    assert result.rate_429 <= 0.15


def test_simulation_caps_below_the_shared_budget_never_429() -> None:
    # 4 workers x 20/min = 80 of the key's 100: no 429, 80% of the budget
    result = simulate(4, 2, 100, cap=20)
    print(result.line())
    assert result.rejected_429 == 0
    assert [round(f, 2) for f in result.fills] == [0.8] * len(result.fills)


def test_simulation_one_worker_with_requests_in_flight_never_sees_a_429() -> None:
    result = simulate(1, 3, 300, windows=5, rtt=0.5, start_offset=0.0)
    print(result.line())
    assert result.window_429 == [0] * len(result.window_429)


def test_simulation_shared_budget_lasts_until_near_the_window_end() -> None:
    result = simulate(4, 1, 100)
    print(result.line())
    assert min(result.exhausted_at) >= 48.0


@settings(max_examples=20, deadline=None)
@given(
    workers=st.integers(min_value=1, max_value=6),
    senders=st.integers(min_value=1, max_value=3),
    limit=st.sampled_from([60, 100, 300]),
    start_offset=st.floats(min_value=0.0, max_value=59.9),
    rtt=st.floats(min_value=0.005, max_value=0.5),
)
def test_property_simulation_bounds(
    workers: int, senders: int, limit: int, start_offset: float, rtt: float
) -> None:
    result = simulate(workers, senders, limit, windows=4, rtt=rtt, start_offset=start_offset)
    # senders wait one round trip per request: that, not pacing, may be the bound
    reachable = min(1.0, workers * senders * (60.0 / rtt) / limit)
    # each worker holds back what it has in flight near the window's end
    assert min(result.fills) >= 0.95 * reachable - workers * senders / limit
    assert max(result.window_429) <= workers * senders
    assert result.first_window_429 <= 2 * workers * senders
