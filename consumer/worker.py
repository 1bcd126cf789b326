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
import time
from collections import Counter
from collections.abc import Callable
from itertools import groupby, repeat
from operator import attrgetter
from types import FrameType
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumer.batching import Item
from consumer.config import Settings
from consumer.dispatch import Dispatcher
from consumer.dlq import DlqRecord, DlqWriter, Source, dlq_headers
from consumer.errors import WorkerFailedError
from consumer.events import EventDecoder, Poison, Route, Valid
from consumer.kafka_config import consumer_config, producer_config
from consumer.lag import LagGauges
from consumer.ledger import TP, Actions, Ledger, Part
from consumer.observe import Health, Metrics

log = logging.getLogger("consumer.worker")
# For the column-wise ingest: C functions `map` can call without Python frames.
# Typed for records without an error (the only ones they are used on; a
# None value decodes to poison, which goes record by record).
_M_PARTITION: Callable[[Message], int] = cast(Any, Message.partition)
_M_TOPIC: Callable[[Message], str] = cast(Any, Message.topic)
_M_ERROR = Message.error
_M_VALUE: Callable[[Message], bytes] = cast(Any, Message.value)
_M_OFFSET: Callable[[Message], int] = cast(Any, Message.offset)
_ROUTE = attrgetter("route")
_new_tuple = tuple.__new__

_CONSUME_BATCH = 200
_IDLE_POLL_S = 0.1
_BUSY_POLL_S = 0.005
_REVOKE_WAIT_S = 15.0
_SWEEP_S = 1.0
# Of the stop budget (GR_SHUTDOWN_TIMEOUT_S), what is kept for leaving the group
# and flushing the DLQ after the drain.
_CLOSE_SHARE, _CLOSE_MAX_S = 0.2, 5.0
# ...and for the process to exit after the worker returns
_EXIT_SHARE, _EXIT_MAX_S = 0.1, 1.0
_COMMITTED_QUERY_S = 5.0

ConsumerFactory = Callable[[dict[str, Any]], Any]


