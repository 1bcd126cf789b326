"""The partition ledger, every happening, without a broker (the production paths:
`records_read` hands runs to `read_many` and `add_many`)."""

from __future__ import annotations

from typing import Any

from consumer.batching import Item
from consumer.events import Route
from consumer.jobs import DeliveryJob, DeliveryResult, Rejection
from consumer.ledger import BUFFER_FULL, DRAINING, UNCOMMITTED, Ledger

P0, P1 = ("t", 0), ("t", 1)
RAW = b'{"event_type":"x"}'


def ledger(**kw: Any) -> Ledger:
    args: dict[str, Any] = {
        "batch_max_events": 10,
        "batch_max_bytes": 100_000,
        "linger_s": 0.0,
        "max_buffered_bytes": 1_000_000,
        "max_uncommitted": 1000,
        "commit_interval_s": 0.0,
    }
    args.update(kw)
    return Ledger(**args)


def read(
    led: Ledger, tp: tuple[str, int], offsets: list[int], poison: tuple[int, ...] = ()
) -> None:
    """A run as the worker hands it over: every offset, the valid events as items."""
    items: list[Item[Any]] = [
        Item(o, RAW, Route.BATCH, None, 0.0) for o in offsets if o not in poison
    ]
    led.records_read(led.parts[tp], offsets, items, len(RAW) * len(items), 0)


def ok(job: DeliveryJob[Any]) -> DeliveryResult[Any]:
    return DeliveryResult(job, accepted=list(job.batch.items), requests=1)


def deliver_all(led: Ledger, now: float = 1.0) -> None:
    while jobs := led.next_jobs(now, True, 8):
        for job in jobs:
            assert led.result(ok(job), now) == []


def test_records_to_commit_target_in_steps() -> None:
    led = ledger()
    act = led.assigned([P0], 0.0)
    assert act.resume == [P0]
    read(led, P0, list(range(25)))
    assert led.buffered_bytes == 25 * len(RAW)
    deliver_all(led)
    assert led.buffered_bytes == 0
    assert led.commits_due(2.0) == [(P0, 25)]
    assert led.commits_due(2.1) == []  # sent, not yet confirmed: not again
    led.commit_result(P0, 25, True, 2.2)
    assert led.uncommitted() == []


def test_a_failed_commit_is_due_again() -> None:
    """G: a commit refused across a rebalance (REBALANCE_IN_PROGRESS) is retried."""
    led = ledger()
    led.assigned([P0], 0.0)
    read(led, P0, [0, 1, 2])
    deliver_all(led)
    assert led.commits_due(1.0) == [(P0, 3)]
    led.commit_result(P0, 3, False, 1.1)
    assert led.commits_due(1.2) == [(P0, 3)]
    led.commit_result(P0, 3, True, 1.3)
    assert led.commits_due(1.4) == []


def test_commits_are_throttled() -> None:
    led = ledger(commit_interval_s=0.075)
    led.assigned([P0], 0.0)
    read(led, P0, [0])
    deliver_all(led)
    assert led.commits_due(1.0) == [(P0, 1)]
    read(led, P0, [1])
    deliver_all(led)
    assert led.commits_due(1.05) == []
    assert led.commits_due(1.08) == [(P0, 2)]


def test_halted_key_sends_one_probe_even_after_a_rebalance_cancelled_it() -> None:
    """A: the halt must be lifted by a probe; a revoke cancels the probing job."""
    led = ledger()
    led.assigned([P0, P1], 0.0)
    read(led, P0, list(range(30)))
    read(led, P1, list(range(30)))
    (probe,) = led.next_jobs(1.0, True, 8, halted=True)
    assert led.next_jobs(1.0, True, 8, halted=True) == []  # one probe at a time
    led.revoked([probe.key], 1.5)
    assert probe.cancelled
    assert led.result(DeliveryResult(probe, abandoned=True), 1.6) is None
    led.assigned([probe.key], 2.0)
    read(led, probe.key, list(range(30, 40)))
    # probing again, nothing to lift it otherwise
    assert len(led.next_jobs(2.1, True, 8, halted=True)) == 1
    assert len(led.next_jobs(2.2, True, 8)) == 1  # the other partition


