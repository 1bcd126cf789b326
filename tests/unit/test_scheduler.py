"""Fair request slots: the rotation alone, then the ledger handing out slots through it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from consumer.scheduler import RoundRobin
from tests.unit.test_ledger import ledger, ok, read


def test_served_goes_last_and_passed_over_keeps_its_place() -> None:
    rr: RoundRobin[int] = RoundRobin()
    for key in range(4):
        rr.add(key)
    assert list(rr) == [0, 1, 2, 3]
    rr.served(0)
    rr.served(2)  # 1 was passed over: it stays ahead of 2 and 0
    assert list(rr) == [1, 3, 0, 2]
    rr.discard(3)
    rr.add(5)
    rr.served(7)  # not in the rotation: nothing happens
    assert list(rr) == [1, 0, 2, 5]
    assert len(rr) == 4


def test_twelve_partitions_on_eight_slots_each_get_a_slot_within_eleven_grants() -> None:
    """Under a backlog every partition always has a batch due. Walking them in the same
    order every time gave every freed slot to partitions 0-7 and none to 8-11."""
    parts = [("t", p) for p in range(12)]
    led = ledger(batch_max_events=10)
    led.assigned(parts, 0.0)
    for tp in parts:
        read(led, tp, list(range(2000)))
    waiting_since: dict[Any, int] = {}
    grants: list[Any] = []
    in_flight = list(led.next_jobs(1.0, False, 8))
    grants += [job.key for job in in_flight]
    for _ in range(600):  # one slot frees at a time, the oldest job first
        job = in_flight.pop(0)
        led.result(ok(job), 1.0)
        new = led.next_jobs(1.0, False, 8)
        assert len(new) == 1
        in_flight += new
        grants.append(new[0].key)
        busy = {j.key for j in in_flight}
        for tp in parts:
            if tp in busy:
                waiting_since.pop(tp, None)
            else:
                waiting_since.setdefault(tp, len(grants))
                assert len(grants) - waiting_since[tp] <= len(parts) - 1, f"{tp} starves"
    counts = Counter(grants)
    assert set(counts) == set(parts)
    assert max(counts.values()) - min(counts.values()) <= 1
