"""Bad input loses nothing: hostile records reach the DLQ with the right reason
through a real worker, and every bad configuration variable stops start-up with
exit 2 and a message that names it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gr_devtools.kafka_local import create_topic
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import RunningWorker, SettingsFactory, wait_for
from tests.support.kafka_io import committed, produce, read_all

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).parent.parent / "data" / "hostile"


def _corpus() -> list[tuple[str, bytes | None, str]]:
    manifest: dict[str, str] = json.loads((CORPUS / "manifest.json").read_text())
    generated: dict[str, bytes | None] = {
        "<empty>": b"",
        "<tombstone>": None,
        "<1MiB>": b'{"event_type": "x", "payload": {"pad": "' + b"a" * (1 << 20) + b'"}}',
    }
    out = []
    for name, reason in sorted(manifest.items()):
        value = generated[name] if name in generated else (CORPUS / name).read_bytes()
        out.append((name, value, reason))
    return out


def test_hostile_records_reach_the_dlq_with_their_reason(
    bootstrap: str,
    make_topic: TopicFactory,
    simulator: Simulator,
    make_settings: SettingsFactory,
    start_worker: Callable[..., RunningWorker],
) -> None:
    corpus = _corpus()
    topic = make_topic(partitions=1, **{"max.message.bytes": str(4 << 20)})
    create_topic(bootstrap, f"{topic}.dlq", 1, **{"max.message.bytes": str(2 << 20)})
    produce(bootstrap, topic, (v for _, v, _ in corpus), partition=0,
            conf={"message.max.bytes": 3 << 20, "batch.size": 2 << 20})  # fmt: skip
    settings = make_settings(topic, KAFKA_MESSAGE_MAX_BYTES=str(3 << 20))
    rw = start_worker(settings)
    expect_dlq = {i: reason for i, (_, _, reason) in enumerate(corpus) if reason != "valid"}
    wait_for(
        lambda: committed(bootstrap, settings.group_id, topic, 1) == [len(corpus)], 60, "commit"
    )
    assert rw.stop() == 0
    dlq = read_all(bootstrap, f"{topic}.dlq", expect=len(expect_dlq), timeout_s=30)
    got = {int(r.headers["gr.dlq.source.offset"]): r.headers["gr.dlq.reason"].decode() for r in dlq}
    names = {i: name for i, (name, _, _) in enumerate(corpus)}
    mismatches = {
        names[i]: (want, got.get(i)) for i, want in expect_dlq.items() if got.get(i) != want
    }
    assert mismatches == {}
    assert len(dlq) == len(expect_dlq)  # and the valid ones were not dead-lettered
    for r in dlq:  # the value is unchanged, whatever it was
        offset = int(r.headers["gr.dlq.source.offset"])
        assert (r.value or b"") == (corpus[offset][1] or b"")
        assert len(r.headers["gr.dlq.detail"]) <= 1024
    valid = len(corpus) - len(expect_dlq)
    assert len(simulator.accepted_events()) == valid


BAD_VALUES = [
    ("KAFKA_BOOTSTRAP_SERVERS", "no-port-here"),
    ("KAFKA_BOOTSTRAP_SERVERS", ""),
    ("KAFKA_TOPICS", "^[unclosed"),
    ("KAFKA_TOPICS", "bad topic!"),
    ("KAFKA_GROUP_ID", "tab\tinside"),
    ("KAFKA_DLQ_TOPIC", "has space"),
    ("KAFKA_DLQ_TOPIC", "game-events"),  # the topic it reads
    ("KAFKA_NO_SUCH_SETTING", "1"),
    ("KAFKA_SESSION_TIMEOUT_MS", "soon"),
    ("KAFKA_ENABLE_AUTO_COMMIT", "true"),
    ("GR_API_KEY", ""),
    ("GR_API_KEY_FILE", "/nonexistent/key"),
    ("GR_BASE_URL", "ftp://sdk-api.example"),
    ("GR_BATCH_MAX_EVENTS", "500"),
    ("GR_BATCH_MAX_EVENTS", "many"),
    ("GR_BATCH_MAX_BYTES", "-1"),
    ("GR_EVENT_MAX_BYTES", "99999999"),
    ("GR_BATCH_LINGER_MS", "soon"),
    ("GR_RATE_LIMIT_PER_MINUTE", "0"),
    ("GR_HTTP_PORT", "70000"),
    ("GR_SHUTDOWN_TIMEOUT_S", "-3"),
    ("GR_LOG_LEVEL", "LOUD"),
    ("GR_LOG_FORMAT", "xml"),
    ("GR_STRICT_EVENT_TYPES", "perhaps"),
    ("GR_STRICT_RULES", "currency"),
    ("GR_MAX_IN_FLIGHT", "0"),
    ("GR_HTTP_TIMEOUT_S", "nan"),
]


CASES = [("check-config", v, x) for v, x in BAD_VALUES] + [
    # `run` shares the validation; two variables show it stops there too
    ("run", "GR_BATCH_MAX_EVENTS", "500"),
    ("run", "KAFKA_NO_SUCH_SETTING", "1"),
    # the key would travel in clear text: refused by check-config and run alike
    ("check-config", "GR_BASE_URL", "http://sdk-api.gamerebellion.com"),
    ("run", "GR_BASE_URL", "http://sdk-api.gamerebellion.com"),
    ("check-config", "GR_API_CA_FILE", "/nonexistent/ca.pem"),
]


@pytest.mark.parametrize(("command", "variable", "value"), CASES)
def test_bad_configuration_exits_2_naming_the_variable(
    command: str, variable: str, value: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "GR_"))}
    env.update({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "GR_API_KEY": "k-3e8f0aa1"})
    if variable == "GR_API_KEY_FILE":
        env.pop("GR_API_KEY")
    env[variable] = value
    proc = subprocess.run(
        [sys.executable, "-m", "consumer", command],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert variable in proc.stderr
    assert "k-3e8f0aa1" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
