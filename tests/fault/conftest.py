"""Fault tests get a broker of their own: they stop and restart it, and SASL needs a listener."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from gr_devtools.kafka_local import LocalKafka

SASL_USER, SASL_PASSWORD = "alice", "sasl-pw-9f27c1e0b"

# CI runs the suite at a size that fits its time; GR_FAULT_SCALE=full is the manual run.
FULL = os.environ.get("GR_FAULT_SCALE", "ci") == "full"


@pytest.fixture(scope="module")
def fault_broker() -> Iterator[LocalKafka]:
    broker = LocalKafka(sasl_users={SASL_USER: SASL_PASSWORD, "admin": "admin-pw"}, sasl_tls=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.destroy()
