"""A partition's waiting events when the order kept is each key's, not the whole partition's.

A record is sent after every earlier record with the same Kafka key in its
partition has been accepted (or refused and dead-lettered); other keys' events
do not wait for it. Records without a key keep partition order among
themselves (they share the null key).

So a session event (sent alone, to its own endpoint) no longer cuts its
partition's batch: it waits for its player's earlier events, its player's
later events wait for it, and every other player's events keep filling the
batch. With a share `f` of session events, requests per event fall from
about `2f` (each session event cuts a part-full batch) to `f + (1 - f)/100`.

The partition keeps at most one batch request in flight (its order among
batches, and a 400's isolation, as before) and, beside it, any number of
session requests for keys that have nothing earlier waiting or in flight.
Which keys are busy (an event in flight) the ledger says; this module
chooses, in partition order, what may go now.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Container
from itertools import islice, repeat
from operator import itemgetter

from consumer.batching import Batch, Item, PartitionBatcher, Ref, body_size
from consumer.events import Route

# How far past the head a cut looks for events free to go: a bound on the work per
# request when many keys at the head are busy (they are looked at again next time).
_LOOK_AHEAD = 8
_RAW = itemgetter(1)  # Item.raw, read in C


class KeyOrderBatcher(PartitionBatcher[Ref]):
    """The waiting events of one partition, cut into requests that keep each key's order.

    The queue and its counts are PartitionBatcher's; what differs is when a batch is
    due and how it is cut."""

    __slots__ = ("_look", "_wait_until")

    def __init__(self, max_events: int, max_bytes: int, linger_s: float) -> None:
        super().__init__(max_events, max_bytes, linger_s)
        self._look = False  # a session event may be free to go: look for one
        # a part-full batch waits until then for session requests in flight, whose
        # answers free their keys' later events to join it (0: not waiting)
        self._wait_until = 0.0

    def add_many(self, items: list[Item[Ref]], payload_bytes: int, sessions: int) -> None:
        super().add_many(items, payload_bytes, sessions)
        self._look = self._look or bool(sessions)

    def push_front(self, items: list[Item[Ref]]) -> None:
        """Events handed back unsent (after a refused one was isolated): first again, in order."""
        super().push_front(items)
        self._look = True

    @property
    def requests_needed(self) -> int:
        """About how many requests carry what waits here: one per session event, the
        fewest for the rest (a key waiting for its session event may need one more)."""
        return self._batch_requests() + self._sessions

    def due_in(self, now: float) -> float | None:
        """Seconds until a batch is due (0: now); None when nothing waits. Full by count or
        bytes, or its oldest event's linger is over. (Session events are looked at on every
        turn by `take_sessions`: they go as soon as their key is free, not on a timer.)"""
        if not self._items:
            return None
        if (
            len(self._items) >= self._max_events
            or body_size(len(self._items), self._bytes) >= self._max_bytes
        ):
            return 0.0
        due = max(0.0, self._items[0].arrived + self._linger_s - now)
        return max(due, self._wait_until - now)

    # ---- cutting requests in key order ----

    def take_offset(self, offset: int) -> Item[Ref] | None:
        """That one event, wherever it waits (the partition's commit waits for it, and the
        run-ahead bound holds everything else back); None when it does not wait here."""
        for index, item in enumerate(self._items):
            if item.offset == offset:
                del self._items[index]
                self._bytes -= len(item.raw)
                if item.route is not Route.BATCH:
                    self._sessions -= 1
                return item
        return None

    def keys_freed(self) -> None:
        """Something of this partition's came back: a session event may be free now, and
        a batch waiting for answers may take the events they freed."""
        self._look = True
        self._wait_until = 0.0

    def take_sessions(self, busy: Container[bytes | None], limit: int) -> list[Item[Ref]]:
        """Session events free to go now, each as a request of its own: the first waiting
        event of its key, whose key has nothing in flight (`busy`). At most `limit`.

        Looked for only when something changed since the last look (events came, keys
        were freed): on every loop turn it would be a scan of the queue each time."""
        if not self._sessions or limit <= 0 or not self._look:
            return []
        seen: set[bytes | None] = set()
        free: list[Item[Ref]] = []
        kept: list[Item[Ref]] = []
        scanned = 0
        batch_route = Route.BATCH
        for item in islice(self._items, _LOOK_AHEAD * self._max_events):
            key = item.key
            scanned += 1
            if item.route is not batch_route and key not in seen and key not in busy:
                free.append(item)
                if len(free) >= limit:
                    break
            else:
                kept.append(item)
            seen.add(key)
        self._look = len(free) >= limit  # more may be free: look again next time
        if free:
            items = self._items
            for _ in range(scanned):
                items.popleft()
            items.extendleft(reversed(kept))
            self._bytes -= sum(map(len, map(_RAW, free)))
            self._sessions -= len(free)
        return free

    def _wait_for_answers(self, now: float) -> bool:
        """Whether a part-full batch waits for the answers in flight: for one linger at
        most from when it first would have gone, again after each answer (a session
        request's answer frees its key's later events to join it; cut at once, the
        tail of a drain sent a partition's last events in three or four part-full
        requests where one or two carried them)."""
        if self._wait_until == 0.0:
            self._wait_until = now + self._linger_s
        return now < self._wait_until

    def take(
        self, now: float, flush: bool = False, busy: Container[bytes | None] = ()
    ) -> Batch[Ref] | None:
        """The next batch request if one is due (or `flush`): batch events in partition
        order whose key has nothing earlier in flight (`busy`) or waiting behind a
        session event or a busy key; those stay, in order, for a later request."""
        due = self.due_in(now)
        if due is None or (due > 0 and not flush):
            return None
        items = self._items
        limit, room = self._max_events, self._max_bytes
        if not self._sessions and not busy:
            # nothing can hold an event back: the head of the queue, as in partition
            # order, counted in C
            n = min(len(items), limit)
            taken = list(islice(items, n))
            payload = sum(map(len, map(_RAW, taken)))
            if body_size(n, payload) <= room:
                popleft = items.popleft
                for _ in repeat(None, n):
                    popleft()
                self._bytes -= payload
                return Batch(Route.BATCH, taken, payload)
        blocked: set[bytes | None] = set()
        taken = []
        kept: list[Item[Ref]] = []
        size = body_size(0, 0)  # grows as body_size does: each event's bytes and one
        look = _LOOK_AHEAD * limit
        scanned = 0
        batch_route = Route.BATCH
        full = False
        in_flight_holds = False  # an event waits for a request in flight
        for item in items:
            if len(taken) >= limit or scanned >= look:
                full = len(taken) >= limit
                break
            key = item.key
            if item.route is not batch_route or key in blocked or key in busy:
                in_flight_holds = in_flight_holds or key in busy
                blocked.add(key)  # later events of its key wait for it
                kept.append(item)
                scanned += 1
                continue
            grown = size + len(item.raw) + 1
            if grown > room:
                full = True
                break
            size = grown
            taken.append(item)
            scanned += 1
        if not taken:
            return None
        if in_flight_holds and not full and not flush and self._wait_for_answers(now):
            return None
        self._wait_until = 0.0
        for _ in range(scanned):
            items.popleft()
        items.extendleft(reversed(kept))
        payload = sum(map(len, map(_RAW, taken)))
        self._bytes -= payload
        return Batch(Route.BATCH, taken, payload)
