"""Per-partition batches, built without I/O.

A partition's valid events wait here in read order. `take()` hands out the next
request when it is due: full by count or bytes, its linger time run out, a
session event waiting behind it (a barrier: what comes before a session event
is sent first, then the session event alone), or a flush. The worker keeps one
request in flight per partition, so the API sees each partition in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container
from dataclasses import dataclass
from itertools import islice, repeat
from operator import itemgetter
from typing import Generic, NamedTuple, TypeVar

from consumer.events import Route

Ref = TypeVar("Ref")

_PREFIX = b'{"events":['
_SUFFIX = b"]}"
# bytes a batch body adds around n events: prefix, suffix and n-1 commas
WRAPPER_BYTES = len(_PREFIX) + len(_SUFFIX) - 1


def batch_body(raws: list[bytes]) -> bytes:
    """The request body: each event's validated original bytes, spliced, never re-encoded."""
    return _PREFIX + b",".join(raws) + _SUFFIX


def body_size(count: int, payload_bytes: int) -> int:
    return WRAPPER_BYTES + payload_bytes + count


class Item(NamedTuple, Generic[Ref]):
    """One valid event: its offset, original bytes, where it goes, and the caller's handle.

    A NamedTuple: one is made per event, and a tuple is the cheapest immutable
    record Python has (a frozen dataclass costs several times more to build).
    """

    offset: int
    raw: bytes
    route: Route
    ref: Ref
    arrived: float
    key: bytes | None = None  # the record's Kafka key: what key order is kept by


_RAW = itemgetter(1)  # Item.raw, read in C


@dataclass(slots=True)
class Batch(Generic[Ref]):
    """One request's worth of events, in partition order."""

    route: Route
    items: list[Item[Ref]]
    payload_bytes: int = -1  # the events' bytes, without the wrapper (-1: count them)

    def __post_init__(self) -> None:
        if self.payload_bytes < 0:
            self.payload_bytes = sum(len(i.raw) for i in self.items)

    @property
    def body(self) -> bytes:
        if self.route is Route.BATCH:
            return batch_body(list(map(_RAW, self.items)))
        return self.items[0].raw

    @property
    def offsets(self) -> list[int]:
        return [i.offset for i in self.items]

    def split(self) -> tuple[Batch[Ref], Batch[Ref]]:
        """Two halves, in order, for finding the events a 400 rejected."""
        mid = len(self.items) // 2
        head, tail = self.items[:mid], self.items[mid:]
        head_bytes = sum(len(i.raw) for i in head)
        return (
            Batch(self.route, head, head_bytes),
            Batch(self.route, tail, self.payload_bytes - head_bytes),
        )


class PartitionBatcher(Generic[Ref]):
    """The waiting events of one partition and the rules for cutting requests."""

    __slots__ = ("_bytes", "_items", "_linger_s", "_max_bytes", "_max_events", "_sessions")

    def __init__(self, max_events: int, max_bytes: int, linger_s: float) -> None:
        if not 1 <= max_events <= 100:
            raise ValueError("max_events must be 1..100")
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._linger_s = linger_s
        self._items: deque[Item[Ref]] = deque()
        self._bytes = 0
        self._sessions = 0

    def add(self, item: Item[Ref]) -> None:
        """One event, checked against the byte cap; then the same path as a run."""
        if body_size(1, len(item.raw)) > self._max_bytes:
            raise ValueError(f"event of {len(item.raw)} bytes can never fit the byte cap")
        self.add_many([item], len(item.raw), 0 if item.route is Route.BATCH else 1)

    def add_many(self, items: list[Item[Ref]], payload_bytes: int, sessions: int) -> None:
        """`add` for a run of events, with their total bytes and how many are session events.

        No per-event size check: the caller's decoder refuses events that
        could not fit a request on their own (configuration makes sure).
        """
        self._items.extend(items)
        self._bytes += payload_bytes
        self._sessions += sessions

    def push_front(self, items: list[Item[Ref]]) -> None:
        """Put events handed back unsent (after a refused one was isolated) at the head,
        in order: they go out first, in the next request, topped up with newer events."""
        self._items.extendleft(reversed(items))
        self._bytes += sum(map(len, map(_RAW, items)))
        self._sessions += sum(1 for item in items if item.route is not Route.BATCH)

    @property
    def pending_events(self) -> int:
        return len(self._items)

    @property
    def requests_needed(self) -> int:
        """About how many requests carry what waits here: the fewest for its batch events
        (by count or bytes) and one per session event, and in partition order each
        session event may cut a batch short too."""
        return self._batch_requests() + 2 * self._sessions

    def _batch_requests(self) -> int:
        n = len(self._items) - self._sessions
        if n <= 0:
            return 0
        # by bytes: as many events of the mean size as fit a body (sessions count in the
        # mean too: near enough)
        mean = self._bytes / len(self._items) + 1  # an event and its comma
        per_request = min(self._max_events, max(1, int((self._max_bytes - WRAPPER_BYTES) / mean)))
        return -(-n // per_request)

    @property
    def head_offset(self) -> int | None:
        """The offset of the oldest event waiting, None when none is."""
        return self._items[0].offset if self._items else None

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def due_in(self, now: float) -> float | None:
        """Seconds until the head batch is due (0 when due now); None when empty."""
        if not self._items:
            return None
        if (
            self._sessions
            or len(self._items) >= self._max_events
            or body_size(len(self._items), self._bytes) >= self._max_bytes
        ):
            return 0.0
        return max(0.0, self._items[0].arrived + self._linger_s - now)

    def keys_freed(self) -> None:
        """Key order's: nothing to do in partition order."""

    def take_sessions(self, _busy: Container[bytes | None], _limit: int) -> list[Item[Ref]]:
        """Partition order sends a session event in turn, as `take` cuts it: none beside."""
        return []

    def take(
        self, now: float, flush: bool = False, _busy: Container[bytes | None] = ()
    ) -> Batch[Ref] | None:
        """The next request if it is due (or `flush`), removed from the queue (`_busy` is
        for key order's batcher: partition order keeps one request in flight)."""
        due = self.due_in(now)
        if due is None or (due > 0 and not flush):
            return None
        items = self._items
        if not self._sessions:
            # No session event waiting: the head batch is the first max_events
            # events unless the byte cap cuts it first. Counted in C, popped in
            # one sweep, instead of a Python step per event.
            n = min(len(items), self._max_events)
            taken = list(islice(items, n))
            payload = sum(map(len, map(_RAW, taken)))
            if body_size(n, payload) <= self._max_bytes:
                popleft = items.popleft
                for _ in repeat(None, n):
                    popleft()
                self._bytes -= payload
                return Batch(Route.BATCH, taken, payload)
        head = items.popleft()
        if head.route is not Route.BATCH:
            self._sessions -= 1
            self._bytes -= len(head.raw)
            return Batch(head.route, [head], len(head.raw))
        taken = [head]
        size = body_size(1, len(head.raw))
        room = self._max_bytes
        limit = self._max_events
        batch_route = Route.BATCH
        popleft, append = items.popleft, taken.append
        while items and len(taken) < limit:
            nxt = items[0]
            if nxt.route is not batch_route:
                break
            grown = size + len(nxt.raw) + 1
            if grown > room:
                break
            size = grown
            append(popleft())
        payload = size - WRAPPER_BYTES - len(taken)
        self._bytes -= payload
        return Batch(Route.BATCH, taken, payload)

    def clear(self) -> list[Item[Ref]]:
        """Drop everything (partition revoked); returns what was dropped."""
        dropped = list(self._items)
        self._items.clear()
        self._bytes = 0
        self._sessions = 0
        return dropped