def _tune_gc() -> None:
    """Fewer cyclic-GC passes: the loop makes several tracked objects per event
    (records, items, batches) that are freed by reference counting, almost
    never in cycles. At the default threshold (700) the collector ran every
    ~200 events and took 0.5 us per event; at 10,000 it took 0.04 us (bench/).
    What is alive at start-up (modules, settings) is frozen out of the passes.
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
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self.health.stall_limit(settings.stall_timeout_s)
        self._decoder = EventDecoder(
            max_bytes=settings.event_max_bytes, strict_rules=settings.strict_rules
        )
        self._consumer_conf = consumer_config(
            settings, on_commit=self._on_commit, **(consumer_overrides or {})
        )
        m = self.metrics
        self._lag = LagGauges.install(
            self._consumer_conf,
            m.partition_consumer_lag,
            m.partition_committed_offset,
            lambda: self._ledger.parts,
        )
        self._consumer_factory = consumer_factory
        self._dispatch = Dispatcher(settings, self.metrics, self.health)
        dlq_conf = producer_config(settings, **{"message.timeout.ms": 30000})
        self._dlq = DlqWriter(
            lambda: producer_factory(dlq_conf),
            settings.dlq_topic,
            max_message_bytes=int(dlq_conf.get("message.max.bytes", 1_000_000)),
            retry_initial_s=settings.retry_initial_s,
            retry_max_s=settings.retry_max_s,
            on_failure=self._dlq_failed,
            on_success=self.health.dlq_ok,
        )
        self._dlq_by_tp: dict[TP, list[DlqRecord]] = {}
        self._ledger = Ledger(
            batch_max_events=settings.batch_max_events,
            batch_max_bytes=settings.batch_max_bytes,
            linger_s=settings.batch_linger_ms / 1000.0,
            max_buffered_bytes=settings.max_buffered_bytes,
            max_uncommitted=settings.max_uncommitted_events,
        )
        self._pending: list[Actions] = []  # from rebalance callbacks, done after consume
        self._stop = threading.Event()
        self._stop_at: float | None = None
        self._next_sweep = 0.0
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
            self._stop_at = time.monotonic()
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
        start = self._stop_at if self._stop_at is not None else time.monotonic()
        budget = self.settings.shutdown_timeout_s
        return start + budget - min(_EXIT_MAX_S, _EXIT_SHARE * budget)

    @property
    def _close_reserve(self) -> float:
        return min(_CLOSE_MAX_S, _CLOSE_SHARE * self.settings.shutdown_timeout_s)

    def run(self, until: Callable[[], bool] | None = None) -> int:
        _tune_gc()
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
            if led.in_flight or self._dlq.pending:
                timeout = _BUSY_POLL_S
            else:
                timeout = max(led.next_due_in(time.monotonic(), _IDLE_POLL_S), 0.001)
            messages = consumer.consume(_CONSUME_BATCH, timeout)
        if self._pending:
            self._carry_out_pending(consumer)
        now = time.monotonic()
        if messages:
            self._ingest(messages, now)
        self._collect(now)
        led.halted = self.health.halted
        jobs = led.next_jobs(now, flush, self.settings.max_in_flight)
        if jobs:
            self._dispatch.send(jobs)
        self._dlq.service(0)
        act = led.flow(now)
        if act:
            self._carry_out(consumer, act)
        commits = led.commits_due(now)
        if commits:
            self._commit_async(consumer, commits)
        if now >= self._next_sweep:
            self._sweep(now)
        self.health.beat()

    # ---- records in ----

    def _ingest(self, messages: list[Any], now: float) -> None:
        """Decode a fetch and hand it to the batchers, a run of one partition at a time.

        librdkafka hands out records in runs of one partition. A run with no
        error and no poison in it (the usual case) is handled column-wise, by
        `map` over C functions: only the decoder runs Python code per record.
        Anything else goes record by record. This is most of the worker's CPU.
        """
        counts: dict[str, int] = {}
        decode = self._decoder.decode
        parts = self._ledger.parts
        for partition, group in groupby(messages, _M_PARTITION):
            run = list(group)
            topics = set(map(_M_TOPIC, run))
            if len(topics) != 1 or any(map(_M_ERROR, run)):
                self._ingest_records(run, None, now, counts)
                continue
            (topic,) = topics
            st = parts.get((topic, partition))
            if st is None:
                continue  # stragglers from a partition we no longer own
            values = list(map(_M_VALUE, run))
            decoded = list(map(decode, values))
            if any(map(isinstance, decoded, repeat(Poison))):
                self._ingest_records(run, decoded, now, counts)
                continue
            offsets = list(map(_M_OFFSET, run))
            routes = list(map(_ROUTE, decoded))
            items = list(
                map(_new_tuple, repeat(Item), zip(offsets, values, routes, run, repeat(now)))
            )
            sessions = len(routes) - routes.count(Route.BATCH)
            self._hand_over(st, offsets, items, sum(map(len, values)), sessions)
            counts[topic] = counts.get(topic, 0) + len(run)
        for topic, n in counts.items():
            self.metrics.events_consumed.labels(topic).inc(n)
            self.stats["consumed"] += n

    def _ingest_records(
        self,
        messages: list[Any],
        decoded: list[Valid | Poison] | None,
        now: float,
        counts: dict[str, int],
    ) -> None:
        """Record by record: Kafka errors, poison (dead-lettered in read order), stragglers."""
        parts = self._ledger.parts
        decode = self._decoder.decode
        batch_route = Route.BATCH
        run_st: Part | None = None
        run_topic = ""
        run_partition = -1
        offsets: list[int] = []
        items: list[Item[Message]] = []
        run_bytes = 0
        sessions = 0
        for index, msg in enumerate(messages):
            if msg.error() is not None:
                self._kafka_error(msg.error())
                continue
            partition = msg.partition()
            topic = msg.topic()
            if partition != run_partition or topic != run_topic:
                if run_st is not None:
                    self._hand_over(run_st, offsets, items, run_bytes, sessions)
                    counts[run_topic] = counts.get(run_topic, 0) + len(offsets)
                run_st = parts.get((topic, partition))
                run_topic, run_partition = topic, partition
                offsets, items, run_bytes, sessions = [], [], 0, 0
            if run_st is None:
                continue  # a straggler from a partition we no longer own
            offset = msg.offset()
            offsets.append(offset)
            value = msg.value()
            result = decode(value) if decoded is None else decoded[index]
            if isinstance(result, Poison):
                held = self._ledger.held_already(run_st, offset)
                # the run so far goes first: the DLQ ack may finish this offset at once
                self._hand_over(run_st, offsets, items, run_bytes, sessions)
                counts[topic] = counts.get(topic, 0) + len(offsets)
                offsets, items, run_bytes, sessions = [], [], 0, 0
                if not held:
                    tp = run_st.tp
                    self._dead_letter(
                        tp, self._ledger.poison(run_st), msg, result.reason, result.detail
                    )
                continue
            route = result.route
            if route is not batch_route:
                sessions += 1
            run_bytes += len(value)
            items.append(_new_tuple(Item, (offset, value, route, msg, now)))
        if run_st is not None:
            self._hand_over(run_st, offsets, items, run_bytes, sessions)
            counts[run_topic] = counts.get(run_topic, 0) + len(offsets)

    def _hand_over(
        self,
        st: Part,
        offsets: list[int],
        items: list[Item[Message]],
        nbytes: int,
        sessions: int,
    ) -> None:
        """A run of read records: all their offsets, the valid ones to the batcher."""
        if offsets:
            self._ledger.records_read(st, offsets, items, nbytes, sessions)

    def _kafka_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
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
        held = self._dlq_by_tp.setdefault(tp, [])

        def acked() -> None:
            self.metrics.events_dead_lettered.labels(reason).inc()
            self.stats["dead_lettered"] += 1
            self.dead_lettered_by_reason[reason] += 1
            self._ledger.dlq_acked(tp, generation, offset)
            if record in held:
                held.remove(record)

        log.info(
            "record dead-lettered",
            extra={"reason": reason, "topic": tp[0], "partition": tp[1], "offset": offset},
        )
        record = DlqRecord(msg.key(), msg.value(), headers, acked)
        held.append(record)
        self._dlq.send(record)

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

    def _commit_async(self, consumer: Any, targets: list[tuple[TP, int]]) -> None:
        try:
            consumer.commit(offsets=_tps(targets), asynchronous=True)
        except KafkaException as exc:
            self._commit_failed(targets, str(exc))

    def _commit_sync(self, consumer: Any, targets: list[tuple[TP, int]]) -> bool:
        """Commit and wait; True when every partition's commit was confirmed."""
        try:
            result = consumer.commit(offsets=_tps(targets), asynchronous=False)
        except KafkaException as exc:
            self._commit_failed(targets, str(exc))
            return False
        return self._on_commit(None, result or [])

    def _commit_failed(self, targets: list[tuple[TP, int]], error: str) -> None:
        self.metrics.commits.labels("error").inc()
        log.warning("commit failed", extra={"error": error})
        now = time.monotonic()
        for tp, offset in targets:
            self._ledger.commit_result(tp, offset, False, now)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> bool:
        now = time.monotonic()
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
        led.sweep(now)
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

    # ---- rebalances (run inside consume, on this thread) ----

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assign").inc()
        tps = [(tp.topic, tp.partition) for tp in partitions]
        # pause or resume each once the assignment is in place, after this callback
        self._pending.append(self._ledger.assigned(tps, time.monotonic()))
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
        if self._stop_at is not None:
            deadline = self._deadline - self._close_reserve
        else:
            deadline = time.monotonic() + min(
                _REVOKE_WAIT_S, max(self.settings.shutdown_timeout_s, 1.0)
            )
        while time.monotonic() < deadline and self._revoke_waits(tps):
            self._collect(time.monotonic())
            self._dlq.service(0.005)
            self._dispatch.wait(0.005)
        self._collect(time.monotonic())
        targets = led.revoke_targets(tps)
        if targets and not self._commit_sync(consumer, targets):
            log.warning(
                "commit before revoke failed; the new owner may resend",
                extra={"count": len(targets)},
            )
        self._let_go(tps, lost=False)

    def _revoke_waits(self, tps: list[TP]) -> bool:
        """In flight (unless the key is refused: that cannot finish now) or DLQ-unacked."""
        halted = self.health.halted
        for tp in tps:
            part = self._ledger.parts.get(tp)
            if part is not None and (
                part.dlq_unacked or (part.in_flight is not None and not halted)
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
            led.lost(tps, time.monotonic())
        else:
            led.revoked(tps, time.monotonic())
        cancelled = 0
        for tp in tps:
            for record in self._dlq_by_tp.pop(tp, []):
                record.cancelled = True
                cancelled += 1
        if cancelled:
            self._dlq.discard_cancelled()
        self._drop_gauges(tps)
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
        while time.monotonic() < deadline and (led.busy() or led.uncommitted()):
            self._turn(consumer, flush=True)
        if led.busy():
            log.warning("shutdown timeout reached; undelivered events stay uncommitted")
        elif led.uncommitted():
            log.warning("shutdown timeout reached; delivered events not committed")

    def _shutdown(self, consumer: Any, commit: bool) -> None:
        """Leave the group and let go of everything, whatever state the loop left."""
        for part in self._ledger.parts.values():
            if part.in_flight is not None:
                part.in_flight.cancel()
        if commit:
            try:
                self._collect(time.monotonic())
                targets = self._ledger.uncommitted()
                if targets and time.monotonic() < self._deadline:
                    self._commit_sync(consumer, targets)
            except Exception as exc:  # noqa: BLE001
                log.warning("final commit failed", extra={"error": str(exc)})
        try:
            consumer.close()  # leaves the group now, not after session.timeout.ms
        except Exception as exc:  # noqa: BLE001
            log.warning("consumer close failed", extra={"error": str(exc)})
        self._dispatch.close(max(0.0, min(1.0, self._deadline - time.monotonic())))
        left = self._dlq.close(max(0.0, min(_CLOSE_MAX_S, self._deadline - time.monotonic())))
        if left:
            log.warning("dlq records unacknowledged at exit", extra={"count": left})
        log.info("stopped", extra=dict(self.stats))
