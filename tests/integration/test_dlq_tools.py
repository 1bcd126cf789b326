"""`gr-consumer dlq inspect|replay`, run as real processes against a DLQ of real records."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from confluent_kafka import Producer

from consumer.dlq import Source, dlq_headers
from tests.conftest import TopicFactory
from tests.support.kafka_io import Record, committed, end_offsets, read_all

pytestmark = pytest.mark.integration

REASONS = ("schema_violation", "invalid_json", "api_rejected")
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Dlq:
    """A DLQ topic (2 partitions) of `n` records from `source` (2 partitions)."""

    topic: str
    source: str
    n: int
    env: dict[str, str]

    def reason(self, i: int) -> str:
        return REASONS[i % 3]

    def failed_at(self, i: int) -> datetime:
        return NOW - timedelta(minutes=self.n - i)  # record i failed n-i minutes ago

    def where(self, i: int) -> str:
        """`gr.dlq.replayed.from` of record i (even i on partition 0, odd on 1, in order)."""
        return f"{self.topic}:{i % 2}:{i // 2}"


def value_of(i: int) -> bytes:
    return orjson.dumps({"event_type": "click", "payload": {"campaign_id": f"c{i}", "seq": i}})


def build_dlq(bootstrap: str, make_topic: TopicFactory, n: int, source: str | None = None) -> Dlq:
    source = source or make_topic(partitions=2)
    topic = make_topic(partitions=2, prefix=f"{source[:40]}.dlq")
    dlq = Dlq(topic, source, n, {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": source,
        "KAFKA_DLQ_TOPIC": topic,
        "KAFKA_GROUP_ID": f"grp-{topic[-8:]}",
    })  # fmt: skip
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(n):
        reason = dlq.reason(i)
        headers: list[tuple[str, str | bytes | None]] = [
            *dlq_headers(
                [("trace-id", f"trace-{i}".encode()), ("gr.dlq.reason", b"stale, from before")],
                reason=reason,
                detail=f"{reason} detail for record {i}",
                source=Source(source, i % 2, 1000 + i, 1_790_000_000_000 + i),
                group="gr-s2s-consumer",
                failed_at=dlq.failed_at(i),
                http_status=400 if reason == "api_rejected" else None,
            )
        ]
        producer.produce(
            topic, key=f"player-{i}".encode(), value=value_of(i), headers=headers, partition=i % 2
        )
    assert producer.flush(30) == 0
    return dlq


def cli_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "GR_"))}
    base.update(env)
    return base


def dlq_cmd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", "dlq", *args],
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def replayed(records: list[Record]) -> list[str]:
    return [r.headers["gr.dlq.replayed.from"].decode() for r in records]


def assert_each_once(records: list[Record], dlq: Dlq, indexes: list[int]) -> None:
    """The target holds exactly these DLQ records, once each, as they were produced."""
    froms = replayed(records)
    assert len(froms) == len(set(froms)), "a record was sent twice"
    assert sorted(froms) == sorted(dlq.where(i) for i in indexes), "a record is missing"
    for record in records:
        _, p, off = record.headers["gr.dlq.replayed.from"].decode().rsplit(":", 2)
        i = int(off) * 2 + int(p)
        assert record.key == f"player-{i}".encode()
        assert record.value == value_of(i)
        assert record.headers == {  # the originals, without any gr.dlq.* header
            "trace-id": f"trace-{i}".encode(),
            "gr.dlq.replayed.from": dlq.where(i).encode(),
        }


def _minutes(token: str) -> int:
    """'(14m' -> 14: the age column of `dlq inspect`."""
    match = re.fullmatch(r"\((\d+)m", token)
    assert match is not None, token
    return int(match.group(1))


def test_inspect_tables_reasons_sources_and_ages_and_commits_nothing(
    bootstrap: str, make_topic: TopicFactory
) -> None:
    dlq = build_dlq(bootstrap, make_topic, 12)
    proc = dlq_cmd(dlq.env, "inspect", "--samples", "2", "--width", "40")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"DLQ {dlq.topic}: 12 records in 2 partitions, at ")

    def iso(i: int) -> str:
        return dlq.failed_at(i).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:7]}
    assert rows["REASON"][:3] == ["REASON", "SOURCE", "TOPIC"]
    for k, reason in enumerate(REASONS):
        mine = [i for i in range(12) if i % 3 == k]
        assert rows[reason][1:4] == [dlq.source, "4", iso(mine[0])]
        assert rows[reason][6] == iso(mine[-1])
        # ages count from now: at least what they were when the records were made
        assert _minutes(rows[reason][4]) >= 12 - mine[0]
        assert _minutes(rows[reason][7]) >= 12 - mine[-1]
    assert rows["total"] == ["total", "12"]
    for k, reason in enumerate(REASONS):
        assert f"\n{reason}: newest 2 of 4\n" in out
        newest = [i for i in range(12) if i % 3 == k][-2:]
        for i in newest:
            assert f"  {dlq.topic}[{i % 2}]@{i // 2}  from {dlq.source}[{i % 2}]@{1000 + i}" in out
            assert f"failed {iso(i)}" in out
            assert f"key player-{i}" in out
            assert f"detail  {reason} detail for record {i}" in out
    assert "status 400" in out
    shortened = re.findall(r"value   (.*)", out)
    assert len(shortened) == 6
    assert all(v.startswith('{"event_type":"click","payload":{"c') for v in shortened)
    assert all(re.search(r"\.\.\. \(6\d bytes\)$", v) for v in shortened), shortened
    assert all(len(v.split("...")[0]) == 37 for v in shortened)
    # read with assign and no group commit
    group = dlq.env["KAFKA_GROUP_ID"]
    for g in (f"{group}.dlq-inspect", group, f"{group}.dlq-replay"):
        assert committed(bootstrap, g, dlq.topic, 2) == [-1001, -1001]


def test_inspect_of_an_empty_or_missing_dlq(bootstrap: str, make_topic: TopicFactory) -> None:
    empty = make_topic(partitions=3)
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_DLQ_TOPIC": empty}
    proc = dlq_cmd(env, "inspect")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"DLQ {empty}: empty (3 partitions)")
    proc = dlq_cmd({**env, "KAFKA_DLQ_TOPIC": "no-such-dlq"}, "inspect")
    assert proc.returncode == 2
    assert "KAFKA_DLQ_TOPIC names topic 'no-such-dlq', which does not exist" in proc.stderr


def test_dry_run_prints_and_sends_and_commits_nothing(
    bootstrap: str, make_topic: TopicFactory
) -> None:
    dlq = build_dlq(bootstrap, make_topic, 9)
    proc = dlq_cmd(dlq.env, "replay", "--dry-run", "--reason", "invalid_json")
    assert proc.returncode == 0, proc.stderr
    would = [line for line in proc.stdout.splitlines() if line.startswith("would send ")]
    mine = [i for i in range(9) if dlq.reason(i) == "invalid_json"]
    assert len(would) == len(mine) == 3
    for i in mine:
        assert f"would send {dlq.topic}[{i % 2}]@{i // 2} -> {dlq.source}  reason invalid_json" in (
            proc.stdout
        )
    assert f"selected   3 records: {dlq.source} 3" in proc.stdout
    assert "skipped    6 records (reason filter 6)" in proc.stdout
    assert "dry run    nothing sent, nothing committed" in proc.stdout
    assert end_offsets(bootstrap, dlq.source, 2) == [0, 0]  # nothing was sent
    assert committed(bootstrap, f"{dlq.env['KAFKA_GROUP_ID']}.dlq-replay", dlq.topic, 2) == [
        -1001,
        -1001,
    ]


def test_replay_by_reason_and_time_sends_originals_and_commits_past_skipped(
    bootstrap: str, make_topic: TopicFactory
) -> None:
    dlq = build_dlq(bootstrap, make_topic, 30)
    group = f"{dlq.env['KAFKA_GROUP_ID']}.dlq-replay"
    proc = dlq_cmd(dlq.env, "replay", "--reason", "api_rejected", "--reason", "invalid_json")
    assert proc.returncode == 0, proc.stderr
    chosen = [i for i in range(30) if dlq.reason(i) in ("api_rejected", "invalid_json")]
    assert f"replayed   20 records: {dlq.source} 20" in proc.stdout
    assert "skipped    10 records (reason filter 10)" in proc.stdout
    assert f"committed  [0] 15, [1] 15 (group {group})" in proc.stdout
    assert_each_once(read_all(bootstrap, dlq.source, expect=20), dlq, chosen)
    assert committed(bootstrap, group, dlq.topic, 2) == [15, 15]

    # The same group again: nothing left to read, nothing resent; another filter is told.
    proc = dlq_cmd(dlq.env, "replay", "--reason", "schema_violation")
    assert proc.returncode == 0
    assert "replayed   0 records" in proc.stdout
    assert "filter reason=api_rejected,invalid_json" in proc.stderr

    # A time window (failed between 20 and 10 minutes ago), in a group of its own.
    since = (NOW - timedelta(minutes=20)).isoformat()
    until = (NOW - timedelta(minutes=10)).isoformat()
    target = make_topic()
    proc = dlq_cmd(
        dlq.env, "replay", "--group", "by-time", "--since", since, "--until", until,
        "--to-topic", target,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    window = [i for i in range(30) if 10 <= i < 20]  # record i failed 30-i minutes ago
    assert "skipped    20 records (time filter 20)" in proc.stdout
    assert_each_once(read_all(bootstrap, target, expect=10), dlq, window)


def test_replay_of_an_offset_range(bootstrap: str, make_topic: TopicFactory) -> None:
    dlq = build_dlq(bootstrap, make_topic, 20)
    target = make_topic()
    args = ("replay", "--partition", "1", "--from-offset", "2", "--to-offset", "4")
    proc = dlq_cmd(dlq.env, *args, "--to-topic", target)
    assert proc.returncode == 0, proc.stderr
    assert "[1] 2..4" in proc.stdout
    assert_each_once(read_all(bootstrap, target, expect=3), dlq, [5, 7, 9])
    assert committed(bootstrap, f"{dlq.env['KAFKA_GROUP_ID']}.dlq-replay", dlq.topic, 2) == [
        -1001,
        5,
    ]


def test_replay_interrupted_by_max_records_then_resumed(
    bootstrap: str, make_topic: TopicFactory
) -> None:
    dlq = build_dlq(bootstrap, make_topic, 40)
    first = dlq_cmd(dlq.env, "replay", "--max-records", "13", "--chunk", "4")
    assert first.returncode == 0, first.stderr
    assert "replayed   13 records" in first.stdout
    assert "--max-records 13 reached" in first.stdout
    assert len(read_all(bootstrap, dlq.source, expect=13, timeout_s=10)) == 13
    second = dlq_cmd(dlq.env, "replay", "--chunk", "4")
    assert second.returncode == 0, second.stderr
    assert "replayed   27 records" in second.stdout
    assert_each_once(read_all(bootstrap, dlq.source, expect=40), dlq, list(range(40)))


def test_replay_interrupted_by_sigterm_then_resumed(
    bootstrap: str, make_topic: TopicFactory
) -> None:
    dlq = build_dlq(bootstrap, make_topic, 120)
    group = f"{dlq.env['KAFKA_GROUP_ID']}.dlq-replay"
    with subprocess.Popen(
        [sys.executable, "-m", "consumer", "dlq", "replay", "--rate", "40", "--chunk", "5"],
        env=cli_env(dlq.env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            deadline = time.monotonic() + 30
            while sum(max(0, c) for c in committed(bootstrap, group, dlq.topic, 2)) < 20:
                assert time.monotonic() < deadline, "the replay committed nothing"
                assert proc.poll() is None, "the replay ended before it was interrupted"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "signal     SIGTERM" in out
    sent_first = int(re.search(r"replayed\s+(\d+) records", out).group(1))  # type: ignore[union-attr]
    assert 20 <= sent_first < 120
    done = committed(bootstrap, group, dlq.topic, 2)
    assert (
        sum(max(0, c) for c in done) == sent_first
    )  # everything it sent, and nothing else, is committed
    assert len(read_all(bootstrap, dlq.source, expect=sent_first, timeout_s=10)) == sent_first

    second = dlq_cmd(dlq.env, "replay")
    assert second.returncode == 0, second.stderr
    assert f"replayed   {120 - sent_first} records" in second.stdout
    assert_each_once(read_all(bootstrap, dlq.source, expect=120), dlq, list(range(120)))


def test_unroutable_record_stops_its_partition_until_fixed(
    bootstrap: str, make_topic: TopicFactory
) -> None:
    dlq = build_dlq(bootstrap, make_topic, 10, source="gone-topic-never-created")
    proc = dlq_cmd(dlq.env, "replay")
    assert proc.returncode == 1
    assert "stopped    partition 0 at offset 0: target topic 'gone-topic-never-created'" in (
        proc.stdout
    )
    assert "stopped    partition 1 at offset 0" in proc.stdout
    group = f"{dlq.env['KAFKA_GROUP_ID']}.dlq-replay"
    assert committed(bootstrap, group, dlq.topic, 2) == [-1001, -1001]
    target = make_topic()
    proc = dlq_cmd(dlq.env, "replay", "--to-topic", target)
    assert proc.returncode == 0, proc.stderr
    assert_each_once(read_all(bootstrap, target, expect=10), dlq, list(range(10)))


def test_bad_arguments_and_configuration_exit_2(bootstrap: str) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_DLQ_TOPIC": "no-such-dlq"}
    assert dlq_cmd(env, "replay").returncode == 2
    proc = dlq_cmd(env, "replay", "--reason", "bogus")
    assert proc.returncode == 2
    assert "invalid choice: 'bogus'" in proc.stderr
    proc = dlq_cmd(env, "replay", "--since", "yesterday")
    assert proc.returncode == 2
    assert "neither an ISO-8601 time nor an age" in proc.stderr
    proc = dlq_cmd({}, "inspect")
    assert proc.returncode == 2
    assert "KAFKA_BOOTSTRAP_SERVERS is required" in proc.stderr
