"""A SASL password rotated in its Secret takes effect with no restart by hand.

A real broker with a SCRAM-SHA-512 user over TLS; a worker process reading
its password from a file laid out like a mounted Secret. The operator's
rotation: the broker gets the user's new password, then the Secret (the
file) is swapped the way the kubelet swaps it. The worker sees the new file,
stops as on SIGTERM and exits 0 (in a pod, the kubelet starts the container
again); started again with the same environment, as the kubelet does, it
reads the new password, passes the start-up check and delivers what came
meanwhile. Nothing is lost, nothing is sent twice, and the old password is
refused from then on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gr_devtools.kafka_local import LocalKafka, create_topic
from gr_devtools.simulator import Simulator
from tests.support.events import encode, transaction
from tests.support.kafka_io import committed, produce
from tests.support.mounted import Mounted
from tests.support.procs import spawn_worker, wait_until

pytestmark = pytest.mark.integration

USER, OLD, NEW = "gr-rotating", "scram-old-3a9d1c", "scram-new-8e27b4"
API_KEY = "rotation-test-key-2c81"


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalKafka]:
    kafka = LocalKafka(scram_users={USER: OLD})
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.destroy()


def _set_password(broker: LocalKafka, password: str) -> None:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._scram import (  # not re-exported by name for type checkers
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    upsert = UserScramCredentialUpsertion(USER, info, password.encode())
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(30)


def test_a_rotated_password_file_restarts_the_worker_onto_the_new_password(
    broker: LocalKafka, tmp_path: Path
) -> None:
    secret_dir = tmp_path / "kafka-sasl"
    secret_dir.mkdir()
    mounted = Mounted(secret_dir, OLD)
    topic = f"rotate-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 2)
    create_topic(broker.bootstrap, f"{topic}.dlq", 1)
    first, second = 400, 300
    produce(broker.bootstrap, topic, [encode(transaction(i)) for i in range(first)], partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    with Simulator(keys=[API_KEY], limit_per_window=None) as sim:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": broker.scram_bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SSL_CA_LOCATION": str(broker.ca_pem),
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": USER,
            "KAFKA_SASL_PASSWORD_FILE": str(mounted.path),
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
            "GR_API_KEY": API_KEY,
            "GR_BASE_URL": sim.url,
            "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
            "GR_BATCH_LINGER_MS": "50",
            "GR_HTTP_PORT": "0",
        }
        worker = spawn_worker(env, tmp_path, "before")
        wait_until(
            lambda: sum(committed(broker.bootstrap, group, topic, 2)) == first,
            90,
            "the first events committed",
        )

        # The rotation: the broker first, then the Secret.
        _set_password(broker, NEW)
        mounted.update(NEW)
        rotated = time.monotonic()
        assert worker.proc.wait(60) == 0, worker.log()[-3000:]
        stopped_after = time.monotonic() - rotated
        log = worker.log()
        assert '"msg":"secret file changed; stopping cleanly to restart with it"' in log
        assert '"variable":"KAFKA_SASL_PASSWORD_FILE"' in log
        for secret in (OLD, NEW, API_KEY):
            assert secret not in log

        # Started again with the same environment, as the kubelet does.
        produce(
            broker.bootstrap,
            topic,
            [encode(transaction(i)) for i in range(first, first + second)],
            partitions=2,
        )
        again = spawn_worker(env, tmp_path, "after")
        wait_until(
            lambda: sum(committed(broker.bootstrap, group, topic, 2)) == first + second,
            90,
            "the events produced after the rotation committed",
        )
        assert again.terminate(60) == 0, again.log()[-3000:]
        accepted = sim.accepted_events()
        assert len(accepted) == first + second  # none lost, none twice
        assert NEW not in again.log()

    # The old password no longer opens the broker: the restart was needed.
    stale = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "GR_"))}
    stale.update({k: v for k, v in env.items() if k != "KAFKA_SASL_PASSWORD_FILE"})
    stale["KAFKA_SASL_PASSWORD"] = OLD
    proc = subprocess.run(
        [sys.executable, "-m", "consumer", "run"],
        env=stale, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "KAFKA_SASL_PASSWORD was refused by the broker" in proc.stderr
    print(f"\nrotation: worker stopped {stopped_after:.1f}s after the Secret changed")
