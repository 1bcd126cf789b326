"""consumer/lag.py: consumer lag per partition from librdkafka's statistics.

`tests/data/librdkafka-consumer-stats.json` is a real report, from a consumer of
group `g` on `game-events` (3 partitions, 10 records each, all read) against the
local broker, after committing offset 4 on partition 0 and 10 on partition 1,
nothing on partition 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from consumer.lag import DEFAULT_INTERVAL_MS, LagGauges, PartitionLag, parse
from consumer.observe import Metrics

STATS = (
    Path(__file__).resolve().parents[1] / "data" / "librdkafka-consumer-stats.json"
).read_bytes()


def test_a_real_report() -> None:
    assert parse(STATS) == [
        PartitionLag("game-events", 0, 6, 4),  # 10 - 4
        PartitionLag("game-events", 1, 0, 10),
        # nothing committed, the group starts from the earliest offset: all 10 are to do
        PartitionLag("game-events", 2, 10, -1),
    ]


def test_nothing_committed_starting_from_the_end_is_unknown() -> None:
    assert [p.partition for p in parse(STATS, from_earliest=False)] == [0, 1]


def _report(**partitions: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"topics": {"t": {"partitions": {k.removeprefix("p"): v for k, v in partitions.items()}}}}
    )


def test_offsets_not_yet_known_are_left_out() -> None:
    looking_up = {"partition": 0, "committed_offset": -1001, "consumer_lag": -1,
                  "lo_offset": -1001, "hi_offset": -1001, "ls_offset": -1001}  # fmt: skip
    assert parse(_report(p0=looking_up)) == []


def test_the_last_stable_offset_is_the_end_when_there_is_one() -> None:
    fresh = {"partition": 3, "committed_offset": -1001, "consumer_lag": -1,
             "lo_offset": 5, "hi_offset": 40, "ls_offset": 30}  # fmt: skip
    assert parse(_report(p3=fresh)) == [PartitionLag("t", 3, 25, -1)]
    fresh["ls_offset"] = -1
    assert parse(_report(p3=fresh)) == [PartitionLag("t", 3, 35, -1)]


@pytest.mark.parametrize(
    "doc",
    [b"{}", b"[]", b'{"topics": []}', b'{"topics": {"t": {"partitions": [1]}}}',
     b'{"topics": {"t": {"partitions": {"0": {"partition": "0"}}}}}',
     b'{"topics": {"t": {"partitions": {"0": {"partition": true, "consumer_lag": 1}}}}}'],
)  # fmt: skip
def test_odd_reports_give_nothing(doc: bytes) -> None:
    assert parse(doc) == []


def _gauges(from_earliest: bool = True) -> tuple[Metrics, LagGauges]:
    m = Metrics(CollectorRegistry())
    return m, LagGauges(
        m.partition_consumer_lag, m.partition_committed_offset, from_earliest=from_earliest
    )


def _samples(m: Metrics, name: str) -> dict[tuple[str, str], float]:
    out = {}
    for metric in m.registry.collect():
        for s in metric.samples:
            if s.name == name:
                out[(s.labels["topic"], s.labels["partition"])] = s.value
    return out


def test_gauges_only_for_owned_partitions_and_gone_once_let_go() -> None:
    m, lag = _gauges()
    lag.update(STATS, owned={("game-events", 0), ("game-events", 2)})
    assert _samples(m, "gr_partition_consumer_lag") == {
        ("game-events", "0"): 6.0,
        ("game-events", "2"): 10.0,
    }
    assert _samples(m, "gr_partition_committed_offset") == {
        ("game-events", "0"): 4.0,
        ("game-events", "2"): -1.0,
    }
    lag.forget([("game-events", 0), ("other", 9)])
    assert _samples(m, "gr_partition_consumer_lag") == {("game-events", "2"): 10.0}
    # A report queued before the revoke, served after it: not shown again.
    lag.update(STATS, owned={("game-events", 2)})
    assert set(_samples(m, "gr_partition_consumer_lag")) == {("game-events", "2")}
    assert b"gr_partition_consumer_lag{" in generate_latest(m.registry)


def test_install_asks_for_statistics_unless_configured() -> None:
    m = Metrics(CollectorRegistry())
    owned = {("game-events", 1)}
    conf: dict[str, Any] = {"auto.offset.reset": "earliest"}
    LagGauges.install(conf, m.partition_consumer_lag, m.partition_committed_offset, lambda: owned)
    assert conf["statistics.interval.ms"] == DEFAULT_INTERVAL_MS
    conf["stats_cb"](STATS.decode())
    assert _samples(m, "gr_partition_consumer_lag") == {("game-events", "1"): 0.0}

    off: dict[str, Any] = {"statistics.interval.ms": "0", "auto.offset.reset": "latest"}
    gauges = LagGauges.install(
        off, m.partition_consumer_lag, m.partition_committed_offset, lambda: owned
    )
    assert off["statistics.interval.ms"] == "0"
    assert gauges.from_earliest is False
