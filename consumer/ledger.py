"""Every owned partition's state, and the one place that decides what is safe to commit.

Pure bookkeeping, no I/O: the worker tells the ledger what happened (records
read, a batch sent, its result, a DLQ acknowledgement, a rebalance, the key
refused or accepted again, a commit confirmed) and carries out what the
ledger answers (pause, resume, commit, check where the group stands).

When is it safe to commit? The commit sequence, step by step:

1. Records are read: every offset joins its partition's outstanding list
   (`records_read`), valid events go to the partition's batcher, poison to
   the DLQ (`dlq_sent`), where they count toward the memory and run-ahead bounds.
2. An offset is finished when the API accepted it (200, `result`) or the DLQ
   acknowledged it (`dlq_acked`); only the generation that read it may
   finish it.
3. The committable offset is one past the longest finished prefix
   (`PartitionOffsets`): everything below it reached the API or the DLQ.
4. Whenever it moves past what was committed, the partition is due a
   commit: `commits_due` hands them out, asynchronously, at most once per
   `commit_interval_s` for the whole worker.
5. A commit's answer comes back in `commit_result`: confirmed, or due again
   (REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION, a coordinator away).
6. Before a partition is revoked (`revoke_targets`, then `revoked`) what it
   has finished is committed synchronously, while this member still owns it.
7. A lost partition may be someone else's already: nothing is committed for
   it. What it had delivered is remembered for `remember_s`; if this worker
   gets it back, it starts from the higher of that and the group's offset
   (`assigned`, `group_offset`), and skips what it already delivered.
8. On stop (`drain`) fetching pauses and the worker delivers and commits
   until nothing is left uncommitted or its time is up; commits that fail
   across a concurrent rebalance are retried after the rejoin (step 5).
9. Delivery runs at most `max_uncommitted` finished events ahead of the
   last commit per partition, and not at all while that partition's commits
   are refused: past that it pauses (`uncommitted`) until a commit succeeds.
   What a crash can make the next owner resend stays small.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from consumer.batching import Batch, Item, PartitionBatcher
from consumer.events import Route
from consumer.jobs import DeliveryJob, DeliveryResult, Rejection
from consumer.key_order import KeyOrderBatcher
from consumer.offsets import PartitionOffsets
from consumer.scheduler import RoundRobin

TP = tuple[str, int]

BUFFER_FULL = "buffer_full"
UNCOMMITTED = "uncommitted"
DRAINING = "draining"
# a commit unanswered for this long counts as refused: delivery holds
COMMIT_ANSWER_S = 1.0
# How often the group's committed offsets are compared with what the worker had
# confirmed. Kafka applies commits in the order they arrive, and librdkafka retries
# a commit (the coordinator loading or moving, a connection lost) after later ones
# went: an older offset can land last and stay, the worker believing the newer.
VERIFY_EVERY_S = 30.0

_OFFSET = itemgetter(0)  # Item.offset, read in C


class _Busy:
    """Keys in flight, in a session request or in the batch request (looked up, never
    copied: asked for every event a batch is cut from)."""

    __slots__ = ("_batch", "_sessions")

    def __init__(self, sessions: Counter[bytes | None], batch: frozenset[bytes | None]) -> None:
        self._sessions = sessions
        self._batch = batch

    def __contains__(self, key: object) -> bool:
        return key in self._sessions or key in self._batch

    def __bool__(self) -> bool:
        return bool(self._sessions or self._batch)


_KEY = itemgetter(5)  # Item.key, read in C


@dataclass(slots=True)
class Part:
    """One owned partition."""

    tp: TP
    generation: int
    batcher: PartitionBatcher[Any] | KeyOrderBatcher[Any]
    assigned_at: float
    offsets: PartitionOffsets = field(default_factory=PartitionOffsets)
    in_flight: DeliveryJob[Any] | None = None  # its batch request
    # key order: session requests in flight beside the batch, and the keys of every
    # event in flight (their later events wait)
    sessions: list[DeliveryJob[Any]] = field(default_factory=list)
    session_keys: Counter[bytes | None] = field(default_factory=Counter)
    batch_keys: frozenset[bytes | None] = frozenset()
    # key order: a batch is due but every event waiting has a key in flight; nothing
    # can go before an answer comes back (so the loop need not wake for it)
    blocked: bool = False
    retry_batch: Batch[Any] | None = None
    retry_at: float = 0.0
    # records waiting for the DLQ's acknowledgement (held by the DLQ writer): how many, what size
    dlq_unacked: int = 0
    # a DLQ write was acknowledged while held at the run-ahead bound: the poison fetched
    # meanwhile finished past it, and more read would too (fetching stops until the hold lifts)
    dlq_past_bound: bool = False
    dlq_bytes: int = 0
    # why fetching is paused; `fetch_paused` is what librdkafka was told
    reasons: set[str] = field(default_factory=set)
    fetch_paused: bool = False
    # the offset librdkafka last said the partition ends at (its end-of-partition event):
    # read to its end while nothing above it was read since
    end_at: int = -1
    # records below it were delivered by this worker before it lost the partition
    floor: int = -1
    commit_sent: int = -1
    commit_sent_at: float = 0.0
    # the last commit was refused (a rebalance, the coordinator away), or one has
    # waited for its answer since `awaiting_since` (-1: none): delivery holds
    commit_failing: bool = False
    awaiting_since: float = -1.0
    last_progress: float = 0.0  # a commit confirmed (or the assignment)
    # when the group's committed offset is next compared with the one confirmed
    verify_at: float = 0.0
    # since when it has had work and neither moved nor waited on something outside the
    # worker (the API, the key, the DLQ, the coordinator): what liveness judges
    stuck_since: float = 0.0

    @property
    def busy_keys(self) -> _Busy:
        """The keys with an event in flight: their later events wait."""
        return _Busy(self.session_keys, self.batch_keys)

    @property
    def jobs(self) -> list[DeliveryJob[Any]]:
        """Every request of this partition in flight."""
        jobs = list(self.sessions)
        if self.in_flight is not None:
            jobs.append(self.in_flight)
        return jobs

    @property
    def holding(self) -> bool:
        """Anything left to deliver."""
        return bool(
            self.in_flight is not None
            or self.sessions
            or self.retry_batch is not None
            or self.batcher.pending_events
            or self.dlq_unacked
        )


@dataclass(slots=True)
class Actions:
    """What the worker must do with the consumer."""

    pause: list[TP] = field(default_factory=list)
    resume: list[TP] = field(default_factory=list)
    # partitions came back with a remembered watermark: ask where the group stands
    check_committed: list[TP] = field(default_factory=list)
    # pause counts by cause, for the metric
    paused_by: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.pause or self.resume or self.check_committed or self.paused_by)


@dataclass(slots=True)
class _Gone:
    part: Part
    at: float


class Ledger:
    """All partitions' state; one method per happening."""

    def __init__(
        self,
        *,
        batch_max_events: int,
        batch_max_bytes: int,
        linger_s: float,
        max_buffered_bytes: int,
        max_uncommitted: int,
        commit_interval_s: float = 0.075,
        remember_s: float = 300.0,
        part_cap_events: int | None = None,
        ordering: str = "key",
    ) -> None:
        self._max_events = batch_max_events
        self._max_bytes = batch_max_bytes
        self._linger_s = linger_s
        self.max_buffered_bytes = max_buffered_bytes
        self.max_uncommitted = max_uncommitted
        self._commit_interval = commit_interval_s
        # the order kept: each key's (`key_order`) or the whole partition's (`batching`)
        self._key_order = ordering == "key"
        self._remember_s = remember_s
        # Pausing a partition makes librdkafka drop what it prefetched for it,
        # so pauses must be rare in normal flow: forty batches per partition
        # (bench/: four batches gave 11.9k events/s, forty 25.6k).
        self._part_cap_events = part_cap_events or 40 * batch_max_events
        self.parts: dict[TP, Part] = {}
        self._turns: RoundRobin[TP] = RoundRobin()  # who gets the next free request slot
        self._gone: dict[TP, _Gone] = {}
        self._generation = 0
        self.buffered_bytes = 0
        self.in_flight = 0
        self.granted = 0  # jobs handed out since the start (fairness checks count them)
        self.granted_at = 0.0  # when the last ones were
        self.draining = False
        self._dirty: dict[TP, None] = {}  # a dict: commits go out in a fixed order
        self._next_commit_at = 0.0
        self._held = 0  # partitions newly paused for `uncommitted`, for the metric
        # something `flow` looks at changed since it last ran (it is asked every loop turn)
        self._flow_stale = True

    # ---- rebalances ----

    def assigned(self, tps: Iterable[TP], now: float) -> Actions:
        """New partitions. Each is resumed (librdkafka keeps a pause flag from before a
        loss), or paused when draining; one lost lately gets its watermark back."""
        self._flow_stale = True
        act = Actions()
        for tp in tps:
            if tp in self.parts:
                continue
            self._generation += 1
            batcher: PartitionBatcher[Any] | KeyOrderBatcher[Any] = (
                KeyOrderBatcher(self._max_events, self._max_bytes, self._linger_s)
                if self._key_order
                else PartitionBatcher(self._max_events, self._max_bytes, self._linger_s)
            )
            part = Part(
                tp,
                self._generation,
                batcher,
                now,
                last_progress=now,
                stuck_since=now,
                verify_at=now + VERIFY_EVERY_S,
            )
            self.parts[tp] = part
            self._turns.add(tp)
            gone = self._gone.pop(tp, None)
            if gone is not None and now - gone.at <= self._remember_s:
                mark = gone.part.offsets.committable
                if mark is not None:
                    part.floor = mark
                    act.check_committed.append(tp)
            if self.draining:
                part.reasons.add(DRAINING)
                part.fetch_paused = True
                act.pause.append(tp)
            else:
                act.resume.append(tp)
        return act

    def group_offset(self, tp: TP, committed: int | None) -> None:
        """Where the group stands for a partition that came back with a watermark.

        Below the watermark: count what this worker delivered as finished
        and commit the watermark. At or above it: nothing to skip.
        """
        part = self.parts.get(tp)
        if part is None or part.floor < 0 or part.offsets.last_read is not None:
            return
        if committed is not None and committed >= part.floor:
            part.floor = -1
            return
        part.offsets.start_at(
            part.floor, committed if committed is not None and committed >= 0 else None
        )
        self._dirty[tp] = None

    def revoke_targets(self, tps: Iterable[TP]) -> list[tuple[TP, int]]:
        """The commits to make, synchronously, before these partitions go."""
        out = []
        for tp in tps:
            part = self.parts.get(tp)
            if part is not None:
                target = part.offsets.needs_commit()
                if target is not None:
                    out.append((tp, target))
        return out

    def revoked(self, tps: Iterable[TP], now: float) -> list[Part]:
        """Let go: cancel what is in flight, drop what is held, remember the watermark."""
        return self._forget(tps, now)

    def lost(self, tps: Iterable[TP], now: float) -> list[Part]:
        """The same bookkeeping as a revoke; the worker commits nothing for these."""
        return self._forget(tps, now)

    def _forget(self, tps: Iterable[TP], now: float) -> list[Part]:
        self._flow_stale = True
        gone = []
        for tp in tps:
            part = self.parts.pop(tp, None)
            if part is None:
                continue
            self._turns.discard(tp)
            self._dirty.pop(tp, None)
            for job in part.jobs:
                # still counted in flight until the dispatcher gives it back; the
                # worker cancels it (the jobs stay set on the part it gets back)
                job.cancelled = True
                self.buffered_bytes -= job.batch.payload_bytes
            if part.retry_batch is not None:
                self.buffered_bytes -= part.retry_batch.payload_bytes
                part.retry_batch = None
            self.buffered_bytes -= part.batcher.pending_bytes + part.dlq_bytes
            part.batcher.clear()
            self._gone[tp] = _Gone(part, now)
            gone.append(part)
        self._expire(now)
        return gone

    def _expire(self, now: float) -> None:
        if len(self._gone) > 0:
            for tp in [tp for tp, g in self._gone.items() if now - g.at > self._remember_s]:
                del self._gone[tp]

    # ---- records in ----

    def records_read(
        self, part: Part, offsets: list[int], items: list[Item[Any]], nbytes: int, sessions: int
    ) -> None:
        """A run of records of one partition, in order: all offsets, the valid events."""
        self._flow_stale = True
        first = offsets[0]
        last = part.offsets.last_read
        if part.floor > first or (last is not None and first <= last):
            offsets, items, nbytes, sessions = self._above_floor(part, offsets, items)
            if not offsets:
                return
        part.offsets.read_many(offsets)
        part.blocked = False
        if items:
            part.batcher.add_many(items, nbytes, sessions)
            self.buffered_bytes += nbytes

    def _above_floor(
        self, part: Part, offsets: list[int], items: list[Item[Any]]
    ) -> tuple[list[int], list[Item[Any]], int, int]:
        """Drop what this worker already delivered before it lost the partition, and
        records read again (librdkafka fetching from an earlier position)."""
        floor = part.floor
        last = part.offsets.last_read
        if last is None:
            part.offsets.start_at(floor, None)
            self._dirty[part.tp] = None
        else:
            floor = max(floor, last + 1)
        offsets = offsets[bisect_left(offsets, floor) :]
        items = [i for i in items if i.offset >= floor]
        nbytes = sum(len(i.raw) for i in items)
        sessions = sum(1 for i in items if i.route is not Route.BATCH)
        return offsets, items, nbytes, sessions

    def reached_end(self, tp: TP, offset: int) -> None:
        """librdkafka read the partition to its end: its next record will be at `offset`."""
        part = self.parts.get(tp)
        if part is not None:
            part.end_at = offset

    def demand(self) -> int | None:
        """About how many requests deliver everything there is to read, when this worker
        knows: every partition it owns read to its end, none paused. None otherwise (a
        backlog not read yet, or no partitions)."""
        if not self.parts:
            return None
        total = 0
        for part in self.parts.values():
            last = part.offsets.last_read
            if part.fetch_paused or part.end_at < 0 or (last is not None and last >= part.end_at):
                return None
            total += part.batcher.requests_needed + (part.retry_batch is not None)
        return total

    def held_already(self, part: Part, offset: int) -> bool:
        """A record this worker delivered before a loss, or has read already."""
        last = part.offsets.last_read
        return offset < part.floor or (last is not None and offset <= last)

    def dlq_sent(self, tp: TP, generation: int, nbytes: int) -> bool:
        """A record of this partition went to the DLQ writer, holding `nbytes` until
        acknowledged: it counts toward the memory bound and the run-ahead bound."""
        self._flow_stale = True
        part = self.parts.get(tp)
        if part is None or part.generation != generation:
            return False
        part.dlq_unacked += 1
        part.dlq_bytes += nbytes
        self.buffered_bytes += nbytes
        return True

    def dlq_acked(self, tp: TP, generation: int, offset: int, nbytes: int) -> None:
        self._flow_stale = True
        part = self.parts.get(tp)
        if part is None or part.generation != generation:
            gone = self._gone.get(tp)
            if gone is not None and gone.part.generation == generation:
                gone.part.offsets.finish(offset)  # it counts for the watermark kept
            if part is not None:
                # written for an earlier ownership of a partition this worker owns again:
                # the record is in the DLQ all the same (its commit once waited for ever
                # on the copy this ownership wrote, which the DLQ still refused)
                part.offsets.finish(offset)
                self._dirty[tp] = None
            return
        part.dlq_unacked -= 1
        part.dlq_bytes -= nbytes
        self.buffered_bytes -= nbytes
        part.offsets.finish(offset)
        if UNCOMMITTED in part.reasons:
            part.dlq_past_bound = True
        self._dirty[tp] = None

    # ---- delivery ----

    def next_jobs(
        self, now: float, flush: bool, limit: int, *, halted: bool = False
    ) -> list[DeliveryJob[Any]]:
        """Requests to send now: one batch in flight per partition, `limit` in all, each
        slot to the next partition in turn (`scheduler`), so none starves when slots are
        fewer than partitions. A turn is one request: in key order a partition with
        several session events free takes one per round, the others in between.

        While the key is refused (`halted`: readiness holds that, `observe.Health`)
        only one job goes out, to probe it: the halt lifts when a probe succeeds,
        even after a rebalance cancelled the jobs that were probing.
        """
        if halted:
            limit = 1
        room = limit - self.in_flight
        if room <= 0:
            return []
        jobs: list[DeliveryJob[Any]] = []
        turns = self._turns
        visit: Iterable[TP] = turns
        while room > 0:
            served: list[TP] = []
            for tp in visit:
                job = self._turn(self.parts[tp], now, flush)
                if job is None:
                    continue
                jobs.append(job)
                turns.served(tp)
                served.append(tp)
                room -= 1
                if room <= 0:
                    break
            # a partition with nothing to give this round has nothing the next (the time is
            # the same, and the others' requests change nothing of its own); those served
            # are at the back of the rotation, in the order served
            visit = served
            if not served:
                break
        if jobs:
            self.in_flight += len(jobs)
            self.granted += len(jobs)
            self.granted_at = now
            self._flow_stale = True
        return jobs

    def _turn(self, part: Part, now: float, flush: bool) -> DeliveryJob[Any] | None:
        """A partition's turn at a request slot: its next request, or None (nothing due)."""
        key_order = self._key_order
        if part.in_flight is not None and not (key_order and part.batcher.pending_events):
            return None
        batch = part.retry_batch
        if batch is None and not part.batcher.pending_events:
            return None  # nothing to send: not worth a look at its commits
        if (
            self._commits_stuck(part, now)  # the drain too: delivering more is waste
            if self.draining
            else UNCOMMITTED in part.reasons or self._too_far_ahead(part, self.max_uncommitted, now)
        ) and not self._unblocks(part, batch):
            self._hold(part, now)  # a commit's answer or the sweep lifts it
            return self._commit_head(part) if key_order else None
        if key_order and batch is None:  # (a batch to retry goes first: its keys wait)
            # session events free to go first: each is a request whatever is done, and
            # its answer frees its key's later events to join the batch. With few
            # slots (the key's budget spent as fast as it comes) a part-full batch
            # cut ahead of them would leave those events for another request.
            for item in part.batcher.take_sessions(part.busy_keys, 1):
                alone: DeliveryJob[Any] = DeliveryJob(
                    part.tp, Batch(item.route, [item], len(item.raw)), part.generation
                )
                part.sessions.append(alone)
                part.session_keys[item.key] += 1
                part.blocked = False
                return alone
        job: DeliveryJob[Any] | None = None
        if part.in_flight is None:
            if batch is not None:
                if now >= part.retry_at:
                    part.retry_batch = None
                else:
                    batch = None
            else:
                batch = part.batcher.take(now, flush, part.busy_keys)
            if batch is not None:
                job = DeliveryJob(part.tp, batch, part.generation)
                part.in_flight = job
                if key_order:
                    part.batch_keys = frozenset(map(_KEY, batch.items))
        if key_order:
            # a batch due with every event's key in flight: nothing goes before an
            # answer comes back, so the loop need not wake for it until then
            part.blocked = (
                job is None and part.in_flight is None and (flush or part.batcher.due_in(now) == 0)
            )
        return job

    @staticmethod
    def _release(part: Part, job: DeliveryJob[Any]) -> bool:
        """The job is no longer in flight for this partition; False if it was not its own."""
        if part.in_flight is job:
            part.in_flight = None
            part.batch_keys = frozenset()
        elif job in part.sessions:
            part.sessions.remove(job)
            key = job.batch.items[0].key
            left = part.session_keys[key] - 1
            if left > 0:
                part.session_keys[key] = left
            else:
                del part.session_keys[key]
        else:
            return False
        part.batcher.keys_freed()
        part.blocked = False
        return True

    @staticmethod
    def _unblocks(part: Part, retry: Batch[Any] | None) -> bool:
        """Its next batch holds the record the commit waits for, and nothing else is left
        to commit: held back, the partition would wait for ever (the records finished past
        it, DLQ acknowledgements say, fill the bound and only this delivery moves it)."""
        offsets = part.offsets
        if offsets.needs_commit() is not None:
            return False
        first = retry.items[0].offset if retry is not None else part.batcher.head_offset
        return first is not None and first == offsets.committable

    @staticmethod
    def _commit_head(part: Part) -> DeliveryJob[Any] | None:
        """Key order, held at the run-ahead bound with nothing left to commit: the one event
        the commit waits for goes alone (in key order it may wait anywhere in the queue,
        and it is always free to go: nothing of its key is earlier)."""
        offsets = part.offsets
        if offsets.needs_commit() is not None or offsets.committable is None:
            return None
        batcher = part.batcher
        if not isinstance(batcher, KeyOrderBatcher):
            return None
        session = part.in_flight is not None  # only a session event may go beside a batch
        item = batcher.take_offset(offsets.committable)
        if item is None:
            return None
        if session and item.route is Route.BATCH:
            batcher.push_front([item])
            return None
        job: DeliveryJob[Any] = DeliveryJob(
            part.tp, Batch(item.route, [item], len(item.raw)), part.generation
        )
        if item.route is Route.BATCH:
            part.in_flight = job
            part.batch_keys = frozenset((item.key,))
        else:
            part.sessions.append(job)
            part.session_keys[item.key] += 1
        return job

    @staticmethod
    def _commits_stuck(part: Part, now: float) -> bool:
        """Its commits are refused, or one has gone unanswered past `COMMIT_ANSWER_S`,
        while something delivered waits for one."""
        if not part.offsets.finished_uncommitted:
            return False
        return part.commit_failing or (
            part.awaiting_since >= 0 and now - part.awaiting_since > COMMIT_ANSWER_S
        )

    @staticmethod
    def _too_far_ahead(part: Part, cap: int, now: float) -> bool:
        """Past the bound (records finished and not committed, and those waiting for the
        DLQ), or anything uncommitted while its commits are refused or go unanswered (the
        coordinator away: librdkafka holds the request)."""
        ahead = part.offsets.finished_uncommitted + part.dlq_unacked
        if ahead >= cap:
            return True
        if not ahead:
            return False
        return part.commit_failing or (
            part.awaiting_since >= 0 and now - part.awaiting_since > COMMIT_ANSWER_S
        )

    def _hold(self, part: Part, now: float) -> None:
        """Set or lift the `uncommitted` pause: once per happening, not per loop turn."""
        if self.draining:
            return
        if self._too_far_ahead(part, self.max_uncommitted, now):
            if UNCOMMITTED not in part.reasons:
                part.reasons.add(UNCOMMITTED)
                self._held += 1
                self._flow_stale = True
        elif UNCOMMITTED in part.reasons:
            part.reasons.discard(UNCOMMITTED)
            part.dlq_past_bound = False
            self._flow_stale = True

    def next_due_in(self, now: float, cap: float) -> float:
        """How long the loop may wait for records before a batch is due."""
        wait = cap
        for part in self.parts.values():
            # held at the run-ahead bound or blocked on keys in flight, it waits for an
            # answer (a commit's, a request's), not for a timer
            if part.in_flight is None and not part.blocked and UNCOMMITTED not in part.reasons:
                due = part.batcher.due_in(now)
                if due is not None and due < wait:
                    wait = due
        return wait

    def result(self, result: DeliveryResult[Any], now: float) -> list[Rejection[Any]] | None:
        """A job came back. Returns its rejections to dead-letter, None when it no longer counts."""
        self._flow_stale = True
        job = result.job
        self.in_flight -= 1
        part = self.parts.get(job.key)
        if part is None or part.generation != job.generation or not self._release(part, job):
            gone = self._gone.get(job.key)
            if gone is not None and gone.part.generation == job.generation and result.accepted:
                # delivered after the partition went: it counts for the watermark kept
                gone.part.offsets.finish_many(map(_OFFSET, result.accepted))
            return None
        if result.abandoned:
            # given up (stopping): what the API accepted before counts, the rest is let go
            self.buffered_bytes -= job.batch.payload_bytes
            if result.accepted:
                part.offsets.finish_many(map(_OFFSET, result.accepted))
                self._dirty[part.tp] = None
            return None
        if result.error is not None:
            part.retry_batch, part.retry_at = job.batch, now + 1.0
            return None
        self.buffered_bytes -= job.batch.payload_bytes
        if result.unsent:
            # after a refused event: back to the head, for the next request, in order
            part.batcher.push_front(result.unsent)
            self.buffered_bytes += sum(len(item.raw) for item in result.unsent)
        if result.accepted:
            part.offsets.finish_many(map(_OFFSET, result.accepted))
            self._dirty[part.tp] = None
        return result.rejected

    # ---- commits ----

    def commits_due(self, now: float) -> list[tuple[TP, int]]:
        """Partitions whose committable offset moved past what was sent, throttled."""
        dirty = self._dirty
        if not dirty:
            return []
        throttled = now < self._next_commit_at
        if throttled:
            # except a partition held at the run-ahead bound: its commit is what lets it
            # deliver again, and waiting out the interval would cap each partition at
            # GR_MAX_UNCOMMITTED_EVENTS per interval
            parts = self.parts
            tps = [
                tp
                for tp in dirty
                if (p := parts.get(tp)) is not None
                and UNCOMMITTED in p.reasons
                and not p.commit_failing  # refused: retried at the interval, not each turn
            ]
            if not tps:
                return []
        else:
            tps = list(dirty)
        out = []
        for tp in tps:
            del dirty[tp]
            part = self.parts.get(tp)
            if part is None:
                continue
            target = part.offsets.needs_commit()
            if target is not None and target != part.commit_sent:
                part.commit_sent, part.commit_sent_at = target, now
                if part.awaiting_since < 0:
                    part.awaiting_since = now
                out.append((tp, target))
        if out and not throttled:
            self._next_commit_at = now + self._commit_interval
        return out

    def commit_result(self, tp: TP, offset: int, ok: bool, now: float) -> None:
        self._flow_stale = True
        part = self.parts.get(tp)
        if part is None:
            return
        part.commit_failing = not ok
        if not ok or offset >= part.commit_sent:
            part.awaiting_since = -1.0  # answered
        else:
            part.awaiting_since = now  # an older one: the newer waits from here
        if ok:
            if offset >= part.commit_sent:
                part.commit_sent = -1
            if offset >= 0:
                before = part.offsets.committed
                if before is not None and offset < before:
                    # answered after a newer one: it may have been applied after it too
                    part.verify_at = now
                part.offsets.mark_committed(offset)
                if before is None or offset > before:
                    part.last_progress = now
        else:
            if part.commit_sent == offset:
                part.commit_sent = -1
            self._dirty[tp] = None
        if UNCOMMITTED in part.reasons:
            self._hold(part, now)

    def to_verify(self, now: float) -> list[TP]:
        """Partitions whose group offset is due a comparison with the one confirmed:
        only with a confirmation to compare and no commit of theirs unanswered."""
        return [
            tp
            for tp, part in self.parts.items()
            if now >= part.verify_at
            and part.offsets.committed is not None
            and part.commit_sent < 0
            and part.awaiting_since < 0
            and not part.commit_failing
        ]

    def verified(self, tp: TP, group: int | None, now: float) -> int | None:
        """The group's committed offset, read now. Returns the offset confirmed before
        when the group stands behind it (then that commit is due again), else None."""
        part = self.parts.get(tp)
        if part is None:
            return None
        part.verify_at = now + VERIFY_EVERY_S
        confirmed = part.offsets.committed
        if confirmed is None or (group is not None and group >= confirmed):
            return None
        part.offsets.group_went_back(group)
        self._dirty[tp] = None
        return confirmed

    def verify_all(self, now: float) -> None:
        """Every partition is due a comparison now (the stop's last commit)."""
        for part in self.parts.values():
            part.verify_at = now

    def verify_later(self, tps: Iterable[TP], now: float, after_s: float) -> None:
        """The group could not be asked: ask again in a while, not every sweep."""
        for tp in tps:
            part = self.parts.get(tp)
            if part is not None:
                part.verify_at = now + after_s

    def sweep(self, now: float, waiting_outside: Callable[[Part], bool] | None = None) -> None:
        """Once a second: commits sent long ago without an answer are due again; a
        partition idle, or waiting on something outside the worker, is not stuck."""
        self._flow_stale = True  # and the pauses are looked at again, whatever happened
        for tp, part in self.parts.items():
            if part.offsets.needs_commit() is not None:
                if part.commit_sent >= 0 and now - part.commit_sent_at > 2.0:
                    part.commit_sent = -1
                self._dirty[tp] = None
            elif not (part.holding or part.offsets.outstanding):
                part.last_progress = part.stuck_since = now  # idle is not stalled
            if waiting_outside is not None and waiting_outside(part):
                part.stuck_since = now
            if UNCOMMITTED in part.reasons:
                self._hold(part, now)
        self._expire(now)

    def uncommitted(self) -> list[tuple[TP, int]]:
        """Everything finished and not yet committed, as commit targets."""
        out = []
        for tp, part in self.parts.items():
            target = part.offsets.needs_commit()
            if target is not None:
                out.append((tp, target))
        return out

    # ---- flow control ----

    def flow(self, now: float) -> Actions:
        """Pause or resume fetching: buffers full, or delivery too far ahead of commits
        (that reason is set and lifted as batches go out and commits are answered)."""
        act = Actions()
        parts = self.parts
        if not parts or self.draining or not self._flow_stale:
            return act
        self._flow_stale = False
        cap_total = self.max_buffered_bytes
        over_total = self.buffered_bytes >= cap_total
        cap_bytes = max(self._max_bytes, min(40 * self._max_bytes, cap_total // len(parts)))
        cap_events = self._part_cap_events
        if self._held:
            act.paused_by[UNCOMMITTED] = self._held
            self._held = 0
        for part in parts.values():
            reasons = part.reasons
            pending = part.batcher.pending_events + part.dlq_unacked
            pbytes = part.batcher.pending_bytes + part.dlq_bytes
            if BUFFER_FULL in reasons:
                if not over_total and pending < cap_events // 2 and pbytes < cap_bytes // 2:
                    reasons.discard(BUFFER_FULL)
            elif pending >= cap_events or pbytes >= cap_bytes or over_total:
                reasons.add(BUFFER_FULL)
                act.paused_by[BUFFER_FULL] = act.paused_by.get(BUFFER_FULL, 0) + 1
            if (
                part.dlq_unacked
                and UNCOMMITTED not in reasons
                and self._too_far_ahead(part, self.max_uncommitted, now)
            ):
                self._hold(part, now)  # poison alone runs ahead too: nothing to deliver
            # the run-ahead hold (`uncommitted`) holds delivery, not fetching: a pause
            # makes librdkafka drop what it prefetched for the partition, and the buffer
            # caps bound what fetching holds anyway. Unless records wait for the DLQ, the
            # DLQ has acknowledged some since the hold, or commits are stuck: poison read
            # then would go on to the DLQ and finish past the bound.
            stop = (
                BUFFER_FULL in reasons
                or DRAINING in reasons
                or (
                    UNCOMMITTED in reasons
                    and (
                        part.dlq_unacked > 0
                        or part.dlq_past_bound
                        or self._commits_stuck(part, now)
                    )
                )
            )
            if stop and not part.fetch_paused:
                part.fetch_paused = True
                act.pause.append(part.tp)
            elif not stop and part.fetch_paused:
                part.fetch_paused = False
                act.resume.append(part.tp)
        return act

    def drain(self) -> Actions:
        """Stop: no more fetching anywhere; deliver and commit what is held."""
        self.draining = True
        act = Actions()
        for part in self.parts.values():
            part.reasons.add(DRAINING)
            part.reasons.discard(UNCOMMITTED)  # what is held goes out now
            if not part.fetch_paused:
                part.fetch_paused = True
                act.pause.append(part.tp)
        return act

    # ---- questions ----

    def busy(self) -> bool:
        """Anything left to deliver or to acknowledge."""
        return any(p.holding for p in self.parts.values())

    @property
    def paused_count(self) -> int:
        return sum(1 for p in self.parts.values() if p.fetch_paused)

    def stalled_for(self, now: float) -> float:
        """The longest time an owned partition with work has gone without a commit while
        nothing outside the worker held it up: a stall only a restart can end."""
        worst = 0.0
        for part in self.parts.values():
            if part.holding or part.offsets.outstanding or part.fetch_paused:
                worst = max(worst, now - max(part.last_progress, part.stuck_since))
        return worst
