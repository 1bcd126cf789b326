"""`gr-consumer run`: the service, configured by the environment."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from consumer import config, redaction, rotation
from consumer.errors import ConfigError
from consumer.kafka_config import validate_librdkafka

log = logging.getLogger("consumer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "All settings come from the environment; see `gr-consumer check-config`."


def run(args: argparse.Namespace) -> int:
    try:
        settings = config.load(os.environ)
        validate_librdkafka(settings)
    except ConfigError as exc:
        print(f"configuration error: {redaction.scrub(str(exc))}", file=sys.stderr)
        return 2
    return serve(settings)


def serve(settings: config.Settings) -> int:
    """Run a worker with its ops endpoints until SIGTERM/SIGINT; returns the exit code."""
    from consumer.kafka_access import check_kafka_access
    from consumer.observe import Health, Metrics, OpsServer, setup_logging
    from consumer.worker import Worker, tune_gc

    secrets = [settings.api_key.read().reveal(), *settings.librdkafka_secrets().values()]
    setup_logging(settings.log_level, settings.log_format, secrets)
    if settings.ignored_variables:
        log.info(
            "ignoring KAFKA_* variables a kubelet sets for Services (not librdkafka settings)",
            extra={"variables": list(settings.ignored_variables)},
        )
    # SIGTERM before the worker has its own handlers: stop cleanly, not die by the signal
    early_stop = threading.Event()

    def stop_early(_signum: int, _frame: FrameType | None) -> None:
        early_stop.set()

    signal.signal(signal.SIGTERM, stop_early)
    signal.signal(signal.SIGINT, stop_early)
    try:
        check_kafka_access(settings, stop=early_stop.is_set)
    except ConfigError as exc:
        log.error("configuration error", extra={"variable": exc.variable, "problem": exc.problem})
        print(f"configuration error: {redaction.scrub(str(exc))}", file=sys.stderr)
        return 2
    metrics, health = Metrics(), Health()
    ops = OpsServer(settings.http_port, metrics, health)
    ops.start()
    log.info("ops endpoints listening", extra={"port": ops.port})
    worker = Worker(settings, metrics=metrics, health=health)
    worker.install_signal_handlers()
    if early_stop.is_set():
        worker.request_stop()  # told to stop while starting: nothing read, nothing to drain
    # A rotated SASL password file: stop as on SIGTERM, to be restarted with it (rotation.py).
    watching = rotation.watch(settings, lambda _variable: worker.request_stop())
    tune_gc()
    try:
        return worker.run()
    finally:
        if watching is not None:
            watching.set()
        ops.stop()
