"""A delivery job and its result: what the ledger hands out and gets back.

Plain data, no I/O and no threads, so the ledger (pure bookkeeping) can hold
jobs without importing how they are carried out (`delivery`, `dispatch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic

from consumer.batching import Batch, Item, Ref


@dataclass(frozen=True, slots=True)
class Rejection(Generic[Ref]):
    """An event the API refused on its own: to the DLQ with the API's status and answer."""

    item: Item[Ref]
    status: int
    detail: str


@dataclass(slots=True, eq=False)
class DeliveryJob(Generic[Ref]):
    """One batch of one partition on its way to the API."""

    key: Any  # the worker's partition key, (topic, partition)
    batch: Batch[Ref]
    generation: int = 0
    # the worker gave up on it (partition revoked, stop): no new request goes out
    cancelled: bool = False


@dataclass(slots=True)
class DeliveryResult(Generic[Ref]):
    """What became of a job's events. Filled in as answers arrive, so a job given up
    half-way still says which of its events the API accepted before it stopped."""

    job: DeliveryJob[Ref]
    accepted: list[Item[Ref]] = field(default_factory=list)
    rejected: list[Rejection[Ref]] = field(default_factory=list)
    # events handed back unsent, in order, for the partition's next request
    unsent: list[Item[Ref]] = field(default_factory=list)
    requests: int = 0
    # requests spent finding refused events after a batch's 400 (the 400 itself included)
    isolation_requests: int = 0
    abandoned: bool = False
    error: BaseException | None = None
