"""Pacer and RateLimitHeaders: pacing from the API's rate-limit headers, with fake clocks."""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.pacing import Pacer, RateLimitHeaders
from consumer.policy import wait_after_429

T = TypeVar("T")

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
    # the next window's slots follow at window/limit, the window taken as the
    # longest time to a reset seen (30 s) until one is measured: 30/100 s
    assert pacer.reserve() == pytest.approx(30.3)
    clock.advance(10.0)
    assert pacer.reserve() == pytest.approx(20.6)  # slot at 30.6, now 10


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
    # second reservation at the same instant: 9 left over the 9 s from its slot
    assert pacer.reserve() == pytest.approx(1.0)
    assert pacer.reserve() == pytest.approx(2.0)


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
    # 50 requests spread evenly over the 25 s: the first at once, the last one
    # spacing before the reset
    assert slots[0] == 0.0
    assert slots[1] == pytest.approx(0.5)
    assert slots[-1] == pytest.approx(24.5)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert gaps == pytest.approx([0.5] * 49)


def test_budget_spent_by_own_sends_waits_for_the_reset() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 2, 20.0, clock))
    assert pacer.reserve() == 0.0
    assert pacer.reserve() == pytest.approx(10.0)  # 1 left over the 10 s from its slot
    # no answer yet: both remaining slots are claimed, the third waits for the new
    # window and goes at its very start
    assert pacer.reserve() == pytest.approx(20.0)
    assert pacer.reserve() == pytest.approx(20.2)  # then window/limit apart (20 s / 100)


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
    pacer.observe(_rl(100, 40, 30.0, clock))
    clock.advance(31.0)  # the window ended; no answer from the next one yet
    assert [pacer.reserve() for _ in range(3)] == pytest.approx([0.0, 0.3, 0.6])


def test_until_a_window_is_measured_the_longest_time_to_a_reset_stands_for_it() -> None:
    clock = FakeClock()
    pacer = _pacer(clock, window=60.0)
    pacer.observe(_rl(20, 0, 4.0, clock))  # the window is at least 4 s
    assert pacer.reserve() == pytest.approx(4.0)
    assert pacer.reserve() == pytest.approx(4.2)  # 4 s / 20, not 60 s / 20
    clock.advance(4.1)
    pacer.observe(_rl(20, 19, 9.9, clock))  # the new window's first answer: at least 9.9 s
    clock.advance(10.0)
    # the two resets are 10 s apart, and 9.9 s is over half of that: the window is 10 s
    assert pacer.reserve() == pytest.approx(0.0)
    assert pacer.reserve() == pytest.approx(10.0 / 20)


def test_a_lone_gap_between_resets_is_the_window() -> None:
    """A gap is a whole number of windows; a lower bound above half of it makes it one."""
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(RateLimitHeaders(100, 90, WALL0 + 10.0))
    clock.t = 10.5
    pacer.observe(RateLimitHeaders(100, 99, WALL0 + 40.0))  # 29.5 s to go: window >= 29.5
    clock.t = 40.2  # past that reset, nothing heard since
    assert [pacer.reserve() for _ in range(2)] == pytest.approx([0.0, 0.3])  # 30 s / 100


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
    assert pacer.reserve() == pytest.approx(30.3)


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
    assert [pacer.reserve() for _ in range(3)] == pytest.approx([0.0, 1.0, 2.0])
    # two of the three sends were answered: 8 left, one of ours still unanswered
    pacer.observe(_rl(100, 9, 10.0, clock))
    pacer.observe(_rl(100, 8, 10.0, clock))
    assert pacer.remaining == 8
    # next slot is at 3; left = 8 - 1 = 7 over the 7 s from there
    assert pacer.reserve() == pytest.approx(3.0)
    assert pacer.reserve() == pytest.approx(4.0)
    # an answer that says others used some too: 4 left, 2 of ours unanswered,
    # 2 over the 5 s from the slot at 5
    pacer.observe(_rl(100, 4, 10.0, clock))
    assert pacer.reserve() == pytest.approx(5.0)
    assert pacer.reserve() == pytest.approx(7.5)


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


