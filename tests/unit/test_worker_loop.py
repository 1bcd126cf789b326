"""The worker's loop driven by a fake consumer: rebalances, losses, refused commits
and failures on cue. Only poison records here, so no request leaves: what is
tested is the loop and its dealings with the consumer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from consumer import config
from consumer.worker import Worker
from tests.unit.test_dlq_writer import ScriptedProducer

TOPIC = "t"
Step = Callable[["FakeConsumer"], list[Any] | None]


class FakeConsumer:
    """Plays a script, one step per `consume`; records pauses, resumes, commits, close."""

    def __init__(self, conf: dict[str, Any], script: list[Step]) -> None:
        self.on_commit = conf["on_commit"]
        self.script = list(script)
        self.calls: list[tuple[str, Any]] = []
        self.refuse_commits = 0
        self.async_results: list[tuple[KafkaError | None, list[TopicPartition]]] = []
        self.closed = False
        self.cb: dict[str, Any] = {}
        self.stats_cb: Callable[[bytes], None] = conf["stats_cb"]
        self.eager = False  # incremental_* refused, as under an eager assignor
        self.refuse_assign = False

    def subscribe(self, _topics: list[str], **callbacks: Any) -> None:
        self.cb = callbacks

    def consume(self, _n: int, _timeout: float) -> list[Any]:
        results, self.async_results = self.async_results, []
        for err, tps in results:
            self.on_commit(err, tps)
        if not self.script:
            return []
        return self.script.pop(0)(self) or []

    @property
    def done(self) -> bool:
        return not self.script

    def assign(self, *partitions: Any) -> None:
        """A test's `assign(0, 1)`: the group assigns (the callback runs). The worker's
        `assign([TopicPartition, ...])`: librdkafka's eager assign, recorded."""
        if partitions and isinstance(partitions[0], list):
            self.calls.append(("assign", [tp.partition for tp in partitions[0]]))
            return
        self.cb["on_assign"](self, [TopicPartition(TOPIC, p) for p in partitions])

    def lose(self, *partitions: int) -> None:
        self.cb["on_lost"](self, [TopicPartition(TOPIC, p) for p in partitions])

    def report(self, **states: str) -> None:
        """A statistics report: each partition ("p0"...) in the fetch state given."""
        parts = {k[1:]: {"partition": int(k[1:]), "fetch_state": v} for k, v in states.items()}
        self.stats_cb(orjson.dumps({"topics": {TOPIC: {"partitions": parts}}}))

    def incremental_unassign(self, tps: list[TopicPartition]) -> None:
        if self.eager:
            raise KafkaException(KafkaError(KafkaError._STATE))
        self.calls.append(("unassign", [tp.partition for tp in tps]))

    def incremental_assign(self, tps: list[TopicPartition]) -> None:
        if self.refuse_assign:
            raise KafkaException(KafkaError(KafkaError._STATE))
        self.calls.append(("reassign", [tp.partition for tp in tps]))

    def pause(self, tps: list[TopicPartition]) -> None:
        self.calls.append(("pause", [tp.partition for tp in tps]))

    def resume(self, tps: list[TopicPartition]) -> None:
        self.calls.append(("resume", [tp.partition for tp in tps]))

    def committed(self, tps: list[TopicPartition], _timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, -1001) for tp in tps]

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> Any:
        done = [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in offsets]
        if self.refuse_commits:
            self.refuse_commits -= 1
            err = KafkaError(KafkaError.REBALANCE_IN_PROGRESS)
            if not asynchronous:
                raise KafkaException(err)
            self.async_results.append((err, done))
            return None
        self.calls.append(("commit", [(tp.partition, tp.offset) for tp in done]))
        if asynchronous:
            self.async_results.append((None, done))
            return None
        return done

    def close(self) -> None:
        self.closed = True
        self.calls.append(("close", None))


def poison(partition: int, *offsets: int) -> list[Any]:
    return [Message(topic=TOPIC, partition=partition, offset=o, value=b"not json") for o in offsets]


