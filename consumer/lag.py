"""Consumer lag per partition, from librdkafka's own statistics.

Lag is what the group still has to do on a partition: its log-end offset minus
the group's committed offset. librdkafka already knows both (it fetches the
high watermark with every fetch and remembers the offsets it commits) and
reports them every `statistics.interval.ms` to a `stats_cb`, on the thread that
calls `consume`. Reading them costs one JSON parse per interval and no request
to the broker.

`parse` is pure: statistics JSON in, one `PartitionLag` per partition out.
`LagGauges` exports them for the partitions the worker owns, and forgets a
partition when it is revoked or lost, so a partition is only ever reported by
its current owner.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Gauge

from consumer.rdkafka_stats import partition_reports

TP = tuple[str, int]

# Often enough for alerts and autoscaling decisions that look at minutes.
DEFAULT_INTERVAL_MS = 5000
_EARLIEST = ("earliest", "smallest", "beginning")


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    lag: int
    committed: int  # -1 while the group has no committed offset for it


def _offset(part: Mapping[str, Any], name: str) -> int:
    value = part.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def parse(
    stats: str | bytes | Mapping[str, Any], *, from_earliest: bool = True
) -> list[PartitionLag]:
    """The partitions whose lag the statistics establish.

    librdkafka's `consumer_lag` is the log-end offset (the last stable offset
    under read_committed, else the high watermark) minus the committed offset.
    With nothing committed yet and the group starting from the earliest
    offset, everything from the log start on is still to do. Partitions whose
    offsets are not known yet (still being looked up) are left out.
    """
    doc = orjson.loads(stats) if isinstance(stats, str | bytes) else stats
    out: list[PartitionLag] = []
    if not isinstance(doc, dict):
        return out
    for topic, partition, pdoc in partition_reports(doc):
        committed = _offset(pdoc, "committed_offset")
        lag = _offset(pdoc, "consumer_lag")
        if lag < 0 and committed < 0 and from_earliest:
            end = _offset(pdoc, "ls_offset")
            end = end if end >= 0 else _offset(pdoc, "hi_offset")
            start = _offset(pdoc, "lo_offset")
            if end >= 0 and start >= 0:
                lag = max(0, end - start)
        if lag < 0:
            continue
        out.append(PartitionLag(topic, partition, lag, max(committed, -1)))
    return out


class LagGauges:
    """Sets the lag and committed-offset gauges of `Metrics`, per owned partition."""

    def __init__(self, lag: Gauge, committed: Gauge, *, from_earliest: bool = True) -> None:
        self.lag = lag
        self.committed = committed
        self.from_earliest = from_earliest
        self._shown: set[TP] = set()

    @classmethod
    def install(
        cls,
        conf: dict[str, Any],
        lag: Gauge,
        committed: Gauge,
        owned: Callable[[], Collection[TP]],
        also: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> LagGauges:
        """Ask librdkafka for statistics every DEFAULT_INTERVAL_MS (unless the configuration
        sets `statistics.interval.ms`; 0 turns them off) and feed them to the gauges, for the
        partitions `owned()` names when they arrive; `also` gets the same parsed report."""
        reset = str(conf.get("auto.offset.reset", "latest")).lower()
        gauges = cls(lag, committed, from_earliest=reset in _EARLIEST)

        def on_stats(stats: str | bytes) -> None:
            doc = orjson.loads(stats)
            if not isinstance(doc, dict):
                return
            gauges.update(doc, owned())
            if also is not None:
                also(doc)

        conf.setdefault("statistics.interval.ms", DEFAULT_INTERVAL_MS)
        conf.setdefault("stats_cb", on_stats)
        return gauges

    def update(self, stats: str | bytes | Mapping[str, Any], owned: Collection[TP]) -> None:
        for p in parse(stats, from_earliest=self.from_earliest):
            tp = (p.topic, p.partition)
            if tp not in owned:  # a report from before a revoke: no longer ours
                continue
            labels = (p.topic, str(p.partition))
            self.lag.labels(*labels).set(p.lag)
            self.committed.labels(*labels).set(p.committed)
            self._shown.add(tp)

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            if tp in self._shown:
                self._shown.discard(tp)
                labels = (tp[0], str(tp[1]))
                self.lag.remove(*labels)
                self.committed.remove(*labels)
