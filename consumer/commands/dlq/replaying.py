"""`gr-consumer dlq replay`: send dead-lettered records back, resumably, never where a header says.

Each selected record goes to its source topic, the `gr.dlq.source.topic`
header, only when that is a topic the service consumes (`KAFKA_TOPICS`, its
^regexes included): whoever can write to the DLQ writes that header too, and
must not choose where the operator's replay writes. A record naming any
other topic (the DLQ itself included) is skipped, committed past and counted
by topic name; `--to-topic` sends every record where the operator says
instead, whatever its header. What is sent: the original key and value, the
original headers without the `gr.dlq.*` ones, plus `gr.dlq.replayed.from` =
`<dlq topic>:<partition>:<offset>`. The record's partition in the target
topic is chosen by the producer from its key, as for any new record.

Progress is kept as committed offsets of the replay's own consumer group
(`--group`, default `<KAFKA_GROUP_ID>.dlq-replay`), in chunks: read up to
`--chunk` records, produce them (idempotent, acks=all), flush, and only then
commit, per DLQ partition, what the service's own bookkeeping
(`consumer.offsets`) says: one past the longest run of records that were
acknowledged or skipped. A run that is stopped (SIGINT, SIGTERM,
`--max-records`) finishes its chunk, commits, and exits; the next run with
the same group starts where it stopped and resends nothing. (A hard kill
between a flush and its commit resends at most that chunk.)

Records that the filters (`--reason`, `--since`, `--until`) or the topic
rule leave out are skipped and their offsets committed past, like sent
ones: a resumed run must not read them again, since the offset is one number
per partition and the records after a skipped one may already be sent. So a
group passes over for good what it skipped: to replay those later, use
another `--group`. The filter a run used is stored in the commit's metadata,
and a run with a different filter on the same group says so.

A record that cannot be routed (no `gr.dlq.source.topic`, or a consumed
topic that does not exist) stops its partition there, uncommitted: fix it
(`--to-topic`, create the topic, `--from-offset`) and run again. A failed
delivery stops the run the same way, after committing what was acknowledged
before it in its partition (records after it in the same chunk may have been
delivered too: the next run sends them again).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import Any, Final

from consumer import config
from consumer.commands._progress import Progress, rate
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
from consumer.errors import ConfigError
from consumer.kafka_config import committed_with_retry, producer_config
from consumer.offsets import PartitionOffsets

UNCONSUMED: Final = "not a consumed topic"
_FLUSH_S: Final = 60.0


@dataclass
class Filter:
    reasons: frozenset[str]
    since: datetime | None
    until: datetime | None

    def describe(self) -> str:
        """Stored as the commit's metadata: what this group's runs passed over."""
        parts = []
        if self.reasons:
            parts.append("reason=" + ",".join(sorted(self.reasons)))
        if self.since is not None:
            parts.append(f"since={iso(self.since)}")
        if self.until is not None:
            parts.append(f"until={iso(self.until)}")
        return ";".join(parts) or "all"

    def skip(self, entry: Entry) -> str | None:
        """Why the filters leave this record out, or None to send it."""
        if self.reasons and entry.reason not in self.reasons:
            return "reason filter"
        if self.since is not None or self.until is not None:
            when = entry.failed_at
            if when is None:
                return "time filter"
            if self.since is not None and when < self.since:
                return "time filter"
            if self.until is not None and when >= self.until:
                return "time filter"
        return None


@dataclass
class Outcome:
    sent: Counter[str] = field(default_factory=Counter)  # target topic -> records acknowledged
    skipped: Counter[str] = field(default_factory=Counter)  # why -> records
    unconsumed: Counter[str] = field(default_factory=Counter)  # topic a header named -> records
    stuck: dict[int, str] = field(default_factory=dict)  # partition -> why it stopped there
    committed: dict[int, int] = field(default_factory=dict)
    limited: bool = False


class Stop:
    """SIGINT/SIGTERM set a flag; the replay finishes its chunk, commits, and exits."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signum
        self.event.set()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def replay(args: argparse.Namespace, settings: config.Settings) -> int:
    from confluent_kafka import TopicPartition

    for name in ("from_offset", "to_offset", "max_records"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise ConfigError(f"--{name.replace('_', '-')}", "must not be negative")
    if args.chunk < 1 or args.rate < 0:
        raise ConfigError("--chunk/--rate", "--chunk must be at least 1 and --rate not negative")
    topic = settings.dlq_topic
    if args.to_topic is not None and args.to_topic == topic:
        raise ConfigError("--to-topic", f"names the DLQ itself ({topic})")
    group = args.group or f"{settings.group_id}.dlq-replay"
    filt = Filter(frozenset(args.reason or ()), args.since, args.until)
    consumer = dlq_consumer(settings, group)
    producer: Any = None
    try:
        parts = partitions(consumer, topic)
        chosen = sorted(set(args.partition)) if args.partition else parts
        missing = sorted(set(chosen) - set(parts))
        if missing:
            raise ConfigError("--partition", f"{topic} has no partition {missing}")
        marks = watermarks(consumer, topic, chosen)
        committed = committed_with_retry(consumer, [TopicPartition(topic, p) for p in chosen])
        ranges: dict[int, tuple[int, int]] = {}
        earlier: dict[str, list[str]] = {}  # another filter's commits: filter -> [p]@offset
        for tp in committed:
            lo, hi = marks[tp.partition]
            start = max(lo, tp.offset if tp.offset >= 0 else lo, args.from_offset or 0)
            end = hi if args.to_offset is None else min(hi, args.to_offset + 1)
            ranges[tp.partition] = (start, max(start, end))
            if tp.offset >= 0 and tp.metadata and tp.metadata != filt.describe():
                earlier.setdefault(tp.metadata, []).append(f"[{tp.partition}] {tp.offset}")
        for old_filter, where in earlier.items():
            print(
                f"note: group {group} was committed up to {', '.join(where)} by a run with "
                f"filter {shown(old_filter, 200)}; records that run passed over are not read "
                "again (use another --group for them)",
                file=sys.stderr,
            )
        spans = ", ".join(f"[{p}] {s}..{e - 1}" for p, (s, e) in ranges.items() if s < e)
        verb = "dry run of replay" if args.dry_run else "replay"
        print(
            f"{verb} of {topic} (group {group}, filter {filt.describe()}): "
            f"{spans or 'nothing to read'}",
            flush=True,
        )
        if not args.dry_run:
            producer = _producer(settings)
        started = time.monotonic()
        with Stop() as stop:
            outcome = Replayer(args, settings, filt, consumer, producer, stop).run(ranges)
        return _summary(args, group, outcome, stop, time.monotonic() - started)
    finally:
        consumer.close()
        if producer is not None:
            producer.flush(10)


def _producer(settings: config.Settings) -> Any:
    import os

    from confluent_kafka import Producer

    return Producer(producer_config(settings, **{"client.id": f"gr-dlq-replay-{os.getpid()}"}))


class Replayer:
    """Reads the ranges chunk by chunk: skip, route and produce each record, then settle."""

    def __init__(
        self,
        args: argparse.Namespace,
        settings: config.Settings,
        filt: Filter,
        consumer: Any,
        producer: Any,
        stop: Stop,
    ) -> None:
        self._args = args
        self._settings = settings
        self._topic = settings.dlq_topic
        self._filter = filt
        self._consumer = consumer
        self._producer = producer  # None in a dry run
        self._stop = stop
        self._metadata = filt.describe()
        self._routes: dict[str, str | None] = {}  # target topic -> problem, or None when fine
        self._next_send = time.monotonic()
        self._selected = 0  # records sent (or, in a dry run, that would be)
        # per DLQ partition: what was read, and which of it is finished (acknowledged or skipped)
        self._offsets: dict[int, PartitionOffsets] = {}
        self._failed: dict[int, tuple[int, str]] = {}  # partition -> first failed (offset, error)
        self.outcome = Outcome()

    def run(self, ranges: dict[int, tuple[int, int]]) -> Outcome:
        args = self._args
        chunk = args.chunk if not args.rate else max(1, min(args.chunk, int(args.rate)))
        total = sum(end - start for start, end in ranges.values())
        progress = None
        if not args.dry_run:
            progress = Progress(
                "replay", total=total, unit="records", interval_s=args.progress_interval
            )
        reader = RangeReader(self._consumer, self._topic, ranges)
        for batch in reader.batches(chunk):
            handled = self._handle(batch, reader)
            if progress is not None:
                progress.update(handled)
            if handled and not args.dry_run and not self._settle(reader):
                break
            if self.outcome.limited or self._stop.event.is_set():
                break
        if progress is not None:
            progress.close()
        return self.outcome

    def _handle(self, batch: list[Any], reader: RangeReader) -> int:
        """Skip, route and produce one chunk; returns how many records it read."""
        handled = 0
        for msg in batch:
            if self._stop.event.is_set():
                break
            p = msg.partition()
            if p in self.outcome.stuck:
                continue
            entry = Entry.of(msg)
            target, skipped = self._target(entry)
            limit = self._args.max_records
            sendable = skipped is None and target is not None
            if sendable and limit is not None and self._selected >= limit:
                self.outcome.limited = True
                break
            handled += 1
            offsets = self._offsets.setdefault(p, PartitionOffsets())
            offsets.read(entry.offset)
            if skipped is not None:
                self.outcome.skipped[skipped] += 1
                offsets.finish(entry.offset)
                continue
            if target is None:
                reader.stop(p)  # read and never finished: the partition's commits stop here
                continue
            self._selected += 1
            if self._producer is None:
                self._print_dry(entry, target)
                self.outcome.sent[target] += 1
                continue
            self._produce(entry, target, offsets)
        return handled

    def _target(self, entry: Entry) -> tuple[str | None, str | None]:
        """(where the record goes, or None when it cannot be routed; why it is skipped)."""
        why = self._filter.skip(entry)
        if why is not None:
            return None, why
        target = self._args.to_topic
        if target is None:
            source = entry.source_topic
            if source is None:
                self._stuck(entry, "no gr.dlq.source.topic header (use --to-topic)")
                return None, None
            if not self._settings.consumes(source):
                self.outcome.unconsumed[shown(source, 80)] += 1
                return None, UNCONSUMED
            target = source
        problem = self._route_problem(target)
        if problem is not None:
            self._stuck(entry, problem)
            return None, None
        return target, None

    def _stuck(self, entry: Entry, why: str) -> None:
        self.outcome.stuck[entry.partition] = f"offset {entry.offset}: {why}"

    def _route_problem(self, target: str) -> str | None:
        if target not in self._routes:
            problem = None
            try:
                partitions(self._consumer, target)
            except ConfigError:
                problem = (
                    f"target topic {shown(target)!r} does not exist (create it, or use --to-topic)"
                )
            self._routes[target] = problem
        return self._routes[target]

    def _produce(self, entry: Entry, target: str, offsets: PartitionOffsets) -> None:
        if self._args.rate:
            wait = self._next_send - time.monotonic()
            if wait > 0:
                self._stop.event.wait(wait)
            self._next_send = max(self._next_send, time.monotonic()) + 1 / self._args.rate

        def done(err: Any, _msg: Any) -> None:  # served by poll and flush, on this thread
            if err is None:
                offsets.finish(entry.offset)
                self.outcome.sent[target] += 1
            else:
                self._failed.setdefault(entry.partition, (entry.offset, shown(str(err), 200)))

        while True:
            try:
                self._producer.produce(
                    target,
                    key=entry.key,
                    value=entry.value,
                    headers=entry.replay_headers(self._topic),
                    on_delivery=done,
                )
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _settle(self, reader: RangeReader) -> bool:
        """Flush, then commit each partition's watermark: one past the longest run of
        records acknowledged or skipped. Returns False when a delivery failed."""
        from confluent_kafka import KafkaException, TopicPartition

        left = self._producer.flush(_FLUSH_S)
        for p, (offset, error) in self._failed.items():
            self.outcome.stuck[p] = f"offset {offset}: delivery failed: {error}"
            reader.stop(p)
        failed = bool(self._failed)
        self._failed = {}
        if left:
            for p, offsets in self._offsets.items():
                head, last = offsets.committable, offsets.last_read
                if p in self.outcome.stuck or head is None or last is None or head > last:
                    continue
                self.outcome.stuck[p] = f"offset {head}: not acknowledged within {_FLUSH_S:.0f}s"
                reader.stop(p)
                failed = True
        commits = {p: o for p, offsets in self._offsets.items() if (o := offsets.needs_commit())}
        if commits:
            tps = [
                TopicPartition(self._topic, p, off, metadata=self._metadata)
                for p, off in sorted(commits.items())
            ]
            for tp in self._consumer.commit(offsets=tps, asynchronous=False):
                if tp.error is not None:
                    raise KafkaException(tp.error)
            for p, off in commits.items():
                self._offsets[p].mark_committed(off)
            self.outcome.committed.update(commits)
        return not failed

    def _print_dry(self, entry: Entry, target: str) -> None:
        print(
            f"would send {self._topic}[{entry.partition}]@{entry.offset} -> {target}  "
            f"reason {shown(entry.reason, 40)}  failed {entry.header('gr.dlq.failed.at', '-', 40)}  "
            f"key {shortened(entry.key, 40)}  value {shortened(entry.value, 60)}"
        )


def _summary(
    args: argparse.Namespace, group: str, outcome: Outcome, stop: Stop, elapsed: float
) -> int:
    sent = sum(outcome.sent.values())
    targets = ", ".join(f"{t} {n:,}" for t, n in sorted(outcome.sent.items()))
    label = "selected  " if args.dry_run else "replayed  "
    print(f"{label} {sent:,} records{': ' + targets if targets else ''}")
    if outcome.skipped:
        skipped = ", ".join(f"{k} {n:,}" for k, n in sorted(outcome.skipped.items()))
        print(f"skipped    {sum(outcome.skipped.values()):,} records ({skipped})")
    if outcome.unconsumed:
        named = ", ".join(f"{t} {n:,}" for t, n in sorted(outcome.unconsumed.items()))
        print(
            f"not sent   {sum(outcome.unconsumed.values()):,} records name a topic this service "
            f"does not consume ({named}); a header never picks the target: --to-topic does"
        )
    for p, why in sorted(outcome.stuck.items()):
        print(f"stopped    partition {p} at {why}")
    if args.dry_run:
        print("dry run    nothing sent, nothing committed")
    elif outcome.committed:
        offsets = ", ".join(f"[{p}] {off}" for p, off in sorted(outcome.committed.items()))
        print(f"committed  {offsets} (group {group})")
    if outcome.limited:
        print(f"limit      --max-records {args.max_records} reached; run again to go on")
    if stop.signal is not None:
        name = signal.Signals(stop.signal).name
        print(f"signal     {name}: stopped after committing the chunk in hand; run again to go on")
    print(f"time       {elapsed:.1f}s ({rate(sent, elapsed)})")
    if outcome.stuck:
        return 1
    if stop.signal is not None:
        return 128 + stop.signal
    return 0