def test_every_assigned_partition_is_resumed_and_a_draining_one_paused() -> None:
    """B: librdkafka keeps a pause flag from before a loss; assign clears it."""
    led = ledger(max_buffered_bytes=10 * len(RAW))
    led.assigned([P0], 0.0)
    read(led, P0, list(range(20)))
    act = led.flow(5.0)
    assert act.pause == [P0]
    assert act.paused_by == {BUFFER_FULL: 1}
    led.lost([P0], 1.0)
    act = led.assigned([P0], 2.0)
    assert act.resume == [P0]
    led.drain()
    act = led.assigned([P1], 3.0)
    assert act.pause == [P1]
    assert DRAINING in led.parts[P1].reasons


def test_a_dead_letter_holds_the_commit_until_acknowledged() -> None:
    """C: until the DLQ takes the record its offset does not finish."""
    led = ledger()
    led.assigned([P0], 0.0)
    generation = led.parts[P0].generation
    read(led, P0, [0, 1, 2], poison=(2,))  # the run up to the poison, its offset included
    assert led.dlq_sent(P0, generation, 100)
    read(led, P0, [3])
    deliver_all(led)
    assert led.commits_due(1.0) == [(P0, 2)]
    led.dlq_acked(P0, generation, 2, 100)
    led.commit_result(P0, 2, True, 1.1)
    assert led.commits_due(1.2) == [(P0, 4)]


def test_delivery_stops_past_the_uncommitted_bound_and_resumes_after_a_commit() -> None:
    """D: behind an unacknowledged DLQ record nothing is committable: a bounded lead."""
    led = ledger(max_uncommitted=20)
    led.assigned([P0], 0.0)
    generation = led.parts[P0].generation
    read(led, P0, [0], poison=(0,))
    assert led.dlq_sent(P0, generation, 100)
    read(led, P0, list(range(1, 200)))
    delivered = 0
    for _ in range(10):
        for job in led.next_jobs(1.0, True, 8):
            delivered += len(job.batch.items)
            led.result(ok(job), 1.0)
    assert 20 <= delivered <= 30  # at most one batch past the bound
    act = led.flow(5.0)
    assert act.pause == [P0]  # a record waits for the DLQ: poison read now would run ahead
    assert act.paused_by == {UNCOMMITTED: 1}
    assert UNCOMMITTED in led.parts[P0].reasons
    led.dlq_acked(P0, generation, 0, 100)
    (target,) = led.commits_due(2.0)
    led.commit_result(P0, target[1], True, 2.1)
    assert UNCOMMITTED not in led.parts[P0].reasons
    assert led.next_jobs(2.2, True, 8)


def test_revoke_releases_every_byte_and_abandons_the_retry() -> None:
    """F: a retry batch's bytes left the total when its partition went."""
    led = ledger()
    led.assigned([P0], 0.0)
    read(led, P0, list(range(25)))
    (job,) = led.next_jobs(1.0, False, 8)
    led.result(DeliveryResult(job, error=RuntimeError("bug")), 1.0)  # retried in a second
    assert led.parts[P0].retry_batch is job.batch
    assert led.next_jobs(1.1, False, 8) == []  # the partition waits for its retry
    (again,) = led.next_jobs(2.1, False, 8)
    assert again.batch is job.batch
    led.result(DeliveryResult(again, error=RuntimeError("bug")), 2.2)
    led.revoked([P0], 2.5)  # with a retry batch waiting and the rest in the batcher
    assert led.buffered_bytes == 0
    assert led.in_flight == 0


def test_a_lost_partition_back_on_the_same_worker_starts_from_its_watermark() -> None:
    """G: what this worker delivered before the loss is not sent again."""
    led = ledger()
    led.assigned([P0], 0.0)
    read(led, P0, list(range(30)))
    deliver_all(led)  # delivered 0..29, commit never confirmed (the loss)
    led.lost([P0], 1.0)
    act = led.assigned([P0], 2.0)
    assert act.check_committed == [P0]
    led.group_offset(P0, 10)  # the group still says 10
    assert led.commits_due(2.1) == [(P0, 30)]
    read(led, P0, list(range(10, 40)))  # librdkafka fetches from 10: 10..29 are skipped
    jobs = led.next_jobs(2.2, True, 8)
    assert [j.batch.items[0].offset for j in jobs] == [30]


