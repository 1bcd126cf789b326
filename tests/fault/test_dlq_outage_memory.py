"""Memory in a DLQ outage: a partition of nothing but poison, the DLQ refusing every write
(its topic missing) for minutes. What waits for the DLQ counts toward GR_MAX_BUFFERED_BYTES,
so the partition pauses and the worker's memory stays under the bound plus a fixed overhead
(librdkafka's fetch queue, the interpreter). It once counted for nothing: every record of
the partition was read and held, each rescanned on every loop turn."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from gr_devtools.kafka_local import LocalKafka, create_topic
from gr_devtools.simulator import Simulator
from tests.fault.conftest import FULL
from tests.integration.conftest import API_KEY
from tests.support.kafka_io import committed, end_offsets, produce
from tests.support.procs import WorkerProc, spawn_worker, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(900)]

MIB = 1024 * 1024
BOUND = 4 * MIB
OUTAGE_S = 180 if FULL else 45
# 1 KiB of poison each: 60 MiB (20 MiB in CI), fifteen (five) times the bound
RECORDS = 60_000 if FULL else 20_000


def _rss(worker: WorkerProc) -> int:
    for line in Path(f"/proc/{worker.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_poison_partition_in_a_dlq_outage_holds_memory_to_the_bound(
    fault_broker: LocalKafka, tmp_path: Path
) -> None:
    bootstrap = fault_broker.bootstrap
    topic = f"poison-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 1)
    idle = f"idle-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, idle, 1)
    produce(bootstrap, topic, (b"{not json " + b"p" * 1014 for _ in range(RECORDS)))
    with Simulator(keys=[API_KEY], limit_per_window=None) as sim:

        def env(name: str) -> dict[str, str]:
            return {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "KAFKA_TOPICS": name,
                "KAFKA_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
                "KAFKA_DLQ_TOPIC": f"{topic}.dlq",  # missing until the end
                "KAFKA_TOPIC_METADATA_PROPAGATION_MAX_MS": "2000",
                "GR_API_KEY": API_KEY,
                "GR_BASE_URL": sim.url,
                "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
                "GR_HTTP_PORT": "0",
                "GR_MAX_BUFFERED_BYTES": str(BOUND),
                "GR_RETRY_MAX_S": "5",
            }

        # the same worker with nothing to hold: its memory is the baseline
        baseline_worker = spawn_worker(env(idle), tmp_path, "idle")
        worker_env = env(topic)
        worker = spawn_worker(worker_env, tmp_path, "poison")
        wait_until(lambda: "dlq write failed" in worker.log(), 60, "the DLQ refusing writes")
        time.sleep(5)
        baseline = _rss(baseline_worker)
        peak = 0
        started = time.monotonic()
        while time.monotonic() - started < OUTAGE_S:
            assert worker.proc.poll() is None, worker.log()[-2000:]
            peak = max(peak, _rss(worker))
            time.sleep(1)
        over = peak - baseline
        print(
            f"\nDLQ refusing for {OUTAGE_S}s, {RECORDS} poison records of 1 KiB: peak RSS "
            f"{peak / MIB:.0f} MiB, idle worker {baseline / MIB:.0f} MiB: {over / MIB:.1f} MiB "
            f"over the idle worker for a bound of {BOUND / MIB:.0f} MiB"
        )
        # the bound, plus librdkafka's fetch queue (16 MiB) and the interpreter's own
        assert over <= BOUND + 24 * MIB
        create_topic(bootstrap, f"{topic}.dlq", 1)
        drain_started = time.monotonic()
        wait_until(
            lambda: (
                committed(bootstrap, worker_env["KAFKA_GROUP_ID"], topic, 1)
                == end_offsets(bootstrap, topic, 1)
            ),
            300,
            "every poison record dead-lettered and committed",
        )
        print(f"drained {RECORDS} records into the DLQ in {time.monotonic() - drain_started:.0f}s")
        assert worker.terminate() == 0
        assert baseline_worker.terminate() == 0
