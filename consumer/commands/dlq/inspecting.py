"""`gr-consumer dlq inspect`: what is in the DLQ, by reason, source topic and age.

Commits nothing, ever: a table by reason and source topic with the oldest
and newest `gr.dlq.failed.at`, then the newest few records of each reason,
values shortened. Every header, key and value is printed through
`reading.shown`: what a record carries never reaches the terminal as a
control sequence.
"""

from __future__ import annotations

import argparse
import heapq
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from consumer import config
from consumer.commands._progress import Progress
from consumer.commands.dlq.reading import (
    Entry,
    RangeReader,
    dlq_consumer,
    iso,
    partitions,
    shortened,
    shown,
    watermarks,
)

_CELL: Final = 249  # Kafka's longest topic name: a longer cell is someone's mistake, or worse
_NO_TIME: Final = datetime.min.replace(tzinfo=UTC)


@dataclass
class _Row:
    count: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None

    def add(self, when: datetime | None) -> None:
        self.count += 1
        if when is not None:
            self.oldest = when if self.oldest is None else min(self.oldest, when)
            self.newest = when if self.newest is None else max(self.newest, when)


def inspect(args: argparse.Namespace, settings: config.Settings) -> int:
    topic = settings.dlq_topic
    consumer = dlq_consumer(settings, f"{settings.group_id}.dlq-inspect")
    try:
        parts = partitions(consumer, topic)
        marks = watermarks(consumer, topic, parts)
        total = sum(hi - lo for lo, hi in marks.values())
        rows: dict[tuple[str, str], _Row] = {}
        samples: dict[str, list[tuple[datetime, int, int, Entry]]] = {}  # min-heaps
        progress = Progress("inspect", total=total, unit="records")
        for batch in RangeReader(consumer, topic, marks).batches(500):
            for msg in batch:
                entry = Entry.of(msg)
                reason = shown(entry.reason, _CELL)
                source = shown(entry.source_topic or "(unknown)", _CELL)
                rows.setdefault((reason, source), _Row()).add(entry.failed_at)
                _keep_newest(samples.setdefault(reason, []), entry, args.samples)
            progress.update(len(batch))
        progress.close()
    finally:
        consumer.close()
    now = datetime.now(UTC)
    read = sum(row.count for row in rows.values())
    where = f"{len(parts)} partition{'s' if len(parts) != 1 else ''}"
    if not read:
        print(f"DLQ {topic}: empty ({where}), at {iso(now)}")
        return 0
    print(f"DLQ {topic}: {read:,} records in {where}, at {iso(now)}")
    print()
    _table(rows, now)
    for reason in sorted(samples):
        kept = samples[reason]
        count = sum(row.count for (r, _), row in rows.items() if r == reason)
        print()
        print(f"{reason}: newest {len(kept)} of {count:,}")
        for *_, entry in sorted(kept, reverse=True):
            _sample(entry, topic, args.width)
    return 0


def _keep_newest(heap: list[tuple[datetime, int, int, Entry]], entry: Entry, n: int) -> None:
    """Keep the `n` latest failures (by gr.dlq.failed.at, then offset) in a min-heap."""
    item = (entry.failed_at or _NO_TIME, entry.offset, entry.partition, entry)
    if len(heap) < n:
        heapq.heappush(heap, item)
    elif n and item[:3] > heap[0][:3]:
        heapq.heapreplace(heap, item)


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _when_cell(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    return f"{iso(when)} ({_age((now - when).total_seconds())} ago)"


def _table(rows: dict[tuple[str, str], _Row], now: datetime) -> None:
    header = ("REASON", "SOURCE TOPIC", "RECORDS", "OLDEST FAILURE", "NEWEST FAILURE")
    body = [
        (
            reason,
            source,
            f"{row.count:,}",
            _when_cell(row.oldest, now),
            _when_cell(row.newest, now),
        )
        for (reason, source), row in sorted(rows.items())
    ]
    total = sum(row.count for row in rows.values())
    body.append(("total", "", f"{total:,}", "", ""))
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    for cells in [header, *body]:
        line = "  ".join(
            c.rjust(w) if i == 2 else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        print(line.rstrip())


def _sample(entry: Entry, topic: str, width: int) -> None:
    where = f"{topic}[{entry.partition}]@{entry.offset}"
    source = f"{entry.header('gr.dlq.source.topic', '?')}"
    source += f"[{entry.header('gr.dlq.source.partition', '?', 20)}]"
    source += f"@{entry.header('gr.dlq.source.offset', '?', 20)}"
    parts = [where, f"from {source}", f"failed {entry.header('gr.dlq.failed.at', '-', 40)}"]
    if "gr.dlq.http.status" in entry.dlq:
        parts.append(f"status {entry.header('gr.dlq.http.status', width=10)}")
    parts.append(f"key {shortened(entry.key, 40)}")
    print("  " + "  ".join(parts))
    print(f"      detail  {shortened(entry.dlq.get('gr.dlq.detail', '').encode(), width)}")
    print(f"      value   {shortened(entry.value, width)}")
