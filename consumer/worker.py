"""The main loop: the one thread that owns the Kafka consumer.

    consume(N) -> decode -> per-partition batcher -> delivery threads -> S2S API
        ^            |                                   |
        |            +-- poison --> DLQ writer <-- rejected after bisection
        +-- commit <-- PartitionOffsets (finished = accepted or DLQ-acked)

Everything that touches the consumer happens here, rebalance callbacks
included (librdkafka runs them inside `consume`). Delivery threads only talk
HTTP and hand their results back through a queue. The loop never blocks for
longer than a short poll, whatever the API does, so the member stays in its
group; partitions whose buffers are full are paused, not starved of polls.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby, repeat
from operator import attrgetter, itemgetter
from types import FrameType
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumer.batching import Item, PartitionBatcher
from consumer.config import Settings
from consumer.delivery import Deliverer, DeliveryJob, DeliveryResult, Rejection
from consumer.dlq import DlqRecord, DlqWriter, Source, dlq_headers
from consumer.events import EventDecoder, Poison, Route, Valid
from consumer.kafka_config import consumer_config, producer_config
from consumer.observe import Health, Metrics
from consumer.offsets import PartitionOffsets
from consumer.pacing import Pacer
from consumer.s2s import Response, S2SClient, S2SMulti, TransportError

log = logging.getLogger("consumer.worker")
_OFFSET = itemgetter(0)  # Item.offset, read in C
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

TP = tuple[str, int]
_CONSUME_BATCH = 200
_IDLE_POLL_S = 0.1
_BUSY_POLL_S = 0.005
_COMMIT_INTERVAL_S = 1.0
# Once nothing is in flight, what finished is committed without waiting out
# the interval (a drained backlog, a trickle), at most this often.
_IDLE_COMMIT_S = 0.1
_REVOKE_WAIT_S = 15.0


@dataclass(slots=True)
class PartitionState:
    tp: TP
    generation: int
    batcher: PartitionBatcher[Message]
    offsets: PartitionOffsets = field(default_factory=PartitionOffsets)
    in_flight: DeliveryJob[Message] | None = None
    dlq_unacked: int = 0
    paused: bool = False
    retry_at: float = 0.0
    retry_batch: Any = None


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


class _DeliveryObserver:
    """Delivery threads report here: metrics and readiness."""

    def __init__(self, metrics: Metrics, health: Health, pacer: Pacer) -> None:
        self._m = metrics
        self._h = health
        self._pacer = pacer
        # labels() costs a lock and a dict look-up per call: keep the children
        self._counted: dict[tuple[str, int], Any] = {}
        self._timed: dict[str, Any] = {}

    def on_response(self, endpoint: str, status: int, elapsed_s: float) -> None:
        counter = self._counted.get((endpoint, status))
        if counter is None:
            counter = self._m.api_requests.labels(endpoint, str(status) if status else "error")
            self._counted[(endpoint, status)] = counter
        counter.inc()
        if status:
            timer = self._timed.get(endpoint)
            if timer is None:
                timer = self._timed[endpoint] = self._m.request_seconds.labels(endpoint)
            timer.observe(elapsed_s)
        remaining = self._pacer.remaining
        if remaining is not None:
            self._m.rate_limit_remaining.set(remaining)

    def on_retry(self, reason: str) -> None:
        self._m.retries.labels(reason).inc()

    def on_key_rejected(self, status: int) -> None:
        self._h.key_rejected(status)

    def on_key_ok(self) -> None:
        self._h.key_ok()


class Worker:
    """One member of the consumer group. `run()` returns the process exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        health: Health | None = None,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self._decoder = EventDecoder(
            max_bytes=settings.event_max_bytes, strict_rules=settings.strict_rules
        )
        self._pacer = Pacer(cap_per_minute=settings.rate_limit_per_minute)
        self._client = S2SClient(
            settings.base_url,
            settings.api_key,
            timeout_s=settings.http_timeout_s,
            ca_file=str(settings.api_ca_file) if settings.api_ca_file else None,
        )
        self._deliverer = Deliverer(
            self._client,
            self._pacer,
            _DeliveryObserver(self.metrics, self.health, self._pacer),
            retry_initial_s=settings.retry_initial_s,
            retry_max_s=settings.retry_max_s,
        )
        self._consumer_conf = consumer_config(
            settings, on_commit=self._on_commit, **(consumer_overrides or {})
        )
        self._consumer: Consumer | None = None
        self._dlq = DlqWriter(
            lambda: Producer(producer_config(settings, **{"message.timeout.ms": 30000})),
            settings.dlq_topic,
            retry_initial_s=settings.retry_initial_s,
            retry_max_s=settings.retry_max_s,
        )
        # First attempts go out from this thread, without blocking; the
        # threads take over what needs waiting: retries, pacing, bisection.
        self._multi: S2SMulti[DeliveryJob[Message]] = S2SMulti(self._client, settings.max_in_flight)
        self._pool = ThreadPoolExecutor(settings.max_in_flight, thread_name_prefix="deliver")
        self._done: queue.SimpleQueue[DeliveryResult[Message]] = queue.SimpleQueue()
        self._parts: dict[TP, PartitionState] = {}
        self._generation = 0
        self._in_flight = 0
        self._stop = threading.Event()
        self._last_commit = 0.0
        self._linger_s = settings.batch_linger_ms / 1000.0
        self._buffered_bytes = 0
        self._draining = False
        # Pausing a partition makes librdkafka drop what it prefetched for it (to
        # fetch again on resume), so pauses must be rare in normal flow: forty
        # batches per partition, within the byte caps below. Measured in bench/:
        # four batches gave 11.9k events/s, forty 25.6k.
        self._part_cap_events = 40 * settings.batch_max_events
        self.stats = {
            "consumed": 0,
            "delivered": 0,
            "dead_lettered": 0,
            "batches": 0,
            "requests": 0,
        }
        self.dead_lettered_by_reason: Counter[str] = Counter()

    # ---- lifecycle ----

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("signal received; draining", extra={"signal": signal.Signals(signum).name})
            self._stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, until: Callable[[], bool] | None = None) -> int:
        _tune_gc()
        consumer = self._consumer = Consumer(self._consumer_conf)
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
        try:
            while not self._stop.is_set() and not (until is not None and until()):
                self._turn(consumer)
            self._drain(consumer)
        except KafkaException as exc:
            log.error("fatal kafka error", extra={"error": str(exc)})
            self._shutdown(consumer, commit=False)
            return 1
        self._shutdown(consumer, commit=True)
        return 0

    def _turn(self, consumer: Consumer, flush: bool = False) -> None:
        if self._multi.active:
            # Answers come back on the multi's sockets: look at Kafka without
            # waiting, and if it has nothing, wait on those sockets instead.
            messages = consumer.consume(_CONSUME_BATCH, 0)
            if not messages:
                self._multi.wait(_BUSY_POLL_S)
        else:
            timeout = _BUSY_POLL_S if (self._in_flight or self._dlq.pending) else self._idle_wait()
            messages = consumer.consume(_CONSUME_BATCH, timeout)
        now = time.monotonic()
        if messages:
            self._ingest(messages, now)
        self._collect()
        self._dispatch(now, flush)
        self._dlq.service(0)
        self._manage_pauses(consumer)
        since = now - self._last_commit
        if since >= _COMMIT_INTERVAL_S or (
            since >= _IDLE_COMMIT_S and not self._in_flight and not self._dlq.pending
        ):
            self._commit(consumer, asynchronous=True)
        self.health.beat()

    def _idle_wait(self) -> float:
        now = time.monotonic()
        wait = _IDLE_POLL_S
        for st in self._parts.values():
            if st.in_flight is None:
                due = st.batcher.due_in(now)
                if due is not None and due < wait:
                    wait = due
        return max(wait, 0.001)

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
        for partition, group in groupby(messages, _M_PARTITION):
            run = list(group)
            topics = set(map(_M_TOPIC, run))
            if len(topics) != 1 or any(map(_M_ERROR, run)):
                self._ingest_records(run, None, now, counts)
                continue
            (topic,) = topics
            st = self._parts.get((topic, partition))
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
        parts = self._parts
        decode = self._decoder.decode
        batch_route = Route.BATCH
        run_st: PartitionState | None = None
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
                # the run so far goes first: the DLQ ack may finish this offset at once
                self._hand_over(run_st, offsets, items, run_bytes, sessions)
                counts[topic] = counts.get(topic, 0) + len(offsets)
                offsets, items, run_bytes, sessions = [], [], 0, 0
                self._dead_letter(run_st, msg, result.reason, result.detail)
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
        st: PartitionState,
        offsets: list[int],
        items: list[Item[Message]],
        nbytes: int,
        sessions: int,
    ) -> None:
        """A run of read records: all their offsets, the valid ones to the batcher."""
        st.offsets.read_many(offsets)
        st.batcher.add_many(items, nbytes, sessions)
        self._buffered_bytes += nbytes

    def _kafka_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise KafkaException(err)
        log.warning("kafka error", extra={"error": err.str()})

    def _dead_letter(
        self,
        st: PartitionState,
        msg: Any,
        reason: str,
        detail: str,
        http_status: int | None = None,
    ) -> None:
        ts_type, ts = msg.timestamp()
        headers = dlq_headers(
            msg.headers(),
            reason=reason,
            detail=detail,
            source=Source(msg.topic(), msg.partition(), msg.offset(), ts if ts_type else None),
            group=self.settings.group_id,
            http_status=http_status,
        )
        generation, offset = st.generation, msg.offset()
        st.dlq_unacked += 1

        def acked() -> None:
            self.metrics.events_dead_lettered.labels(reason).inc()
            self.stats["dead_lettered"] += 1
            self.dead_lettered_by_reason[reason] += 1
            cur = self._parts.get(st.tp)
            if cur is not None and cur.generation == generation:
                cur.dlq_unacked -= 1
                cur.offsets.finish(offset)

        log.info(
            "record dead-lettered",
            extra={
                "reason": reason,
                "topic": msg.topic(),
                "partition": msg.partition(),
                "offset": offset,
            },
        )
        self._dlq.send(DlqRecord(msg.key(), msg.value(), headers, acked))

    # ---- delivery ----

    def _dispatch(self, now: float, flush: bool) -> None:
        if self.health.halted:
            return  # the in-flight requests are probing the key; don't pile on
        limit = self.settings.max_in_flight
        started = self._multi.active
        for st in self._parts.values():
            if self._in_flight >= limit:
                break
            if st.in_flight is not None:
                continue
            if st.retry_batch is not None:
                if now < st.retry_at:
                    continue
                batch, st.retry_batch = st.retry_batch, None
            else:
                batch = st.batcher.take(now, flush)
                if batch is None:
                    continue
            job: DeliveryJob[Message] = DeliveryJob(st.tp, batch, st.generation)
            st.in_flight = job
            self._in_flight += 1
            if self._pacer.try_reserve():
                self._multi.start(batch.route, batch.body, job)
            else:
                job.arm()
                self._pool.submit(self._run_job, job)
        if self._multi.active > started:
            self._multi.send()

    def _run_job(
        self, job: DeliveryJob[Message], first: Response | TransportError | None = None
    ) -> None:
        self._done.put(self._deliverer.deliver(job, first))

    def _collect(self) -> None:
        for job, outcome in self._multi.poll():
            if isinstance(outcome, Response) and outcome.status == 200:
                self._apply(self._deliverer.deliver(job, outcome))
            else:
                job.arm()
                self._pool.submit(self._run_job, job, outcome)
        while True:
            try:
                result = self._done.get_nowait()
            except queue.Empty:
                return
            self._apply(result)

    def _apply(self, result: DeliveryResult[Message]) -> None:
        job = result.job
        self._in_flight -= 1
        st = self._parts.get(job.key)
        if st is None or st.generation != job.generation or st.in_flight is not job:
            return  # revoked or lost meanwhile: the new owner re-reads from the commit
        st.in_flight = None
        if result.abandoned:
            return
        if result.error is not None:
            log.error(
                "delivery failed unexpectedly; retrying the batch",
                exc_info=result.error,
                extra={"topic": job.key[0], "partition": job.key[1]},
            )
            st.retry_batch, st.retry_at = job.batch, time.monotonic() + 1.0
            return
        self._buffered_bytes -= job.batch.payload_bytes
        if result.accepted:
            n = len(result.accepted)
            st.offsets.finish_many(map(_OFFSET, result.accepted))
            self.metrics.events_delivered.inc(n)
            self.stats["delivered"] += n
        if result.requests:
            self.stats["batches"] += 1
            self.stats["requests"] += result.requests
            self.metrics.batch_size.observe(len(result.accepted) or len(job.batch.items))
        for rejection in result.rejected:
            self._dead_letter_rejection(st, rejection)

    def _dead_letter_rejection(self, st: PartitionState, rej: Rejection[Message]) -> None:
        self._dead_letter(st, rej.item.ref, "api_rejected", rej.detail, http_status=rej.status)

    # ---- flow control ----

    def _manage_pauses(self, consumer: Consumer) -> None:
        if not self._parts or self._draining:
            return  # while draining everything stays paused
        cap_total = self.settings.max_buffered_bytes
        over_total = self._buffered_bytes >= cap_total
        cap_part_bytes = max(
            self.settings.batch_max_bytes,
            min(40 * self.settings.batch_max_bytes, cap_total // len(self._parts)),
        )
        to_pause: list[PartitionState] = []
        to_resume: list[PartitionState] = []
        for st in self._parts.values():
            full = (
                st.batcher.pending_events >= self._part_cap_events
                or st.batcher.pending_bytes >= cap_part_bytes
            )
            if not st.paused and (full or (over_total and st.batcher.pending_events)):
                to_pause.append(st)
            elif (
                st.paused
                and not over_total
                and (
                    st.batcher.pending_events < self._part_cap_events // 2
                    and st.batcher.pending_bytes < cap_part_bytes // 2
                )
            ):
                to_resume.append(st)
        if to_pause:
            consumer.pause([TopicPartition(*st.tp) for st in to_pause])
            for st in to_pause:
                st.paused = True
            self.metrics.pauses.labels("buffer_full").inc(len(to_pause))
        if to_resume:
            consumer.resume([TopicPartition(*st.tp) for st in to_resume])
            for st in to_resume:
                st.paused = False
        if to_pause or to_resume:
            self.metrics.partitions_paused.set(sum(st.paused for st in self._parts.values()))
        self.metrics.buffered_bytes.set(self._buffered_bytes)

    # ---- commits ----

    def _commit(self, consumer: Consumer, asynchronous: bool, only: list[TP] | None = None) -> None:
        self._last_commit = time.monotonic()
        offsets: list[TopicPartition] = []
        for tp in only if only is not None else list(self._parts):
            st = self._parts.get(tp)
            if st is None:
                continue
            target = st.offsets.needs_commit()
            self.metrics.commit_lag.labels(tp[0], str(tp[1])).set(st.offsets.outstanding)
            if target is not None:
                offsets.append(TopicPartition(tp[0], tp[1], target))
        if not offsets:
            return
        if asynchronous:
            consumer.commit(offsets=offsets, asynchronous=True)
            return
        try:
            result = consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self.metrics.commits.labels("error").inc()
            log.warning("commit failed", extra={"error": str(exc)})
            return
        self._on_commit(None, result)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            self.metrics.commits.labels("error").inc()
            log.warning("commit failed", extra={"error": err.str()})
            return
        for tp in partitions:
            if tp.error is not None:
                self.metrics.commits.labels("error").inc()
                log.warning(
                    "commit failed for partition",
                    extra={"topic": tp.topic, "partition": tp.partition, "error": str(tp.error)},
                )
                continue
            st = self._parts.get((tp.topic, tp.partition))
            if st is not None and tp.offset >= 0:
                st.offsets.mark_committed(tp.offset)
            self.metrics.commits.labels("ok").inc()

    # ---- rebalances (run inside consume, on this thread) ----

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assign").inc()
        for tp in partitions:
            self._generation += 1
            key = (tp.topic, tp.partition)
            self._parts[key] = PartitionState(
                key,
                self._generation,
                PartitionBatcher(
                    self.settings.batch_max_events, self.settings.batch_max_bytes, self._linger_s
                ),
            )
        self.metrics.partitions_assigned.set(len(self._parts))
        self.health.joined()
        log.info(
            "partitions assigned",
            extra={"partitions": [f"{tp.topic}:{tp.partition}" for tp in partitions]},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Finish what is in flight for these partitions (bounded), commit it, let go."""
        self.metrics.rebalances.labels("revoke").inc()
        keys = [
            (tp.topic, tp.partition) for tp in partitions if (tp.topic, tp.partition) in self._parts
        ]
        deadline = time.monotonic() + min(
            _REVOKE_WAIT_S, max(self.settings.shutdown_timeout_s, 1.0)
        )
        while time.monotonic() < deadline and any(
            self._parts[k].in_flight is not None or self._parts[k].dlq_unacked for k in keys
        ):
            self._collect()
            self._dlq.service(0.01)
            time.sleep(0.005)
        self._collect()
        self._commit(consumer, asynchronous=False, only=keys)
        self._forget(consumer, keys, resume=True)
        log.info("partitions revoked", extra={"partitions": [f"{t}:{p}" for t, p in keys]})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Someone else may own these already: commit nothing, abandon their work."""
        self.metrics.rebalances.labels("lost").inc()
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._forget(consumer, keys, resume=False)
        log.warning("partitions lost", extra={"partitions": [f"{t}:{p}" for t, p in keys]})

    def _forget(self, consumer: Consumer, keys: list[TP], resume: bool) -> None:
        paused = []
        for key in keys:
            st = self._parts.pop(key, None)
            if st is None:
                continue
            if st.in_flight is not None:
                st.in_flight.cancel()
            self._buffered_bytes -= sum(len(i.raw) for i in st.batcher.clear())
            if st.in_flight is not None:
                self._buffered_bytes -= st.in_flight.batch.payload_bytes
            if st.paused:
                paused.append(TopicPartition(*key))
            with contextlib.suppress(KeyError):  # no commit was tried for it yet
                self.metrics.commit_lag.remove(key[0], str(key[1]))
        if resume and paused:
            with contextlib.suppress(KafkaException):
                consumer.resume(paused)
        self.metrics.partitions_assigned.set(len(self._parts))
        self.metrics.partitions_paused.set(sum(st.paused for st in self._parts.values()))

    # ---- shutdown ----

    def _busy(self) -> bool:
        return bool(
            self._in_flight
            or self._dlq.pending
            or any(st.batcher.pending_events or st.retry_batch for st in self._parts.values())
        )

    def _drain(self, consumer: Consumer) -> None:
        """Stop fetching, deliver what is held within the shutdown timeout."""
        self.health.stopping()
        self._draining = True
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        if self._parts:
            consumer.pause([TopicPartition(*tp) for tp in self._parts])
            for st in self._parts.values():
                st.paused = True
        log.info("draining", extra={"timeout_s": self.settings.shutdown_timeout_s})
        while self._busy() and time.monotonic() < deadline:
            self._turn(consumer, flush=True)
        if self._busy():
            log.warning("shutdown timeout reached; undelivered events stay uncommitted")

    def _shutdown(self, consumer: Consumer, commit: bool) -> None:
        for st in self._parts.values():
            if st.in_flight is not None:
                st.in_flight.cancel()
        if commit:
            self._collect()
            self._commit(consumer, asynchronous=False)
        try:
            consumer.close()  # leaves the group now, not after session.timeout.ms
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close failed", extra={"error": str(exc)})
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._multi.close()
        left = self._dlq.close(5.0)
        if left:
            log.warning("dlq records unacknowledged at exit", extra={"count": left})
        self._client.close()
        log.info("stopped", extra=dict(self.stats))