def test_the_watermark_is_skipped_when_the_group_is_past_it() -> None:
    led = ledger()
    led.assigned([P0], 0.0)
    read(led, P0, [0, 1])
    deliver_all(led)
    led.revoked([P0], 1.0)
    led.assigned([P0], 2.0)
    led.group_offset(P0, 50)  # another member moved it further meanwhile
    read(led, P0, [50, 51])
    assert [j.batch.items[0].offset for j in led.next_jobs(3.0, True, 8)] == [50]


def test_first_records_tell_where_the_group_stands_when_the_query_failed() -> None:
    led = ledger()
    led.assigned([P0], 0.0)
    read(led, P0, list(range(5)))
    deliver_all(led)
    led.lost([P0], 1.0)
    led.assigned([P0], 2.0)  # no group_offset: the committed() query failed
    read(led, P0, list(range(8)))
    assert led.commits_due(2.5) == [(P0, 5)]
    assert [j.batch.items[0].offset for j in led.next_jobs(3.0, True, 8)] == [5]


def test_the_watermark_is_forgotten_after_a_while() -> None:
    led = ledger(remember_s=10.0)
    led.assigned([P0], 0.0)
    read(led, P0, [0])
    deliver_all(led)
    led.lost([P0], 1.0)
    assert led.assigned([P0], 20.0).check_committed == []


def test_results_after_a_loss_count_for_the_watermark() -> None:
    led = ledger()
    led.assigned([P0], 0.0)
    read(led, P0, list(range(10)))
    (job,) = led.next_jobs(1.0, True, 8)
    led.lost([P0], 1.1)
    assert led.result(ok(job), 1.2) is None  # the 200 came back after the loss
    led.assigned([P0], 2.0)
    led.group_offset(P0, 0)
    assert led.commits_due(2.1) == [(P0, 10)]


def test_rejections_are_handed_back_and_hold_the_commit() -> None:
    led = ledger()
    led.assigned([P0], 0.0)
    read(led, P0, [0, 1])
    (job,) = led.next_jobs(1.0, True, 8)
    first, second = job.batch.items
    rejected = [Rejection(second, 400, "bad")]
    assert led.result(DeliveryResult(job, accepted=[first], rejected=rejected), 1.0) == rejected
    assert led.dlq_sent(P0, job.generation, 10)
    assert led.parts[P0].dlq_unacked == 1
    assert led.commits_due(1.1) == [(P0, 1)]
    led.dlq_acked(P0, job.generation, 1, 10)
    assert led.commits_due(1.2) == [(P0, 2)]


def test_drain_lists_what_is_left_to_deliver_and_to_commit() -> None:
    led = ledger()
    led.assigned([P0, P1], 0.0)
    read(led, P0, [0, 1])
    act = led.drain()
    assert sorted(act.pause) == [P0, P1]
    assert led.busy()
    deliver_all(led)
    assert not led.busy()
    assert led.uncommitted() == [(P0, 2)]


def test_a_partition_with_work_and_no_commit_is_stalled() -> None:
    led = ledger()
    led.assigned([P0], 0.0)
    led.sweep(5.0)
    assert led.stalled_for(5.0) == 0.0  # idle is not stalled
    read(led, P0, [0])
    assert led.stalled_for(65.0) == 60.0
    deliver_all(led, 66.0)
    (target,) = led.commits_due(66.0)
    led.commit_result(P0, target[1], True, 66.5)
    led.sweep(67.0)
    assert led.stalled_for(67.0) == 0.0


def test_delivery_holds_while_the_partitions_commits_are_refused() -> None:
    """D and G: in a rebalance or a coordinator outage nothing more runs ahead."""
    led = ledger()
    led.assigned([P0], 0.0)
    read(led, P0, list(range(40)))
    (job,) = led.next_jobs(1.0, True, 8)
    led.result(ok(job), 1.0)
    (target,) = led.commits_due(1.1)
    led.commit_result(P0, target[1], False, 1.2)  # ILLEGAL_GENERATION
    assert led.next_jobs(1.3, True, 8) == []
    assert led.flow(5.0).paused_by == {UNCOMMITTED: 1}
    (again,) = led.commits_due(1.4)
    led.commit_result(P0, again[1], True, 1.5)
    assert UNCOMMITTED not in led.parts[P0].reasons
    assert len(led.next_jobs(1.6, True, 8)) == 1


