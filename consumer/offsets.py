"""Which offset of a partition may be committed: the one rule of at-least-once.

A record counts as finished when the API accepted it (200) or the DLQ
acknowledged it. The committable offset is one past the longest finished
prefix of what was read: everything below it is finished, so committing it
loses nothing, whatever order deliveries and DLQ acknowledgements come back in.
Pure bookkeeping, no Kafka: the worker feeds it and commits what it says.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class PartitionOffsets:
    """Offsets read from one partition and not yet finished, in read order."""

    __slots__ = ("_committed", "_done", "_last_read", "_outstanding")

    def __init__(self) -> None:
        self._outstanding: deque[int] = deque()
        self._done: set[int] = set()
        self._last_read: int | None = None
        self._committed: int | None = None

    def read(self, offset: int) -> None:
        """Register a record as read; offsets must grow (gaps are fine: compaction)."""
        self.read_many([offset])

    def read_many(self, offsets: list[int]) -> None:
        """`read` for a run of offsets from one fetch, growing, in the order read."""
        if not offsets:
            return
        first = offsets[0]
        if self._last_read is not None and first <= self._last_read:
            raise ValueError(f"offset {first} read after {self._last_read}")
        if self._last_read is None and self._committed is None:
            # Where reading started is where the group already stands: committing
            # it again says nothing new, so it is not worth a commit.
            self._committed = first
        self._last_read = offsets[-1]
        self._outstanding.extend(offsets)

    def finish(self, offset: int) -> None:
        if self._last_read is None or offset > self._last_read:
            return  # never read here (a stale callback): nothing to finish
        if not self._outstanding or offset < self._outstanding[0]:
            return  # finished already (a second acknowledgement): kept, it would count for ever
        self._done.add(offset)
        self._advance()

    def finish_many(self, offsets: Iterable[int]) -> None:
        outstanding, done = self._outstanding, self._done
        it = iter(offsets)
        if not done:
            # The usual case: a delivered batch is the head of what is
            # outstanding, in order; pop it without going through the set.
            for offset in it:
                if outstanding and outstanding[0] == offset:
                    outstanding.popleft()
                else:
                    done.add(offset)
                    break
        done.update(it)
        self._advance()

    def _advance(self) -> None:
        outstanding, done = self._outstanding, self._done
        while outstanding and outstanding[0] in done:
            done.discard(outstanding.popleft())

    @property
    def committable(self) -> int | None:
        """The offset to commit (the next one to read), or None before the first read.

        With records outstanding it is the first unfinished one: everything
        below it is finished, or was below where reading started.
        """
        if self._outstanding:
            return self._outstanding[0]
        return None if self._last_read is None else self._last_read + 1

    @property
    def outstanding(self) -> int:
        """Records read but not yet finished (the commit lag, in records)."""
        return len(self._outstanding)

    @property
    def last_read(self) -> int | None:
        return self._last_read

    def mark_committed(self, offset: int) -> None:
        """The group holds `offset` now (a confirmation never moves it back)."""
        if self._committed is None or offset > self._committed:
            self._committed = offset

    def group_went_back(self, offset: int | None) -> None:
        """The group holds less than was confirmed (an older commit applied after a
        newer one, or expired): what is committable is due again. The one way back."""
        self._committed = offset

    def start_at(self, first: int, committed: int | None) -> None:
        """Count everything below `first` as finished, before anything was read.

        A partition this worker delivered up to `first` and then lost comes back
        with the group at `committed`: it commits `first` without resending.
        """
        if self._last_read is not None:
            raise ValueError("start_at after records were read")
        self._last_read = first - 1
        self._committed = committed

    @property
    def finished_uncommitted(self) -> int:
        """Records finished (delivered or dead-lettered) that no commit covers yet.

        Counted in offsets, so a compacted gap counts too: an upper bound.
        """
        if self._last_read is None:
            return 0
        head = self.committable
        base = self._committed if self._committed is not None else head
        return max(0, (head or 0) - (base or 0)) + len(self._done)

    @property
    def committed(self) -> int | None:
        return self._committed

    def needs_commit(self) -> int | None:
        """The committable offset if it moved past the last commit, else None."""
        target = self.committable
        if target is None or (self._committed is not None and target <= self._committed):
            return None
        return target
