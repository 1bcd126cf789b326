"""`gr-consumer publish`, run as a real process against the real broker."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from consumer.events import EventDecoder, Valid
from tests.conftest import TopicFactory
from tests.support.kafka_io import end_offsets, read_all

pytestmark = pytest.mark.integration

GOOD = [
    b'{"event_type":"transaction","identifiers":{"player_id":"player-1"},'
    b'"payload":{"amount":4.99,"currency":"USD"}}',
    b'{"event_type": "impression", "identifiers": {"player_id": "player-2"},  '
    b'"payload": {"campaign_id": "summer_2026", "placement": "main_menu"}}',
    b'{"event_type":"session_start","payload":{"session_id":"s-1"}}',
    b'{"event_type":"level_up","identifiers":{"player_id":"player-1"},"payload":{"level":3}}',
]
MIXED = [
    GOOD[0],  # line 1
    GOOD[1],  # line 2
    b"",  # line 3: blank lines are skipped
    b'{"event_type":"transaction","payload":{"amount":"4.99","currency":"USD"}}',  # 4
    b"not json at all",  # line 5
    GOOD[2] + b"\r",  # line 6 (CRLF file)
    b'{"event_type":"click","payload":{}}',  # line 7
    b'{"event_type":"click","identifiers":"p-1","payload":{"campaign_id":"c"}}',  # line 8
    GOOD[3],  # line 9
]


def cli_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "GR_"))}
    base.update(env)
    return base


def publish(
    args: list[str], env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", "publish", *args],
        env=cli_env(**env),
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_good_and_bad_lines(bootstrap: str, make_topic: TopicFactory, tmp_path: Path) -> None:
    topic = make_topic(partitions=2)
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPICS": topic}
    proc = publish([str(write_lines(tmp_path / "events.jsonl", MIXED))], env)

    assert proc.returncode == 1, proc.stderr
    # librdkafka may warn while a fresh broker loads its coordinators: only "line" reports count
    err = [line for line in proc.stderr.splitlines() if line.startswith("line ")]
    assert err[0].startswith("line 4: schema_violation: ")
    assert "$.payload.amount" in err[0]
    assert err[1].startswith("line 5: invalid_json: ")
    assert err[2].startswith("line 7: schema_violation: ")
    assert "campaign_id" in err[2]
    assert err[3].startswith("line 8: schema_violation: ")
    assert "$.identifiers" in err[3]
    assert len(err) == 4
    assert f"published  4 of 8 lines to {topic} in " in proc.stdout
    assert (
        "rejected   4 lines: invalid_json 1, schema_violation 3 (lines 4, 5, 7, 8)" in proc.stdout
    )

    records = read_all(bootstrap, topic, expect=4)
    assert sorted(r.value or b"" for r in records) == sorted(GOOD)  # byte for byte, trimmed
    keys = {r.value: r.key for r in records}
    assert keys[GOOD[0]] == b"player-1"
    assert keys[GOOD[1]] == b"player-2"
    assert keys[GOOD[2]] is None
    decoder = EventDecoder()
    assert all(isinstance(decoder.decode(r.value), Valid) for r in records)


def test_stdin_all_good_exits_0_with_plain_progress_lines(
    bootstrap: str, make_topic: TopicFactory
) -> None:
    topic = make_topic()
    lines = [GOOD[i % 4] for i in range(300)]
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPICS": f"^x-.*,{topic}"}
    proc = publish(["--progress-interval", "0", "-"], env, stdin=b"\n".join(lines))
    assert proc.returncode == 0, proc.stderr
    assert f"published  300 of 300 lines to {topic}" in proc.stdout
    progress = proc.stderr.splitlines()
    assert progress, "no progress lines on a pipe"
    assert "\r" not in proc.stderr
    assert all(line.startswith("publish: ") and "lines" in line for line in progress)
    assert progress[-1].startswith("publish: 300 lines")
    assert len(read_all(bootstrap, topic, expect=300)) == 300


def test_progress_bar_on_a_terminal(
    bootstrap: str, make_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = make_topic()
    path = write_lines(tmp_path / "e.jsonl", [GOOD[0]] * 50)
    main, sub = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "consumer", "publish", str(path)],
        env=cli_env(KAFKA_BOOTSTRAP_SERVERS=bootstrap, KAFKA_TOPICS=topic),
        stdout=subprocess.PIPE,
        stderr=sub,
    ) as proc:
        os.close(sub)
        out, _ = proc.communicate(timeout=60)
        terminal = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the process closed its end
                break
            if not chunk:
                break
            terminal += chunk
        os.close(main)
    assert proc.returncode == 0
    assert b"\r" in terminal
    assert b"publish [####################] 100%  50 lines" in terminal
    assert b"published  50 of 50 lines" in out


def test_fail_fast_stops_at_the_first_bad_line(
    bootstrap: str, make_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = make_topic()
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPICS": topic}
    proc = publish(["--fail-fast", str(write_lines(tmp_path / "e.jsonl", MIXED))], env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("line 4: schema_violation: ")
    assert "line 5" not in proc.stderr
    assert "published  2 of 3 lines" in proc.stdout
    assert "stopped    at line 4 (--fail-fast)" in proc.stdout
    records = read_all(bootstrap, topic, expect=2, timeout_s=10)
    assert sorted(r.value or b"" for r in records) == sorted(GOOD[:2])


def test_configuration_errors_exit_2_naming_the_variable(
    bootstrap: str, make_topic: TopicFactory, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "e.jsonl", GOOD)
    topic = make_topic()

    proc = publish([str(path)], {"KAFKA_TOPICS": topic})
    assert proc.returncode == 2
    assert "KAFKA_BOOTSTRAP_SERVERS is required" in proc.stderr

    proc = publish([str(path)], {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPICS": "absent-x"})
    assert proc.returncode == 2
    assert "KAFKA_TOPICS names topic 'absent-x', which does not exist" in proc.stderr

    proc = publish(["--topic", "absent-y", str(path)], {"KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    assert proc.returncode == 2
    assert "--topic names topic 'absent-y'" in proc.stderr

    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPICS": topic,
           "KAFKA_SECURITY_PROTOCOL": "bogus", "KAFKA_SASL_PASSWORD": "hunter2-pw"}  # fmt: skip
    proc = publish([str(path)], env)
    assert proc.returncode == 2
    assert "KAFKA_SECURITY_PROTOCOL" in proc.stderr
    assert "hunter2-pw" not in proc.stderr + proc.stdout

    proc = publish([str(tmp_path / "missing.jsonl")], {"KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                                                        "KAFKA_TOPICS": topic})  # fmt: skip
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr

    assert end_offsets(bootstrap, topic, 1) == [0]  # none of these produced anything

    # --topic overrides KAFKA_TOPICS
    proc = publish(["--topic", topic, str(path)], {"KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                                                    "KAFKA_TOPICS": "absent-z"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(read_all(bootstrap, topic, expect=4)) == 4
