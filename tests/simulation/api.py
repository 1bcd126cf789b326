"""The simulated S2S API: every outcome of the contract's table, on a key shared with others.

`SimTransport` is the worker's transport (the seam `S2SMulti` fills in
production): a request goes up, is judged when it arrives, and its answer
comes back later, or never (the client's timeout then says so), or after the
API already acted on it (an answer lost on the way back). The key's budget is
counted per window for everyone using it: this worker and simulated others,
who come and go and use a fixed share each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from consumer.errors import TransportError
from consumer.events import Route
from consumer.s2s import Headers, Response
from tests.simulation.records import mark_of
from tests.simulation.world import World


class ApiObserver:
    """What the invariant checker wants to hear from the API (overridden by the checker)."""

    def accepted(self, marks: list[tuple[int, int]], route: Route) -> None: ...
    def refused(self, mark: tuple[int, int] | None, status: int) -> None: ...
    def answered(self, status: int, events: int) -> None: ...
    def violation(self, what: str) -> None: ...
    def known(self, marks: list[tuple[int, int]]) -> None: ...
    def held_up(self) -> None: ...  # an answer lost: its partition waits for the timeout


@dataclass
class SimApi:
    world: World
    observer: ApiObserver
    limit: int | None  # requests per window for the key; None: unlimited
    window_s: float
    batch_max_bytes: int
    latency: tuple[float, float] = (0.002, 0.03)
    error_rate: float = 0.0
    lost_answer_rate: float = 0.0  # the API acted, the answer never came back
    name_rejected: bool = True
    max_body_bytes: int = 10**9  # above it: 413
    # faults, switched by the world
    down: bool = False
    slow: bool = False
    key_refused: int = 0  # 0, 401 or 403
    others_share: float = 0.0  # of the limit, used evenly through each window by others
    # what was seen
    ours_in_window: dict[int, int] = field(default_factory=dict)
    ours_429_in_window: dict[int, int] = field(default_factory=dict)

    def window_of(self, t: float) -> int:
        return int(t // self.window_s)

    def _others_used(self, t: float) -> int:
        if self.limit is None:
            return 0
        start = self.window_of(t) * self.window_s
        return int(self.others_share * self.limit * (t - start) / self.window_s)

    def _rate_headers(self, used: int) -> Headers:
        headers = Headers()
        t = self.world.now
        reset = (self.window_of(t) + 1) * self.window_s
        if self.limit is None:
            limit, remaining = 1_000_000_000, 1_000_000_000
        else:
            limit, remaining = self.limit, max(0, self.limit - used)
        headers["x-ratelimit-limit"] = str(limit)
        headers["x-ratelimit-remaining"] = str(remaining)
        headers["x-ratelimit-reset"] = str(int(self.world.wall() - t + reset))
        return headers

    def judge(self, route: Route, body: bytes) -> tuple[Response, list[tuple[int, int]]]:
        """The API's answer to a request arriving now, and the events it accepted."""
        t = self.world.now
        win = self.window_of(t)
        rng = self.world.rng
        ours = self.ours_in_window.get(win, 0)
        used = ours + self._others_used(t)
        if self.limit is not None and used >= self.limit:
            self.ours_429_in_window[win] = self.ours_429_in_window.get(win, 0) + 1
            headers = self._rate_headers(used)
            if rng.random() < 0.7:
                headers["retry-after"] = str(max(1, int((win + 1) * self.window_s - t + 0.999)))
            self.observer.answered(429, 0)
            return Response(429, headers, b'{"error":"rate_limited"}', 0.001), []
        self.ours_in_window[win] = ours + 1
        headers = self._rate_headers(used + 1)
        if self.key_refused:
            self.observer.answered(self.key_refused, 0)
            return Response(self.key_refused, headers, b'{"error":"key"}', 0.001), []
        if rng.random() < self.error_rate:
            status = rng.choice((500, 502, 503))
            self.observer.answered(status, 0)
            return Response(status, headers, b'{"error":"server"}', 0.001), []
        if len(body) > self.batch_max_bytes:
            self.observer.violation(f"a request of {len(body)} bytes, over the byte cap")
        if len(body) > self.max_body_bytes:
            self.observer.answered(413, 0)
            return Response(413, headers, b'{"error":"too large"}', 0.001), []
        try:
            doc: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.observer.violation(f"a request body that is not JSON: {body[:80]!r}")
            return Response(400, headers, b'{"error":"json"}', 0.001), []
        events = doc.get("events") if route is Route.BATCH else [doc]
        if not isinstance(events, list) or not events:
            self.observer.violation(f"a request with no events: {body[:80]!r}")
            return Response(400, headers, b'{"error":"events"}', 0.001), []
        if len(events) > 100:
            self.observer.violation(f"a request of {len(events)} events")
        marks = [mark_of(e) for e in events]
        refused = [
            i
            for i, e in enumerate(events)
            if isinstance(e, dict)
            and isinstance(e.get("payload"), dict)
            and e["payload"].get("refuse")
        ]
        if refused:
            for i in refused:
                self.observer.refused(marks[i], 400)
            answer: dict[str, Any] = {"error": "invalid_event", "message": "event refused"}
            if self.name_rejected and route is Route.BATCH:
                answer["rejected"] = refused
            self.observer.answered(400, len(events))
            return Response(400, headers, orjson.dumps(answer), 0.001), []
        good = [m for m in marks if m is not None]
        self.observer.accepted(good, route)
        self.observer.answered(200, len(events))
        return Response(200, headers, b'{"status":"ok"}', 0.002), good


