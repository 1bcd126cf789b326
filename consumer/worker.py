"""The main loop: the one thread that owns the Kafka consumer.

    consume(N) -> decode -> ledger (per-partition batches) -> dispatcher -> S2S API
        ^            |                                         |
        |            +-- poison --> DLQ writer <-- rejected after bisection
        +-- commit <-- ledger (finished = accepted or DLQ-acked)

The loop reads, tells the ledger what happened and carries out what it
answers: send these batches, pause or resume these partitions, commit these
offsets. Rebalance callbacks run on this thread too (librdkafka runs them
inside `consume`). The loop never blocks for longer than a short poll,
whatever the API does, so the member stays in its group. When it is safe to
commit is the ledger's business (consumer/ledger.py), not this file's.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from consumer import dispatch, intake
from consumer.clock import SYSTEM, Clock
from consumer.config import Settings
from consumer.dlq import DlqRecord, DlqWriter, Source, dlq_headers
from consumer.errors import WorkerFailedError
from consumer.events import EventDecoder
from consumer.fetch_watch import FetchWatch, fetch_states
from consumer.kafka_config import consumer_config, producer_config
from consumer.lag import LagGauges
from consumer.ledger import TP, Actions, Ledger, Part
from consumer.observe import Health, Metrics

log = logging.getLogger("consumer.worker")

_CONSUME_BATCH = 200
_IDLE_POLL_S = 0.1
_BUSY_POLL_S = 0.005
_REVOKE_WAIT_S = 15.0
_REVOKE_COMMIT_S = 5.0  # after the wait, for the revoke's commit to be confirmed
_COMMIT_QUESTION_S = 0.5  # the longest wait for one answer about the group's offsets
_SWEEP_S = 1.0
_VERIFY_QUERY_S = 1.0  # the longest the loop waits for the group's offsets to compare
_VERIFY_RETRY_S = 5.0
# the least left of the stop's budget worth a commit after the DLQ's last flush: half of
# it waits for the answer, which a coordinator gives in milliseconds
_LAST_COMMIT_MIN_S = 0.2
# Of the stop budget (GR_SHUTDOWN_TIMEOUT_S), what is kept for leaving the group
# and flushing the DLQ after the drain.
_CLOSE_SHARE, _CLOSE_MAX_S = 0.2, 5.0
# ...and for the process to exit after the worker returns
_EXIT_SHARE, _EXIT_MAX_S = 0.1, 1.0
_COMMITTED_QUERY_S = 5.0
_WAIT_CAUSES = ("api", "budget", "key", "dlq", "commit")

ConsumerFactory = Callable[[dict[str, Any]], Any]


def tune_gc() -> None:
    """Fewer cyclic-GC passes: the loop makes several tracked objects per event
    (records, items, batches) that are freed by reference counting, almost
    never in cycles. At the default threshold (700) the collector ran every
    ~200 events and took 0.5 us per event; at 10,000 it took 0.04 us (bench/).
    What is alive at start-up (modules, settings) is frozen out of the passes.
    Once per process, before the worker runs (`gr-consumer run`, the benchmarks).
    """
    gc.collect()  # garbage first: frozen objects are never collected
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])


def _tps(pairs: list[tuple[TP, int]]) -> list[TopicPartition]:
    return [TopicPartition(t, p, o) for (t, p), o in pairs]


class Worker:
    """One member of the consumer group. `run()` returns the process exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        health: Health | None = None,
        consumer_overrides: dict[str, Any] | None = None,
        consumer_factory: ConsumerFactory = Consumer,
        producer_factory: Callable[[dict[str, Any]], Any] = Producer,
        transport: dispatch.Transport[Any] | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.metrics = metrics or Metrics()
        self.health = health or Health(clock=clock)
        self.health.stall_limit(settings.stall_timeout_s)
        self._decoder = EventDecoder(
            max_bytes=settings.event_max_bytes, strict_rules=settings.strict_rules
        )
        self._consumer_conf = consumer_config(
            settings, on_commit=self._on_commit, **(consumer_overrides or {})
        )
        m = self.metrics
        self._fetch_watch = FetchWatch()
        self._never_fetched: set[TP] = set()  # named by the last statistics report
        self._lag = LagGauges.install(
            self._consumer_conf,
            m.partition_consumer_lag,
            m.partition_committed_offset,
            lambda: self._ledger.parts,
            also=self._watch_fetching,
        )
        self._consumer_factory = consumer_factory
        self._dispatch = dispatch.build(settings, self.metrics, self.health, clock, transport)
        self._dlq = DlqWriter(
            producer_factory,
            producer_config(settings, **{"message.timeout.ms": 30000}),
            settings.dlq_topic,
            retry_initial_s=settings.retry_initial_s,
            retry_max_s=settings.retry_max_s,
            on_failure=self._dlq_failed,
            on_success=self.health.dlq_ok,
            clock=clock,
        )
        self._ledger = Ledger(
            batch_max_events=settings.batch_max_events,
            batch_max_bytes=settings.batch_max_bytes,
            linger_s=settings.batch_linger_ms / 1000.0,
            max_buffered_bytes=settings.max_buffered_bytes,
            max_uncommitted=settings.max_uncommitted_events,
            ordering=settings.ordering,
        )
        self._pending: list[Actions] = []  # from rebalance callbacks, done after consume
        self._closing = False
        self._stop = threading.Event()
        self._stop_at: float | None = None
        self._next_sweep = 0.0
        self._budget_short_at = -1e9  # when the key's budget last held a request back
        self._demand_told = False  # the pacer was last told a demand (not None)
        self._gauges: dict[TP, tuple[Any, Any, Any]] = {}
        self.stats = {
            "consumed": 0,
            "delivered": 0,
            "dead_lettered": 0,
            "batches": 0,
            "requests": 0,
            "isolation_requests": 0,
        }
        self.dead_lettered_by_reason: Counter[str] = Counter()

    # ---- lifecycle ----

    def request_stop(self, *_: Any) -> None:
        if self._stop_at is None:
            self._stop_at = self._clock.monotonic()
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("signal received; draining", extra={"signal": signal.Signals(signum).name})
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    @property
    def _deadline(self) -> float:
        """When the whole stop sequence must be over."""
        start = self._stop_at if self._stop_at is not None else self._clock.monotonic()
        budget = self.settings.shutdown_timeout_s
        return start + budget - min(_EXIT_MAX_S, _EXIT_SHARE * budget)

    @property
    def _close_reserve(self) -> float:
        return min(_CLOSE_MAX_S, _CLOSE_SHARE * self.settings.shutdown_timeout_s)

    def run(self, until: Callable[[], bool] | None = None) -> int:
        consumer = self._consumer_factory(self._consumer_conf)
        code = 0
        try:
            consumer.subscribe(
                self.settings.topic_patterns,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            log.info(
                "consumer started",
                extra={"topics": list(self.settings.topics), "group": self.settings.group_id},
            )
            while not self._stop.is_set() and not (until is not None and until()):
                self._turn(consumer)
            self.request_stop()
            self._drain(consumer)
        except Exception as exc:  # any failure: leave the group, exit 1
            log.error("worker failed; stopping", exc_info=exc, extra={"error": str(exc)})
            self.request_stop()
            code = 1
        self._shutdown(consumer, commit=code == 0)
        return code

    def _turn(self, consumer: Any, flush: bool = False) -> None:
        led = self._ledger
        if self._dispatch.sockets_busy:
            # Answers come back on the multi's sockets: look at Kafka without
            # waiting, and if it has nothing, wait on those sockets instead.
            messages = consumer.consume(_CONSUME_BATCH, 0)
            if not messages:
                self._dispatch.wait(_BUSY_POLL_S)
        else:
            now = self._clock.monotonic()
            # a batch due matters only if a request slot, and the key's budget, are free for it
            timeout = _IDLE_POLL_S
            if led.in_flight < self.settings.max_in_flight:
                room, budget_wake = self._dispatch.budget_room()
                if room > 0:
                    timeout = led.next_due_in(now, _IDLE_POLL_S)
                elif budget_wake > 0:
                    # no spinning on a batch due while the budget is spent, but no longer
                    # an idle poll either: a wait for the budget can last the rest of the
                    # key's window, and a stop, commits' answers and the sweep come first
                    due = led.next_due_in(now, _IDLE_POLL_S)
                    timeout = max(due, min(budget_wake, _IDLE_POLL_S))
            for wake in (self._dispatch.next_wake(), self._dlq.next_wake(now)):
                if wake is not None:
                    timeout = min(timeout, wake - now)
            messages = consumer.consume(_CONSUME_BATCH, max(timeout, 0.001))
        if self._pending:
            self._carry_out_pending(consumer)
        if self._never_fetched:
            self._assign_again(consumer)
        now = self._clock.monotonic()
        if messages:
            self._ingest(messages, now)
        self._collect(now)
        demand = led.demand()
        if demand is not None or self._demand_told:
            self._dispatch.set_demand(demand)
            self._demand_told = demand is not None
        jobs = led.next_jobs(now, flush, self._request_limit(now), halted=self.health.halted)
        if jobs:
            self._dispatch.send(jobs)
        self._serve_dlq(0)
        act = led.flow(now)
        if act:
            self._carry_out(consumer, act)
        commits = led.commits_due(now)
        if commits:
            self._commit_async(consumer, commits)
        if now >= self._next_sweep:
            self._sweep(now)
            self._verify_commits(consumer, now)
        self.health.beat()

    def _request_limit(self, now: float) -> int:
        """Requests that may be in flight after this turn: the request slots, and no more
        than the key's budget can send soon. Events wait in their partition's queue, not
        in a request cut early and waiting for the budget: there later events still join
        them, and the key carries fuller requests."""
        most = self.settings.max_in_flight
        free = most - self._ledger.in_flight
        if free <= 0:
            return most
        room, _ = self._dispatch.budget_room()
        if room >= free:
            return most
        self._budget_short_at = now  # a partition passed over now waits for the key
        return self._ledger.in_flight + max(0, room)

    # ---- records in ----

    def _ingest(self, messages: list[Any], now: float) -> None:
        """A fetch, as runs of one partition (`intake`), told to the ledger; poison to the DLQ.

        A poison record read again (librdkafka fetching from an earlier position, or
        this worker delivered past it before a loss) is not dead-lettered twice: that
        is asked before the run is read, since reading moves what counts as read.
        """
        led = self._ledger
        parts = led.parts
        fetched = intake.split(messages, self._decoder.decode, now, lambda t, p: (t, p) in parts)
        for err in fetched.errors:
            self._kafka_error(err)
        counts: dict[str, int] = {}
        for run in fetched.runs:
            part = parts[(run.topic, run.partition)]
            fresh = [(m, p) for o, m, p in run.poison if not led.held_already(part, o)]
            if run.offsets:
                led.records_read(part, run.offsets, run.items, run.nbytes, run.sessions)
            for msg, poison in fresh:
                self._dead_letter(part.tp, part.generation, msg, poison.reason, poison.detail)
            counts[run.topic] = counts.get(run.topic, 0) + len(run.offsets)
        for topic, partition, offset in fetched.ends:
            led.reached_end((topic, partition), offset)
        for topic, n in counts.items():
            self.metrics.events_consumed.labels(topic).inc(n)
            self.stats["consumed"] += n

    def _kafka_error(self, err: KafkaError) -> None:
        """An error a fetch held (the ends of partitions are taken apart by `intake`)."""
        if err.fatal():
            raise WorkerFailedError(f"fatal kafka error: {err.str()}")
        log.warning("kafka error", extra={"error": err.str()})

    def _dead_letter(
        self,
        tp: TP,
        generation: int,
        msg: Any,
        reason: str,
        detail: str,
        http_status: int | None = None,
    ) -> None:
        ts_type, ts = msg.timestamp()
        offset = msg.offset()
        headers = dlq_headers(
            msg.headers(),
            reason=reason,
            detail=detail,
            source=Source(tp[0], tp[1], offset, ts if ts_type else None),
            group=self.settings.group_id,
            http_status=http_status,
        )
        record = DlqRecord(msg.key(), msg.value(), headers, (tp, generation), offset, reason)
        record.held = record.size
        if not self._ledger.dlq_sent(tp, generation, record.held):
            return  # a partition no longer ours: its next owner dead-letters it
        log.info(
            "record dead-lettered",
            extra={"reason": reason, "topic": tp[0], "partition": tp[1], "offset": offset},
        )
        self._dlq.send(record)

    def _serve_dlq(self, timeout_s: float) -> None:
        """Move the DLQ writes on; what the DLQ acknowledged is finished."""
        for record in self._dlq.service(timeout_s):
            reason = record.reason
            self.metrics.events_dead_lettered.labels(reason).inc()
            self.stats["dead_lettered"] += 1
            self.dead_lettered_by_reason[reason] += 1
            tp, generation = record.owner
            self._ledger.dlq_acked(tp, generation, record.offset, record.held)

    def _dlq_failed(self, error: str) -> None:
        self.metrics.dlq_write_failures.labels(error).inc()
        self.health.dlq_failing(error)

    # ---- delivery ----

    def _collect(self, now: float) -> None:
        for result in self._dispatch.results():
            rejected = self._ledger.result(result, now)
            if rejected is None:
                if result.error is not None:
                    log.error(
                        "delivery failed unexpectedly; retrying the batch",
                        exc_info=result.error,
                        extra={"topic": result.job.key[0], "partition": result.job.key[1]},
                    )
                continue
            job = result.job
            if result.accepted:
                n = len(result.accepted)
                self.metrics.events_delivered.inc(n)
                self.stats["delivered"] += n
            if result.isolation_requests:
                self.metrics.isolation_requests.inc(result.isolation_requests)
                self.stats["isolation_requests"] += result.isolation_requests
            if result.requests:
                self.stats["batches"] += 1
                self.stats["requests"] += result.requests
                self.metrics.batch_size.observe(len(result.accepted) or len(job.batch.items))
            for rej in rejected:
                self._dead_letter(
                    job.key, job.generation, rej.item.ref, "api_rejected", rej.detail, rej.status
                )

    # ---- pauses, resumes, commits ----

    def _carry_out_pending(self, consumer: Any) -> None:
        pending, self._pending = self._pending, []
        for act in pending:
            self._carry_out(consumer, act)

    def _carry_out(self, consumer: Any, act: Actions) -> None:
        owned = self._ledger.parts
        pause = [TopicPartition(*tp) for tp in act.pause if tp in owned]
        resume = [TopicPartition(*tp) for tp in act.resume if tp in owned]
        try:
            if pause:
                consumer.pause(pause)
            if resume:
                consumer.resume(resume)
        except KafkaException as exc:  # a partition that went meanwhile
            log.warning("pause/resume failed", extra={"error": str(exc)})
        for cause, n in act.paused_by.items():
            self.metrics.pauses.labels(cause).inc(n)
        if act.check_committed:
            self._check_committed(consumer, act.check_committed)
        self.metrics.partitions_paused.set(self._ledger.paused_count)

    def _check_committed(self, consumer: Any, tps: list[TP]) -> None:
        """Partitions back with a remembered watermark: where does the group stand?"""
        try:
            found = consumer.committed([TopicPartition(*tp) for tp in tps], _COMMITTED_QUERY_S)
        except KafkaException as exc:
            log.warning("committed offsets unknown", extra={"error": str(exc)})
            return  # the first records read will tell (ledger.records_read)
        for tp in found:
            if tp.error is None:
                self._ledger.group_offset((tp.topic, tp.partition), tp.offset)

    def _verify_commits(
        self, consumer: Any, now: float, timeout_s: float = _VERIFY_QUERY_S
    ) -> None:
        """Compare the group's committed offsets with those confirmed (`Ledger.to_verify`):
        where the group stands behind, an older commit landed last; commit again."""
        led = self._ledger
        tps = led.to_verify(now)
        if not tps:
            return
        try:
            found = consumer.committed([TopicPartition(*tp) for tp in tps], timeout_s)
        except KafkaException:
            led.verify_later(tps, now, _VERIFY_RETRY_S)  # the coordinator away: later
            return
        behind = []
        for t in found:
            if t.error is not None:
                led.verify_later([(t.topic, t.partition)], now, _VERIFY_RETRY_S)
                continue
            group = t.offset if t.offset >= 0 else None
            confirmed = led.verified((t.topic, t.partition), group, now)
            if confirmed is not None:
                behind.append(f"{t.topic}:{t.partition} at {t.offset}, not {confirmed}")
        if behind:
            self.metrics.commits.labels("repaired").inc(len(behind))
            log.warning(
                "the group's committed offset stood behind one confirmed; committing again",
                extra={"partitions": behind},
            )

    def _commit_async(self, consumer: Any, targets: list[tuple[TP, int]]) -> None:
        try:
            consumer.commit(offsets=_tps(targets), asynchronous=True)
        except KafkaException as exc:
            self._commit_failed(targets, str(exc))

    def _commit_confirmed(
        self, consumer: Any, targets: list[tuple[TP, int]], deadline: Callable[[], float]
    ) -> bool:
        """Commit, and wait until the group holds it or `deadline()`; True when it does.

        Not librdkafka's synchronous commit: that waits for an absent coordinator as
        long as it takes (no timeout), and inside a rebalance callback nothing else
        can run meanwhile, a SIGTERM included. The commit goes out asynchronously and
        the group's offsets are asked for, each question with its own timeout (the
        coordinator answers a connection's requests in order).
        """
        self._commit_async(consumer, targets)
        sent = self._now()
        want = dict(targets)
        asked = [TopicPartition(*tp) for tp in want]
        while (left := deadline() - self._now()) > 0:
            if self._now() - sent >= 1.0:  # a commit request lost on the way: again
                self._commit_async(consumer, targets)
                sent = self._now()
            try:
                # short questions: the deadline may come nearer while one waits
                found = consumer.committed(asked, max(0.01, min(left, _COMMIT_QUESTION_S)))
            except KafkaException:
                continue  # the coordinator away: ask again while there is time
            held = [
                t for t in found if t.error is None and t.offset >= want[(t.topic, t.partition)]
            ]
            if len(held) == len(want):
                now = self._now()
                for t in held:
                    self._ledger.commit_result((t.topic, t.partition), t.offset, True, now)
                return True
            self._clock.sleep(min(0.02, max(0.0, deadline() - self._now())))
        return False

    def _commit_failed(self, targets: list[tuple[TP, int]], error: str) -> None:
        self.metrics.commits.labels("error").inc()
        log.warning("commit failed", extra={"error": error})
        now = self._clock.monotonic()
        for tp, offset in targets:
            self._ledger.commit_result(tp, offset, False, now)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> bool:
        now = self._clock.monotonic()
        if err is not None and err.code() == KafkaError._NO_OFFSET:
            return True
        ok_all = True
        for tp in partitions:
            error = err if err is not None else tp.error
            ok = error is None
            ok_all &= ok
            self._ledger.commit_result((tp.topic, tp.partition), tp.offset, ok, now)
            self.metrics.commits.labels("ok" if ok else "error").inc()
            if not ok:
                log.warning(
                    "commit failed for partition",
                    extra={"topic": tp.topic, "partition": tp.partition, "error": str(error)},
                )
        return ok_all

    def _sweep(self, now: float) -> None:
        """Once a second: overdue commits, per-partition progress, the stall check."""
        self._next_sweep = now + _SWEEP_S
        led = self._ledger
        waiting: Counter[str] = Counter()

        def waiting_outside(part: Part) -> bool:
            cause = self._waiting_on(part)
            if cause is not None:
                waiting[cause] += 1
            return cause is not None

        led.sweep(now, waiting_outside)
        for cause in _WAIT_CAUSES:
            self.metrics.partitions_waiting.labels(cause).set(waiting[cause])
        for tp, part in led.parts.items():
            gauges = self._gauges.get(tp)
            if gauges is None:
                labels = (tp[0], str(tp[1]))
                gauges = self._gauges[tp] = (
                    self.metrics.commit_lag.labels(*labels),
                    self.metrics.partition_commit_age.labels(*labels),
                    self.metrics.partition_uncommitted.labels(*labels),
                )
            gauges[0].set(part.offsets.outstanding)
            gauges[1].set(now - part.last_progress)
            gauges[2].set(part.offsets.finished_uncommitted)
        self.metrics.buffered_bytes.set(led.buffered_bytes)
        self.health.stalled(led.stalled_for(now))

    def _waiting_on(self, part: Part) -> str | None:
        """What outside the worker holds this partition up, if anything: then it is not
        stuck, and liveness (which restarts the pod) does not count the time."""
        if self.health.halted:
            return "key"
        if any(self._dispatch.running_job(job) for job in part.jobs):
            return "api"  # a request on its way, or retried until the API takes it
        if self._ledger.in_flight >= self.settings.max_in_flight:
            return "api"  # every request slot is taken: its turn comes when one frees
        if self._clock.monotonic() - self._budget_short_at <= _SWEEP_S:
            return "budget"  # the key's budget is spent as fast as it comes: its turn comes
        if part.dlq_unacked and self.health.dlq_troubled:
            return "dlq"
        if part.commit_failing or part.awaiting_since >= 0:
            return "commit"
        return None

    def _drop_gauges(self, tps: list[TP]) -> None:
        self._lag.forget(tps)
        for tp in tps:
            if self._gauges.pop(tp, None) is not None:
                labels = (tp[0], str(tp[1]))
                for gauge in (
                    self.metrics.commit_lag,
                    self.metrics.partition_commit_age,
                    self.metrics.partition_uncommitted,
                ):
                    gauge.remove(*labels)

    # ---- partitions librdkafka never started fetching ----

    def _watch_fetching(self, stats: Mapping[str, Any]) -> None:
        """A statistics report (inside consume, on this thread): note the partitions it
        shows owned for long and never fetched (`fetch_watch`)."""
        stuck = self._fetch_watch.observe(
            fetch_states(stats), self._ledger.parts, self._clock.monotonic()
        )
        self._never_fetched.update(stuck)

    def _assign_again(self, consumer: Any) -> None:
        """Assign the partitions librdkafka never started fetching again: it looks their
        offsets up afresh. Only ones this worker has read nothing from, so nothing read
        is read twice."""
        led = self._ledger
        tps = sorted(
            tp
            for tp in self._never_fetched
            if (part := led.parts.get(tp)) is not None and part.offsets.last_read is None
        )
        self._never_fetched.clear()
        if not tps or self._stop.is_set():
            return
        names = [f"{t}:{p}" for t, p in tps]
        log.warning(
            "partitions assigned but never fetched (their committed offsets were never "
            "looked up); assigning them again",
            extra={"partitions": names, "after_s": self._fetch_watch.stuck_after_s},
        )
        listed = [TopicPartition(*tp) for tp in tps]
        try:
            consumer.incremental_unassign(listed)
        except KafkaException as exc:
            # An eager assignor (a user's partition.assignment.strategy) takes whole
            # assignments only: when nothing owned was ever fetched, assign it all again.
            if set(tps) != set(led.parts):
                log.warning("assigning again failed", extra={"error": str(exc)})
                return
            try:
                consumer.assign(listed)
            except KafkaException as again:
                log.warning("assigning again failed", extra={"error": str(again)})
                return
        else:
            try:
                consumer.incremental_assign(listed)
            except KafkaException as exc:
                # Owned by the group, no longer by librdkafka: nothing would ever read
                # them. A restart is what mends that.
                raise WorkerFailedError(
                    f"partitions unassigned and not assigned again: {exc}"
                ) from exc
        self._fetch_watch.assigned_again(tps, self._clock.monotonic())
        self.metrics.fetch_restarts.inc(len(tps))

    # ---- rebalances (run inside consume, on this thread) ----

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assign").inc()
        tps = [(tp.topic, tp.partition) for tp in partitions]
        # pause or resume each once the assignment is in place, after this callback
        self._pending.append(self._ledger.assigned(tps, self._clock.monotonic()))
        self.metrics.partitions_assigned.set(len(self._ledger.parts))
        self.health.joined()
        log.info("partitions assigned", extra={"partitions": [f"{t}:{p}" for t, p in tps]})

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Finish what is in flight for these partitions (bounded), commit it, let go."""
        self.metrics.rebalances.labels("revoke").inc()
        led = self._ledger
        tps = [
            (tp.topic, tp.partition) for tp in partitions if (tp.topic, tp.partition) in led.parts
        ]
        if self._closing:
            # close() revokes what is left: the drain and the final commit did all there was
            self._let_go(tps, lost=False)
            return
        started = self._clock.monotonic()
        self._settle(tps, lambda: self._revoke_deadline(started))
        targets = led.revoke_targets(tps)

        def until() -> float:  # asked again at every step: a SIGTERM meanwhile shortens it
            end = self._revoke_deadline(started) + _REVOKE_COMMIT_S
            if self._stop_at is not None:
                end = min(end, self._deadline - self._close_reserve / 2)
            return end

        if targets and not self._commit_confirmed(consumer, targets, until):
            log.warning(
                "commit before revoke not confirmed; the new owner may resend",
                extra={"count": len(targets)},
            )
        self._let_go(tps, lost=False)

    def _revoke_deadline(self, started: float) -> float:
        """15 s for a revoke, less once stopping: asked again at every step, so a SIGTERM
        during the wait shortens it."""
        deadline = started + min(_REVOKE_WAIT_S, max(self.settings.shutdown_timeout_s, 1.0))
        if self._stop_at is not None:
            deadline = min(deadline, self._deadline - self._close_reserve)
        return deadline

    def _settle(self, tps: list[TP], deadline: Callable[[], float]) -> None:
        """Let these partitions' work finish before they go, within `deadline()`.

        Requests in flight and DLQ writes are awaited. One HTTP timeout before the
        deadline their jobs are given up: no new request goes out (a retry, the next
        probe of a search), but the one on the wire is still read, since the API may
        have accepted it. At the deadline a request still unanswered is dropped. What
        came back is collected, the accepted part of a search given up included, so
        the commit that follows covers everything the API is known to have accepted.
        """
        led, dispatch = self._ledger, self._dispatch
        http_timeout = self.settings.http_timeout_s
        while True:
            now = self._clock.monotonic()
            self._collect(now)
            until = deadline()
            if not self._revoke_waits(tps) or now >= until:
                break
            if now >= until - http_timeout:
                for tp in tps:
                    part = led.parts.get(tp)
                    for job in part.jobs if part is not None else ():
                        dispatch.cancel(job)
            self._serve_dlq(0.005)
            dispatch.wait(min(0.005, max(0.0, until - now)))
        for tp in tps:  # still on the wire at the deadline: dropped, known failed
            part = led.parts.get(tp)
            for job in part.jobs if part is not None else ():
                dispatch.abort(job)
        self._collect(self._clock.monotonic())

    def _revoke_waits(self, tps: list[TP]) -> bool:
        """In flight (unless the key is refused and nothing is on the wire: that cannot
        finish now) or DLQ-unacked."""
        halted = self.health.halted
        for tp in tps:
            part = self._ledger.parts.get(tp)
            if part is None:
                continue
            if part.dlq_unacked or any(
                not halted or self._dispatch.on_wire(job) for job in part.jobs
            ):
                return True
        return False

    def _on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        """Someone else may own these already: commit nothing, abandon their work."""
        self.metrics.rebalances.labels("lost").inc()
        self._let_go([(tp.topic, tp.partition) for tp in partitions], lost=True)

    def _let_go(self, tps: list[TP], lost: bool) -> None:
        led = self._ledger
        if lost:
            gone = led.lost(tps, self._clock.monotonic())
        else:
            gone = led.revoked(tps, self._clock.monotonic())
        for part in gone:
            for job in part.jobs:
                self._dispatch.cancel(job)
            self._dlq.cancel((part.tp, part.generation))
        self._drop_gauges(tps)
        self._fetch_watch.forget(tps)
        self._never_fetched.difference_update(tps)
        self.metrics.partitions_assigned.set(len(led.parts))
        self.metrics.partitions_paused.set(led.paused_count)
        names = [f"{t}:{p}" for t, p in tps]
        if lost:
            log.warning("partitions lost", extra={"partitions": names})
        else:
            log.info("partitions revoked", extra={"partitions": names})

    # ---- stopping: all of it within GR_SHUTDOWN_TIMEOUT_S ----

    def _drain(self, consumer: Any) -> None:
        """Stop fetching; deliver what is held and commit it, across rebalances, in time."""
        self.health.stopping()
        led = self._ledger
        self._carry_out(consumer, led.drain())
        deadline = self._deadline - self._close_reserve
        log.info("draining", extra={"timeout_s": self.settings.shutdown_timeout_s})
        while self._clock.monotonic() < deadline and (led.busy() or led.uncommitted()):
            self._turn(consumer, flush=True)
        if led.busy():
            log.warning("shutdown timeout reached; undelivered events stay uncommitted")
        elif led.uncommitted():
            log.warning("shutdown timeout reached; delivered events not committed")

    def _shutdown(self, consumer: Any, commit: bool) -> None:
        """Leave the group and let go of everything, whatever state the loop left, within
        the stop budget: jobs given up (their answers on the wire read while the budget
        allows), a last commit that waits for its answer no longer than the budget, the
        DLQ flushed, then the group left (librdkafka's close waits for an absent
        coordinator up to session.timeout.ms: past the budget it is left to finish alone)."""
        led = self._ledger
        if commit:
            try:
                end = self._deadline - self._close_reserve / 2
                self._settle(list(led.parts), lambda: end)
                self._final_commit(consumer, self._deadline - self._close_reserve / 4)
            except Exception as exc:  # noqa: BLE001
                log.warning("final commit failed", extra={"error": str(exc)})
        for part in led.parts.values():
            for job in part.jobs:
                self._dispatch.abort(job)
        self._dispatch.close()
        # half of what is left for the DLQ, the rest for leaving the group
        left = self._dlq.flush(max(0.0, min(_CLOSE_MAX_S, (self._deadline - self._now()) / 2)))
        if left:
            log.warning("dlq records unacknowledged at exit", extra={"count": left})
        if commit:
            written = self.stats["dead_lettered"]
            self._serve_dlq(0)
            left_s = self._deadline - self._now()
            if (
                self.stats["dead_lettered"] != written
                and led.uncommitted()
                and left_s >= _LAST_COMMIT_MIN_S
            ):
                # what the DLQ acknowledged in that flush finished its records after the
                # final commit: commit them too (in half of what is left), or the next
                # owner writes them to the DLQ again
                try:
                    self._final_commit(consumer, self._now() + left_s / 2)
                except Exception as exc:  # noqa: BLE001
                    log.warning("final commit failed", extra={"error": str(exc)})
        self._dlq.close(0.0)
        self._closing = True
        self._close_consumer(consumer, max(0.0, self._deadline - self._now()))
        log.info("stopped", extra=dict(self.stats))

    def _now(self) -> float:
        return self._clock.monotonic()

    def _final_commit(self, consumer: Any, deadline: float) -> None:
        """Commit what is finished and wait for the answer until `deadline`, not longer
        (a synchronous commit would wait for an absent coordinator for as long as it takes)."""
        led = self._ledger
        checks = 0
        while self._now() < deadline:
            if not led.uncommitted():
                # all confirmed: does the group hold it? (an older commit retried by
                # librdkafka may have been applied after the last one; twice at most)
                if checks == 2:
                    break
                checks += 1
                led.verify_all(self._now())
                self._verify_commits(
                    consumer, self._now(), max(0.01, min(_VERIFY_QUERY_S, deadline - self._now()))
                )
                if not led.uncommitted():
                    break
            commits = led.commits_due(self._now())
            if commits:
                self._commit_async(consumer, commits)
            # the answer arrives as a callback inside consume; every partition is paused
            consumer.consume(1, max(0.0, min(0.05, deadline - self._now())))
            led.sweep(self._now())
        if led.uncommitted():
            log.warning("shutdown timeout reached; delivered events not committed")

    def _close_consumer(self, consumer: Any, timeout_s: float) -> None:
        """close() on a thread of its own, waited for at most `timeout_s`."""
        done = threading.Event()

        def close() -> None:
            try:
                consumer.close()  # leaves the group now, not after session.timeout.ms
            except Exception as exc:  # noqa: BLE001
                log.warning("consumer close failed", extra={"error": str(exc)})
            finally:
                done.set()

        # the loop's thread only waits here: the callbacks close() runs are not concurrent
        threading.Thread(target=close, name="consumer-close", daemon=True).start()
        if not done.wait(timeout_s):
            log.warning(
                "leaving the group is taking longer than the stop allows; exiting "
                "(the group drops this member after session.timeout.ms)"
            )
