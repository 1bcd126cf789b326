"""One batch through the API until every event in it is accepted or rejected.

Runs on a delivery thread. Transient trouble (5xx, timeouts, refused
connections, 429, a refused key) is retried by tenacity, forever, with the
wait each cause calls for; only the worker can stop it, by cancelling the job
(partition revoked, shutdown deadline). A 400 starts a search for the refused
event (`isolation`): what is found comes back as a rejection for the DLQ, what
was delivered on the way as accepted, and what follows the refused event as
unsent, for the partition's next request. A 413 halves the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_never,
    wait_random_exponential,
)

from consumer import redaction
from consumer.batching import Batch, Item, Ref
from consumer.errors import GrError, JobAbandonedError, TransportError
from consumer.isolation import Isolation
from consumer.pacing import Pacer, RateLimitHeaders
from consumer.policy import Action, decide, wait_after_429
from consumer.s2s import Response

MAX_DETAIL_BYTES = 1024

log = logging.getLogger(__name__)


class _SendAgainError(GrError):
    """Send the same request again; `wait_s` when the answer said how long to wait."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


class Poster(Protocol):
    def post(self, route: Any, body: bytes) -> Response: ...
    def reload_key(self) -> None: ...


class Observer(Protocol):
    """What delivery reports as it goes (metrics and readiness)."""

    def on_response(self, endpoint: str, status: int, elapsed_s: float) -> None: ...
    def on_retry(self, reason: str) -> None: ...
    def on_key_rejected(self, status: int) -> None: ...
    def on_key_ok(self) -> None: ...
    def on_request(self, events: int) -> None: ...
    def on_budget_wait(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Rejection(Generic[Ref]):
    item: Item[Ref]
    status: int
    detail: str


@dataclass(slots=True)
class DeliveryJob(Generic[Ref]):
    key: Any  # the worker's partition key, (topic, partition)
    batch: Batch[Ref]
    generation: int = 0
    # Most jobs end in one non-blocking request and never sleep: the Event a
    # sleeping thread waits on (a Condition and a lock to build) is made only
    # for jobs handed to a thread, by `arm()`, on the thread that cancels.
    _event: threading.Event | None = None
    _cancelled: bool = False

    def arm(self) -> None:
        """Before the job goes to a delivery thread: make the Event its sleeps wait on."""
        if self._event is None:
            self._event = threading.Event()
            if self._cancelled:
                self._event.set()

    def cancel(self) -> None:
        """The worker gives up on this job: a sleeping thread wakes and abandons it."""
        self._cancelled = True
        if self._event is not None:
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def sleep(self, seconds: float) -> None:
        """Wait, unless the worker gives up on this job first."""
        event = self._event
        if event is None:
            self.arm()  # a job run straight on a thread (tests, tools)
            event = self._event
            assert event is not None
        if (seconds > 0 and event.wait(seconds)) or event.is_set():
            raise JobAbandonedError("job cancelled")


@dataclass(slots=True)
class DeliveryResult(Generic[Ref]):
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


def _detail(resp: Response) -> str:
    # Scrubbed before it is cut (here, and to 300 characters for the log): a cut
    # first could leave the start of a secret the answer quotes.
    text = redaction.scrub(resp.body.decode("utf-8", "replace").strip()) or f"HTTP {resp.status}"
    encoded = text.encode()[:MAX_DETAIL_BYTES]
    return encoded.decode("utf-8", "ignore")


class Deliverer:
    """Shared by the delivery threads; holds no per-job state."""

    def __init__(
        self,
        client: Poster,
        pacer: Pacer,
        observer: Observer,
        *,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 30.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._pacer = pacer
        self._observer = observer
        self._wall = wall
        self._backoff = wait_random_exponential(multiplier=retry_initial_s, max=retry_max_s)
        self._retry_initial_s = retry_initial_s

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _SendAgainError) and exc.wait_s is not None:
            return exc.wait_s
        # Full jitter, but never (almost) zero: a floor of the initial wait.
        return max(self._retry_initial_s / 2, float(self._backoff(state)))

    def deliver(
        self, job: DeliveryJob[Ref], first: Response | TransportError | None = None
    ) -> DeliveryResult[Ref]:
        """Deliver the job's batch; `first` is the outcome of a first attempt already made.

        The worker sends each batch once without blocking (its slot already
        reserved) and hands the outcome here: a 200 settles at once, on the
        caller's thread; anything else continues exactly as if this thread
        had sent it.
        """
        result: DeliveryResult[Ref] = DeliveryResult(job)
        try:
            todo = [job.batch]
            while todo:
                batch = todo.pop(0)
                resp = self._send(job, batch, result, first)
                first = None
                action = decide(resp.status, len(batch.items))
                if action is Action.ACCEPT:
                    result.accepted.extend(batch.items)
                elif action is Action.SPLIT and resp.status == 400:
                    self._isolate(job, batch, resp, result)
                    for rest in todo:  # halves of an earlier 413, after it in order
                        result.unsent.extend(rest.items)
                    todo.clear()
                elif action is Action.SPLIT:  # 413: too large as a whole, so halve it
                    todo[0:0] = batch.split()
                else:  # REJECT: a lone event the API refuses
                    result.rejected.append(Rejection(batch.items[0], resp.status, _detail(resp)))
        except JobAbandonedError:
            result.abandoned = True
        except Exception as exc:  # noqa: BLE001  # a bug: the worker logs it and retries the batch
            result.error = exc
        return result

    def _isolate(
        self, job: DeliveryJob[Ref], batch: Batch[Ref], resp: Response, result: DeliveryResult[Ref]
    ) -> None:
        """Find the refused event of a 400 batch (see `isolation`); hand back what follows it."""
        search = Isolation.start(batch.items, resp.status, resp.body, _detail(resp))
        while (probe := search.probe()) is not None:
            answer = self._send(job, Batch(batch.route, probe), result, None)
            if decide(answer.status, len(probe)) is Action.ACCEPT:
                search.answer(True)
            else:
                search.answer(False, answer.status, _detail(answer))
        result.isolation_requests += 1 + search.requests
        result.accepted.extend(search.accepted)
        result.rejected.extend(Rejection(*refused) for refused in search.rejected)
        result.unsent.extend(search.unsent)

    def _send(
        self,
        job: DeliveryJob[Ref],
        batch: Batch[Ref],
        result: DeliveryResult[Ref],
        first: Response | TransportError | None,
    ) -> Response:
        again: _SendAgainError | None = None
        if first is not None:
            result.requests += 1
            try:
                return self._judge(batch, first)  # a 200 settles here, without tenacity
            except _SendAgainError as exc:
                again = exc
        retrying = Retrying(
            retry=retry_if_exception_type(_SendAgainError),
            wait=self._wait,
            stop=stop_never,
            sleep=job.sleep,
            reraise=True,
            before_sleep=lambda state: self._observer.on_retry(
                state.outcome.exception().reason  # type: ignore[union-attr]
                if state.outcome
                else "unknown"
            ),
        )
        body = batch.body
        for attempt in retrying:
            with attempt:
                if again is not None:
                    # The first attempt failed: it counts as tenacity's attempt 1,
                    # so its wait, its report and the backoff after it are tenacity's.
                    failed, again = again, None
                    raise failed
                delay = self._pacer.reserve()
                if delay > 0:
                    self._observer.on_budget_wait(delay)
                try:
                    job.sleep(delay)
                except JobAbandonedError:
                    self._pacer.unanswered()
                    raise
                result.requests += 1
                self._observer.on_request(len(batch.items))
                return self._attempt(batch, body)
        raise AssertionError("unreachable: tenacity retries forever")  # pragma: no cover

    def _attempt(self, batch: Batch[Ref], body: bytes) -> Response:
        try:
            outcome: Response | TransportError = self._client.post(batch.route, body)
        except TransportError as exc:
            outcome = exc
        except BaseException:
            self._pacer.unanswered()
            raise
        return self._judge(batch, outcome)

    def _judge(self, batch: Batch[Ref], outcome: Response | TransportError) -> Response:
        """Learn from one answer; returns it when it settles, raises to send again."""
        endpoint = batch.route.value
        if isinstance(outcome, TransportError):
            self._pacer.unanswered()
            self._observer.on_response(endpoint, 0, 0.0)
            raise _SendAgainError("transport") from outcome
        resp = outcome
        self._observer.on_response(endpoint, resp.status, resp.elapsed_s)
        if resp.status != 200 and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "api answered",
                extra={"endpoint": endpoint, "status": resp.status, "body": _detail(resp)[:300]},
            )
        rl = RateLimitHeaders.parse(resp.headers)
        if rl is not None:
            self._pacer.observe(rl)
        else:
            self._pacer.unanswered()
        action = decide(resp.status, len(batch.items))
        if action is Action.HALT:
            self._observer.on_key_rejected(resp.status)
            self._client.reload_key()
            raise _SendAgainError(f"key_{resp.status}")
        if action is Action.WAIT:
            wait = wait_after_429(resp.headers, self._wall(), fallback_s=1.0)
            self._pacer.hold(wait)
            raise _SendAgainError("rate_limited", wait)
        if action is Action.RETRY:
            raise _SendAgainError(f"status_{resp.status // 100}xx")
        self._observer.on_key_ok()
        return resp
