"""`gr-consumer dlq inspect|replay`: look into the dead-letter topic, and re-drive it.

Both read `KAFKA_DLQ_TOPIC` with `assign` (no group membership, no rebalance)
and the same `KAFKA_*` settings as the service. Each reads the records that
are in the topic when it starts (up to the high watermarks then), so records
dead-lettered meanwhile (a replayed record failing again, say) wait for the
next run instead of looping.

`inspect` commits nothing, ever: a table by reason and source topic with the
oldest and newest `gr.dlq.failed.at`, then the newest few records of each
reason, values shortened.

`replay` sends each selected record to its source topic (`gr.dlq.source.topic`,
or `--to-topic`): the original key and value, the original headers without
the `gr.dlq.*` ones, plus `gr.dlq.replayed.from` = `<dlq topic>:<partition>:<offset>`.
The record's partition in the target topic is chosen by the producer from
its key, as for any new record. Progress is kept as committed offsets of
its own consumer group (`--group`, default `<KAFKA_GROUP_ID>.dlq-replay`), in
chunks: read up to `--chunk` records, produce them (idempotent, acks=all),
flush, and only then commit, per DLQ partition, the offset after the last
record whose produce was acknowledged. A run that is stopped (SIGINT,
SIGTERM, `--max-records`) finishes its chunk, commits, and exits; the next
run with the same group starts where it stopped and resends nothing. (A
hard kill between a flush and its commit resends at most that chunk.)

Records that the filters (`--reason`, `--since`, `--until`) leave out are
skipped and their offsets committed past, like sent ones: a resumed run must
not read them again, since the offset is one number per partition and the
records after a skipped one may already be sent. So a group passes over for
good what its filters excluded: to replay other reasons later, use another
`--group`. The filter a run used is stored in the commit's metadata, and a
run with a different filter on the same group says so.

A record that cannot be routed (no `gr.dlq.source.topic`, a target that does
not exist, or the DLQ itself) stops its partition there, uncommitted: fix
it (`--to-topic`, create the topic, `--from-offset`) and run again. A failed
delivery stops the run the same way, after committing what was acknowledged
before it in its partition (records after it in the same chunk may have been
delivered too: the next run sends them again).

Exit codes: 0 done; 1 a record could not be routed or delivered; 2
configuration or usage error; 128 + the signal number (130 for Ctrl-C, 143
for SIGTERM) when a signal stopped a replay after committing its progress.
"""

from __future__ import annotations

import argparse
import heapq
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Final, get_args

from consumer import config
from consumer.commands._progress import Progress, rate
from consumer.dlq import DLQ_PREFIX
from consumer.errors import ConfigError, GrError
from consumer.events import PoisonReason
from consumer.kafka_config import (
    committed_with_retry,
    consumer_config,
    producer_config,
    validate_librdkafka,
)
from consumer.producer import kafka_settings

REASONS: Final = (*get_args(PoisonReason), "api_rejected")
REPLAYED_FROM: Final = "gr.dlq.replayed.from"
_METADATA_TIMEOUT_S: Final = 10.0
_STALL_S: Final = 30.0  # no record while some are still expected: give up reading
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dlq_action", metavar="ACTION", required=True)

    ins = sub.add_parser(
        "inspect",
        help="what is in the DLQ, by reason, source topic and age (commits nothing)",
        description="What is in KAFKA_DLQ_TOPIC, by reason, source topic and age, with sample "
        "records. Reads with assign and commits nothing.",
    )
    ins.add_argument(
        "--samples", type=int, default=3, metavar="N", help="records shown per reason (default 3)"
    )
    ins.add_argument(
        "--width", type=int, default=100, metavar="CHARS", help="values cut to this (default 100)"
    )
    ins.set_defaults(_action=_inspect)

    rep = sub.add_parser(
        "replay",
        help="re-drive DLQ records to their source topic",
        description="Re-drive records of KAFKA_DLQ_TOPIC to their source topic "
        "(gr.dlq.source.topic), resumable through the committed offsets of its own group.",
        epilog="Exit codes: 0 done; 1 a record could not be routed or delivered; 2 "
        "configuration or usage error; 128+N when signal N stopped it (progress committed).",
    )
    rep.add_argument(
        "--reason",
        action="append",
        choices=REASONS,
        help="only records dead-lettered for this reason (repeatable)",
    )
    rep.add_argument(
        "--since",
        type=_when,
        metavar="TIME",
        help="only records that failed at or after TIME: ISO-8601 (UTC unless it says) or "
        "an age like 30m, 2h, 7d",
    )
    rep.add_argument(
        "--until", type=_when, metavar="TIME", help="only records that failed before TIME"
    )
    rep.add_argument(
        "--partition",
        type=int,
        action="append",
        metavar="P",
        help="only this DLQ partition (repeatable)",
    )
    rep.add_argument(
        "--from-offset", type=int, metavar="N", help="start at DLQ offset N (in each partition)"
    )
    rep.add_argument(
        "--to-offset", type=int, metavar="N", help="stop after DLQ offset N (in each partition)"
    )
    rep.add_argument(
        "--to-topic", metavar="TOPIC", help="send every record here instead of its source topic"
    )
    rep.add_argument(
        "--group", help="consumer group keeping progress (default <KAFKA_GROUP_ID>.dlq-replay)"
    )
    rep.add_argument(
        "--dry-run", action="store_true", help="print what would be sent; send and commit nothing"
    )
    rep.add_argument(
        "--max-records", type=int, metavar="N", help="stop after sending N records (resumable)"
    )
    rep.add_argument(
        "--rate", type=float, default=0.0, metavar="PER_S", help="at most this many records/s"
    )
    rep.add_argument(
        "--chunk", type=int, default=500, metavar="N", help="records per produce-flush-commit"
    )
    rep.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (default 5)",
    )
    rep.set_defaults(_action=_replay)