def test_slots_claimed_ahead_stay_inside_the_window() -> None:
    """Many threads reserving at once: the slots split the window evenly, none past the reset."""
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 10, 10.0, clock))
    waits = [pacer.reserve() for _ in range(10)]
    assert waits == pytest.approx([float(i) for i in range(10)])
    # the eleventh is over budget: the first slot of the next window
    assert pacer.reserve() == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("budget", "window", "seen_at"),
    [(100, 6.0, 0.0), (100, 60.0, 0.0), (1000, 60.0, 0.0), (100, 6.0, 2.5), (7, 1.0, 0.3)],
)
def test_budget_is_used_within_the_window(budget: int, window: float, seen_at: float) -> None:
    """One sender, answers at once: >= 99% of the budget inside the window, never more."""
    clock = FakeClock()
    pacer = _pacer(clock, window=window)
    reset_wall = WALL0 + window
    # the window's first answer, `seen_at` into it (what came before used the same key)
    sent = 1 + round(seen_at / window * budget)
    clock.advance(seen_at)
    pacer.observe(RateLimitHeaders(budget, budget - sent, reset_wall))
    while True:
        wait = pacer.reserve()
        assert wait >= 0.0
        clock.advance(wait)
        if clock.wall() >= reset_wall:
            pacer.unanswered()
            break
        sent += 1
        assert sent <= budget
        pacer.observe(RateLimitHeaders(budget, budget - sent, reset_wall))
    assert sent >= 0.99 * budget


@pytest.mark.parametrize("senders", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("rtt", [0.0, 0.05, 0.2])
def test_budget_is_used_with_slots_claimed_ahead(senders: int, rtt: float) -> None:
    """Several senders each waiting for a slot (as delivery threads under a backlog do),
    each answer a round trip later: >= 99% of the budget (or of what the round trips
    allow) inside the window, never more."""
    budget, window = 100, 6.0
    clock = FakeClock()
    pacer = _pacer(clock, window=window)
    reset_wall = WALL0 + window
    pacer.observe(RateLimitHeaders(budget, budget - 1, reset_wall))
    counted = 1  # requests the server has counted in this window
    # (time, seq, what, the server's remaining when it counted the request)
    events: list[tuple[float, int, str, int]] = [(0.0, k, "ready", 0) for k in range(senders)]
    seq = senders
    while events:
        t, _, kind, remaining = heapq.heappop(events)
        clock.t = t
        if kind == "ready":
            wait = pacer.reserve()
            assert wait >= 0.0
            if clock.wall() + wait >= reset_wall:
                pacer.unanswered()  # its slot is in the next window: stop there
                continue
            heapq.heappush(events, (t + wait, seq, "send", 0))
        elif kind == "send":
            counted += 1
            assert counted <= budget
            heapq.heappush(events, (t + rtt, seq, "answer", budget - counted))
        else:
            pacer.observe(RateLimitHeaders(budget, remaining, reset_wall))
            heapq.heappush(events, (t, seq, "ready", 0))
        seq += 1
    reachable = budget if rtt == 0.0 else min(budget, senders * window / rtt)
    assert counted >= 0.99 * reachable


def _pacer_with_share(clock: FakeClock, window: float = 60.0) -> Pacer:
    """A pacer that has learnt it makes half of its key's requests."""
    pacer = _pacer(clock, window=window)
    reset = clock.wall() + window
    pacer.observe(RateLimitHeaders(100, 99, reset))
    for k in range(10):  # ten of ours while the key's remaining falls by 20
        pacer.observe(RateLimitHeaders(100, 97 - 2 * k, reset))
    clock.advance(window)
    pacer.observe(RateLimitHeaders(100, 90, clock.wall() + window))
    assert pacer.share == pytest.approx(0.5)
    return pacer


def test_shared_key_counts_the_others_in_flight_and_keeps_a_margin() -> None:
    clock = FakeClock()
    pacer = _pacer_with_share(clock)
    # 90 left; the others sent about one (ours is half) since that answer; one
    # more and 3% kept back: 88 * 0.97, half of it ours, over 60 s
    first = 60.0 / (88 * 0.97 * 0.5)
    assert pacer.reserve() == 0.0
    assert pacer.reserve() == pytest.approx(first)
    # one of ours in flight stands for two of the key's: 86 * 0.97 from the second slot
    second = (60.0 - first) / (86 * 0.97 * 0.5)
    assert pacer.reserve() == pytest.approx(first + second)


def test_the_whole_key_uses_no_margin() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 30, 3.0, clock))
    assert pacer.share == 1.0
    assert [pacer.reserve() for _ in range(30)] == pytest.approx([i / 10 for i in range(30)])
    assert pacer.reserve() == pytest.approx(3.0)


