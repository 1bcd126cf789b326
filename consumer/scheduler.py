"""Who gets the next free request slot: the partitions in turn, whoever was served goes last.

A worker usually owns more partitions than it has request slots
(`GR_MAX_IN_FLIGHT`), and under a backlog every partition has a batch due.
Walking the partitions in the same order every time hands each freed slot to
the first partitions of the list, and the last ones starve. Here the order
rotates: a partition served moves to the back, one passed over keeps its
place ahead of every partition served after it. So a partition with a batch
due is passed over for at most one grant to each other partition: with N
partitions owned it has a slot within N - 1 grants, and under a backlog the
requests per partition are equal to within one.

Pure: the ledger asks who is next and says who was served.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class RoundRobin(Generic[K]):
    """The rotation of the keys (partitions) the worker owns."""

    __slots__ = ("_order",)

    def __init__(self) -> None:
        self._order: dict[K, None] = {}  # insertion-ordered: the front is served first

    def add(self, key: K) -> None:
        """A new partition joins at the back."""
        self._order.setdefault(key, None)

    def discard(self, key: K) -> None:
        self._order.pop(key, None)

    def served(self, key: K) -> None:
        """It got a slot: to the back of the rotation."""
        if self._order.pop(key, 0) is None:
            self._order[key] = None

    def __iter__(self) -> Iterator[K]:
        """Front first; a snapshot, so `served` may be called while iterating."""
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)