def run(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    try:
        settings = kafka_settings(os.environ)
        validate_librdkafka(settings)
        result: int = args._action(args, settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (KafkaException, GrError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return result


# ---- parsing -----------------------------------------------------------------------


def _when(text: str) -> datetime:
    """An ISO-8601 time (naive means UTC) or an age (`90m`: 90 minutes ago)."""
    match = _DURATION.match(text.strip())
    if match:
        amount, unit = match.groups()
        return datetime.now(UTC) - timedelta(**{_UNITS[unit]: float(amount)})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO-8601 time nor an age like 30m, 2h, 7d"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


# ---- DLQ records -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One DLQ record with its gr.dlq.* headers read."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    dlq: dict[str, str]  # the gr.dlq.* headers, decoded (the last of a repeated name)

    @classmethod
    def of(cls, msg: Any) -> Entry:
        headers: list[tuple[str, bytes | None]] = list(msg.headers() or [])
        dlq = {
            k: (v or b"").decode("utf-8", "replace") for k, v in headers if k.startswith(DLQ_PREFIX)
        }
        return cls(msg.partition(), msg.offset(), msg.key(), msg.value(), headers, dlq)

    @property
    def reason(self) -> str:
        return self.dlq.get("gr.dlq.reason") or "(no reason header)"

    @property
    def source_topic(self) -> str | None:
        return self.dlq.get("gr.dlq.source.topic") or None

    @property
    def failed_at(self) -> datetime | None:
        raw = self.dlq.get("gr.dlq.failed.at")
        if not raw:
            return None
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            return None
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when

    def replay_headers(self, dlq_topic: str) -> list[tuple[str, bytes | None]]:
        kept = [(k, v) for k, v in self.headers if not k.startswith(DLQ_PREFIX)]
        kept.append((REPLAYED_FROM, f"{dlq_topic}:{self.partition}:{self.offset}".encode()))
        return kept


def _shorten(data: bytes | None, width: int) -> str:
    if data is None:
        return "(none)"
    if not data:
        return "(empty)"
    text = data.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) <= width:
        return text
    return f"{text[: max(0, width - 3)]}... ({len(data):,} bytes)"


# ---- reading the DLQ ---------------------------------------------------------------


def _consumer(settings: config.Settings, group: str) -> Any:
    from confluent_kafka import Consumer

    overrides = {
        "group.id": group,
        "enable.partition.eof": True,
        "client.id": f"gr-consumer-dlq-{os.getpid()}",
    }
    return Consumer(consumer_config(settings, **overrides))


def _partitions(client: Any, topic: str) -> list[int]:
    metadata = client.list_topics(topic, timeout=_METADATA_TIMEOUT_S)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise ConfigError("KAFKA_DLQ_TOPIC", f"names topic {topic!r}, which does not exist")
    return sorted(found.partitions)


def _watermarks(consumer: Any, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
    from confluent_kafka import TopicPartition

    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=_METADATA_TIMEOUT_S)
        for p in partitions
    }


class _RangeReader:
    """Reads offsets [start, end) of each partition with `assign`; commits nothing itself."""

    def __init__(self, consumer: Any, topic: str, ranges: dict[int, tuple[int, int]]) -> None:
        from confluent_kafka import TopicPartition

        self._consumer = consumer
        self._ends = {p: end for p, (_, end) in ranges.items()}
        self.active = {p for p, (start, end) in ranges.items() if start < end}
        consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in sorted(self.active)])
        self._last_record = time.monotonic()

    def batches(self, size: int) -> Iterator[list[Any]]:
        """Lists of records in range (in offset order per partition), one per poll, until
        every partition is read to its end or stopped."""
        from confluent_kafka import KafkaError, KafkaException

        while self.active:
            out: list[Any] = []
            for msg in self._consumer.consume(size, 0.5):
                p = msg.partition()
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(err)
                    self.active.discard(p)  # at the end of the log, so past our range
                    continue
                if p not in self.active:
                    continue
                if msg.offset() >= self._ends[p] - 1:
                    self.active.discard(p)
                    if msg.offset() >= self._ends[p]:
                        continue
                out.append(msg)
            now = time.monotonic()
            if out:
                self._last_record = now
            elif self.active and now - self._last_record > _STALL_S:
                raise GrError(
                    f"no record for {_STALL_S:.0f}s from partitions {sorted(self.active)} "
                    "although their offsets say more are there"
                )
            yield out  # possibly empty: the caller may stop between polls

    def stop(self, partition: int) -> None:
        self.active.discard(partition)