@dataclass
class _Flight:
    token: Any
    route: Route
    body: bytes
    outcome: Response | TransportError | None = None
    done: bool = False
    accepted: list[tuple[int, int]] = field(default_factory=list)


class SimTransport:
    """The worker's view of the API: requests in flight, answers polled."""

    def __init__(self, api: SimApi, http_timeout_s: float) -> None:
        self.api = api
        self.world = api.world
        self._timeout = http_timeout_s
        self._flights: list[_Flight] = []
        self._ready: list[_Flight] = []

    @property
    def active(self) -> int:
        return len(self._flights)

    def start(self, route: Route, body: bytes, token: Any) -> None:
        flight = _Flight(token, route, body)
        self._flights.append(flight)
        world, api, rng = self.world, self.api, self.world.rng
        if api.down:
            world.after(rng.uniform(0.0005, 0.003), lambda: self._land(flight, _refused()))
            return
        lo, hi = api.latency
        up = rng.uniform(lo, hi) / 2
        if api.slow:
            up += rng.uniform(0.5, 2.5 * self._timeout)
        down = rng.uniform(lo, hi) / 2
        lost = rng.random() < api.lost_answer_rate

        def arrive() -> None:
            if flight.done:
                return  # aborted before it reached the API
            resp, flight.accepted = api.judge(route, body)
            if lost:
                api.observer.held_up()
                return  # the answer never comes back: the client times out
            world.after(down, lambda: self._land(flight, resp))

        world.after(up, arrive)
        world.after(self._timeout, lambda: self._land(flight, _timed_out()))

    def _land(self, flight: _Flight, outcome: Response | TransportError) -> None:
        if flight.done:
            return
        flight.done = True
        flight.outcome = outcome
        self._ready.append(flight)
        if isinstance(outcome, Response) and flight.accepted:
            self.api.observer.known(flight.accepted)  # the worker can read it from now on

    def send(self) -> None:
        pass

    def poll(self) -> list[tuple[Any, Response | TransportError]]:
        ready, self._ready = self._ready, []
        out = []
        for flight in ready:
            if flight in self._flights:
                self._flights.remove(flight)
                assert flight.outcome is not None
                out.append((flight.token, flight.outcome))
        return out

    def wait(self, timeout_s: float) -> None:
        if not self._ready:
            self.world.block(timeout_s)

    def abort(self, token: Any) -> bool:
        for flight in self._flights:
            if flight.token is token:
                flight.done = True
                self._flights.remove(flight)
                return True
        return False

    def reload_key(self) -> None:
        pass

    def close(self) -> None:
        for flight in self._flights:
            flight.done = True
        self._flights.clear()


def _refused() -> TransportError:
    return TransportError("curl error 7 posting: connection refused")


def _timed_out() -> TransportError:
    return TransportError("curl error 28 posting: operation timed out")