def test_delivery_holds_while_a_commit_goes_unanswered() -> None:
    """The coordinator away: librdkafka keeps the commit, no answer comes back."""
    led = ledger()
    led.assigned([P0], 0.0)
    read(led, P0, list(range(40)))
    (job,) = led.next_jobs(1.0, True, 8)
    led.result(ok(job), 1.0)
    assert led.commits_due(1.1) == [(P0, 10)]
    assert len(led.next_jobs(1.2, True, 8)) == 1  # an answer may take a moment
    led.result(ok(led.parts[P0].in_flight), 1.3)  # type: ignore[arg-type]
    assert led.next_jobs(2.2, True, 8) == []  # unanswered for longer: hold
    led.commit_result(P0, 10, True, 2.3)
    assert led.commits_due(2.4) == [(P0, 20)]
    assert len(led.next_jobs(2.5, True, 8)) == 1


def test_records_read_again_are_dropped_not_a_crash() -> None:
    """librdkafka fetching from an earlier position hands out records already held."""
    led = ledger()
    led.assigned([P0], 0.0)
    read(led, P0, list(range(10)))
    read(led, P0, list(range(5, 15)))
    jobs = led.next_jobs(1.0, True, 8)
    assert [i.offset for i in jobs[0].batch.items] == list(range(10))
    assert led.parts[P0].batcher.pending_events == 5


def test_records_waiting_for_the_dlq_count_toward_the_memory_bound() -> None:
    """A partition of poison while the DLQ refuses writes pauses like any other: what waits
    for the DLQ is held in memory (it once counted for nothing and 20,000 records piled up)."""
    led = ledger(max_buffered_bytes=200_000, batch_max_bytes=10_000)
    led.assigned([P0, P1], 0.0)
    generation = led.parts[P0].generation
    offset = 0
    while not led.flow(1.0).pause:
        read(led, P0, [offset], poison=(offset,))
        assert led.dlq_sent(P0, generation, 1_000)
        offset += 1
        assert offset < 1_000, "never paused"
    assert BUFFER_FULL in led.parts[P0].reasons
    assert led.buffered_bytes == offset * 1_000
    assert led.buffered_bytes <= 100_000  # its share of the 200 KB (two partitions)
    for o in range(offset):  # the DLQ takes them after all
        led.dlq_acked(P0, generation, o, 1_000)
    assert led.buffered_bytes == 0
    assert led.flow(2.0).resume == [P0]


def _poison_waiting_for_the_dlq(read_up_to: int) -> tuple[Ledger, int]:
    """A bound of 20; offsets 0..24 poison, handed to the DLQ writer, none acknowledged."""
    led = ledger(max_uncommitted=20)
    led.assigned([P0], 0.0)
    generation = led.parts[P0].generation
    read(led, P0, list(range(read_up_to)), poison=tuple(range(25)))
    for _ in range(25):
        assert led.dlq_sent(P0, generation, 100)
    return led, generation


def test_records_waiting_for_the_dlq_count_toward_the_run_ahead_bound() -> None:
    """Delivery past a record the DLQ has not acknowledged runs ahead of the commit: the
    waiting records count too, so a mostly-poison partition stops at the bound."""
    led, _ = _poison_waiting_for_the_dlq(read_up_to=30)
    assert led.next_jobs(1.0, True, 8) == []  # 25 waiting for the DLQ: past the bound of 20
    assert UNCOMMITTED in led.parts[P0].reasons


