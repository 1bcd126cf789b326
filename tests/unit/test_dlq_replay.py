"""The replay's bookkeeping, without a broker: what it commits when deliveries fail, and
the settings it loads. (The same command against the real broker: tests/integration.)"""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

import pytest

from consumer import config
from consumer.commands.dlq.replaying import Filter, Replayer, Stop
from consumer.dlq import Source, dlq_headers
from consumer.errors import ConfigError
from consumer.producer import kafka_settings

DLQ = "events.dlq"
SETTINGS = config.load_kafka(
    {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "KAFKA_TOPICS": "events", "KAFKA_DLQ_TOPIC": DLQ}
)


class _Msg:
    def __init__(self, offset: int, reason: str = "invalid_json", source: str = "events") -> None:
        self._offset = offset
        self._headers = dlq_headers(
            [], reason=reason, detail="d", source=Source(source, 0, offset, None), group="g"
        )

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"{}"

    def headers(self) -> list[tuple[str, bytes | None]]:
        return self._headers

    def error(self) -> None:
        return None


class _Consumer:
    def __init__(self, messages: list[_Msg]) -> None:
        self.messages = messages
        self.commits: list[list[tuple[int, int]]] = []

    def assign(self, _tps: Any) -> None:
        pass

    def consume(self, size: int, _timeout: float) -> list[_Msg]:
        out, self.messages = self.messages[:size], self.messages[size:]
        return out

    def list_topics(self, topic: str, timeout: float) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})

    def commit(self, offsets: list[Any], asynchronous: bool) -> list[Any]:
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])
        return [SimpleNamespace(error=None) for _ in offsets]


class _Producer:
    """Acknowledges every record at flush, but for the offsets in `fail`."""

    def __init__(self, fail: set[int]) -> None:
        self.fail = fail
        self.waiting: list[tuple[int, Any]] = []

    def produce(self, topic: str, key: Any, value: Any, headers: Any, on_delivery: Any) -> None:
        offset = int(dict(headers)["gr.dlq.replayed.from"].decode().rsplit(":", 1)[1])
        self.waiting.append((offset, on_delivery))

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        for offset, done in self.waiting:
            done("BROKER_REFUSED" if offset in self.fail else None, None)
        self.waiting = []
        return 0


def _run(messages: list[_Msg], fail: set[int], **options: Any) -> tuple[Any, _Consumer]:
    args = argparse.Namespace(
        chunk=3, rate=0.0, dry_run=False, max_records=None, to_topic=None, progress_interval=5.0
    )
    vars(args).update(options)
    consumer = _Consumer(messages)
    filt = Filter(frozenset({"invalid_json"}), None, None)
    replayer = Replayer(args, SETTINGS, filt, consumer, _Producer(fail), Stop())
    outcome = replayer.run({0: (0, len(messages))})
    return outcome, consumer


def test_commits_stop_at_the_first_record_not_acknowledged() -> None:
    outcome, consumer = _run([_Msg(i) for i in range(6)], fail={4})
    # chunk [0,1,2] acknowledged: 3 committed; chunk [3,4,5]: 4 failed, 5 acknowledged
    assert consumer.commits == [[(0, 3)], [(0, 4)]]
    assert outcome.stuck == {0: "offset 4: delivery failed: BROKER_REFUSED"}
    assert outcome.sent == {"events": 5}


def test_skipped_records_are_committed_past_and_a_failure_holds_them_back() -> None:
    messages = [_Msg(0, "too_large"), _Msg(1), _Msg(2, "too_large"), _Msg(3, source="payments")]
    outcome, consumer = _run(messages, fail={1}, chunk=10)
    assert consumer.commits == [[(0, 1)]]  # 0 skipped; 1 failed: 2 and 3 wait behind it
    assert outcome.skipped == {"reason filter": 2, "not a consumed topic": 1}
    assert outcome.unconsumed == {"payments": 1}
    outcome, consumer = _run(messages, fail=set(), chunk=10)
    assert consumer.commits == [[(0, 4)]]


def test_kafka_only_settings_hold_no_invented_key() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "GR_BASE_URL": "not a url", "GR_API_KEY": ""}
    for settings in (config.load_kafka(env), kafka_settings(env)):
        assert settings.api_key.value is None
        assert settings.api_key.file is None
        assert settings.redacted()["api_key"] == "not read (Kafka only)"
        with pytest.raises(ConfigError, match="GR_API_KEY was not read"):
            settings.api_key.read()


@pytest.mark.parametrize(
    ("topic", "consumed"),
    [
        ("events", True),
        ("events.dlq", False),  # the DLQ is never a target
        ("payments", False),
        ("game-7", True),
        ("game-7\x1b[2J", False),  # no topic name at all
        ("xgame-7", False),
    ],
)
def test_which_topics_the_service_consumes(topic: str, consumed: bool) -> None:
    settings = config.load_kafka(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
            "KAFKA_TOPICS": "events,^game-\\d+$",
            "KAFKA_DLQ_TOPIC": "events.dlq",
        }
    )
    assert settings.consumes(topic) is consumed
