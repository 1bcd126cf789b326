"""Partitions the worker owns that librdkafka never started fetching.

After an assignment librdkafka looks up the group's committed offsets
(OffsetFetch) before it fetches. When the group coordinator answers that
request with an error for the whole request (NOT_COORDINATOR or
COORDINATOR_NOT_AVAILABLE: a coordinator that has just moved, or whose broker
is restarting), librdkafka 2.16 neither retries nor starts fetching. The
partition stays assigned and unread, its lag grows, nothing is logged, and
every later assignment's look-up waits behind it, until the process restarts.

librdkafka's statistics show such a partition in fetch state "none" (or
"stopped", when it was fetched in an earlier assignment). `FetchWatch` notes,
report by report, since when each owned partition has been so; one still so
after `stuck_after_s` is named, and the worker assigns it again, which makes
librdkafka look its offsets up afresh. Only a fresh report names one, never
the passing of time alone, so a partition that started since the last report
is never taken for stuck.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from consumer.rdkafka_stats import partition_reports

TP = tuple[str, int]

# An offset look-up takes milliseconds; one that has not happened in this long
# is not coming. Three default statistics intervals.
STUCK_AFTER_S = 15.0
_NOT_STARTED = frozenset({"none", "stopped"})


def fetch_states(doc: Mapping[str, Any]) -> dict[TP, str]:
    """Each partition's fetch state in one statistics report."""
    out: dict[TP, str] = {}
    for topic, partition, pdoc in partition_reports(doc):
        state = pdoc.get("fetch_state")
        if isinstance(state, str):
            out[(topic, partition)] = state
    return out


class FetchWatch:
    def __init__(self, stuck_after_s: float = STUCK_AFTER_S) -> None:
        self.stuck_after_s = stuck_after_s
        self._since: dict[TP, float] = {}  # first report that showed it not fetching

    def observe(self, states: Mapping[TP, str], owned: Collection[TP], now: float) -> list[TP]:
        """Take in one report; the owned partitions it shows stuck."""
        for tp in [tp for tp in self._since if tp not in owned]:
            del self._since[tp]
        stuck = []
        for tp in owned:
            state = states.get(tp)
            if state is None:
                continue
            if state in _NOT_STARTED:
                since = self._since.setdefault(tp, now)
                if now - since >= self.stuck_after_s:
                    stuck.append(tp)
            else:
                self._since.pop(tp, None)
        return sorted(stuck)

    def assigned_again(self, tps: Iterable[TP], now: float) -> None:
        """These were assigned again now: give the new look-up its full time."""
        for tp in tps:
            self._since[tp] = now

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._since.pop(tp, None)
