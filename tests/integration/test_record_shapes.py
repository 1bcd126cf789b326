"""Records of every shape Kafka can hold, through two real workers: none stops a worker.

Null header values (one record in 50, as a tracing library may write them),
duplicate header keys, non-UTF-8 header values, null and non-UTF-8 keys,
tombstones, and records carrying 200 KB of headers, valid and poison alike.
Each is delivered or dead-lettered as the contract says; the DLQ copy keeps
the original key, value and headers, null values included; a copy the DLQ
topic refuses for its size (its headers alone are over the topic's limit) is
cut, value first and then the original headers, and still goes.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka import Producer

from gr_devtools.kafka_local import create_topic
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import API_KEY
from tests.simulation import records
from tests.support.kafka_io import committed, end_offsets, read_all
from tests.support.procs import spawn_worker, wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _shapes(n: int) -> list[records.Rec]:
    rng = random.Random(19)
    out: list[records.Rec] = []
    offsets = [0] * PARTITIONS
    for i in range(n):
        p = i % PARTITIONS
        rec = records.make(
            rng, p, offsets[p], players=40, poison=0.15, refused=0.02, sessions=0.03,
            big_headers=False, event_max_bytes=8192,
        )  # fmt: skip
        headers = rec.headers
        if i % 50 == 7:
            headers = [("trace", None)]  # a null value on one record in 50
        if i in (101, 203):  # 200 KB of headers: a valid record, then a poison one
            headers = [("bulk", b"h" * 200_000), ("n", None)]
        if i == 203:
            rec = records.Rec(p, offsets[p], rec.key, b"{not json", headers, rec.timestamp_ms,
                              "invalid_json", rec.player)  # fmt: skip
        out.append(records.Rec(p, offsets[p], rec.key, rec.value, headers, rec.timestamp_ms,
                               rec.expect, rec.player, rec.session))  # fmt: skip
        offsets[p] += 1
    return out


def test_every_record_shape_is_delivered_or_dead_lettered_and_no_worker_stops(
    bootstrap: str, make_topic: TopicFactory, simulator: Simulator, tmp_path: Path
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    # the DLQ topic takes less than a record with 200 KB of headers
    create_topic(bootstrap, f"{topic}.dlq", 1, **{"max.message.bytes": "150000"})
    recs = _shapes(600)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for rec in recs:
        producer.produce(
            topic,
            value=rec.value,
            key=rec.key,
            headers=cast(Any, rec.headers),
            partition=rec.partition,
        )
    assert producer.flush(30) == 0
    simulator.set_reject_rule({"payload.refuse": True})
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "GR_API_KEY": API_KEY,
        "GR_BASE_URL": simulator.url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_EVENT_MAX_BYTES": "8192",
        "GR_BATCH_LINGER_MS": "50",
        "GR_HTTP_PORT": "0",
        "GR_RETRY_INITIAL_S": "0.05",
        "GR_RETRY_MAX_S": "1",
    }
    workers = [spawn_worker(env, tmp_path, f"w{i}") for i in range(2)]
    want_dlq = [r for r in recs if r.expect != "deliver"]
    want_api = [r for r in recs if r.expect == "deliver"]

    def done() -> bool:
        assert all(w.proc.poll() is None for w in workers), "a worker stopped:\n" + "\n".join(
            w.log()[-3000:] for w in workers
        )
        return committed(bootstrap, env["KAFKA_GROUP_ID"], topic, PARTITIONS) == end_offsets(
            bootstrap, topic, PARTITIONS
        )

    wait_until(done, 120, "every partition committed to its end")
    assert all(w.terminate() == 0 for w in workers)

    marks = {records.mark_of(e) for e in simulator.accepted_events()}
    assert {(r.partition, r.offset) for r in want_api} <= marks
    dlq = {
        (int(d.headers["gr.dlq.source.partition"]), int(d.headers["gr.dlq.source.offset"])): d
        for d in read_all(bootstrap, f"{topic}.dlq", expect=len(want_dlq))
    }
    assert sorted(dlq) == sorted((r.partition, r.offset) for r in want_dlq)
    for rec in want_dlq:
        d = dlq[(rec.partition, rec.offset)]
        theirs = [h for h in d.header_list if not h[0].startswith("gr.dlq.")]
        if d.headers["gr.dlq.reason"] == b"too_large" and b"gr.dlq.original.headers.count" in (
            k.encode() for k in d.headers
        ):
            # the one whose headers alone are over the topic's limit: cut, and says so
            assert rec.headers is not None
            assert len(rec.headers[0][1] or b"") == 200_000
            assert d.headers["gr.dlq.original.reason"] == rec.expect.encode()
            assert d.headers["gr.dlq.original.headers.count"] == b"2"
            assert theirs == []
            continue
        assert d.headers["gr.dlq.reason"] == rec.expect.encode(), rec
        assert d.key == rec.key
        assert (d.value or b"") == (rec.value or b"")
        want = [h for h in rec.headers or () if not h[0].startswith("gr.dlq.")]
        assert theirs == want, rec
    nulls = [d for d in dlq.values() if ("trace", None) in d.header_list]
    assert nulls, "a record with a null header value reached the DLQ as it was"