def test_poison_acknowledged_at_the_bound_keeps_fetching_stopped_until_the_commit() -> None:
    """Poison alone, at the bound, its commit not yet answered: fetching resumed as soon as
    the DLQ acknowledged what waited, and each fetch's poison finished past the bound until
    the answer came (240 past a bound of 30 within a second, found by the simulation)."""
    led, generation = _poison_waiting_for_the_dlq(read_up_to=25)
    assert led.flow(1.0).pause == [P0]
    assert UNCOMMITTED in led.parts[P0].reasons
    for offset in range(25):
        led.dlq_acked(P0, generation, offset, 100)
    assert led.flow(1.1).resume == []  # the 25 finished past the group's offset still count
    (commit,) = led.commits_due(1.2)
    assert commit == (P0, 25)
    led.commit_result(P0, 25, True, 1.3)
    assert led.flow(1.4).resume == [P0]


def test_a_dlq_write_of_an_earlier_ownership_finishes_the_record_in_this_one() -> None:
    """Poison written to the DLQ, the partition revoked before the DLQ took it, then given
    back: the record is written again, and whichever copy the DLQ takes first finishes it
    (the old copy's acknowledgement once counted for nothing, and with the DLQ refusing the
    new copy the partition's commit waited on it)."""
    led = ledger()
    led.assigned([P0], 0.0)
    old = led.parts[P0].generation
    read(led, P0, [0, 1], poison=(0,))
    assert led.dlq_sent(P0, old, 100)
    led.revoked([P0], 1.0)
    led.assigned([P0], 2.0)
    new = led.parts[P0].generation
    assert new != old
    read(led, P0, [0, 1], poison=(0,))
    assert led.dlq_sent(P0, new, 100)
    deliver_all(led, 3.0)
    assert led.commits_due(3.0) == []  # offset 0 waits for the DLQ
    led.dlq_acked(P0, old, 0, 100)  # the first copy is taken
    assert led.commits_due(4.0) == [(P0, 2)]
    led.dlq_acked(P0, new, 0, 100)  # then the second: nothing counted twice
    assert led.parts[P0].offsets.finished_uncommitted == 2
    assert led.parts[P0].dlq_unacked == 0


def test_the_record_the_commit_waits_for_goes_out_even_past_the_run_ahead_bound() -> None:
    """A valid event, then poison the DLQ acknowledges before the event's batch goes: the
    bound filled behind the one record that could move the commit, and the partition waited
    for ever (found by the simulation)."""
    led = ledger(max_uncommitted=5, linger_s=10.0)
    led.assigned([P0], 0.0)
    generation = led.parts[P0].generation
    read(led, P0, list(range(11)), poison=tuple(range(1, 11)))
    for offset in range(1, 11):
        assert led.dlq_sent(P0, generation, 100)
        led.dlq_acked(P0, generation, offset, 100)
    assert led.parts[P0].offsets.finished_uncommitted == 10
    (job,) = led.next_jobs(1.0, True, 8)
    assert job.batch.offsets == [0]
    led.result(ok(job), 1.0)
    assert led.commits_due(1.1) == [(P0, 11)]


def test_over_the_total_cap_every_partition_stops_fetching_even_with_all_in_flight() -> None:
    """Bytes in requests count: a partition whose events all went out still holds them,
    so over the total every partition pauses, or each fetch adds to what is held."""
    led = ledger(max_buffered_bytes=20 * len(RAW), batch_max_events=100)
    led.assigned([P0, P1], 0.0)
    read(led, P0, list(range(30)))
    read(led, P1, list(range(30)))
    jobs = led.next_jobs(1.0, True, 8)
    assert len(jobs) == 2  # every event in flight, nothing pending
    assert led.buffered_bytes == 60 * len(RAW)
    act = led.flow(1.0)
    assert sorted(act.pause) == [P0, P1]
    for job in jobs:
        led.result(ok(job), 2.0)
    assert sorted(led.flow(2.0).resume) == [P0, P1]  # below the cap again


