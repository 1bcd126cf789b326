"""Workers as real processes (`gr-consumer run`), for tests that kill and bounce them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient


@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def terminate(self, timeout_s: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def owns_partitions(self) -> bool:
        """True once its log says it was assigned at least one partition."""
        return '"msg":"partitions assigned","partitions":["' in self.log()


_SPAWNED: list[WorkerProc] = []


def kill_leftovers() -> None:
    """Kill workers a failed test left running (called after every test)."""
    while _SPAWNED:
        worker = _SPAWNED.pop()
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(10)


def spawn_worker(env: dict[str, str], log_dir: Path, name: str) -> WorkerProc:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "GR_"))}
    full_env.update(env)
    log_path = log_dir / f"{name}.log"
    out = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumer", "run"],
        env=full_env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    worker = WorkerProc(proc, log_path)
    _SPAWNED.append(worker)
    return worker


def group_members(bootstrap: str, group: str) -> int:
    """Members of the group now; retried while the coordinator moves or loads."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 30
    while True:
        try:
            desc = admin.describe_consumer_groups([group])[group].result(15)
            return len(desc.members)
        except KafkaException as exc:
            if time.monotonic() > deadline or "COORDINATOR" not in str(exc):
                raise
            time.sleep(0.2)


def wait_until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
