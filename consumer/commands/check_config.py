"""`gr-consumer check-config`: validate the environment, print it with secrets redacted."""

from __future__ import annotations

import argparse
import os
import sys

import orjson

from consumer import config, redaction
from consumer.errors import ConfigError
from consumer.kafka_config import validate_librdkafka


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-librdkafka",
        action="store_true",
        help="skip letting librdkafka judge the KAFKA_* pass-through settings",
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = config.load(os.environ)
        if not args.no_librdkafka:
            validate_librdkafka(settings)
    except ConfigError as exc:
        print(f"configuration error: {redaction.scrub(str(exc))}", file=sys.stderr)
        return 2
    sys.stdout.write(
        orjson.dumps(
            settings.redacted(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
        ).decode()
        + "\n"
    )
    return 0