def test_a_partition_held_at_the_run_ahead_bound_commits_without_waiting_the_interval() -> None:
    """Its commit is what lets it deliver again: throttled, each partition would deliver at
    most the bound per commit interval, whatever the API could take."""
    led = ledger(max_uncommitted=20, commit_interval_s=10.0)
    led.assigned([P0, P1], 0.0)
    read(led, P1, [0])
    deliver_all(led, 0.5)
    assert led.commits_due(0.6) == [(P1, 1)]  # the interval starts
    read(led, P0, list(range(50)))
    deliver_all(led, 1.0)  # up to the bound, then held
    assert UNCOMMITTED in led.parts[P0].reasons
    assert led.flow(1.0).pause == []  # delivery holds; fetching goes on (buffer caps bound it)
    assert led.commits_due(1.1) == [(P0, 20)]  # not at 10.6
    led.commit_result(P0, 20, False, 1.2)  # refused: retried at the interval, not at once
    assert led.commits_due(1.3) == []
    assert led.commits_due(10.7) == [(P0, 20)]
    led.commit_result(P0, 20, True, 10.8)
    deliver_all(led, 10.9)
    assert led.commits_due(11.0) == [(P0, 40)]  # held again: at once


def test_the_demand_is_known_only_with_every_partition_read_to_its_end() -> None:
    """What the pacer may send at once: known only when nothing more is there to read (a
    part-full batch sent early while more was coming would cost a request)."""
    led = ledger(batch_max_events=10)
    led.assigned([P0, P1], 0.0)
    read(led, P0, list(range(25)))
    read(led, P1, list(range(5)))
    assert led.demand() is None  # nobody said where the partitions end
    led.reached_end(P0, 25)
    assert led.demand() is None  # P1's end not told yet
    led.reached_end(P1, 5)
    assert led.demand() == 3 + 1  # 25 events in three requests, 5 in one
    led.parts[P1].fetch_paused = True
    assert led.demand() is None  # paused: more may wait unread
    led.parts[P1].fetch_paused = False
    read(led, P1, [5, 6])  # records past the end told: more may come
    assert led.demand() is None
    led.reached_end(P1, 7)
    assert led.demand() == 4
    (job,) = led.next_jobs(1.0, True, 1)
    assert job.key == P0
    assert led.demand() == 3  # what is cut is the dispatcher's to count
    led.revoked([P0], 1.0)
    assert led.demand() == 1


def test_an_older_commit_answered_last_has_the_group_compared_and_committed_again() -> None:
    """Two commits out (the first unanswered for a while); the older is answered last, so
    the group may hold it. The partition is compared with the group at once; where the
    group stands behind the offset confirmed, that offset is due again."""
    led = ledger()
    led.assigned([P0], 0.0)
    read(led, P0, list(range(10)))
    deliver_all(led)
    assert led.commits_due(1.0) == [(P0, 10)]
    read(led, P0, list(range(10, 20)))
    deliver_all(led)
    led.sweep(3.5)  # unanswered past 2 s: due again, with what is committable now
    assert led.commits_due(3.5) == [(P0, 20)]
    assert led.to_verify(3.6) == []  # commits out: nothing to compare yet
    led.commit_result(P0, 20, True, 4.0)
    assert led.to_verify(4.0) == []  # answered in order: not due before its interval
    led.commit_result(P0, 10, True, 4.1)  # the older, retried, applied last
    assert led.uncommitted() == []  # what the worker believes
    assert led.to_verify(4.2) == [P0]
    assert led.verified(P0, 10, 4.2) == 20
    assert led.uncommitted() == [(P0, 20)]
    assert led.commits_due(4.3) == [(P0, 20)]
    led.commit_result(P0, 20, True, 4.4)
    assert led.to_verify(4.5) == []
    assert led.to_verify(4.2 + 30.0) == [P0]  # and every 30 s in any case
    assert led.verified(P0, 20, 34.2) is None  # the group holds it: nothing to do
    assert led.uncommitted() == []


def test_a_group_offset_gone_entirely_is_committed_again() -> None:
    """No offset at all for the group (expired by the broker's retention, say): the
    offset confirmed is committed again rather than left for a restart to miss."""
    led = ledger()
    led.assigned([P0], 0.0)
    read(led, P0, list(range(5)))
    deliver_all(led)
    assert led.commits_due(1.0) == [(P0, 5)]
    led.commit_result(P0, 5, True, 1.1)
    assert led.to_verify(20.0) == []
    assert led.to_verify(30.0) == [P0]
    assert led.verified(P0, None, 30.0) == 5
    assert led.commits_due(30.1) == [(P0, 5)]
