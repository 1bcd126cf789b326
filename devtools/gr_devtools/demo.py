"""`gr-consumer demo`: the whole flow on this machine, with no set-up.

A Kafka cluster (KAFKA_BOOTSTRAP_SERVERS, else Docker, else a local broker),
the S2S API simulator with a few faults switched on, sample events with some
poison among them, one worker until everything is committed, and a summary.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter

from confluent_kafka import Consumer, Producer, TopicPartition

from consumer import config
from gr_devtools import samples
from gr_devtools.kafka_local import create_topic, open_cluster
from gr_devtools.simulator import Simulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=20_000, help="records to publish")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the topic")
    parser.add_argument("--error-rate", type=float, default=0.02, help="share of API 500s")
    parser.add_argument("--timeout", type=float, default=300, help="give up after seconds")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    logging.getLogger("demo.producer").setLevel(logging.ERROR)  # start-up chatter
    print("gr-s2s-consumer demo")
    print("  starting Kafka ...", flush=True)
    with open_cluster() as cluster:
        print(f"  Kafka: {cluster.kind} at {cluster.bootstrap} ({time.monotonic() - started:.1f}s)")
        suffix = uuid.uuid4().hex[:6]
        topic, dlq = f"demo-events-{suffix}", f"demo-events-{suffix}.dlq"
        create_topic(cluster.bootstrap, topic, args.partitions)
        create_topic(cluster.bootstrap, dlq, 1)
        with Simulator(keys=["demo-key"], limit_per_window=None, record_events=False) as sim:
            sim.set_error_rate(args.error_rate)
            sim.set_reject_rule({"payload.description": "reject-me"})
            print(f"  S2S API simulator at {sim.url} (500s: {args.error_rate:.0%}, "
                  "rejects events described 'reject-me')")  # fmt: skip
            expected, valid = _publish(cluster.bootstrap, topic, args.events, args.partitions)
            print(f"  published {sum(expected.values()):,} events to {topic} (the API "
                  f"documentation's {len(samples.vendor_examples())} example bodies first): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(expected.items())))  # fmt: skip
            return _consume(args, cluster.bootstrap, topic, dlq, sim, expected, valid, started)


def _digest(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=16).digest()


def _publish(
    bootstrap: str, topic: str, count: int, partitions: int
) -> tuple[Counter[str], set[bytes]]:
    """Publish the samples; what each is expected to become, and digests of the valid ones."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 20, "message.max.bytes": 2_000_000,
                         "logger": logging.getLogger("demo.producer")})  # fmt: skip
    expected: Counter[str] = Counter()
    valid_values: set[bytes] = set()
    # The documentation's own example bodies first, verbatim, then the generated mix.
    documented = (
        samples.Sample(b"player-12345", e.body, "valid", i)
        for i, e in enumerate(samples.vendor_examples())
    )
    generated = samples.generate(count, poison_share=0.01, reject_share=0.002)
    for s in itertools.chain(documented, generated):
        expected[s.expect] += 1
        if s.expect == "valid" and s.value is not None:
            valid_values.add(_digest(s.value))
        while True:
            try:
                producer.produce(topic, key=s.key, value=s.value, partition=s.seq % partitions)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    return expected, valid_values


def _valid_in_dlq(bootstrap: str, dlq: str, valid: set[bytes]) -> int:
    """DLQ records whose value was published as a valid event: must be none."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-dlq-{uuid.uuid4().hex}",
                       "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    try:
        end = reader.get_watermark_offsets(TopicPartition(dlq, 0), timeout=10)[1]
        reader.assign([TopicPartition(dlq, 0, 0)])
        found, read = 0, 0
        while read < end:
            batch = reader.consume(500, timeout=2)
            if not batch:
                break
            for msg in batch:
                if msg.error() is None:
                    read += 1
                    value = msg.value()
                    if value is not None and _digest(value) in valid:
                        found += 1
        return found
    finally:
        reader.close()


def _lag(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = probe.committed(tps, timeout=5)
        total = 0
        for tp in committed:
            high = probe.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=5)[1]
            total += high - max(tp.offset, 0)
        return total
    finally:
        probe.close()


def _consume(
    args: argparse.Namespace,
    bootstrap: str,
    topic: str,
    dlq: str,
    sim: Simulator,
    expected: Counter[str],
    valid: set[bytes],
    started: float,
) -> int:
    from consumer.observe import setup_logging
    from consumer.worker import Worker

    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": f"demo-{topic}",
        "KAFKA_DLQ_TOPIC": dlq,
        "GR_API_KEY": "demo-key",
        "GR_BASE_URL": sim.url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_BATCH_LINGER_MS": "200",
        "GR_RETRY_INITIAL_S": "0.05",
        "GR_RETRY_MAX_S": "1",
        "GR_LOG_LEVEL": os.environ.get("GR_LOG_LEVEL", "WARNING"),
        "GR_LOG_FORMAT": "text",
    }
    settings = config.load(env)
    setup_logging(settings.log_level, settings.log_format, ["demo-key"])
    worker = Worker(settings)
    total = sum(expected.values())
    done = threading.Event()
    codes: list[int] = []

    def drained() -> bool:
        return done.is_set()

    thread = threading.Thread(target=lambda: codes.append(worker.run(until=drained)), daemon=True)
    consume_started = time.monotonic()
    thread.start()
    tty = sys.stdout.isatty()
    last_print = 0.0
    deadline = consume_started + args.timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        st = worker.stats
        settled = st["delivered"] + st["dead_lettered"]
        now = time.monotonic()
        if tty or now - last_print >= 2:
            line = (f"  consumed {st['consumed']:>7,}/{total:,}  delivered {st['delivered']:>7,}  "
                    f"dead-lettered {st['dead_lettered']:>4}  batches {st['batches']:>5,}")  # fmt: skip
            print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
            last_print = now
        if settled >= total and _lag(bootstrap, settings.group_id, topic, args.partitions) == 0:
            break
    done.set()
    thread.join(60)
    if tty:
        print()
    elapsed = time.monotonic() - consume_started
    st = worker.stats
    dlq_counts = worker.dead_lettered_by_reason
    lag = _lag(bootstrap, settings.group_id, topic, args.partitions)
    print("\nSummary")
    print(f"  events published        {total:,}")
    print(f"  delivered to the API    {st['delivered']:,} in {st['batches']:,} batches"
          f" (mean {st['delivered'] / max(st['batches'], 1):.1f} events);"
          f" {st['requests']:,} requests with retries and splits")  # fmt: skip
    print(
        "  dead-lettered           "
        + (", ".join(f"{k} {v}" for k, v in sorted(dlq_counts.items())) or "none")
    )
    valid_dead_lettered = _valid_in_dlq(bootstrap, dlq, valid)
    print(f"  valid events in the DLQ {valid_dead_lettered} (of {expected['valid']:,})")
    print(f"  API answers             {dict(sorted(sim.status_counts().items()))}")
    print(f"  group lag at the end    {lag}")
    print(f"  consumer time           {elapsed:.1f}s ({st['delivered'] / elapsed:,.0f} events/s)")
    print(f"  total time              {time.monotonic() - started:.1f}s")
    want_dlq = total - expected["valid"]
    ok = (
        lag == 0
        and st["delivered"] >= expected["valid"]
        and st["dead_lettered"] == want_dlq
        and valid_dead_lettered == 0
    )
    print("  result                  " + ("OK: nothing lost" if ok else "INCOMPLETE"))
    return 0 if ok and codes == [0] else 1
