"""`gr-consumer dlq inspect|replay`: look into the dead-letter topic, and re-drive it.

    reading.py     the DLQ's records and headers, ranges of offsets read with assign,
                   and `shown`, which makes what a record carries safe to print
    inspecting.py  `inspect`: counts by reason and source topic, ages, samples
    replaying.py   `replay`: to the topics the service consumes (or --to-topic),
                   resumable through the committed offsets of its own group

Both read `KAFKA_DLQ_TOPIC` with the same `KAFKA_*` settings as the service,
loaded for Kafka only (`config.load_kafka`: no API key is needed or read).

Exit codes: 0 done; 1 a record could not be routed or delivered; 2
configuration or usage error; 128 + the signal number (130 for Ctrl-C, 143
for SIGTERM) when a signal stopped a replay after committing its progress.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Final, get_args

from consumer import config, redaction
from consumer.commands.dlq.inspecting import inspect
from consumer.commands.dlq.replaying import replay
from consumer.errors import ConfigError, GrError
from consumer.events import PoisonReason
from consumer.kafka_config import validate_librdkafka

REASONS: Final = (*get_args(PoisonReason), "api_rejected")
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
    ins.set_defaults(_action=inspect)

    rep = sub.add_parser(
        "replay",
        help="re-drive DLQ records to their source topic",
        description="Re-drive records of KAFKA_DLQ_TOPIC to their source topic "
        "(gr.dlq.source.topic) when the service consumes it (KAFKA_TOPICS), or to --to-topic; "
        "resumable through the committed offsets of its own group.",
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
        "--to-topic",
        metavar="TOPIC",
        help="send every record here, whatever its gr.dlq.source.topic names",
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
    rep.set_defaults(_action=replay)


def run(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    try:
        settings = config.load_kafka(os.environ)
        validate_librdkafka(settings)
        result: int = args._action(args, settings)
    except ConfigError as exc:
        print(f"configuration error: {redaction.scrub(str(exc))}", file=sys.stderr)
        return 2
    except (KafkaException, GrError) as exc:
        print(f"error: {redaction.scrub(str(exc))}", file=sys.stderr)
        return 1
    return result


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
