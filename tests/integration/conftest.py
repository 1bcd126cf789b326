"""Fixtures for pipeline tests: the simulator, settings pointing at it, a worker in a thread."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from consumer import config
from consumer.observe import Health, Metrics
from consumer.worker import Worker
from gr_devtools.kafka_local import create_topic
from gr_devtools.simulator import Simulator
from tests.support.events import encode, transaction
from tests.support.kafka_io import produce

API_KEY = "test-key-5f3a9c"


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    sim = Simulator(keys=[API_KEY], limit_per_window=None)
    with sim:
        yield sim


LIMIT, WINDOW_S = 60, 10.0  # a rate-limited key's budget: 60 requests per 10 s


@pytest.fixture
def limited() -> Iterator[Simulator]:
    """The simulator with a rate-limited key."""
    with Simulator(keys=[API_KEY], limit_per_window=LIMIT, window_s=WINDOW_S) as sim:
        yield sim


def worker_env(bootstrap: str, topic: str, group: str, url: str, **extra: str) -> dict[str, str]:
    """A worker's environment: the defaults but for the API's address and what is given."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "GR_API_KEY": API_KEY,
        "GR_BASE_URL": url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_HTTP_PORT": "0",
    }
    env.update(extra)
    return env


def backlog_settings(
    bootstrap: str, topic: str, partitions: int, url: str, events: int
) -> config.Settings:
    """A backlog of `events` transactions spread over the topic's partitions, its DLQ
    topic, and the settings of a worker of a group of its own reading it."""
    create_topic(bootstrap, f"{topic}.dlq", 1)
    produce(
        bootstrap, topic, (encode(transaction(i)) for i in range(events)), partitions=partitions
    )
    group = f"g-{uuid.uuid4().hex[:8]}"
    return config.load(worker_env(bootstrap, topic, group, url, GR_SHUTDOWN_TIMEOUT_S="5"))


SettingsFactory = Callable[..., config.Settings]


@pytest.fixture
def make_settings(bootstrap: str, simulator: Simulator) -> SettingsFactory:
    def factory(topic: str, **env: str) -> config.Settings:
        fast = {
            "GR_BATCH_LINGER_MS": "100",
            "GR_RETRY_INITIAL_S": "0.05",
            "GR_RETRY_MAX_S": "0.5",
            "GR_SHUTDOWN_TIMEOUT_S": "10",
        }
        group = f"grp-{uuid.uuid4().hex[:8]}"
        return config.load(worker_env(bootstrap, topic, group, simulator.url, **(fast | env)))

    return factory


@dataclass
class RunningWorker:
    worker: Worker
    thread: threading.Thread
    exit_code: list[int] = field(default_factory=list)

    @property
    def metrics(self) -> Metrics:
        return self.worker.metrics

    @property
    def health(self) -> Health:
        return self.worker.health

    def stop(self, timeout_s: float = 30) -> int:
        self.worker.request_stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "worker did not stop"
        return self.exit_code[0]


@pytest.fixture
def start_worker() -> Iterator[Callable[..., RunningWorker]]:
    running: list[RunningWorker] = []

    def start(settings: config.Settings, **kwargs: Any) -> RunningWorker:
        worker = Worker(settings, **kwargs)
        codes: list[int] = []
        thread = threading.Thread(target=lambda: codes.append(worker.run()), daemon=True)
        rw = RunningWorker(worker, thread, codes)
        thread.start()
        running.append(rw)
        return rw

    yield start
    for rw in running:
        if rw.thread.is_alive():
            rw.stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
