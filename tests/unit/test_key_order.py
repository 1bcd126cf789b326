"""Key order without a broker: what a partition's waiting events may go as, and when."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.batching import Item
from consumer.events import Route
from consumer.key_order import KeyOrderBatcher
from tests.unit.test_ledger import ledger, ok

RAW = b'{"event_type":"x","payload":{}}'


def item(offset: int, key: bytes | None, session: bool = False) -> Item[None]:
    route = Route.SESSION_START if session else Route.BATCH
    return Item(offset, RAW, route, None, 0.0, key)


def batcher(*items: Item[None], max_events: int = 100) -> KeyOrderBatcher[None]:
    b: KeyOrderBatcher[None] = KeyOrderBatcher(max_events, 1_000_000, 0.0)
    b.add_many(list(items), len(RAW) * len(items), sum(i.route is not Route.BATCH for i in items))
    return b


def offsets(items: list[Item[None]]) -> list[int]:
    return [i.offset for i in items]


def test_a_session_event_does_not_cut_the_batch_for_other_players() -> None:
    b = batcher(item(0, b"a"), item(1, b"b"), item(2, b"a", True), item(3, b"b"), item(4, b"a"))
    batch = b.take(1.0, True, set())
    assert batch is not None
    # b's events and a's first; a's session event and what follows it for a wait
    assert batch.offsets == [0, 1, 3]
    assert b.take_sessions({b"a", b"b"}, 8) == []  # a's earlier event is in flight
    assert b.take_sessions(set(), 8) == []  # nothing changed since it looked
    b.keys_freed()  # the batch came back
    (session,) = b.take_sessions(set(), 8)
    assert session.offset == 2
    assert b.take(1.0, True, {b"a"}) is None  # a's later event waits for the session
    last = b.take(1.0, True, set())
    assert last is not None
    assert last.offsets == [4]
    assert b.pending_events == 0
    assert b.pending_bytes == 0


def test_records_without_a_key_keep_partition_order_among_themselves() -> None:
    b = batcher(item(0, None), item(1, None, True), item(2, b"x"), item(3, None))
    batch = b.take(1.0, True, set())
    assert batch is not None
    assert batch.offsets == [0, 2]  # the null key's event after its session waits
    assert offsets(b.take_sessions({None}, 8)) == []  # the null key's first event in flight
    b.keys_freed()
    assert offsets(b.take_sessions(set(), 8)) == [1]
    assert b.take(1.0, True, {None}) is None


def test_a_batch_is_full_at_the_cap_and_keeps_what_it_skipped_in_order() -> None:
    events = [item(i, b"p%d" % (i % 53), session=i % 10 == 5) for i in range(300)]
    b = batcher(*events, max_events=100)
    batch = b.take(1.0, False, set())
    assert batch is not None
    assert len(batch.items) == 100
    assert all(i.route is Route.BATCH for i in batch.items)
    left = list(b._items)
    assert offsets(left) == sorted(offsets(left))  # the rest waits in partition order


def test_the_event_the_commit_waits_for_can_be_taken_alone() -> None:
    b = batcher(item(3, b"a"), item(1, b"b"), item(2, b"c", True))
    taken = b.take_offset(1)
    assert taken is not None
    assert taken.offset == 1
    assert b.take_offset(1) is None
    assert b.take_offset(2) is not None
    assert b.pending_events == 1


def test_the_ledger_sends_session_events_beside_the_batch_and_frees_their_keys() -> None:
    led = ledger(ordering="key", batch_max_events=10)
    led.assigned([("t", 0)], 0.0)
    part = led.parts[("t", 0)]
    events = [item(0, b"a"), item(1, b"a", True), item(2, b"b"), item(3, b"c", True), item(4, b"a")]
    led.records_read(part, [0, 1, 2, 3, 4], events, len(RAW) * 5, 2)
    jobs = led.next_jobs(1.0, True, 8)
    # the batch (a's first event, b's) and c's session beside it; a's session waits for
    # a's event in the batch, a's later event for a's session
    assert sorted(offsets(j.batch.items) for j in jobs) == [[0, 2], [3]]
    batch_job = part.in_flight
    assert batch_job is not None
    assert led.result(ok(batch_job), 1.1) == []
    (session,) = led.next_jobs(1.2, True, 8)
    assert session.batch.offsets == [1]
    assert session.batch.route is Route.SESSION_START
    assert led.next_jobs(1.3, True, 8) == []  # a's last event waits for its session
    for job in list(part.sessions):
        led.result(ok(job), 1.4)
    (last,) = led.next_jobs(1.5, True, 8)
    assert last.batch.offsets == [4]
    led.result(ok(last), 1.6)
    assert led.commits_due(2.0) == [(("t", 0), 5)]


def test_with_one_slot_a_free_session_event_goes_before_a_part_full_batch() -> None:
    """The session event is a request whatever is done, and its answer frees its key's
    later events to join the batch; a part-full batch cut first (when the key's budget
    sends one request at a time) left those events for another part-full request."""
    led = ledger(ordering="key", batch_max_events=10)
    led.assigned([("t", 0)], 0.0)
    part = led.parts[("t", 0)]
    events = [item(0, b"a", True), item(1, b"b"), item(2, b"a"), item(3, b"c")]
    led.records_read(part, [0, 1, 2, 3], events, len(RAW) * 4, 1)
    (first,) = led.next_jobs(1.0, True, 1)
    assert first.batch.offsets == [0]
    assert led.result(ok(first), 1.1) == []
    (batch,) = led.next_jobs(1.2, True, 1)
    assert batch.batch.offsets == [1, 2, 3]  # a's event joined the one batch


def test_a_partition_with_many_free_session_events_takes_one_slot_per_round() -> None:
    """Each free session event is a request: taken all in one partition's turn, they went
    ahead of every other partition's due batch (7 slots in a row to one partition while
    another of 7 owned waited: a fairness invariant of the simulation, seed 1591)."""
    led = ledger(ordering="key", batch_max_events=10)
    led.assigned([("t", 0), ("t", 1), ("t", 2)], 0.0)
    sessions = [item(o, b"p%d" % o, True) for o in range(6)]
    led.records_read(led.parts[("t", 0)], list(range(6)), sessions, len(RAW) * 6, 6)
    for p in (1, 2):
        events = [item(o, b"q%d" % o) for o in range(3)]
        led.records_read(led.parts[("t", p)], [0, 1, 2], events, len(RAW) * 3, 0)
    jobs = led.next_jobs(1.0, True, 5)
    assert [j.key[1] for j in jobs] == [0, 1, 2, 0, 0]
    assert [j.batch.route is Route.BATCH for j in jobs] == [False, True, True, False, False]


def test_a_part_full_batch_waits_a_linger_at_most_for_the_session_answers_in_flight() -> None:
    """Cut at once, the batch leaves the events of the keys whose session requests are in
    flight for another part-full request (the tail of a drain sent a partition's last
    events in three or four where one or two carried them)."""
    events = [item(0, b"a", True), item(1, b"a"), item(2, b"b"), item(3, b"c", True)]
    b: KeyOrderBatcher[None] = KeyOrderBatcher(100, 1_000_000, 0.5)
    b.add_many(events, len(RAW) * 4, 2)
    assert offsets(b.take_sessions(set(), 8)) == [0, 3]
    assert b.take(1.0, False, {b"a", b"c"}) is None  # a's event waits for a's answer
    assert b.due_in(1.0) == 0.5
    b.keys_freed()  # the answers came back
    batch = b.take(1.1, False, set())
    assert batch is not None
    assert batch.offsets == [1, 2]  # one request where two went before
    # with no answer, the batch goes once a linger has passed
    b.add_many([item(4, b"d", True), item(5, b"d"), item(6, b"e")], len(RAW) * 3, 1)
    assert offsets(b.take_sessions(set(), 8)) == [4]
    assert b.take(2.0, False, {b"d"}) is None
    late = b.take(2.5, False, {b"d"})
    assert late is not None
    assert late.offsets == [6]
    # a flush (stop) never waits, nor does a full batch
    b.add_many([item(7, b"f", True), item(8, b"f"), item(9, b"g")], len(RAW) * 3, 1)
    assert offsets(b.take_sessions(set(), 8)) == [7]
    flushed = b.take(3.0, True, {b"f"})
    assert flushed is not None
    assert flushed.offsets == [5, 9]  # d is free now; f's event waits for f's session


def test_what_waits_tells_the_requests_it_needs_in_each_order() -> None:
    events = [item(o, b"k%d" % (o % 7), session=o % 10 == 3) for o in range(250)]
    by_key = batcher(*events, max_events=100)
    assert by_key.requests_needed == 25 + 3  # 25 session events alone, 225 others in 3
    from consumer.batching import PartitionBatcher

    by_partition: PartitionBatcher[None] = PartitionBatcher(100, 1_000_000, 0.0)
    by_partition.add_many(events, len(RAW) * 250, 25)
    assert by_partition.requests_needed == 3 + 2 * 25  # each session may cut a batch too
    small = batcher(*events[:20], max_events=100)  # bytes, not the count, cut these
    small._max_bytes = 3 * len(RAW) + 40
    assert small.requests_needed == 2 + 6  # 3 events a body, 18 of them


_KEYS = st.one_of(st.none(), st.integers(0, 15).map(lambda k: b"k%d" % k))


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=100),
    keys=st.lists(_KEYS, min_size=100, max_size=100),
    sessions=st.lists(st.integers(0, 9).map(lambda n: n == 0), min_size=100, max_size=100),
    busy=st.sets(_KEYS, max_size=3),
    max_bytes=st.integers(40, 400),
    max_events=st.integers(1, 100),
)
def test_every_batch_cut_fits_the_byte_cap_and_the_counts_stay_true(
    sizes: list[int],
    keys: list[bytes | None],
    sessions: list[bool],
    busy: set[bytes | None],
    max_bytes: int,
    max_events: int,
) -> None:
    """Whichever way a batch is cut (the head as is, or around busy keys and sessions),
    its body is within the cap and the queue's byte count matches what waits."""
    events = [
        Item(
            i,
            b'"' + b"x" * (n - 2) + b'"' if n >= 2 else b"1",
            Route.SESSION_START if sessions[i] else Route.BATCH,
            None,
            0.0,
            keys[i],
        )
        for i, n in enumerate(sizes)
    ]
    b: KeyOrderBatcher[None] = KeyOrderBatcher(max_events, max_bytes, 0.0)
    b.add_many(events, sum(len(e.raw) for e in events), sum(sessions[: len(events)]))
    for held in (busy, set()):
        while (batch := b.take(1.0, True, held)) is not None:
            assert len(batch.body) <= max_bytes
            assert len(batch.items) <= max_events
            assert batch.payload_bytes == sum(len(i.raw) for i in batch.items)
        b.take_sessions(set(), 100)
        b.keys_freed()
    waiting = b.clear()
    assert sum(len(i.raw) for i in waiting) <= sum(len(e.raw) for e in events)
