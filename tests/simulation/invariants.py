"""The invariants, checked as the run goes (at each commit, each answer, each loop turn)
and at its end. A broken one is recorded with the virtual time it broke at; the run
stops at the first one so the seed's report says exactly what went wrong, and when.

Black-box where it can be (what reached the API, the DLQ and the group; what
the consumer handed out), white-box only for the scheduler's fairness, which is
about the worker's own choices.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from consumer.events import Route
from consumer.ledger import UNCOMMITTED
from tests.simulation.api import ApiObserver
from tests.simulation.kafka import TOPIC, Cluster, DlqEntry, Observer
from tests.simulation.records import Rec
from tests.simulation.world import World


class Violation(BaseException):  # not an Exception: the worker must not catch it
    def __init__(self, invariant: str, detail: str, at: float) -> None:
        super().__init__(f"[{invariant}] at t={at:.3f}s: {detail}")
        self.invariant = invariant
        self.detail = detail
        self.at = at


@dataclass
class Bounds:
    max_buffered_bytes: int
    buffer_slack: int  # one fetch's worth of the largest records
    max_uncommitted: int
    batch_max_events: int
    shutdown_timeout_s: float
    ordering: str = "partition"
    held_up_s: float = 0.0  # how long a lost answer holds its partition up


@dataclass
class Checker(Observer, ApiObserver):
    world: World
    bounds: Bounds
    recs: dict[tuple[int, int], Rec] = field(default_factory=dict)
    delivered: dict[tuple[int, int], int] = field(default_factory=dict)
    safe: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    dead: dict[tuple[int, int], list[DlqEntry]] = field(default_factory=dict)
    refused_by_api: set[tuple[int, int]] = field(default_factory=set)
    # first arrivals: the highest offset first delivered per partition (or per key)
    first_high: dict[Any, int] = field(default_factory=dict)
    # held: records the consumer handed out, not finished, per owned partition
    held: dict[int, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    held_bytes: int = 0
    peak_held_bytes: int = 0
    # run-ahead: offsets finished during this ownership, per partition
    ahead: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    peak_ahead: int = 0
    owned: set[int] = field(default_factory=set)
    cluster: Cluster | None = None
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    requests: int = 0
    # fairness
    _last_job: dict[Any, Any] = field(default_factory=dict)
    _waiting: set[Any] = field(default_factory=set)
    _granted: int = 0
    starve: dict[Any, tuple[int, int, int]] = field(default_factory=dict)
    peak_starve: int = 0
    turns: int = 0
    worker: Any = None
    # when the worker could first know a record finished (its 200 or DLQ report readable)
    known_at: dict[tuple[int, int], float] = field(default_factory=dict)
    # budget use: the API (for its windows), when anything but a steady state held
    api: Any = None
    unsteady: list[tuple[float, float]] = field(default_factory=list)
    # when commits went unanswered or refused (the coordinator away, answers lost)
    commits_unanswered: list[tuple[float, float]] = field(default_factory=list)
    can_fill_budget: bool = False
    _window: int = -1
    _window_backlog: bool = False
    _window_born: float = 0.0
    budget_windows: int = 0  # windows judged
    broken: Violation | None = None  # the first invariant broken, on whichever thread

    def fail(self, invariant: str, detail: str) -> None:
        """Raise, and keep the first: one raised on another thread (the consumer's close
        runs on its own) is caught and logged there, and must still fail the seed."""
        violation = Violation(invariant, detail, self.world.now)
        if self.broken is None:
            self.broken = violation
        raise violation

    # ---- ground truth ----

    def add(self, rec: Rec) -> None:
        self.recs[(rec.partition, rec.offset)] = rec

    def finished(self, mark: tuple[int, int]) -> bool:
        return mark in self.delivered or mark in self.dead

    def _finish(self, mark: tuple[int, int]) -> None:
        p, o = mark
        size = self.held[p].pop(o, None)
        if size is not None:
            self.held_bytes -= size
        if p in self.owned:
            self.ahead[p].add(o)
            self._check_ahead(p)

    # ---- Kafka ----

    def records_returned(self, recs: list[Rec]) -> None:
        for rec in recs:
            p, o = rec.partition, rec.offset
            if p not in self.owned or self.finished((p, o)) or o in self.held[p]:
                continue
            size = rec.size + sum(len(k) + len(v or b"") for k, v in rec.headers or ())
            self.held[p][o] = size
            self.held_bytes += size
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)

    def let_go(self, partitions: list[int]) -> None:
        committed = self.cluster.committed if self.cluster is not None else {}
        for p in partitions:
            # The worker keeps what it finished of a partition it lets go as a watermark:
            # the finished prefix, no more. What it knew past a gap is forgotten with the
            # partition (a re-assignment reads it again), so it is no longer "known".
            o = max(0, committed.get(p, 0))
            while (p, o) in self.known_at:
                o += 1
            for mark in [m for m in self.known_at if m[0] == p and m[1] > o]:
                del self.known_at[mark]
            self.owned.discard(p)
            self.held_bytes -= sum(self.held[p].values())
            self.held[p].clear()
            self.ahead[p].clear()

    def assigned(self, partitions: list[int]) -> None:
        self.owned.update(partitions)

    def commit_sent(self, partition: int, offset: int, owned: bool, sync: bool) -> None:
        if not owned:
            self.fail("commit-owned", f"commit of {partition}@{offset} for a partition not owned")
        safe = self.safe[partition]
        while self.finished((partition, safe)):
            safe += 1
        self.safe[partition] = safe
        if offset > safe:
            self.fail(
                "commit-safe",
                f"commit of {partition}@{offset} while offset {safe} was neither accepted "
                "by the API nor acknowledged by the DLQ",
            )

    def commit_applied(self, partition: int, offset: int) -> None:
        ahead = self.ahead[partition]
        for o in [o for o in ahead if o < offset]:
            ahead.discard(o)

    def _check_ahead(self, p: int) -> None:
        n = len(self.ahead[p])
        self.peak_ahead = max(self.peak_ahead, n)
        b = self.bounds
        if n > b.max_uncommitted + b.batch_max_events + 200 + 1:
            self.fail(
                "run-ahead",
                f"partition {p}: {n} events finished past the group's offset "
                f"(bound {b.max_uncommitted} + one batch + one fetch)",
            )

    def dlq_acked(self, entry: DlqEntry) -> None:
        topic = entry.header("gr.dlq.source.topic")
        part = entry.header("gr.dlq.source.partition")
        off = entry.header("gr.dlq.source.offset")
        if topic != TOPIC.encode() or part is None or off is None:
            self.fail("dlq-headers", f"a DLQ record without its source: {entry.headers[-8:]!r}")
        mark = (int(part or b"-1"), int(off or b"-1"))
        rec = self.recs.get(mark)
        if rec is None:
            self.fail("dlq-headers", f"a DLQ record naming an unknown source {mark}")
            return
        reason = (entry.header("gr.dlq.reason") or b"").decode()
        original = (entry.header("gr.dlq.original.reason") or b"").decode()
        if rec.expect == "deliver":
            self.fail("no-valid-in-dlq", f"valid record {mark} dead-lettered as {reason}")
        if reason != rec.expect and original != rec.expect:
            self.fail("dlq-reason", f"record {mark} dead-lettered as {reason}, not {rec.expect}")
        if reason == "too_large" and original:
            if not (rec.value or b"").startswith(entry.value or b""):
                self.fail("dlq-value", f"record {mark}: the cut copy is not a prefix of its value")
        elif entry.value != rec.value or entry.key != rec.key:
            self.fail("dlq-value", f"record {mark}: the DLQ copy changed its key or value")
        if not original:
            kept = [h for h in entry.headers if not h[0].startswith("gr.dlq.")]
            want = [h for h in rec.headers or () if not h[0].startswith("gr.dlq.")]
            if kept != want:
                self.fail("dlq-headers", f"record {mark}: original headers not kept as they were")
        first = mark not in self.dead
        self.dead.setdefault(mark, []).append(entry)
        if first:
            self._finish(mark)

    # ---- the API ----

    def accepted(self, marks: list[tuple[int, int]], route: Route) -> None:
        for mark in marks:
            rec = self.recs.get(mark)
            if rec is None:
                self.fail("api-events", f"the API accepted an event with unknown mark {mark}")
                return
            if rec.expect != "deliver":
                self.fail("api-events", f"the API accepted {mark}, which must be {rec.expect}")
            if mark in self.delivered:
                self.delivered[mark] += 1
                continue
            self.delivered[mark] = 1
            self._order(rec)
            self._finish(mark)

    def _order(self, rec: Rec) -> None:
        key: Any = rec.partition
        if self.bounds.ordering == "key":
            key = (rec.partition, rec.key)  # records without a key share the null key
        high = self.first_high.get(key, -1)
        if rec.offset < high:
            self.fail(
                "order",
                f"first arrival of {rec.partition}@{rec.offset} after {rec.partition}@{high}"
                + (f" (key {rec.player})" if isinstance(key, tuple) else ""),
            )
        self.first_high[key] = max(high, rec.offset)

    def refused(self, mark: tuple[int, int] | None, status: int) -> None:
        if mark is not None:
            self.refused_by_api.add(mark)

    def answered(self, status: int, events: int) -> None:
        self.requests += 1
        self.statuses[status] += 1

    def violation(self, what: str) -> None:
        self.fail("request-shape", what)

    def held_up(self) -> None:
        """A partition waits for a lost answer's timeout and the retry after it: not the
        pacer's doing, so the windows it spans are not judged for budget use."""
        now = self.world.now
        self.unsteady.append((now, now + self.bounds.held_up_s))

    def known(self, marks: list[tuple[int, int]]) -> None:
        now = self.world.now
        for mark in marks:
            self.known_at.setdefault(mark, now)

    def dlq_known(self, entry: DlqEntry) -> None:
        part = entry.header("gr.dlq.source.partition")
        off = entry.header("gr.dlq.source.offset")
        if part is not None and off is not None:
            self.known_at.setdefault((int(part), int(off)), self.world.now)

    def all_committed(self) -> bool:
        """The worker believes nothing it finished is left uncommitted (its stop's last
        commit was answered): then whatever it knew by now must be in the group."""
        worker = self.worker
        return worker is not None and not worker._ledger.uncommitted()

    def let_go_cleanly(self, commits_at: dict[int, float], started: float) -> None:
        """A partition let go cleanly (revoked, or the worker stopped): what the worker knew
        was finished when it last committed is committed, so the next owner resends none of it."""
        cluster = self.cluster
        assert cluster is not None
        if not cluster.coordinator_up or cluster.commit_refuse_rate or cluster.commit_silence_rate:
            return
        for p, at in commits_at.items():
            if at < 0:
                continue  # that commit was refused
            if any(start <= at <= end for start, end in self.commits_unanswered):
                continue  # sent while commits went unanswered: the stop could not wait it out
            base = cluster.committed.get(p, 0)
            o = base
            while self.known_at.get((p, o), float("inf")) <= at:
                o += 1
            if o > base:
                self.fail(
                    "let-go-complete",
                    f"partition {p} let go at {base} though the worker knew by t={at:.3f}s that "
                    f"offsets {base}..{o - 1} were finished: the next owner resends them",
                )

    # ---- every loop turn ----

    def turn(self) -> None:
        """Called at each consume: once per loop turn, drain and rebalances included."""
        worker = self.worker
        if worker is None:
            return
        self.turns += 1
        b = self.bounds
        if self.held_bytes > b.max_buffered_bytes + b.buffer_slack:
            self.fail(
                "memory",
                f"{self.held_bytes} bytes of records held, over GR_MAX_BUFFERED_BYTES "
                f"{b.max_buffered_bytes} + one fetch ({b.buffer_slack})",
            )
        self._fairness(worker)
        self._budget(worker)
        live, why = worker.health.live()
        if not live:
            self.fail("liveness", f"/healthz would fail, and the pod restart: {why}")

    def _fairness(self, worker: Any) -> None:
        """A partition with a due batch and no request in flight waits for at most as many
        grants of a request slot to other partitions as the worker owns partitions.

        Judged at each turn that granted slots (a partition can only be passed over then)."""
        ledger = worker._ledger
        if ledger.granted == self._granted:
            return
        grants = ledger.granted - self._granted
        self._granted = ledger.granted
        now = ledger.granted_at  # the turn's time: the ledger judged what was due then
        halted = worker.health.halted or ledger.draining
        bound = len(ledger.parts)
        starve = self.starve
        waiting = set()
        for tp, part in ledger.parts.items():
            job = part.in_flight
            newest = part.sessions[-1] if part.sessions else None
            if (job is not None and job is not self._last_job.get(tp)) or (
                newest is not None and newest is not self._last_job.get((tp, "session"))
            ):
                self._last_job[tp] = job  # served: its batch, or a session event beside it
                self._last_job[(tp, "session")] = newest
                continue
            if (
                halted
                or job is not None
                or part.retry_batch is not None
                or part.blocked  # key order: every event waiting has a key in flight
                or UNCOMMITTED in part.reasons
                or ledger._too_far_ahead(part, ledger.max_uncommitted, now)
                or part.batcher.due_in(now) != 0
            ):
                continue  # not waiting for a slot
            waiting.add(tp)
            # passed over for this turn's grants, if it was already waiting at the last one;
            # the bound is the most partitions owned meanwhile (a revoke shortens the queue)
            # ...in this ownership: a partition let go and assigned again starts afresh
            before = starve.get(tp) if tp in self._waiting else None
            if before is None or before[2] != part.generation:
                before = (-grants, bound, part.generation)
            n, most = before[0] + grants, max(before[1], bound)
            starve[tp] = (n, most, part.generation)
            self.peak_starve = max(self.peak_starve, n)
            if n > most:
                self.fail(
                    "fairness",
                    f"partition {tp[1]} has had a due batch and no slot while {n} request "
                    f"slots went to other partitions (it owned at most {most})",
                )
        for tp in [tp for tp in starve if tp not in waiting]:
            del starve[tp]
        self._waiting = waiting

    def _budget(self, worker: Any) -> None:
        """A worker with a backlog uses its share of the key: in a steady window (no fault,
        no change of the key's other users for two windows before), with full batches waiting
        all window long, it sends at least half of what the others leave of the budget. (A share learnt while the others were busy once stuck near 1/64.)"""
        api = self.api
        if api is None or api.limit is None or not self.can_fill_budget:
            return
        now = self.world.now
        window = api.window_of(now)
        if window != self._window:
            self._judge_window(self._window)
            self._window = window
            self._window_backlog = True
        if not self._window_backlog:
            return
        ledger = worker._ledger
        need = 2 * ledger._max_events  # full batches waiting: only the pacer holds them back
        held = 0
        for part in ledger.parts.values():
            if UNCOMMITTED in part.reasons or part.dlq_unacked:
                self._window_backlog = False
                return
            held += part.batcher.pending_events
        if held < need or worker.health.halted or ledger.draining:
            self._window_backlog = False

    def _judge_window(self, window: int) -> None:
        api = self.api
        if window < 0 or not self._window_backlog:
            return
        w = api.window_s
        start, end = window * w, (window + 1) * w
        if start < self._window_born + 2 * w:
            return  # the worker's first windows: its pacer is still learning
        for a, b in self.unsteady:
            if a < end and b > start - 2 * w:
                return
        left = api.limit * (1 - api.others_share)
        ours = api.ours_in_window.get(window, 0)
        self.budget_windows += 1
        if ours < 0.5 * left:
            self.fail(
                "budget-use",
                f"window {window} ({start:.0f}-{end:.0f}s): {ours} requests with a backlog, "
                f"of the {left:.0f} the key's other users left",
            )

    def worker_started(self, worker: Any) -> None:
        self.worker = worker
        self.known_at.clear()  # a new process: it knows nothing the last one learnt
        self._window_born = self.world.now
        self._window = -1

    # ---- at the end ----

    def final(self, cluster: Cluster) -> None:
        for mark, rec in self.recs.items():
            if rec.expect == "deliver":
                if mark not in self.delivered:
                    self.fail("delivered", f"valid record {mark} never reached the API")
            elif mark not in self.dead:
                self.fail("dead-lettered", f"record {mark} ({rec.expect}) not in the DLQ")
        ends = cluster.end_offsets()
        for p, end in enumerate(ends):
            if cluster.committed.get(p, 0) != end:
                self.fail(
                    "committed", f"partition {p}: group at {cluster.committed.get(p)} of {end}"
                )
