"""Sending batches: first attempts on one HTTP multi handle, the rest on a thread pool.

The loop thread starts each job's first request without blocking when the
pacer has a slot for it; a 200 settles on that thread. Anything else (a
retry, a wait for the pacer, a bisection) goes to a delivery thread, whose
result comes back through the done queue. Only the loop thread calls in here.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from consumer.config import Settings
from consumer.delivery import Deliverer, DeliveryJob, DeliveryResult
from consumer.errors import TransportError
from consumer.observe import Health, Metrics
from consumer.pacing import Pacer
from consumer.s2s import Response, S2SClient, S2SMulti


class _DeliveryObserver:
    """Delivery threads report here: metrics and readiness."""

    def __init__(self, metrics: Metrics, health: Health, pacer: Pacer) -> None:
        self._m = metrics
        self._h = health
        self._pacer = pacer
        # labels() costs a lock and a dict look-up per call: keep the children
        self._counted: dict[tuple[str, int], Any] = {}
        self._timed: dict[str, Any] = {}

    def on_response(self, endpoint: str, status: int, elapsed_s: float) -> None:
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


class _DaemonPool:
    """A fixed set of daemon threads: at exit none is waited for (a request stuck
    in its HTTP timeout must not stretch the stop past GR_SHUTDOWN_TIMEOUT_S)."""

    def __init__(self, size: int, name: str) -> None:
        self._tasks: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._tasks.put((fn, args))

    def _serve(self) -> None:
        while (task := self._tasks.get()) is not None:
            fn, args = task
            fn(*args)

    def shutdown(self, timeout_s: float) -> None:
        """Stop the threads, waiting for them at most `timeout_s` (their jobs are cancelled)."""
        for _ in self._threads:
            self._tasks.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class Dispatcher:
    """The multi handle, the retry pool, the done queue and the pacer's reservation."""

    def __init__(self, settings: Settings, metrics: Metrics, health: Health) -> None:
        self._pacer = Pacer(cap_per_minute=settings.rate_limit_per_minute)
        self._client = S2SClient(
            settings.base_url,
            settings.api_key,
            timeout_s=settings.http_timeout_s,
            ca_file=str(settings.api_ca_file) if settings.api_ca_file else None,
        )
        self._observer = _DeliveryObserver(metrics, health, self._pacer)
        self._deliverer = Deliverer(
            self._client,
            self._pacer,
            self._observer,
            retry_initial_s=settings.retry_initial_s,
            retry_max_s=settings.retry_max_s,
        )
        self._multi: S2SMulti[DeliveryJob[Any]] = S2SMulti(self._client, settings.max_in_flight)
        self._pool = _DaemonPool(settings.max_in_flight, "deliver")
        self._done: queue.SimpleQueue[DeliveryResult[Any]] = queue.SimpleQueue()

    @property
    def sockets_busy(self) -> bool:
        """First attempts are on the wire: wait on their sockets, not on Kafka."""
        return bool(self._multi.active)

    def send(self, jobs: list[DeliveryJob[Any]]) -> None:
        started = False
        for job in jobs:
            if self._pacer.try_reserve():
                self._observer.on_request(len(job.batch.items))
                self._multi.start(job.batch.route, job.batch.body, job)
                started = True
            else:
                job.arm()
                self._pool.submit(self._run, job)
        if started:
            self._multi.send()

    def wait(self, timeout_s: float) -> None:
        self._multi.wait(timeout_s)

    def results(self) -> list[DeliveryResult[Any]]:
        """What finished since the last call, never blocking."""
        out: list[DeliveryResult[Any]] = []
        for job, outcome in self._multi.poll():
            if isinstance(outcome, Response) and outcome.status == 200:
                out.append(self._deliverer.deliver(job, outcome))
            else:
                job.arm()
                self._pool.submit(self._run, job, outcome)
        done = self._done
        while not done.empty():
            out.append(done.get_nowait())
        return out

    def _run(self, job: DeliveryJob[Any], first: Response | TransportError | None = None) -> None:
        self._done.put(self._deliverer.deliver(job, first))

    def close(self, timeout_s: float = 1.0) -> None:
        self._pool.shutdown(timeout_s)
        self._multi.close()
        self._client.close()
