"""Simulated Kafka: the topic's partitions, the group, the worker's consumer, the DLQ producer.

The consumer behaves as librdkafka does where the worker can tell: runs of
one partition per fetch, paused partitions return nothing, a (re)assigned
partition starts at the group's committed offset, rebalance callbacks run
inside `consume`, asynchronous commits are answered later (or refused, or
never), a synchronous commit blocks while the coordinator is away, records
are sometimes read again from an earlier position. While the coordinator
answers offset look-ups wrongly (`lookup_lost`), a partition assigned is never
fetched, and every one assigned after it waits behind it, until the worker
assigns it again; statistics reports (`stats_cb`, every
`statistics.interval.ms`) show such partitions in fetch state "none". The producer acknowledges
after a delay, or refuses (a missing topic, no authorisation, a full queue, a
record too large for the topic), or turns fatal the way librdkafka reports it:
an error callback with `_FATAL`, delivery reports and `produce` failing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from tests.simulation.records import Rec
from tests.simulation.world import World

TOPIC = "sim-events"
DLQ_TOPIC = "sim-events.dlq"
_COMMIT_ANSWER_MAX_S = 0.05  # the coordinator answers a commit within this, when it answers


@dataclass
class DlqEntry:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class Observer:
    """What the invariant checker wants to hear from Kafka (overridden by the checker)."""

    def commit_sent(self, partition: int, offset: int, owned: bool, sync: bool) -> None: ...
    def commit_applied(self, partition: int, offset: int) -> None: ...
    def records_returned(self, recs: list[Rec]) -> None: ...
    def dlq_acked(self, entry: DlqEntry) -> None: ...
    def let_go(self, partitions: list[int]) -> None: ...
    def assigned(self, partitions: list[int]) -> None: ...
    def turn(self) -> None: ...
    def dlq_known(self, entry: DlqEntry) -> None: ...
    def let_go_cleanly(self, commits_at: dict[int, float], started: float) -> None: ...
    def all_committed(self) -> bool:
        return False


@dataclass
class Cluster:
    """The topic, the group's committed offsets, the DLQ topic and the faults on them."""

    world: World
    partitions: int
    observer: Observer
    logs: list[list[tuple[float, Rec]]] = field(default_factory=list)
    committed: dict[int, int] = field(default_factory=dict)
    dlq: list[DlqEntry] = field(default_factory=list)
    generation: int = 0
    coordinator_up: bool = True
    commit_refuse_rate: float = 0.0
    commit_silence_rate: float = 0.0
    reread_rate: float = 0.0
    lookup_lost: bool = False  # offset look-ups answered with a request-level error
    # the DLQ topic
    dlq_mode: str = "ok"  # ok | refuse | full
    dlq_topic_max_bytes: int = 1_000_000
    producers: list[SimProducer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logs = [[] for _ in range(self.partitions)]

    def append(self, rec: Rec, at: float) -> None:
        self.logs[rec.partition].append((at, rec))

    def end_offsets(self) -> list[int]:
        return [len(log) for log in self.logs]


def _message(rec: Rec) -> Message:
    return Message(
        topic=TOPIC,
        partition=rec.partition,
        offset=rec.offset,
        key=rec.key,
        value=rec.value,
        headers=cast(Any, rec.headers),
        timestamp=(1, rec.timestamp_ms),
    )


class SimConsumer:
    """The worker's consumer; one member of the group, the others are phantoms."""

    def __init__(self, cluster: Cluster, conf: dict[str, Any]) -> None:
        self.cluster = cluster
        self.world = cluster.world
        self._on_commit: Callable[[Any, list[TopicPartition]], None] = conf["on_commit"]
        self.callbacks: dict[str, Any] = {}
        self.assigned: dict[int, int] = {}  # partition -> fetch position
        self.paused: set[int] = set()
        self._answers: list[tuple[KafkaError | None, list[TopicPartition]]] = []
        self._commit_queue: deque[tuple[list[TopicPartition], int, bool]] = deque()
        self._coordinator_was_away = False
        self._pumping = False
        # (revoke, assign, lost) waiting to be delivered inside the next consume
        self._rebalances: list[tuple[list[int], list[int], bool]] = []
        self._rr = 0
        self.closed = False
        self.in_callback = False
        self._commit_at: dict[int, float] = {}  # when each partition's last commit went out
        # librdkafka's assignment beside the group's: partitions whose offset look-up was
        # lost (never fetched), those waiting behind them, those the worker unassigned
        self.unstarted: set[int] = set()
        self.behind: set[int] = set()
        self.unassigned: set[int] = set()
        # librdkafka's end-of-partition events: each partition's end offset last told
        self._eof = bool(conf.get("enable.partition.eof"))
        self._eof_told: dict[int, int] = {}
        self._stats_cb: Callable[[bytes], None] | None = conf.get("stats_cb")
        self._stats_every = float(conf.get("statistics.interval.ms", 0)) / 1000.0
        self._next_stats = self.world.now + self._stats_every

    # ---- what the world does to the group ----

    def rebalance(self, revoke: list[int], assign: list[int], lost: bool = False) -> None:
        self._rebalances.append((revoke, assign, lost))

    # ---- the client API the worker uses ----

    def subscribe(self, _topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def consume(self, num: int, timeout: float) -> list[Message]:
        if self.closed:
            raise RuntimeError("consume after close")
        self.cluster.observer.turn()
        self._callbacks()
        self._stats()
        out = self._fetch(num)
        if out:
            return out
        self.world.block(timeout)
        self._callbacks()
        return self._fetch(num)

    def _callbacks(self) -> None:
        answers, self._answers = self._answers, []
        for err, tps in answers:
            self._on_commit(err, tps)
        while self._rebalances:
            revoke, assign, lost = self._rebalances.pop(0)
            revoke = [p for p in revoke if p in self.assigned]
            if revoke:
                self.cluster.generation += 1
                tps = [TopicPartition(TOPIC, p) for p in revoke]
                if lost:
                    for p in revoke:
                        self._drop(p)
                    self._call("on_lost", tps)
                else:
                    started = self.world.now
                    self._commit_at.clear()
                    self._call("on_revoke", tps)
                    for p in revoke:
                        self._drop(p)
                    self.cluster.observer.let_go_cleanly(
                        {p: self._judged_at(p, started) for p in revoke}, started
                    )
            assign = [p for p in assign if p not in self.assigned]
            if assign:
                self.cluster.generation += 1
                for p in assign:
                    self._look_up(p)
                self.cluster.observer.assigned(assign)
                self._call("on_assign", [TopicPartition(TOPIC, p) for p in assign])

    def _look_up(self, p: int) -> None:
        """librdkafka asks for the committed offset of a partition it was given."""
        self.assigned[p] = max(0, self.cluster.committed.get(p, 0))
        self._eof_told.pop(p, None)  # a fetch started afresh tells its end again
        if self.cluster.lookup_lost:
            self.unstarted.add(p)  # never asked again
        elif self.unstarted:
            self.behind.add(p)  # asked once the lost ones are out of the way

    def _unstick(self) -> None:
        if not self.unstarted:
            for p in sorted(self.behind):
                self.behind.discard(p)
                self._look_up(p)

    def _drop(self, p: int) -> None:
        self.assigned.pop(p, None)
        self._eof_told.pop(p, None)
        self.paused.discard(p)  # librdkafka forgets the pause with the partition
        self.unstarted.discard(p)
        self.behind.discard(p)
        self.unassigned.discard(p)
        self._unstick()
        self.cluster.observer.let_go([p])

    def _stats(self) -> None:
        if self._stats_cb is None or self._stats_every <= 0 or self.world.now < self._next_stats:
            return
        self._next_stats = self.world.now + self._stats_every
        idle = self.unstarted | self.behind | self.unassigned
        parts: dict[str, Any] = {"-1": {"partition": -1, "fetch_state": "none"}}
        for p in range(self.cluster.partitions):
            state = ("none" if p in idle else "active") if p in self.assigned else "stopped"
            parts[str(p)] = {"partition": p, "fetch_state": state}
        self._stats_cb(orjson.dumps({"topics": {TOPIC: {"topic": TOPIC, "partitions": parts}}}))

    def incremental_unassign(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            p = tp.partition
            if p not in self.assigned or p in self.unassigned:
                raise KafkaException(KafkaError(KafkaError._INVALID_ARG))
            self.unstarted.discard(p)
            self.behind.discard(p)
            self.unassigned.add(p)
        self._unstick()

    def incremental_assign(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            p = tp.partition
            if p not in self.unassigned:
                raise KafkaException(KafkaError(KafkaError._CONFLICT))
            self.unassigned.discard(p)
            self._look_up(p)

    def _call(self, name: str, tps: list[TopicPartition]) -> None:
        self.in_callback = True
        try:
            self.callbacks[name](self, tps)
        finally:
            self.in_callback = False

    def _fetch(self, num: int) -> list[Message]:
        logs = self.cluster.logs
        now = self.world.now
        assigned = self.assigned
        fetching = [
            p
            for p in sorted(assigned)
            if p not in self.paused
            and p not in self.unstarted
            and p not in self.behind
            and p not in self.unassigned
        ]
        # what has a record to give, in a rotating order
        parts = [
            p for p in fetching if assigned[p] < len(logs[p]) and logs[p][assigned[p]][0] <= now
        ]
        out: list[Message] = []
        if not parts:
            self._ends(fetching, out)
            return out
        rand = self.world.rng.random
        recs: list[Rec] = []
        n = len(parts)
        for i in range(n):
            p = parts[(self._rr + i) % n]
            pos = start = assigned[p]
            log = logs[p]
            end = min(len(log), pos + 1 + int(rand() * 120), pos + num - len(out))
            while pos < end and log[pos][0] <= now:
                rec = log[pos][1]
                out.append(_message(rec))
                recs.append(rec)
                pos += 1
            if pos != start and rand() < self.cluster.reread_rate:
                pos = max(0, pos - 1 - int(rand() * 5))  # fetched again from an earlier position
            assigned[p] = pos
            if len(out) >= num:
                break
        self._rr += 1
        if recs:
            self.cluster.observer.records_returned(recs)
        self._ends(fetching, out)
        return out

    def _ends(self, fetching: list[int], out: list[Message]) -> None:
        """librdkafka's end-of-partition event: once for each end offset a partition's
        fetch reaches (read again from an earlier position to the same end: not again)."""
        if not self._eof:
            return
        logs, now = self.cluster.logs, self.world.now
        for p in fetching:
            pos = self.assigned[p]
            log = logs[p]
            if (pos >= len(log) or log[pos][0] > now) and self._eof_told.get(p) != pos:
                self._eof_told[p] = pos
                out.append(
                    Message(
                        topic=TOPIC,
                        partition=p,
                        offset=pos,
                        error=KafkaError(KafkaError._PARTITION_EOF),
                    )
                )

    def pause(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            if tp.partition not in self.assigned:
                raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))
        self.paused.update(tp.partition for tp in tps)

    def resume(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.paused.discard(tp.partition)

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        # as librdkafka: the question waits for a coordinator, up to its timeout
        until = self.world.now + timeout
        while not self.cluster.coordinator_up and self.world.now < until:
            self.world.block(min(0.1, until - self.world.now))
        if not self.cluster.coordinator_up:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        self.world.block(0.002)
        return [
            TopicPartition(tp.topic, tp.partition, self.cluster.committed.get(tp.partition, -1001))
            for tp in tps
        ]

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> Any:
        cluster = self.cluster
        generation = cluster.generation
        for tp in offsets:
            self._commit_at[tp.partition] = self.world.now
            cluster.observer.commit_sent(
                tp.partition, tp.offset, tp.partition in self.assigned, not asynchronous
            )
        done = [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in offsets]
        rng = self.world.rng
        if not asynchronous:
            if not cluster.coordinator_up:
                # librdkafka's synchronous commit has no timeout of its own: it waits
                # for the coordinator (here, up to a minute) before failing
                for tp in offsets:
                    self._commit_at[tp.partition] = -1.0
                until = self.world.now + 60.0
                while self.world.now < until and not cluster.coordinator_up:
                    self.world.block(until - self.world.now)
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
            self.world.block(0.003)
            if rng.random() < cluster.commit_refuse_rate:
                for tp in offsets:
                    self._commit_at[tp.partition] = -1.0  # refused: nothing to judge
                raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
            self._apply(done, generation)
            return done
        if rng.random() < cluster.commit_silence_rate:
            return None  # never answered
        refused = rng.random() < cluster.commit_refuse_rate
        # one connection to the coordinator: commits are answered in the order sent,
        # those that waited for a coordinator before the ones sent after it came back,
        # but the first of those, retried, last (`_pump_commits`)
        self._commit_queue.append((done, generation, refused))
        if not self._pumping:
            self._pumping = True
            self.world.after(rng.uniform(0.001, _COMMIT_ANSWER_MAX_S), self._pump_commits)
        return None

    def _pump_commits(self) -> None:
        cluster = self.cluster
        if self.closed:
            self._commit_queue.clear()
            self._pumping = False
            return
        if not cluster.coordinator_up:
            # as librdkafka: the requests wait for a coordinator, then go
            self._coordinator_was_away = True
            self.world.after(0.1, self._pump_commits)
            return
        if self._coordinator_was_away and len(self._commit_queue) > 1:
            # as librdkafka: the commit on the wire when the coordinator went (or the
            # first to meet it loading its offsets) is retried behind the ones queued
            # since, so an older offset is applied, and answered, last
            self._commit_queue.append(self._commit_queue.popleft())
        self._coordinator_was_away = False
        while self._commit_queue:
            done, generation, refused = self._commit_queue.popleft()
            if refused or (cluster.generation != generation and not self._still_owned(done)):
                self._answers.append((KafkaError(KafkaError.REBALANCE_IN_PROGRESS), done))
                continue
            self._apply(done, generation)
            self._answers.append((None, done))
        self._pumping = False

    def _still_owned(self, tps: list[TopicPartition]) -> bool:
        return all(tp.partition in self.assigned for tp in tps)

    def _apply(self, tps: list[TopicPartition], _generation: int) -> None:
        for tp in tps:
            self.cluster.committed[tp.partition] = tp.offset
            self.cluster.observer.commit_applied(tp.partition, tp.offset)

    def close(self) -> None:
        """As librdkafka: the assignment is revoked through the callback, then the group left."""
        owned = sorted(self.assigned)
        started = self.world.now
        # the worker says it committed all it had finished: then all it knew by now
        done = self.cluster.observer.all_committed()
        if owned:
            self.cluster.generation += 1
            self._call("on_revoke", [TopicPartition(TOPIC, p) for p in owned])
        self.closed = True
        for p in owned:
            self._drop(p)
        self.cluster.observer.let_go_cleanly(
            {p: started if done else self._judged_at(p, started) for p in owned}, started
        )

    def _judged_at(self, p: int, started: float) -> float:
        """When the worker last committed this partition: what it knew then must be in the
        group. None sent, it knew by the let-go; one sent too late to be answered before
        the let-go (the stop's budget spent), or refused: nothing to judge (-1)."""
        at = self._commit_at.get(p)
        if at is None:
            return started
        if at >= 0 and started - at < _COMMIT_ANSWER_MAX_S:
            return -1.0
        return at


@dataclass
class _Queued:
    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes | None]]
    callback: Callable[[Any, Any], None]


class SimProducer:
    """The DLQ producer: acknowledges after a delay unless the DLQ is in trouble."""

    def __init__(self, cluster: Cluster, conf: dict[str, Any]) -> None:
        self.cluster = cluster
        self.world = cluster.world
        self._max_bytes = int(conf.get("message.max.bytes", 1_000_000))
        self._reports: list[tuple[Callable[[Any, Any], None], KafkaError | None]] = []
        self._queued: list[_Queued] = []
        self._errors: list[KafkaError] = []
        self.fatal = False
        cluster.producers.append(self)

    def go_fatal(self) -> None:
        """librdkafka's fatal state (a fenced idempotent producer, say), as confluent-kafka
        reports it: the next poll raises the original error with `fatal()` true; every later
        produce raises, and every delivery report fails, with `_FATAL` (`fatal()` false)."""
        if not self.fatal:
            self.fatal = True
            self._errors.append(KafkaError(KafkaError.PRODUCER_FENCED, "fenced", fatal=True))

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        assert topic == DLQ_TOPIC
        assert on_delivery is not None
        hdrs = list(headers or [])
        if self.fatal:
            raise KafkaException(KafkaError(KafkaError._FATAL, "producer is fenced"))
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v or b"") for k, v in hdrs)
        if size > self._max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        if self.cluster.dlq_mode == "full" and self.world.rng.random() < 0.5:
            raise BufferError("Local: Queue full")
        q = _Queued(value, key, hdrs, on_delivery)
        self._queued.append(q)
        self.world.after(self.world.rng.uniform(0.001, 0.03), lambda: self._settle(q, size))

    def _settle(self, q: _Queued, size: int) -> None:
        if q not in self._queued:
            return  # purged
        self._queued.remove(q)
        mode = self.cluster.dlq_mode
        if self.fatal:
            self._reports.append((q.callback, KafkaError(KafkaError._FATAL)))
        elif mode == "refuse":
            self._reports.append((q.callback, KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
        elif size > self.cluster.dlq_topic_max_bytes:
            self._reports.append((q.callback, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)))
        else:
            entry = DlqEntry(q.key, q.value, q.headers)
            self.cluster.dlq.append(entry)
            self.cluster.observer.dlq_acked(entry)
            observer = self.cluster.observer
            callback = q.callback

            def report(err: Any, msg: Any) -> None:
                observer.dlq_known(entry)  # the worker hears of it now
                callback(err, msg)

            self._reports.append((report, None))

    def poll(self, timeout: float = 0.0) -> int:
        if not self._reports and not self._errors and timeout > 0:
            self.world.block(timeout)
        errors, self._errors = self._errors, []
        if errors:
            raise KafkaException(errors[0])
        reports, self._reports = self._reports, []
        for callback, err in reports:
            callback(err, None)
        return len(reports)

    def purge(self, *_args: Any) -> None:
        queued, self._queued = self._queued, []
        for q in queued:
            self._reports.append((q.callback, KafkaError(KafkaError._PURGE_QUEUE)))

    def flush(self, timeout: float = 0.0) -> int:
        self.poll(timeout)
        return len(self._queued)

    def __len__(self) -> int:
        return len(self._queued) + len(self._reports)

    def close(self) -> None:
        if self in self.cluster.producers:
            self.cluster.producers.remove(self)