def test_shared_key_waits_for_the_reset_when_in_flight_covers_what_is_left() -> None:
    clock = FakeClock()
    pacer = _pacer_with_share(clock)  # the window ends at 120 s
    clock.advance(30.0)
    pacer.observe(RateLimitHeaders(100, 40, WALL0 + 120.0))
    waits = [pacer.reserve() for _ in range(3)]
    assert max(waits) < 5.0
    pacer.observe(RateLimitHeaders(100, 3, WALL0 + 120.0))  # one answered: 3 left
    # two of ours in flight stand for four of the key's: nothing left until the reset
    assert pacer.reserve() == pytest.approx(30.0)


# ---- a demand the worker knows ----


def test_a_known_demand_within_this_workers_part_of_what_is_left_goes_at_once() -> None:
    """The tail of a drain: everything there is to send is 20 requests, and this worker's
    half of the 88 left (3% kept back) is 42; spread over the window's last minute they
    took a minute, with the budget idle behind them."""
    clock = FakeClock()
    pacer = _pacer_with_share(clock)
    pacer.set_demand(20)
    assert [pacer.reserve() for _ in range(20)] == [0.0] * 20
    # past what it said it had (a retry): spread again, from the slot free now
    assert pacer.reserve() == 0.0
    assert pacer.reserve() > 1.0
    pacer.set_demand(None)
    assert pacer.reserve() > 2.0


def test_a_demand_larger_than_this_workers_part_is_spread_as_before() -> None:
    spread, told = _pacer_with_share(FakeClock()), _pacer_with_share(FakeClock())
    told.set_demand(43)  # half of 88 * 0.97 is 42.7
    assert [told.reserve() for _ in range(5)] == pytest.approx([spread.reserve() for _ in range(5)])


def test_a_share_only_assumed_is_no_ground_to_hurry() -> None:
    """Before anything tells the others' use, every worker takes the key for its own: a
    known demand sent at once then would be every worker's, in the first window's
    first second."""
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(60, 59, 10.0, clock))
    pacer.set_demand(5)
    assert [pacer.reserve() for _ in range(3)] == pytest.approx([0.0, 10 / 58, 2 * 10 / 58], 0.05)


def test_in_a_window_not_heard_of_yet_a_known_demand_takes_this_workers_part_of_it() -> None:
    clock = FakeClock()
    pacer = _pacer_with_share(clock)  # half of 100 per 60 s
    clock.advance(61.0)  # the window ended; no answer from the next one yet
    pacer.set_demand(48)  # within 100 * 0.5 * 0.97
    assert [pacer.reserve() for _ in range(48)] == [0.0] * 48
    pacer.set_demand(1)  # 48 sent and not answered yet: 1 more is over its half
    assert [pacer.reserve() for _ in range(2)] == pytest.approx([0.0, 1.2])


# ---- Pacer.try_reserve ----


def test_try_reserve_takes_a_free_slot_as_reserve_would() -> None:
    clock = FakeClock()
    tried, reserved = _pacer(clock), _pacer(clock)
    for pacer in (tried, reserved):
        pacer.observe(_rl(100, 10, 10.0, clock))
    assert tried.try_reserve() is True
    assert reserved.reserve() == 0.0
    # both have one request in flight and the next slot 1 s on
    assert tried.reserve() == reserved.reserve() == pytest.approx(1.0)
    assert tried.reserve() == reserved.reserve() == pytest.approx(2.0)


def test_try_reserve_refuses_a_slot_in_the_future_and_changes_nothing() -> None:
    clock = FakeClock()
    tried, untouched = _pacer(clock, cap=60), _pacer(clock, cap=60)
    for pacer in (tried, untouched):
        assert pacer.reserve() == 0.0
    assert tried.try_reserve() is False
    assert tried.try_reserve() is False
    assert tried.reserve() == untouched.reserve() == pytest.approx(1.0)
    clock.advance(2.0)  # the next slot (2.0) is now
    assert tried.try_reserve() is True
    assert tried.reserve() == pytest.approx(1.0)


