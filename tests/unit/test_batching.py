"""PartitionBatcher and friends: count, byte and linger limits; session events as barriers."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.batching import (
    WRAPPER_BYTES,
    Batch,
    Item,
    PartitionBatcher,
    batch_body,
    body_size,
)
from consumer.events import Route

SESSION_ROUTES = (Route.SESSION_START, Route.SESSION_STOP, Route.SESSION_END)


def raw_event(offset: int, pad: int = 0, event_type: str = "feature_use") -> bytes:
    """A valid event envelope of a chosen size (pad adds that many bytes)."""
    return b'{"event_type":"%s","payload":{"n":%d,"pad":"%s"}}' % (
        event_type.encode(),
        offset,
        b"x" * pad,
    )


def raw_of_size(offset: int, size: int) -> bytes:
    """A small JSON object of exactly `size` bytes (the batcher never looks inside)."""
    base = b'{"o":%d,"p":""}' % offset
    assert size >= len(base)
    raw = b'{"o":%d,"p":"%s"}' % (offset, b"x" * (size - len(base)))
    assert len(raw) == size
    return raw


def item(
    offset: int,
    route: Route = Route.BATCH,
    arrived: float = 0.0,
    size: int | None = None,
    raw: bytes | None = None,
) -> Item[str]:
    if raw is None:
        if size is not None:
            raw = raw_of_size(offset, size)
        else:
            etype = "feature_use" if route is Route.BATCH else route.name.lower()
            raw = raw_event(offset, event_type=etype)
    return Item(offset=offset, raw=raw, route=route, ref=f"ref-{offset}", arrived=arrived)


def test_split_halves_carry_their_own_byte_counts() -> None:
    batch = Batch(Route.BATCH, [item(i, size=30 + i) for i in range(5)])
    assert batch.payload_bytes == sum(30 + i for i in range(5))
    head, tail = batch.split()
    assert head.payload_bytes == 30 + 31
    assert tail.payload_bytes == 32 + 33 + 34
    assert head.payload_bytes + tail.payload_bytes == batch.payload_bytes


def drain(batcher: PartitionBatcher[str], now: float = 0.0) -> list[Batch[str]]:
    out: list[Batch[str]] = []
    while (batch := batcher.take(now, flush=True)) is not None:
        out.append(batch)
    return out


# ---- batch_body and body_size ----


def test_wrapper_bytes() -> None:
    assert WRAPPER_BYTES == len(b'{"events":[') + len(b"]}") - 1 == 12


def test_batch_body_splices_the_original_bytes() -> None:
    raws = [b'{"a": 1}', b'{"b" :[ 2 ]}', b'{"c":"\\u00e9"}']
    body = batch_body(raws)
    assert body == b'{"events":[{"a": 1},{"b" :[ 2 ]},{"c":"\\u00e9"}]}'
    assert json.loads(body) == {"events": [{"a": 1}, {"b": [2]}, {"c": "\u00e9"}]}


def test_batch_body_of_one_and_of_none() -> None:
    assert batch_body([b"{}"]) == b'{"events":[{}]}'
    assert batch_body([]) == b'{"events":[]}'


@pytest.mark.parametrize("sizes", [[2], [2, 2], [10, 2, 300], [50] * 100])
def test_body_size_predicts_the_body_length(sizes: list[int]) -> None:
    raws = [b"{" + b" " * (s - 2) + b"}" for s in sizes]
    assert len(batch_body(raws)) == body_size(len(raws), sum(sizes))


def test_body_size_exact_values() -> None:
    assert body_size(1, 100) == 113  # 11 prefix + 100 + 2 suffix
    assert body_size(100, 100 * 50) == 12 + 5000 + 100  # 99 commas
    assert body_size(3, 30) == 45


# ---- Batch ----


def test_batch_body_offsets_and_route() -> None:
    items = [item(7), item(8), item(10)]
    batch = Batch(Route.BATCH, items)
    assert batch.offsets == [7, 8, 10]
    assert batch.body == batch_body([i.raw for i in items])
    assert [e["payload"]["n"] for e in json.loads(batch.body)["events"]] == [7, 8, 10]


@pytest.mark.parametrize("route", SESSION_ROUTES)
def test_session_batch_body_is_the_envelope_itself(route: Route) -> None:
    it = item(3, route)
    batch = Batch(route, [it])
    assert batch.body == it.raw
    assert json.loads(batch.body)["event_type"] == route.name.lower()
    assert batch.offsets == [3]


@pytest.mark.parametrize(
    ("n", "left", "right"), [(2, 1, 1), (3, 1, 2), (4, 2, 2), (5, 2, 3), (100, 50, 50)]
)
def test_split_halves_in_order(n: int, left: int, right: int) -> None:
    items = [item(i) for i in range(n)]
    a, b = Batch(Route.BATCH, items).split()
    assert (len(a.items), len(b.items)) == (left, right)
    assert a.offsets + b.offsets == list(range(n))
    assert a.route is Route.BATCH
    assert b.route is Route.BATCH
    assert a.body == batch_body([i.raw for i in items[:left]])


def test_split_down_to_single_events() -> None:
    """Bisection reaches every event alone in at most ceil(log2(100)) = 7 levels."""
    level = [Batch(Route.BATCH, [item(i) for i in range(100)])]
    depth = 0
    while any(len(b.items) > 1 for b in level):
        nxt: list[Batch[str]] = []
        for b in level:
            nxt.extend(b.split() if len(b.items) > 1 else (b,))
        level = nxt
        depth += 1
    assert depth == 7
    assert [b.offsets for b in level] == [[i] for i in range(100)]


def test_split_does_not_touch_the_original() -> None:
    items = [item(i) for i in range(4)]
    batch = Batch(Route.BATCH, items)
    batch.split()
    assert batch.offsets == [0, 1, 2, 3]


# ---- PartitionBatcher: construction and add ----


@pytest.mark.parametrize("bad", [0, -1, 101, 1000])
def test_max_events_must_be_1_to_100(bad: int) -> None:
    with pytest.raises(ValueError, match=r"max_events must be 1\.\.100"):
        PartitionBatcher[str](bad, 10_000, 0.5)


@pytest.mark.parametrize("ok", [1, 100])
def test_max_events_bounds_are_allowed(ok: int) -> None:
    assert PartitionBatcher[str](ok, 10_000, 0.5).pending_events == 0


def test_an_event_that_can_never_fit_is_refused() -> None:
    batcher = PartitionBatcher[str](100, 200, 0.5)
    batcher.add(item(0, size=200 - 13))  # exactly fills a one-event body
    with pytest.raises(ValueError, match="event of 188 bytes can never fit the byte cap"):
        batcher.add(item(1, size=200 - 12))
    assert batcher.pending_events == 1
    assert batcher.pending_bytes == 187


def test_pending_counts() -> None:
    batcher = PartitionBatcher[str](100, 100_000, 0.5)
    assert batcher.pending_events == 0
    assert batcher.pending_bytes == 0
    batcher.add(item(0, size=100))
    batcher.add(item(1, Route.SESSION_START, size=120))
    batcher.add(item(2, size=80))
    assert batcher.pending_events == 3
    assert batcher.pending_bytes == 300
    batch = batcher.take(0.0)
    assert batch is not None
    assert batch.offsets == [0]
    assert batcher.pending_events == 2
    assert batcher.pending_bytes == 200


# ---- due_in and linger ----


def test_empty_batcher_is_never_due() -> None:
    batcher = PartitionBatcher[str](100, 100_000, 0.5)
    assert batcher.due_in(0.0) is None
    assert batcher.take(0.0) is None
    assert batcher.take(0.0, flush=True) is None


def test_linger_counts_from_the_head_event() -> None:
    batcher = PartitionBatcher[str](100, 100_000, 0.5)
    batcher.add(item(0, arrived=10.0))
    batcher.add(item(1, arrived=10.4))
    assert batcher.due_in(10.0) == pytest.approx(0.5)
    assert batcher.due_in(10.2) == pytest.approx(0.3)
    assert batcher.take(10.2) is None
    assert batcher.pending_events == 2  # nothing taken
    assert batcher.due_in(10.5) == 0.0
    assert batcher.due_in(99.0) == 0.0
    batch = batcher.take(10.5)
    assert batch is not None
    assert batch.offsets == [0, 1]
    assert batcher.due_in(10.5) is None


def test_linger_restarts_from_the_next_head() -> None:
    batcher = PartitionBatcher[str](2, 100_000, 1.0)
    for offset, t in [(0, 0.0), (1, 0.1), (2, 0.7)]:
        batcher.add(item(offset, arrived=t))
    batch = batcher.take(0.2)  # full by count
    assert batch is not None
    assert batch.offsets == [0, 1]
    assert batcher.due_in(0.2) == pytest.approx(1.5)  # 0.7 + 1.0 - 0.2
    assert batcher.take(1.6) is None
    later = batcher.take(1.7)
    assert later is not None
    assert later.offsets == [2]


def test_zero_linger_is_due_at_once() -> None:
    batcher = PartitionBatcher[str](100, 100_000, 0.0)
    batcher.add(item(0, arrived=5.0))
    assert batcher.due_in(5.0) == 0.0
    batch = batcher.take(5.0)
    assert batch is not None
    assert batch.offsets == [0]


def test_flush_takes_a_part_full_batch_before_its_linger() -> None:
    batcher = PartitionBatcher[str](100, 100_000, 60.0)
    for offset in range(5):
        batcher.add(item(offset))
    assert batcher.take(0.0) is None
    batch = batcher.take(0.0, flush=True)
    assert batch is not None
    assert batch.offsets == [0, 1, 2, 3, 4]


# ---- count limit ----


def test_full_by_count_is_due_at_once_and_cut_at_max_events() -> None:
    batcher = PartitionBatcher[str](3, 100_000, 60.0)
    for offset in range(7):
        batcher.add(item(offset))
    assert batcher.due_in(0.0) == 0.0
    first = batcher.take(0.0)
    second = batcher.take(0.0)
    assert first is not None
    assert second is not None
    assert first.offsets == [0, 1, 2]
    assert second.offsets == [3, 4, 5]
    assert batcher.take(0.0) is None  # one left, lingering
    assert batcher.due_in(0.0) == pytest.approx(60.0)
    assert [b.offsets for b in drain(batcher)] == [[6]]


def test_hundred_events_per_request_at_most() -> None:
    batcher = PartitionBatcher[str](100, 10_000_000, 60.0)
    for offset in range(250):
        batcher.add(item(offset))
    cuts = drain(batcher)
    assert [len(b.items) for b in cuts] == [100, 100, 50]
    assert [len(json.loads(b.body)["events"]) for b in cuts] == [100, 100, 50]


def test_max_events_one_sends_each_alone() -> None:
    batcher = PartitionBatcher[str](1, 100_000, 60.0)
    for offset in range(3):
        batcher.add(item(offset))
    assert batcher.due_in(0.0) == 0.0
    assert [b.offsets for b in drain(batcher)] == [[0], [1], [2]]


# ---- byte limit ----


def test_full_by_bytes_exactly_at_the_cap() -> None:
    # 4 events of 50 bytes: body_size(4, 200) = 216
    batcher = PartitionBatcher[str](100, 216, 60.0)
    for offset in range(3):
        batcher.add(item(offset, size=50))
    assert batcher.due_in(0.0) == pytest.approx(60.0)  # 165 bytes: not full
    batcher.add(item(3, size=50))
    assert batcher.due_in(0.0) == 0.0  # exactly 216: full
    batch = batcher.take(0.0)
    assert batch is not None
    assert batch.offsets == [0, 1, 2, 3]
    assert len(batch.body) == 216


def test_byte_cut_leaves_the_event_that_would_overflow() -> None:
    batcher = PartitionBatcher[str](100, 100, 60.0)
    for offset in range(4):
        batcher.add(item(offset, size=30))
    # 1 event: 43 bytes, 2: 74, 3: 105 > 100
    assert batcher.due_in(0.0) == 0.0
    batch = batcher.take(0.0)
    assert batch is not None
    assert batch.offsets == [0, 1]
    assert len(batch.body) == 74
    assert batcher.pending_events == 2
    assert batcher.pending_bytes == 60
    assert batcher.due_in(0.0) == pytest.approx(60.0)  # 74 again: waits


def test_byte_cut_with_mixed_sizes() -> None:
    sizes = [60, 40, 45, 200, 30, 30, 30, 100]
    batcher = PartitionBatcher[str](100, 250, 0.0)
    for offset, size in enumerate(sizes):
        batcher.add(item(offset, size=size))
    cuts = drain(batcher)
    # [60,40,45] -> 12+145+3=160, +200 would be 361
    # [200] -> 213, +30 -> 244, +30 -> 275 > 250
    # [30,30,30,100] -> 12+190+4 = 206
    assert [b.offsets for b in cuts] == [[0, 1, 2], [3, 4], [5, 6, 7]]
    assert [len(b.body) for b in cuts] == [160, 244, 175]


# ---- session events are barriers ----


def test_session_event_makes_what_is_before_it_due() -> None:
    batcher = PartitionBatcher[str](100, 100_000, 60.0)
    batcher.add(item(0))
    batcher.add(item(1))
    assert batcher.due_in(0.0) == pytest.approx(60.0)
    batcher.add(item(2, Route.SESSION_START))
    batcher.add(item(3))
    assert batcher.due_in(0.0) == 0.0
    before = batcher.take(0.0)
    assert before is not None
    assert before.route is Route.BATCH
    assert before.offsets == [0, 1]
    session = batcher.take(0.0)
    assert session is not None
    assert session.route is Route.SESSION_START
    assert session.offsets == [2]
    assert session.body == session.items[0].raw
    # what follows the session waits for its own linger again
    assert batcher.take(0.0) is None
    assert batcher.due_in(0.0) == pytest.approx(60.0)
    after = batcher.take(0.0, flush=True)
    assert after is not None
    assert after.offsets == [3]


def test_session_events_come_out_alone_and_in_order() -> None:
    batcher = PartitionBatcher[str](100, 100_000, 60.0)
    routes = [
        Route.SESSION_START,
        Route.SESSION_STOP,
        Route.BATCH,
        Route.SESSION_END,
        Route.SESSION_START,
    ]
    for offset, route in enumerate(routes):
        batcher.add(item(offset, route))
    cuts: list[Batch[str]] = []
    while (batch := batcher.take(0.0)) is not None:  # all due without flush
        cuts.append(batch)
    assert [(b.route, b.offsets) for b in cuts] == [
        (Route.SESSION_START, [0]),
        (Route.SESSION_STOP, [1]),
        (Route.BATCH, [2]),
        (Route.SESSION_END, [3]),
        (Route.SESSION_START, [4]),
    ]
    assert batcher.due_in(0.0) is None


def test_barrier_with_more_than_max_events_before_it() -> None:
    batcher = PartitionBatcher[str](2, 100_000, 60.0)
    for offset in range(5):
        batcher.add(item(offset))
    batcher.add(item(5, Route.SESSION_END))
    cuts = []
    while (batch := batcher.take(0.0)) is not None:
        cuts.append((batch.route, batch.offsets))
    assert cuts == [
        (Route.BATCH, [0, 1]),
        (Route.BATCH, [2, 3]),
        (Route.BATCH, [4]),
        (Route.SESSION_END, [5]),
    ]


def test_session_events_refs_are_kept() -> None:
    batcher = PartitionBatcher[str](100, 100_000, 0.0)
    batcher.add(item(9, Route.SESSION_STOP))
    batch = batcher.take(0.0)
    assert batch is not None
    assert [i.ref for i in batch.items] == ["ref-9"]


# ---- clear ----


def test_clear_drops_everything_and_returns_it_in_order() -> None:
    batcher = PartitionBatcher[str](100, 100_000, 60.0)
    batcher.add(item(0))
    batcher.add(item(1, Route.SESSION_START))
    batcher.add(item(2))
    dropped = batcher.clear()
    assert [i.offset for i in dropped] == [0, 1, 2]
    assert [i.ref for i in dropped] == ["ref-0", "ref-1", "ref-2"]
    assert batcher.pending_events == 0
    assert batcher.pending_bytes == 0
    assert batcher.due_in(0.0) is None
    assert batcher.take(0.0, flush=True) is None
    assert batcher.clear() == []


def test_clear_forgets_pending_session_barriers() -> None:
    batcher = PartitionBatcher[str](100, 100_000, 60.0)
    batcher.add(item(0, Route.SESSION_START))
    batcher.clear()
    batcher.add(item(10, arrived=1.0))
    # no session pending any more: the new event lingers
    assert batcher.due_in(1.0) == pytest.approx(60.0)
    assert batcher.take(1.0) is None


# ---- properties ----


@dataclass(frozen=True)
class Spec:
    size: int
    route: Route


_route = st.sampled_from([Route.BATCH] * 6 + list(SESSION_ROUTES))
MIN_RAW = len(raw_of_size(1000, 17))  # room for the offset digits


def model_cuts(specs: list[Spec], max_events: int, max_bytes: int) -> list[list[int]]:
    """The cuts the rules call for: greedy, sessions alone, never over a limit."""
    cuts: list[list[int]] = []
    current: list[int] = []
    size = 0
    for offset, spec in enumerate(specs):
        if spec.route is not Route.BATCH:
            if current:
                cuts.append(current)
            cuts.append([offset])
            current, size = [], 0
            continue
        grown = body_size(len(current) + 1, size + spec.size)
        if current and (len(current) == max_events or grown > max_bytes):
            cuts.append(current)
            current, size = [], 0
        current.append(offset)
        size += spec.size
    if current:
        cuts.append(current)
    return cuts


@st.composite
def workloads(draw: st.DrawFn) -> tuple[int, int, list[Spec]]:
    max_events = draw(st.integers(min_value=1, max_value=100))
    max_size = draw(st.integers(min_value=MIN_RAW, max_value=MIN_RAW + 400))
    max_bytes = draw(st.integers(min_value=max_size + 13, max_value=max_size * 30))
    specs = draw(
        st.lists(
            st.builds(Spec, st.integers(min_value=MIN_RAW, max_value=max_size), _route),
            max_size=250,
        )
    )
    return max_events, max_bytes, specs


@settings(max_examples=150, deadline=None)
@given(workloads(), st.integers(min_value=0, max_value=40))
def test_property_every_cut_obeys_the_limits_and_keeps_order(
    workload: tuple[int, int, list[Spec]], run: int
) -> None:
    """`run` > 0 feeds the batcher in runs through `add_many`, as the worker does."""
    max_events, max_bytes, specs = workload
    batcher = PartitionBatcher[str](max_events, max_bytes, 0.5)
    items = [item(offset, spec.route, size=spec.size) for offset, spec in enumerate(specs)]
    if run:
        for start in range(0, len(items), run):
            chunk = items[start : start + run]
            sessions = sum(i.route is not Route.BATCH for i in chunk)
            batcher.add_many(chunk, sum(len(i.raw) for i in chunk), sessions)
    else:
        for it in items:
            batcher.add(it)
    assert batcher.pending_bytes == sum(s.size for s in specs)
    cuts = []
    while (cut := batcher.take(0.0, flush=True)) is not None:
        assert cut.payload_bytes == sum(len(i.raw) for i in cut.items)
        cuts.append(cut)
        assert batcher.pending_bytes == sum(len(i.raw) for i in items) - sum(
            c.payload_bytes for c in cuts
        )
    assert batcher.pending_events == 0
    assert batcher.pending_bytes == 0

    flat: list[Item[str]] = []
    for batch in cuts:
        body = batch.body
        assert len(batch.items) >= 1
        assert len(batch.items) <= max_events
        assert len(body) <= max_bytes
        if batch.route is Route.BATCH:
            assert all(i.route is Route.BATCH for i in batch.items)
            assert len(body) == body_size(len(batch.items), sum(len(i.raw) for i in batch.items))
            decoded = json.loads(body)
            assert list(decoded) == ["events"]
            assert decoded["events"] == [json.loads(i.raw) for i in batch.items]
        else:
            assert len(batch.items) == 1  # a session event alone
            assert batch.items[0].route is batch.route
            assert body == batch.items[0].raw
        flat.extend(batch.items)
    # the concatenation of all requests is the input, in order, nothing lost or doubled
    assert flat == items
    # and the cuts are exactly the greedy ones the rules describe
    assert [b.offsets for b in cuts] == model_cuts(specs, max_events, max_bytes)


@settings(max_examples=100, deadline=None)
@given(
    workloads(),
    st.lists(st.floats(min_value=0.0, max_value=0.3), min_size=1, max_size=250),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_property_take_returns_a_batch_exactly_when_it_is_due(
    workload: tuple[int, int, list[Spec]], steps: list[float], linger: float
) -> None:
    """Events arrive over time; take() without flush after each one agrees with the rules."""
    max_events, max_bytes, specs = workload
    batcher = PartitionBatcher[str](max_events, max_bytes, linger)
    pending: list[Item[str]] = []
    out: list[Item[str]] = []
    now = 0.0
    for offset, spec in enumerate(specs):
        now += steps[offset % len(steps)]
        it = item(offset, spec.route, arrived=now, size=spec.size)
        batcher.add(it)
        pending.append(it)
        while True:
            full = (
                len(pending) >= max_events
                or body_size(len(pending), sum(len(p.raw) for p in pending)) >= max_bytes
                or any(p.route is not Route.BATCH for p in pending)
            )
            lingered = pending[0].arrived + linger - now if pending else None
            due = bool(pending) and (full or (lingered is not None and lingered <= 0))
            expected_due_in = None if not pending else (0.0 if full else max(0.0, lingered or 0))
            got = batcher.due_in(now)
            if expected_due_in is None:
                assert got is None
            else:
                assert got == pytest.approx(expected_due_in)
            batch = batcher.take(now)
            if not due:
                assert batch is None
                break
            assert batch is not None
            assert batch.items == pending[: len(batch.items)]
            del pending[: len(batch.items)]
            out.extend(batch.items)
        assert batcher.pending_events == len(pending)
    for batch in drain(batcher, now):
        out.extend(batch.items)
    assert [i.offset for i in out] == list(range(len(specs)))
