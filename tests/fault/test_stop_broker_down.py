"""SIGTERM with the broker gone: the stop still ends, exit 0, within GR_SHUTDOWN_TIMEOUT_S.

The last commit and leaving the group both wait for a coordinator: librdkafka's
synchronous commit as long as it takes, its close() up to session.timeout.ms
(45 s by default). The stop once ran past the grace period and the pod was killed.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from gr_devtools import samples
from gr_devtools.kafka_local import LocalKafka, create_topic
from gr_devtools.simulator import Simulator
from tests.integration.conftest import API_KEY
from tests.support.kafka_io import produce
from tests.support.procs import spawn_worker, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.integration]


def test_a_stop_with_the_broker_down_fits_the_shutdown_timeout(
    fault_broker: LocalKafka, tmp_path: Path
) -> None:
    bootstrap = fault_broker.bootstrap
    topic = f"stop-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 4)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    items = list(samples.generate(20_000, poison_share=0.01, seed=8))
    produce(bootstrap, topic, (s.value for s in items), partitions=4)
    timeout_s = 8
    with Simulator(keys=[API_KEY], limit_per_window=None) as sim:
        sim.set_latency((0.05, 0.2))  # delivery under way when the broker goes
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
            "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
            "GR_API_KEY": API_KEY,
            "GR_BASE_URL": sim.url,
            "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
            "GR_HTTP_PORT": "0",
            "GR_SHUTDOWN_TIMEOUT_S": str(timeout_s),
        }
        worker = spawn_worker(env, tmp_path, "stopper")
        wait_until(lambda: sim.events_accepted() >= 2000, 60, "delivery under way")
        fault_broker.stop()
        time.sleep(2)
        started = time.monotonic()
        code = worker.terminate(120)
        took = time.monotonic() - started
        fault_broker.start()
    print(f"\nstop with the broker down: {took:.1f}s for GR_SHUTDOWN_TIMEOUT_S={timeout_s}")
    assert code == 0, worker.log()[-3000:]
    assert took <= timeout_s + 0.5, worker.log()[-3000:]  # the slack: signal delivery