def test_try_reserve_when_the_budget_is_spent() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    pacer.observe(_rl(100, 1, 5.0, clock))
    assert pacer.try_reserve() is True
    assert pacer.try_reserve() is False  # its one request is in flight: next window
    pacer.observe(_rl(100, 0, 5.0, clock))
    assert pacer.try_reserve() is False
    assert pacer.reserve() == pytest.approx(5.0)  # the reset, as if never tried


def test_try_reserve_polled_uses_the_budget_and_never_more() -> None:
    """A loop polling try_reserve() every 10 ms, answers at once: the budget, no more."""
    budget, window = 100, 6.0
    clock = FakeClock()
    pacer = _pacer(clock, window=window)
    reset_wall = WALL0 + window
    pacer.observe(RateLimitHeaders(budget, budget - 1, reset_wall))
    sent = 1
    refused = 0
    for _ in range(round(window / 0.01) - 1):
        clock.advance(0.01)
        if not pacer.try_reserve():
            refused += 1
            continue
        sent += 1
        assert sent <= budget
        pacer.observe(RateLimitHeaders(budget, budget - sent, reset_wall))
    assert sent >= 0.99 * budget
    assert refused > 0


def test_try_reserve_without_headers_or_cap_always_succeeds() -> None:
    clock = FakeClock()
    pacer = _pacer(clock)
    assert all(pacer.try_reserve() for _ in range(5))
    pacer.hold(1.0)
    assert pacer.try_reserve() is False
    clock.advance(1.0)
    assert pacer.try_reserve() is True


def _from_threads(call: Callable[[], T], threads: int = 8, each: int = 50) -> list[T]:
    """`call` made `each` times on each of `threads` threads at once; every result."""
    results: list[T] = []
    lock = threading.Lock()

    def run() -> None:
        mine = [call() for _ in range(each)]
        with lock:
            results.extend(mine)

    started = [threading.Thread(target=run) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return results


def test_try_reserve_is_thread_safe_one_winner_per_slot() -> None:
    clock = FakeClock()
    pacer = _pacer(clock, cap=60)
    wins = _from_threads(pacer.try_reserve)
    assert wins.count(True) == 1
    assert pacer.reserve() == pytest.approx(1.0)


def test_reserve_is_thread_safe_every_slot_distinct() -> None:
    clock = FakeClock()
    pacer = _pacer(clock, cap=60)
    waits = _from_threads(pacer.reserve)
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
    # accepted requests of each worker per window (window start, wall clock)
    by_worker: dict[tuple[int, float], int] = field(default_factory=dict)
    windows_seen: list[float] = field(default_factory=list)

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
    busy: Callable[[int, float], bool] | None = None,
    quiet_senders: int | None = None,
) -> SimResult:
    """Every sender always has a batch ready; each worker has one Pacer, the key one budget.

    With `busy`, worker w's senders have a batch ready only while busy(w, t) (t in seconds
    from the start): a quiet worker's senders wait and look again every second, a worker
    that left (never busy again) simply stays quiet. `quiet_senders`: worker 0's own count.

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
        for _ in range(senders if w or quiet_senders is None else quiet_senders):
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
            if busy is not None and not busy(w, t):
                heapq.heappush(events, (t + 1.0, seq, "ready", w, {}))
                seq += 1
                continue
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
                result.by_worker[(w, start)] = result.by_worker.get((w, start), 0) + 1
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
    result.windows_seen = spans
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


@pytest.mark.parametrize(("workers", "rtt"), [(1, 0.02), (2, 0.02), (3, 0.02), (3, 0.1)])
def test_simulation_backlog_like_the_benchmark(workers: int, rtt: float) -> None:
    """The benchmark's shape: 100 per 6 s, 8 delivery threads per worker, all waiting
    for slots. The budget is used to the end of every window, with next to no 429s."""
    result = simulate(workers, 8, 100, window=6.0, windows=20, rtt=rtt, start_offset=1.7)
    print(result.line())
    assert sum(result.fills) / len(result.fills) >= 0.98
    assert sum(result.window_429) <= 0.01 * result.accepted


@pytest.mark.parametrize("start_offset", [0.3, 3.7, 7.9])
def test_simulation_three_workers_starting_together_on_a_short_window(start_offset: float) -> None:
    """The drain benchmark's shape: 60 requests per 10 s, three workers of 8 senders all
    starting at once. Start-up included, at most 0.5% of requests meet a 429, and every
    full window's budget is used."""
    result = simulate(3, 8, 60, window=10.0, windows=11, rtt=0.02, start_offset=start_offset)
    print(result.line())
    assert result.rate_429 <= 0.005
    assert min(result.fills) >= 0.95