# ---- inspect -----------------------------------------------------------------------


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


def _inspect(args: argparse.Namespace, settings: config.Settings) -> int:
    topic = settings.dlq_topic
    consumer = _consumer(settings, f"{settings.group_id}.dlq-inspect")
    try:
        partitions = _partitions(consumer, topic)
        marks = _watermarks(consumer, topic, partitions)
        total = sum(hi - lo for lo, hi in marks.values())
        rows: dict[tuple[str, str], _Row] = {}
        samples: dict[str, list[tuple[datetime, int, int, Entry]]] = {}  # min-heaps
        progress = Progress("inspect", total=total, unit="records")
        for batch in _RangeReader(consumer, topic, marks).batches(500):
            for msg in batch:
                entry = Entry.of(msg)
                source = entry.source_topic or "(unknown)"
                rows.setdefault((entry.reason, source), _Row()).add(entry.failed_at)
                _keep_newest(samples.setdefault(entry.reason, []), entry, args.samples)
            progress.update(len(batch))
        progress.close()
    finally:
        consumer.close()
    now = datetime.now(UTC)
    read = sum(row.count for row in rows.values())
    where = f"{len(partitions)} partition{'s' if len(partitions) != 1 else ''}"
    if not read:
        print(f"DLQ {topic}: empty ({where}), at {_iso(now)}")
        return 0
    print(f"DLQ {topic}: {read:,} records in {where}, at {_iso(now)}")
    print()
    _table(rows, now)
    for reason in sorted(samples):
        shown = samples[reason]
        count = sum(row.count for (r, _), row in rows.items() if r == reason)
        print()
        print(f"{reason}: newest {len(shown)} of {count:,}")
        for *_, entry in sorted(shown, reverse=True):
            _sample(entry, topic, args.width)
    return 0


_NO_TIME: Final = datetime.min.replace(tzinfo=UTC)


def _keep_newest(heap: list[tuple[datetime, int, int, Entry]], entry: Entry, n: int) -> None:
    """Keep the `n` latest failures (by gr.dlq.failed.at, then offset) in a min-heap."""
    item = (entry.failed_at or _NO_TIME, entry.offset, entry.partition, entry)
    if len(heap) < n:
        heapq.heappush(heap, item)
    elif n and item[:3] > heap[0][:3]:
        heapq.heapreplace(heap, item)


