"""Carrying out deliveries on the worker's loop: the HTTP transport, the pacer, the timers.

Each job is a `delivery` generator. The dispatcher runs it until it asks for
something: a request (`Send`: a slot from the pacer, then the transport, a
libcurl multi handle that needs no thread) or a wait (`Sleep`: a timer). It
resumes the generator when the answer arrives or the timer is due, always on
the loop's thread, in an order fixed by the answers and the clock alone. A job
given up (`cancel`) is not resumed past the request it has on the wire: that
request's answer is still read, so what the API accepted is known before the
partition is let go; `abort` drops the request instead (the stop's last resort).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Generic, Protocol, TypeVar

from consumer.clock import Clock
from consumer.config import Settings
from consumer.delivery import Delivery, Run, Send, Sleep
from consumer.errors import TransportError
from consumer.events import Route
from consumer.jobs import DeliveryJob, DeliveryResult
from consumer.observe import Health, Metrics
from consumer.pacing import Pacer
from consumer.s2s import Response, S2SClient, S2SMulti

T = TypeVar("T")


class Transport(Protocol[T]):
    """The API as the dispatcher uses it: requests in flight without blocking.

    `S2SMulti` (libcurl) in production; a simulated API in the simulation.
    """

    @property
    def active(self) -> int: ...
    def start(self, route: Route, body: bytes, token: T) -> None: ...
    def send(self) -> None: ...
    def poll(self) -> list[tuple[T, Response | TransportError]]: ...
    def wait(self, timeout_s: float) -> None: ...
    def abort(self, token: T) -> bool: ...
    def reload_key(self) -> None: ...
    def close(self) -> None: ...


class DispatchObserver(Protocol):
    def on_request(self, events: int) -> None: ...
    def on_budget_wait(self, seconds: float) -> None: ...


_IDLE, _PACED, _SLEEPING, _WIRE = range(4)
_REPACE_S = 0.5  # a request waiting for the key's budget looks again at least this often


class _Running(Generic[T]):
    """One job being delivered: its generator, its result so far, what it waits on."""

    __slots__ = ("gen", "job", "paced_since", "pending", "result", "state", "timer")

    def __init__(self, job: DeliveryJob[Any], result: DeliveryResult[Any], gen: Run) -> None:
        self.job = job
        self.result = result
        self.gen = gen
        self.state = _IDLE
        self.pending: Send | None = None  # a request waiting for its pacer slot
        self.paced_since = -1.0  # since when it has waited for one
        self.timer = -1  # the sequence number of its live timer


class Dispatcher:
    """The jobs in progress, their timers and the transport they share."""

    def __init__(
        self,
        transport: Transport[Any],
        pacer: Pacer,
        delivery: Delivery,
        observer: DispatchObserver,
        clock: Clock,
    ) -> None:
        self._transport = transport
        self._pacer = pacer
        self._delivery = delivery
        self._observer = observer
        self._clock = clock
        self._running: dict[int, _Running[Any]] = {}  # by id(job)
        self._timers: list[tuple[float, int, _Running[Any]]] = []
        self._seq = itertools.count()
        self._done: list[DeliveryResult[Any]] = []
        self._kick = False

    # ---- what the loop calls ----

    @property
    def sockets_busy(self) -> bool:
        """Requests are on the wire: wait on their sockets, not on Kafka."""
        return bool(self._transport.active)

    @property
    def running(self) -> int:
        return len(self._running)

    def budget_room(self) -> tuple[int, float]:
        """How many new jobs the key's budget can take soon (`Pacer.slots_soon`), less the
        requests already waiting for a slot; with none, the seconds until there may be."""
        slots, wake_in = self._pacer.slots_soon()
        paced = sum(1 for run in self._running.values() if run.state == _PACED)
        return slots - paced, wake_in

    def set_demand(self, waiting: int | None) -> None:
        """Tell the pacer what is left to send when that is all there is (`Ledger.demand`:
        what waits to be cut); the requests cut and not on the wire yet count too."""
        if waiting is not None:
            waiting += sum(1 for run in self._running.values() if run.state != _WIRE)
        self._pacer.set_demand(waiting)

    def send(self, jobs: list[DeliveryJob[Any]]) -> None:
        """Start delivering these jobs."""
        for job in jobs:
            result: DeliveryResult[Any] = DeliveryResult(job)
            run: _Running[Any] = _Running(job, result, self._delivery.run(job, result))
            self._running[id(job)] = run
            self._advance(run, None)
        self._flush()

    def results(self) -> list[DeliveryResult[Any]]:
        """Move everything on (answers read, timers due) and return the jobs that finished."""
        transport = self._transport
        if transport.active:
            for run, outcome in transport.poll():
                self._advance(run, outcome)
        timers = self._timers
        if timers:
            now = self._clock.monotonic()
            while timers and timers[0][0] <= now:
                _, seq, run = heapq.heappop(timers)
                if run.timer != seq:
                    continue  # cancelled meanwhile
                run.timer = -1
                if run.state == _PACED:
                    send, run.pending = run.pending, None
                    assert send is not None
                    self._pace(run, send)
                else:
                    self._advance(run, None)
        self._flush()
        done, self._done = self._done, []
        return done

    def next_wake(self) -> float | None:
        """When the earliest timer is due (monotonic), None when none is set."""
        timers = self._timers
        while timers and timers[0][2].timer != timers[0][1]:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def wait(self, timeout_s: float) -> None:
        """Wait for an answer or a timer, at most `timeout_s`."""
        wake = self.next_wake()
        if wake is not None:
            timeout_s = max(0.0, min(timeout_s, wake - self._clock.monotonic()))
        if self._transport.active:
            self._transport.wait(timeout_s)
        elif timeout_s > 0:
            self._clock.sleep(timeout_s)

    def cancel(self, job: DeliveryJob[Any]) -> None:
        """Give the job up: no new request goes out for it. A request on the wire is
        still answered and counted (`results` reports the job, abandoned, after it)."""
        job.cancelled = True
        run = self._running.get(id(job))
        if run is not None and run.state != _WIRE:
            self._abandon(run)

    def abort(self, job: DeliveryJob[Any]) -> None:
        """Give the job up at once, dropping a request on the wire unanswered."""
        job.cancelled = True
        run = self._running.get(id(job))
        if run is None:
            return
        if run.state == _WIRE and self._transport.abort(run):
            self._pacer.unanswered()
        self._abandon(run)

    def running_job(self, job: DeliveryJob[Any]) -> bool:
        """The job is being delivered: on the wire, or waiting to send again."""
        return id(job) in self._running

    def on_wire(self, job: DeliveryJob[Any]) -> bool:
        """The job has a request whose answer has not been read yet."""
        run = self._running.get(id(job))
        return run is not None and run.state == _WIRE

    def close(self) -> None:
        for run in list(self._running.values()):
            self.abort(run.job)
        self._transport.close()

    # ---- stepping the generators ----

    def _advance(self, run: _Running[Any], answer: Response | TransportError | None) -> None:
        run.state = _IDLE
        try:
            step = run.gen.send(answer)
        except StopIteration:
            self._finish(run)
            return
        except Exception as exc:  # noqa: BLE001  # a bug: the worker logs it and retries the batch
            run.result.error = exc
            self._finish(run)
            return
        if run.job.cancelled:
            self._abandon(run)
            return
        if isinstance(step, Sleep):
            self._timer(run, step.seconds, _SLEEPING)
            return
        self._pace(run, step)

    def _pace(self, run: _Running[Any], send: Send) -> None:
        """Take a slot from the pacer if one is free now, else look again when the next
        one is due, at most `_REPACE_S` on. A slot is never claimed ahead: claimed far
        ahead at one pace, slots keep a worker at that pace after the pace has changed
        (a share learnt small, then grown, left eight requests 2.5 s apart for 20 s)."""
        if self._pacer.try_reserve():
            if run.paced_since >= 0:
                self._observer.on_budget_wait(self._clock.monotonic() - run.paced_since)
                run.paced_since = -1.0
            self._put_on_wire(run, send)
            return
        if run.paced_since < 0:
            run.paced_since = self._clock.monotonic()
        run.pending = send
        self._timer(run, min(_REPACE_S, max(0.0, self._pacer.wait_s())), _PACED)

    def _put_on_wire(self, run: _Running[Any], send: Send) -> None:
        run.state = _WIRE
        run.result.requests += 1
        self._observer.on_request(send.events)
        self._transport.start(send.route, send.body, run)
        self._kick = True

    def _flush(self) -> None:
        if self._kick:
            self._kick = False
            self._transport.send()

    def _timer(self, run: _Running[Any], seconds: float, state: int) -> None:
        run.state = state
        run.timer = seq = next(self._seq)
        heapq.heappush(self._timers, (self._clock.monotonic() + seconds, seq, run))

    def _abandon(self, run: _Running[Any]) -> None:
        run.timer = -1
        run.pending = None
        run.gen.close()
        run.result.abandoned = True
        self._finish(run)

    def _finish(self, run: _Running[Any]) -> None:
        run.state = _IDLE
        if self._running.pop(id(run.job), None) is not None:
            self._done.append(run.result)


class DeliveryObserver:
    """Deliveries report here: metrics and readiness."""

    def __init__(self, metrics: Metrics, health: Health, pacer: Pacer) -> None:
        self._m = metrics
        self._h = health
        self._pacer = pacer
        # labels() costs a lock and a dict look-up per call: keep the children
        self._counted: dict[tuple[str, int], Any] = {}
        self._timed: dict[str, Any] = {}

    def on_response(self, endpoint: str, status: int, elapsed_s: float) -> None:
        if status == 0 or status >= 500:
            self._h.api_failing("no answer" if status == 0 else f"HTTP {status}")
        elif status != 429:
            self._h.api_ok()
        counter = self._counted.get((endpoint, status))
        if counter is None:
            counter = self._m.api_requests.labels(endpoint, str(status) if status else "error")
            self._counted[(endpoint, status)] = counter
        counter.inc()
        if status:
            timer = self._timed.get(endpoint)
            if timer is None:
                timer = self._timed[endpoint] = self._m.request_seconds.labels(endpoint)
            timer.observe(elapsed_s)
        remaining = self._pacer.remaining
        if remaining is not None:
            self._m.rate_limit_remaining.set(remaining)
            limit = self._pacer.limit
            if limit is not None:
                self._m.rate_limit_limit.set(limit)
            self._m.rate_limit_share.set(self._pacer.share)

    def on_request(self, events: int) -> None:
        self._m.request_events.observe(events)

    def on_budget_wait(self, seconds: float) -> None:
        self._m.budget_wait_seconds.inc(seconds)

    def on_retry(self, reason: str) -> None:
        self._m.retries.labels(reason).inc()

    def on_key_rejected(self, status: int) -> None:
        self._h.key_rejected(status)

    def on_key_ok(self) -> None:
        self._h.key_ok()


def build(
    settings: Settings,
    metrics: Metrics,
    health: Health,
    clock: Clock,
    transport: Transport[Any] | None = None,
) -> Dispatcher:
    """The dispatcher of a worker: libcurl to the configured API unless a transport is given."""
    pacer = Pacer(
        cap_per_minute=settings.rate_limit_per_minute, monotonic=clock.monotonic, wall=clock.wall
    )
    if transport is None:
        client = S2SClient(
            settings.base_url,
            settings.api_key,
            timeout_s=settings.http_timeout_s,
            ca_file=str(settings.api_ca_file) if settings.api_ca_file else None,
        )
        transport = S2SMulti(client, settings.max_in_flight)
    observer = DeliveryObserver(metrics, health, pacer)
    delivery = Delivery(
        pacer,
        observer,
        transport.reload_key,
        clock.wall,
        retry_initial_s=settings.retry_initial_s,
        retry_max_s=settings.retry_max_s,
    )
    return Dispatcher(transport, pacer, delivery, observer, clock)