@pytest.mark.parametrize(("limit", "window"), [(100, 60.0), (60, 10.0)])
def test_a_share_learnt_while_quiet_recovers_within_two_windows_of_the_others_leaving(
    limit: int, window: float
) -> None:
    """Worker 0 sends two requests a window while workers 1 and 2 use the key, so it learns a
    tiny share; then they leave (scale-in) and worker 0 has the backlog. It once kept ~1/64
    of the key until restarted: its share was only measured once 10 requests were seen."""
    leave = 2.5 * window

    def busy(w: int, t: float) -> bool:
        if w == 0:  # two requests a window (its partitions are quiet), then the backlog
            return t >= leave or int(t) % int(window) in (0, int(window) - 2)
        return t < leave

    result = simulate(
        3, 8, limit, windows=9, window=window, start_offset=0.3, busy=busy, quiet_senders=1
    )
    start = min(s for s in result.windows_seen if s - result.windows_seen[0] >= leave)
    later = [s for s in result.windows_seen if s >= start + 2 * window][:-1]  # whole windows
    assert later, result.windows_seen
    used = [result.by_worker.get((0, s), 0) / limit for s in later]
    assert min(used) >= 0.9, f"worker 0 used {used} of the key after the others left"
    assert result.rate_429 <= 0.05


def test_a_window_of_a_few_requests_all_its_own_gives_the_worker_the_whole_key() -> None:
    """The share is measured at each window's end from any use of the key: a worker that
    learnt a third of it, then was the key's only user in a window of four requests, takes
    the whole key from the next window. (Measured only from windows of ten requests, a
    worker once kept 1/64 of a key it had to itself; the rise on a stretch of its own
    requests does not cover four.)"""
    clock = FakeClock()
    pacer = _pacer(clock, window=10.0)

    def window(remaining: list[int], reset: float) -> None:
        for left in remaining:
            pacer.observe(RateLimitHeaders(60, left, WALL0 + reset))
            clock.advance(0.1)

    window([59, 58, 55, 52, 49, 47], 10.0)  # ours 5 answers, the others 7 of the 12 used
    clock.t = 10.5
    window([59, 58, 57, 56], 20.0)  # the others gone: 3 used after the first, all ours
    assert pacer.share == pytest.approx(5 / 12)
    clock.t = 20.5
    window([59], 30.0)  # the next window's first answer closes the last one
    assert pacer.share == 1.0


# ---- slots_soon: how many requests to cut now ----


def test_slots_soon_is_unbounded_until_a_limit_is_known() -> None:
    clock = FakeClock()
    p = _pacer(clock)
    slots, wake = p.slots_soon()
    assert slots >= 1 << 20
    assert wake == 0.0


def test_slots_soon_counts_the_slot_free_now_and_the_next_one() -> None:
    """One request on its slot now, one cut ahead and waiting for the next: the slot after
    is taken on its own timer, and nothing more waits with events that could have grown."""
    clock = FakeClock()
    p = _pacer(clock, window=10.0)
    p.observe(_rl(60, 60, 10.0, clock))  # a fresh window of 60: a slot every 10/60 s
    assert p.slots_soon() == (2, 0.0)
    assert p.try_reserve()
    assert p.slots_soon() == (1, 0.0)  # the next slot, within one spacing
    assert p.reserve() > 0  # claimed ahead, as a request waiting for it is
    slots, wake = p.slots_soon()
    assert slots == 0
    assert 0 < wake <= 0.2  # when the slot after is one spacing off


