"""Finding the refused event of a 400 batch: order, cost, and no valid event ever lost."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.batching import Item
from consumer.events import Route
from consumer.isolation import Isolation, named_indices


def items(n: int) -> list[Item[int]]:
    return [Item(i, b'{"i":%d}' % i, Route.BATCH, i, 0.0) for i in range(n)]


def run(n: int, bad: set[int], body: bytes = b'{"error":"invalid"}') -> Isolation[int]:
    """Drive a search the way the API would answer: a request fails if it holds a bad event."""
    search = Isolation.start(items(n), 400, body, "first answer")
    sent: list[int] = []
    while (probe := search.probe()) is not None:
        offsets = [it.offset for it in probe]
        # partition order: each request is contiguous and starts where the delivered prefix ends
        assert offsets == list(range(len(sent), len(sent) + len(offsets)))
        refused = bad & set(offsets)
        search.answer(not refused, 400, f"refused {sorted(refused)}")
        if not refused:
            sent.extend(offsets)
    return search


def fates(search: Isolation[int]) -> tuple[list[int], list[int], list[int]]:
    return (
        [it.offset for it in search.accepted],
        [it.offset for it, _, _ in search.rejected],
        [it.offset for it in search.unsent],
    )


@pytest.mark.parametrize("n", [2, 3, 7, 64, 99, 100])
def test_one_refused_event_costs_at_most_nine_requests_with_the_first(n: int) -> None:
    worst = 0
    for bad in range(n):
        search = run(n, {bad})
        accepted, rejected, unsent = fates(search)
        assert rejected == [bad]
        assert accepted == list(range(bad))  # everything before it, delivered in order
        assert unsent == list(range(bad + 1, n))  # everything after it, for the next request
        worst = max(worst, 1 + search.requests)  # the failed batch request counts too
    assert worst <= 9 if n <= 100 else True
    if n == 100:
        assert worst == 9


def test_a_400_about_no_single_event_loses_nothing() -> None:
    search = run(100, set())  # every probe passes: the last one is confirmed, not guessed
    accepted, rejected, unsent = fates(search)
    assert rejected == []
    assert accepted == list(range(100))
    assert unsent == []


def test_the_first_of_several_refused_events_is_found_and_the_rest_handed_back() -> None:
    search = run(100, {10, 11, 60})
    accepted, rejected, unsent = fates(search)
    assert rejected == [10]
    assert accepted == list(range(10))
    assert unsent == list(range(11, 100))  # 11 and 60 will be found on the next request


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=2, max_value=100), st.data())
def test_every_event_gets_exactly_one_fate_in_order(n: int, data: st.DataObject) -> None:
    bad = set(data.draw(st.lists(st.integers(min_value=0, max_value=n - 1), max_size=5)))
    search = run(n, bad)
    accepted, rejected, unsent = fates(search)
    assert accepted + rejected + unsent == list(range(n))
    assert set(rejected) <= bad  # only ever a refused event is dead-lettered
    assert len(rejected) == (1 if bad else 0)
    assert not bad & set(accepted)
    assert 1 + search.requests <= 9


def test_named_events_cost_no_further_request() -> None:
    body = orjson.dumps({"error": "invalid_events", "rejected": [3, 40], "errors": []})
    search = Isolation.start(items(100), 400, body, "names them")
    assert search.probe() is None
    accepted, rejected, unsent = fates(search)
    assert rejected == [3, 40]
    assert accepted == []
    assert unsent == [i for i in range(100) if i not in (3, 40)]
    assert [(s, d) for _, s, d in search.rejected] == [(400, "names them")] * 2


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"rejected":[2,0]}', [0, 2]),
        (b'{"errors":[{"index":1,"reason":"x"}]}', [1]),
        (b'{"rejected":[]}', None),
        (b'{"rejected":[0,1,2,3]}', None),  # all of them: tells nothing
        (b'{"rejected":[9]}', None),  # out of range
        (b'{"rejected":[true]}', None),
        (b'{"rejected":["1"]}', None),
        (b'{"errors":[{"reason":"x"}]}', None),
        (b"not json", None),
        (b"[1]", None),
    ],
)
def test_named_indices(body: bytes, expected: list[int] | None) -> None:
    assert named_indices(body, 4) == expected