def _when_cell(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    return f"{_iso(when)} ({_age((now - when).total_seconds())} ago)"


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
    h = entry.dlq
    where = f"{topic}[{entry.partition}]@{entry.offset}"
    source = f"{h.get('gr.dlq.source.topic', '?')}[{h.get('gr.dlq.source.partition', '?')}]"
    source += f"@{h.get('gr.dlq.source.offset', '?')}"
    parts = [where, f"from {source}", f"failed {h.get('gr.dlq.failed.at', '-')}"]
    if "gr.dlq.http.status" in h:
        parts.append(f"status {h['gr.dlq.http.status']}")
    parts.append(f"key {_shorten(entry.key, 40)}")
    print("  " + "  ".join(parts))
    print(f"      detail  {_shorten(h.get('gr.dlq.detail', '').encode(), width)}")
    print(f"      value   {_shorten(entry.value, width)}")


# ---- replay ------------------------------------------------------------------------


@dataclass
class _Filter:
    reasons: frozenset[str]
    since: datetime | None
    until: datetime | None

    def describe(self) -> str:
        """Stored as the commit's metadata: what this group's runs passed over."""
        parts = []
        if self.reasons:
            parts.append("reason=" + ",".join(sorted(self.reasons)))
        if self.since is not None:
            parts.append(f"since={_iso(self.since)}")
        if self.until is not None:
            parts.append(f"until={_iso(self.until)}")
        return ";".join(parts) or "all"

    def skip(self, entry: Entry) -> str | None:
        """Why the filters leave this record out, or None to send it."""
        if self.reasons and entry.reason not in self.reasons:
            return "reason"
        if self.since is not None or self.until is not None:
            when = entry.failed_at
            if when is None:
                return "time"
            if self.since is not None and when < self.since:
                return "time"
            if self.until is not None and when >= self.until:
                return "time"
        return None


@dataclass
class _Outcome:
    sent: Counter[str] = field(default_factory=Counter)  # target topic -> records acknowledged
    skipped: Counter[str] = field(default_factory=Counter)  # filter -> records
    stuck: dict[int, str] = field(default_factory=dict)  # partition -> why it stopped there
    committed: dict[int, int] = field(default_factory=dict)
    limited: bool = False


class _Stop:
    """SIGINT/SIGTERM set a flag; the replay finishes its chunk, commits, and exits."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signum
        self.event.set()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _replay(args: argparse.Namespace, settings: config.Settings) -> int:
    from confluent_kafka import TopicPartition

    for name in ("from_offset", "to_offset", "max_records"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise ConfigError(f"--{name.replace('_', '-')}", "must not be negative")
    if args.chunk < 1 or args.rate < 0:
        raise ConfigError("--chunk/--rate", "--chunk must be at least 1 and --rate not negative")
    topic = settings.dlq_topic
    group = args.group or f"{settings.group_id}.dlq-replay"
    filt = _Filter(frozenset(args.reason or ()), args.since, args.until)
    consumer = _consumer(settings, group)
    producer: Any = None
    try:
        partitions = _partitions(consumer, topic)
        chosen = sorted(set(args.partition)) if args.partition else partitions
        missing = sorted(set(chosen) - set(partitions))
        if missing:
            raise ConfigError("--partition", f"{topic} has no partition {missing}")
        marks = _watermarks(consumer, topic, chosen)
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
                f"filter {old_filter}; records that run passed over are not read again "
                "(use another --group for them)",
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
        with _Stop() as stop:
            outcome = _Replayer(args, topic, filt, consumer, producer, stop).run(ranges)
        return _summary(args, group, outcome, stop, time.monotonic() - started)
    finally:
        consumer.close()
        if producer is not None:
            producer.flush(10)


def _producer(settings: config.Settings) -> Any:
    from confluent_kafka import Producer

    return Producer(producer_config(settings, **{"client.id": f"gr-dlq-replay-{os.getpid()}"}))


class _Replayer:
    def __init__(
        self,
        args: argparse.Namespace,
        topic: str,
        filt: _Filter,
        consumer: Any,
        producer: Any,
        stop: _Stop,
    ) -> None:
        self._args = args
        self._topic = topic
        self._filter = filt
        self._consumer = consumer
        self._producer = producer  # None in a dry run
        self._stop = stop
        self._metadata = filt.describe()
        self._routes: dict[str, str | None] = {}  # target topic -> problem, or None when fine
        self._next_send = time.monotonic()
        self._selected = 0  # records sent (or, in a dry run, that would be)
        self.outcome = _Outcome()

    def run(self, ranges: dict[int, tuple[int, int]]) -> _Outcome:
        args = self._args
        chunk = args.chunk if not args.rate else max(1, min(args.chunk, int(args.rate)))
        total = sum(end - start for start, end in ranges.values())
        progress = None
        if not args.dry_run:
            progress = Progress(
                "replay", total=total, unit="records", interval_s=args.progress_interval
            )
        reader = _RangeReader(self._consumer, self._topic, ranges)
        for batch in reader.batches(chunk):
            handled = self._handle(batch, reader)
            if progress is not None:
                progress.update(len(handled))
            if handled and not args.dry_run and not self._settle(handled, reader):
                break
            if self.outcome.limited or self._stop.event.is_set():
                break
        if progress is not None:
            progress.close()
        return self.outcome

    def _handle(
        self, batch: list[Any], reader: _RangeReader
    ) -> list[tuple[Entry, list[Any] | None]]:
        """Skip, route and produce one chunk; returns each handled record with its delivery box."""
        handled: list[tuple[Entry, list[Any] | None]] = []
        for msg in batch:
            if self._stop.event.is_set():
                break
            p = msg.partition()
            if p in self.outcome.stuck:
                continue
            entry = Entry.of(msg)
            why = self._filter.skip(entry)
            if why is not None:
                self.outcome.skipped[why] += 1
                handled.append((entry, None))
                continue
            target = self._args.to_topic or entry.source_topic
            problem = self._route_problem(target)
            if problem is not None:
                self.outcome.stuck[p] = f"offset {entry.offset}: {problem}"
                reader.stop(p)
                continue
            assert target is not None
            limit = self._args.max_records
            if limit is not None and self._selected >= limit:
                self.outcome.limited = True
                break
            self._selected += 1
            if self._producer is None:
                self._print_dry(entry, target)
                self.outcome.sent[target] += 1
                handled.append((entry, None))
                continue
            handled.append((entry, self._produce(entry, target)))
        return handled

    def _route_problem(self, target: str | None) -> str | None:
        if target is None:
            return "no gr.dlq.source.topic header (use --to-topic)"
        if target == self._topic:
            return f"the target is the DLQ itself ({target})"
        if target not in self._routes:
            problem = None
            try:
                _partitions(self._consumer, target)
            except ConfigError:
                problem = f"target topic {target!r} does not exist (create it, or use --to-topic)"
            self._routes[target] = problem
        return self._routes[target]

    def _produce(self, entry: Entry, target: str) -> list[Any]:
        if self._args.rate:
            wait = self._next_send - time.monotonic()
            if wait > 0:
                self._stop.event.wait(wait)
            self._next_send = max(self._next_send, time.monotonic()) + 1 / self._args.rate
        box: list[Any] = []  # the delivery callback puts the error (None when acknowledged) here

        def done(err: Any, _msg: Any) -> None:
            box.append(err)

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
        return box

    def _settle(self, handled: list[tuple[Entry, list[Any] | None]], reader: _RangeReader) -> bool:
        """Flush, then commit per partition up to the first record not acknowledged.
        Returns False when a delivery failed (the run stops there)."""
        from confluent_kafka import KafkaException, TopicPartition

        self._producer.flush(60)
        commits: dict[int, int] = {}
        failed: set[int] = set()  # partitions with a failed delivery in this chunk
        for entry, box in handled:
            p = entry.partition
            if p in failed:
                continue  # nothing after a failure is committed, delivered or not
            if box is not None:
                error = box[0] if box else "not acknowledged within 60s"
                if error is not None:
                    self.outcome.stuck[p] = f"offset {entry.offset}: delivery failed: {error}"
                    reader.stop(p)
                    failed.add(p)
                    continue
                target = self._args.to_topic or entry.source_topic
                assert target is not None
                self.outcome.sent[target] += 1
            commits[p] = entry.offset + 1
        if commits:
            offsets = [
                TopicPartition(self._topic, p, off, metadata=self._metadata)
                for p, off in sorted(commits.items())
            ]
            for tp in self._consumer.commit(offsets=offsets, asynchronous=False):
                if tp.error is not None:
                    raise KafkaException(tp.error)
            self.outcome.committed.update(commits)
        return not failed

    def _print_dry(self, entry: Entry, target: str) -> None:
        print(
            f"would send {self._topic}[{entry.partition}]@{entry.offset} -> {target}  "
            f"reason {entry.reason}  failed {entry.dlq.get('gr.dlq.failed.at', '-')}  "
            f"key {_shorten(entry.key, 40)}  value {_shorten(entry.value, 60)}"
        )


def _summary(
    args: argparse.Namespace, group: str, outcome: _Outcome, stop: _Stop, elapsed: float
) -> int:
    sent = sum(outcome.sent.values())
    targets = ", ".join(f"{t} {n:,}" for t, n in sorted(outcome.sent.items()))
    label = "selected  " if args.dry_run else "replayed  "
    print(f"{label} {sent:,} records{': ' + targets if targets else ''}")
    if outcome.skipped:
        skipped = ", ".join(f"{k} filter {n:,}" for k, n in sorted(outcome.skipped.items()))
        print(f"skipped    {sum(outcome.skipped.values()):,} records ({skipped})")
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