def run(
    script: list[Step], stuck_after_s: float | None = None, **env: str
) -> tuple[int, FakeConsumer, Worker]:
    settings = config.load(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "KAFKA_TOPICS": TOPIC,
            "GR_API_KEY": "unit-key-1234",
            "GR_BASE_URL": "http://127.0.0.1:9",
            "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
            "GR_SHUTDOWN_TIMEOUT_S": "2",
            **env,
        }
    )
    made: list[FakeConsumer] = []

    def factory(conf: dict[str, Any]) -> FakeConsumer:
        made.append(FakeConsumer(conf, script))
        return made[0]

    worker = Worker(
        settings, consumer_factory=factory, producer_factory=lambda _conf: ScriptedProducer()
    )
    if stuck_after_s is not None:
        worker._fetch_watch.stuck_after_s = stuck_after_s
    code = worker.run(until=lambda: made[0].done)
    return code, made[0], worker


def idle(_c: FakeConsumer) -> None:
    return None


def test_a_failure_in_the_loop_closes_the_consumer_and_returns_1() -> None:
    def boom(_c: FakeConsumer) -> None:
        raise ValueError("offset 3 read after 7")

    code, consumer, _ = run([lambda c: c.assign(0), boom, idle])
    assert code == 1
    assert consumer.closed


def test_every_assignment_resumes_its_partitions_even_after_a_loss() -> None:
    code, consumer, _ = run(
        [lambda c: c.assign(0, 1), idle, lambda c: c.lose(0, 1), lambda c: c.assign(0, 1), idle]
    )
    assert code == 0
    resumes = [args for kind, args in consumer.calls if kind == "resume"]
    assert resumes == [[0, 1], [0, 1]]


def test_dead_letters_are_committed_and_a_refused_commit_is_retried() -> None:
    def refuse_next(c: FakeConsumer) -> list[Any]:
        c.refuse_commits = 2
        return poison(0, 0, 1, 2)

    code, consumer, _ = run([lambda c: c.assign(0), refuse_next, *[idle] * 30])
    assert code == 0
    commits = [args for kind, args in consumer.calls if kind == "commit"]
    assert commits[-1] == [(0, 3)]
    assert consumer.calls[-1] == ("close", None)


def test_the_drain_commits_before_it_closes_despite_refusals() -> None:
    def refuse_at_stop(c: FakeConsumer) -> list[Any]:
        c.refuse_commits = 5
        return poison(1, 10, 11)

    code, consumer, _ = run([lambda c: c.assign(1), refuse_at_stop])
    assert code == 0
    kinds = [kind for kind, _ in consumer.calls]
    assert kinds[-2:] == ["commit", "close"]
    assert consumer.calls[-2] == ("commit", [(1, 12)])


# ---- partitions librdkafka never started fetching (consumer/fetch_watch.py) ----


def test_a_partition_reported_never_fetched_is_assigned_again() -> None:
    code, consumer, worker = run(
        [lambda c: c.assign(0, 1), lambda c: c.report(p0="none", p1="active"), idle],
        stuck_after_s=0.0,
    )
    assert code == 0
    moves = [(k, a) for k, a in consumer.calls if k in ("unassign", "reassign", "assign")]
    assert moves == [("unassign", [0]), ("reassign", [0])]
    assert worker.metrics.fetch_restarts._value.get() == 1


def test_a_partition_read_from_is_never_assigned_again() -> None:
    """Whatever a report says: assigning it again would read its records twice."""
    code, consumer, worker = run(
        [lambda c: c.assign(0), lambda _c: poison(0, 0), lambda c: c.report(p0="none"), idle],
        stuck_after_s=0.0,
    )
    assert code == 0
    assert not [k for k, _ in consumer.calls if k in ("unassign", "reassign", "assign")]
    assert worker.metrics.fetch_restarts._value.get() == 0


def test_under_an_eager_assignor_the_whole_assignment_is_assigned_again_only_if_none_was_fetched() -> (
    None
):
    def eager(c: FakeConsumer) -> None:
        c.eager = True
        c.assign(0, 1)

    code, consumer, _ = run(
        [
            eager,
            lambda c: c.report(p0="none", p1="active"),
            lambda c: c.report(p0="none", p1="none"),
            idle,
        ],
        stuck_after_s=0.0,
    )
    assert code == 0
    assert [(k, a) for k, a in consumer.calls if k == "assign"] == [("assign", [0, 1])]


def test_partitions_unassigned_and_not_assigned_again_stop_the_worker() -> None:
    """librdkafka would read them no more, the group still counts them ours: exit 1, and
    the restart mends it."""

    def refuse(c: FakeConsumer) -> None:
        c.refuse_assign = True
        c.report(p0="none")

    code, consumer, _ = run([lambda c: c.assign(0), refuse, idle, idle], stuck_after_s=0.0)
    assert code == 1
    assert consumer.closed
