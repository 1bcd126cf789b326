"""`gr-consumer publish FILE|-`: validate JSON-lines events and produce them.

Each non-blank line of FILE (or of stdin, for `-`) is one event, checked by
the consumer's own decoder and produced byte for byte (surrounding blanks
trimmed) with `GameRebellionKafka`: idempotent, acks=all, keyed by
`identifiers.player_id`. A bad line is reported on stderr with its line
number and reason, and the rest go on (`--fail-fast` stops at the first).
Progress goes to stderr (a bar on a terminal, a plain line every
`--progress-interval` seconds elsewhere); the summary to stdout.

Exit codes: 0 every event was published; 1 a line was refused, a delivery
failed, or `--fail-fast` stopped the run; 2 configuration or usage error (a
`KAFKA_*` variable, a missing topic, an unreadable file); 130 interrupted
(Ctrl-C): what was read before is flushed first.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from typing import BinaryIO

from consumer.commands._progress import Progress, rate
from consumer.errors import ConfigError
from consumer.kafka_config import validate_librdkafka
from consumer.producer import (
    DeliveryError,
    DeliveryFuture,
    GameRebellionKafka,
    InvalidEventError,
    first_plain_topic,
    kafka_settings,
)

_SHOWN_LINE_NUMBERS = 10
_SHOWN_DELIVERY_ERRORS = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE|-", help="JSON-lines file; - reads stdin")
    parser.add_argument(
        "--topic",
        type=_topic_name,
        help="topic to produce to (default: the first plain topic of KAFKA_TOPICS)",
    )
    parser.add_argument(
        "--fail-fast", action="store_true", help="stop at the first bad line (exit 1)"
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (default 5)",
    )
    parser.epilog = (
        "Exit codes: 0 all published; 1 a line refused or a delivery failed; "
        "2 configuration or usage error; 130 interrupted."
    )


def _topic_name(text: str) -> str:
    if not text or text.startswith("^"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a topic name")
    return text


class _Tally:
    """Delivery outcomes, counted from the producer's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.published = 0
        self.failed: list[tuple[int, DeliveryError]] = []

    def watch(self, future: DeliveryFuture, line_no: int) -> None:
        future.add_done_callback(lambda f: self._done(f, line_no))

    def fail(self, line_no: int, error: DeliveryError) -> None:
        with self._lock:
            self.failed.append((line_no, error))

    def _done(self, future: DeliveryFuture, line_no: int) -> None:
        error = future.exception()
        if error is None:
            with self._lock:
                self.published += 1
        else:
            assert isinstance(error, DeliveryError)
            self.fail(line_no, error)


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:_SHOWN_LINE_NUMBERS])
    more = len(numbers) - _SHOWN_LINE_NUMBERS
    return f"line{'s' if len(numbers) > 1 else ''} {shown}" + (
        f", +{more} more" if more > 0 else ""
    )


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counter.items()))


def _open(path: str) -> tuple[BinaryIO, int | None]:
    if path == "-":
        return sys.stdin.buffer, None
    source = open(path, "rb")  # noqa: SIM115 - closed by run()
    return source, os.fstat(source.fileno()).st_size


def run(args: argparse.Namespace) -> int:
    try:
        settings = kafka_settings(os.environ)
        validate_librdkafka(settings)
        topic = args.topic or first_plain_topic(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        source, size = _open(args.file)
    except OSError as exc:
        print(f"cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    with source:
        client = GameRebellionKafka.from_settings(settings, topic=topic)
        problem = _topic_problem(client, "--topic" if args.topic else "KAFKA_TOPICS")
        if problem:
            print(f"configuration error: {problem}", file=sys.stderr)
            client.close(0)
            return 2
        return _publish(args, client, source, size)


def _topic_problem(client: GameRebellionKafka, variable: str) -> str | None:
    try:
        if client.topic_exists():
            return None
    except DeliveryError as exc:
        return f"KAFKA_BOOTSTRAP_SERVERS: {exc}"
    return f"{variable} names topic {client.topic!r}, which does not exist on the cluster"


def _publish(
    args: argparse.Namespace, client: GameRebellionKafka, source: BinaryIO, size: int | None
) -> int:
    started = time.monotonic()
    tally = _Tally()
    rejected: Counter[str] = Counter()
    rejected_lines: list[int] = []
    stopped_at: int | None = None
    interrupted = False
    lines = 0
    read = 0
    progress = Progress("publish", total=size, unit="lines", interval_s=args.progress_interval)
    try:
        for line_no, raw in enumerate(source, 1):
            read += len(raw)
            line = raw.strip()
            if not line:
                continue
            lines += 1
            try:
                tally.watch(client.publish_json(line), line_no)
            except InvalidEventError as exc:
                rejected[exc.reason] += 1
                rejected_lines.append(line_no)
                print(f"line {line_no}: {exc.reason}: {exc.detail}", file=sys.stderr)
            except DeliveryError as exc:
                tally.fail(line_no, exc)
            progress.update(1, done=read)
            if args.fail_fast and (rejected_lines or tally.failed):
                stopped_at = line_no
                break
    except KeyboardInterrupt:
        interrupted = True
    progress.close()
    client.close()
    elapsed = time.monotonic() - started

    print(
        f"published  {tally.published:,} of {lines:,} lines to {client.topic} "
        f"in {elapsed:.1f}s ({rate(tally.published, elapsed)})"
    )
    if rejected:
        print(
            f"rejected   {_plural(sum(rejected.values()), 'line')}: {_counts(rejected)} "
            f"({_lines(rejected_lines)})"
        )
    if tally.failed:
        failed = sorted(tally.failed, key=lambda item: item[0])
        for line_no, error in failed[:_SHOWN_DELIVERY_ERRORS]:
            print(f"line {line_no}: delivery failed: {error}", file=sys.stderr)
        codes = Counter(error.code or "error" for _, error in failed)
        print(
            f"failed     {_plural(len(failed), 'event')} not delivered: {_counts(codes)} "
            f"({_lines([n for n, _ in failed])})"
        )
    if stopped_at is not None:
        print(f"stopped    at line {stopped_at} (--fail-fast); the lines after it were not read")
    if interrupted:
        print("interrupted: the lines after the last one counted were not read")
        return 130
    return 1 if rejected or tally.failed or stopped_at is not None else 0