def test_slots_soon_on_a_key_spaced_finer_than_a_loop_turn_allows_every_request_slot() -> None:
    """A key of a billion requests a minute (what an unlimited key's headers say) spaces
    requests 60 ns apart: counted over one spacing, two requests a loop turn were cut, and
    the worker forwarded 69,000 events a second where it had 107,000 (throughput bench)."""
    clock = FakeClock()
    p = _pacer(clock)
    p.observe(_rl(1_000_000_000, 1_000_000_000, 60.0, clock))
    slots, _ = p.slots_soon()
    assert slots >= 8  # GR_MAX_IN_FLIGHT's default
    p.observe(_rl(1000, 1000, 60.0, clock))  # a Pro key: 60 ms apart, as before
    assert p.slots_soon()[0] == 2


@pytest.mark.parametrize("per_minute", [1000, 6000, 60_000, 600_000, 1_000_000_000])
def test_slots_soon_never_holds_a_worker_below_what_its_key_allows_in_a_loop_turn(
    per_minute: int,
) -> None:
    """The whole class: whatever the key's spacing, the slots counted soon cover 50 ms of
    the key's pace (a loop turn or a few), and never fewer than the slot free now and the
    next; a spacing of 50 ms or more (every key up to 1,200 a minute) counts as before."""
    clock = FakeClock()
    p = _pacer(clock)
    p.observe(_rl(per_minute, per_minute, 60.0, clock))
    spacing = 60.0 / per_minute
    slots, _ = p.slots_soon()
    assert slots >= max(2, min(1 << 20, int(0.05 / spacing)))
    if spacing >= 0.05:
        assert slots == 2


def test_slots_soon_waits_for_the_next_window_when_the_budget_is_spent() -> None:
    clock = FakeClock()
    p = _pacer(clock, window=10.0)
    p.observe(_rl(60, 0, 4.0, clock))
    slots, wake = p.slots_soon()
    assert slots == 0
    assert 3.5 < wake <= 4.0


@pytest.mark.parametrize("leave", [2.2, 2.5])
def test_the_window_after_the_others_stop_is_used_whole(leave: float) -> None:
    """Three workers drain a key of 60 per 10 s; two run out of work mid-window. The third
    once kept its old third of the key for the rest of that window and half the next, its
    share measured only at a window's end (31 of the next window's 60): a three-worker
    drain's tail ran at half speed. A stretch of the key's requests that is all its own
    raises the share at once."""
    window = 10.0

    def busy(w: int, t: float) -> bool:
        return w == 0 or t < leave * window

    result = simulate(3, 8, 60, windows=6, window=window, start_offset=0.3, busy=busy)
    first = result.windows_seen[0]
    after = next(s for s in result.windows_seen if s - first >= leave * window)
    assert result.by_worker.get((0, after), 0) >= 57, result.by_worker
    assert result.rate_429 <= 0.02


def test_a_sliver_of_budget_left_never_puts_the_next_slot_minutes_past_the_reset() -> None:
    """A share learnt small (the others used the key) and a little of the window left: the
    spacing, what is left spread over the time to the reset, ran to two minutes, and the
    slot after it stayed there through the next windows (found by the simulation: a worker
    sent nothing for 190 s with a backlog waiting)."""
    clock = FakeClock()
    p = _pacer(clock, window=10.0)
    first, second = WALL0 + 10.0, WALL0 + 20.0  # two windows' resets
    clock.advance(0.3)
    p.observe(RateLimitHeaders(60, 58, first))
    clock.advance(6.6)
    p.observe(RateLimitHeaders(60, 29, first))  # one of ours in 29 of the key's
    clock.advance(3.3)
    p.observe(RateLimitHeaders(60, 59, second))  # the next window: the share measured, 1/29
    assert p.share < 0.05
    clock.advance(3.3)
    p.observe(RateLimitHeaders(60, 31, second))  # the others busy: a sliver left for us
    assert p.reserve() == 0.0
    per_window = 10.0 / (60 * p.share)
    to_reset = second - clock.wall()
    assert p.wait_s() <= to_reset + 2 * per_window + 1e-6, p.wait_s()
