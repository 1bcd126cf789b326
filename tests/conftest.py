"""Shared fixtures: one real Kafka cluster per test session, unique topics per test.

The cluster comes from `gr_devtools.kafka_local.open_cluster`: the one
named by `KAFKA_BOOTSTRAP_SERVERS`, else testcontainers when Docker runs, else
a local Apache Kafka process. It starts only when a test asks for it, so the
unit tests never wait for a broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from gr_devtools.kafka_local import Cluster, LocalKafka, create_topic, open_cluster
from tests.support.procs import kill_leftovers


@pytest.fixture(autouse=True)
def _no_leftover_workers() -> Iterator[None]:
    """A failed test must not leave worker processes behind to skew the next ones."""
    yield
    kill_leftovers()


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[Cluster]:
    with open_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def bootstrap(kafka_cluster: Cluster) -> str:
    return kafka_cluster.bootstrap


@pytest.fixture(scope="session")
def local_broker(kafka_cluster: Cluster) -> LocalKafka:
    """The local broker itself, for tests that stop and restart it."""
    if kafka_cluster.local is None:
        pytest.skip(f"needs the local broker (this run uses a {kafka_cluster.kind} cluster)")
    return kafka_cluster.local


TopicFactory = Callable[..., str]


@pytest.fixture
def make_topic(bootstrap: str, request: pytest.FixtureRequest) -> TopicFactory:
    """Create a fresh topic named after the test; returns its name."""

    def factory(partitions: int = 1, prefix: str | None = None, **config: str) -> str:
        base = prefix or request.node.name.replace("[", "-").replace("]", "")[:80]
        name = f"{base}-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, name, partitions, **config)
        return name

    return factory
