"""One batch through the API until every event in it is accepted or rejected.

A delivery is a generator, not a thread: it yields what it needs next, a
request to send (`Send`) or a wait (`Sleep`), and is given the answer. The
dispatcher carries those out on the worker's loop (over the HTTP multi
handle, with the pacer's slots and a timer heap), so no delivery ever blocks
a thread, giving up on one is exact (it is simply not resumed), and a
simulation can drive it step by step.

Transient trouble (5xx, timeouts, refused connections, 429, a refused key)
is sent again, forever, after the wait each cause calls for: exponential
backoff with full jitter (tenacity's `wait_random_exponential`), the 429's
own wait, the key's backoff. A 400 starts a search for the refused event
(`isolation`): what is found comes back as a rejection for the DLQ, what was
delivered on the way as accepted, what follows the refused event as unsent,
for the partition's next request. A 413 halves the batch. The result is
filled in as answers arrive, so a job given up half-way still tells which of
its events the API accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Protocol

from tenacity import RetryCallState, Retrying, wait_random_exponential

from consumer import redaction
from consumer.batching import Batch, Ref
from consumer.errors import TransportError
from consumer.events import DETAIL_MAX_BYTES, Route
from consumer.isolation import Isolation
from consumer.jobs import DeliveryJob, DeliveryResult, Rejection
from consumer.pacing import Pacer, RateLimitHeaders
from consumer.policy import Action, decide, wait_after_429
from consumer.s2s import Response

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Send:
    """Send this request (the dispatcher takes a slot from the pacer first)."""

    route: Route
    body: bytes
    events: int


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait this long before going on."""

    seconds: float


Step = Send | Sleep
Answer = Response | TransportError | None  # None: a Sleep is over
Run = Generator[Step, Answer, None]


class Observer(Protocol):
    """What delivery reports as it goes (metrics and readiness)."""

    def on_response(self, endpoint: str, status: int, elapsed_s: float) -> None: ...
    def on_retry(self, reason: str) -> None: ...
    def on_key_rejected(self, status: int) -> None: ...
    def on_key_ok(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Again:
    """Send the same request again; `wait_s` when the answer said how long to wait."""

    reason: str
    wait_s: float | None = None


def _detail(resp: Response) -> str:
    # Scrubbed before it is cut or stripped (here, and to 300 characters for the log): a
    # cut first could leave the start of a secret the answer quotes, a strip its end.
    text = redaction.scrub(resp.body.decode("utf-8", "replace")).strip() or f"HTTP {resp.status}"
    encoded = text.encode()[:DETAIL_MAX_BYTES]
    return encoded.decode("utf-8", "ignore")


class Delivery:
    """How every job is delivered; holds no per-job state (that lives in its generator)."""

    def __init__(
        self,
        pacer: Pacer,
        observer: Observer,
        reload_key: Callable[[], None],
        wall: Callable[[], float],
        *,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 30.0,
    ) -> None:
        self._pacer = pacer
        self._observer = observer
        self._reload_key = reload_key
        self._wall = wall
        self._backoff = wait_random_exponential(multiplier=retry_initial_s, max=retry_max_s)
        self._retrying = Retrying()  # only to describe an attempt to tenacity's wait
        self._retry_initial_s = retry_initial_s

    def run(self, job: DeliveryJob[Ref], result: DeliveryResult[Ref]) -> Run:
        """Deliver the job's batch, recording into `result` as answers arrive."""
        todo = [job.batch]
        while todo:
            batch = todo.pop(0)
            resp = yield from self._settle(batch)
            action = decide(resp.status, len(batch.items))
            if action is Action.ACCEPT:
                result.accepted.extend(batch.items)
            elif action is Action.SPLIT and resp.status == 400:
                yield from self._isolate(batch, resp, result)
                for rest in todo:  # halves of an earlier 413, after it in order
                    result.unsent.extend(rest.items)
                todo.clear()
            elif action is Action.SPLIT:  # 413: too large as a whole, so halve it
                todo[0:0] = batch.split()
            else:  # REJECT: a lone event the API refuses
                result.rejected.append(Rejection(batch.items[0], resp.status, _detail(resp)))

    def _isolate(self, batch: Batch[Ref], resp: Response, result: DeliveryResult[Ref]) -> Run:
        """Find the refused event of a 400 batch (see `isolation`); hand back what follows it."""
        search = Isolation.start(batch.items, resp.status, resp.body, _detail(resp))
        result.isolation_requests += 1
        while (probe := search.probe()) is not None:
            answer = yield from self._settle(Batch(batch.route, probe))
            result.isolation_requests += 1
            if decide(answer.status, len(probe)) is Action.ACCEPT:
                search.answer(True)
                result.accepted.extend(probe)  # delivered now, whatever happens next
            else:
                search.answer(False, answer.status, _detail(answer))
        result.rejected.extend(Rejection(*refused) for refused in search.rejected)
        result.unsent.extend(search.unsent)

    def _settle(self, batch: Batch[Ref]) -> Generator[Step, Answer, Response]:
        """Send until an answer settles the request (200, 400, 413, another 4xx)."""
        attempt = 0
        while True:
            outcome = yield Send(batch.route, batch.body, len(batch.items))
            assert outcome is not None, "a Send is answered"
            judged = self._judge(batch, outcome)
            if isinstance(judged, Response):
                return judged
            attempt += 1
            self._observer.on_retry(judged.reason)
            yield Sleep(judged.wait_s if judged.wait_s is not None else self._wait(attempt))

    def _wait(self, attempt: int) -> float:
        """Full jitter, but never (almost) zero: a floor of half the initial wait."""
        state = RetryCallState(self._retrying, None, (), {})
        state.attempt_number = attempt
        return max(self._retry_initial_s / 2, float(self._backoff(state)))

    def _judge(self, batch: Batch[Ref], outcome: Response | TransportError) -> Response | _Again:
        """Learn from one answer; returns it when it settles, else why to send again."""
        endpoint = batch.route.value
        if isinstance(outcome, TransportError):
            self._pacer.unanswered()
            self._observer.on_response(endpoint, 0, 0.0)
            return _Again("transport")
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
            self._reload_key()
            return _Again(f"key_{resp.status}")
        if action is Action.WAIT:
            wait = wait_after_429(resp.headers, self._wall(), fallback_s=1.0)
            self._pacer.hold(wait)
            return _Again("rate_limited", wait)
        if action is Action.RETRY:
            return _Again(f"status_{resp.status // 100}xx")
        self._observer.on_key_ok()
        return resp
