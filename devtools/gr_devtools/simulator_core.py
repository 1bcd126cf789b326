"""The S2S API simulator's state and request logic, free of any HTTP plumbing.

Kept apart from the server so the rules (keys, rate limits, faults, validation,
recording) read in one place, and so the server's hot path stays a thin shell.
One lock guards all state; it is never held while sleeping or parsing a body.
"""

from __future__ import annotations

import math
import random
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, NamedTuple

import orjson

API_PREFIX = "/api/v1"
SINGLE_PATHS = frozenset(
    {
        f"{API_PREFIX}/event",
        f"{API_PREFIX}/sessions/start",
        f"{API_PREFIX}/sessions/stop",
        f"{API_PREFIX}/sessions/end",
    }
)
BATCH_PATH = f"{API_PREFIX}/events"
API_PATHS = SINGLE_PATHS | {BATCH_PATH}
MAX_BATCH_EVENTS = 100

DEFAULT_KEY = "demo-key"
DEFAULT_LIMIT = 1000  # a Pro key: 1,000 requests a minute
DEFAULT_WINDOW_S = 60.0
# What the headers say for an unlimited key: large enough that no client paces on it.
UNLIMITED_HEADER_VALUE = 1_000_000_000

Headers = list[tuple[str, str]]
Latency = float | tuple[float, float] | None
Rule = dict[str, Any]


class Response(NamedTuple):
    """What the server writes back; `drop` means close the connection unanswered."""

    status: int
    headers: Headers
    body: bytes
    drop: bool = False


DROP = Response(0, [], b"", drop=True)


@dataclass(frozen=True)
class Record:
    """One accepted API request, as a test sees it."""

    seq: int
    path: str
    time: float
    events: list[dict[str, Any]]
    status: int = 200
    body: bytes = b""  # the request body exactly as it arrived

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "path": self.path,
            "time": self.time,
            "status": self.status,
            "events": self.events,
        }


@dataclass
class _KeyState:
    own_limit: int | None = None  # None: follow the default; 0: unlimited
    revoked: bool = False
    window_start: float = -1.0
    used: int = 0


@dataclass
class _Counters:
    requests: int = 0
    accepted_requests: int = 0
    events_accepted: int = 0
    status: Counter[int] = field(default_factory=Counter)
    by_endpoint: dict[str, Counter[int]] = field(default_factory=dict)
    batch_sizes: array[int] = field(default_factory=lambda: array("H"))
    batch_hist: Counter[int] = field(default_factory=Counter)


def error_body(error: str, message: str, **extra: Any) -> bytes:
    return orjson.dumps({"error": error, "message": message, **extra})


def json_response(status: int, obj: Any, headers: Headers | None = None) -> Response:
    return Response(status, headers or [], orjson.dumps(obj))


def normalise_limit(limit: int | None) -> int:
    """0 and None both mean unlimited; stored as 0."""
    if limit is None:
        return 0
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    return limit


def check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_latency(value: Any) -> Latency:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ValueError(f"latency range must be [min, max], got {value!r}")
        lo, hi = (check_seconds("latency min", value[0]), check_seconds("latency max", value[1]))
        if lo > hi:
            raise ValueError(f"latency min {lo} is above max {hi}")
        return (lo, hi)
    return check_seconds("latency", value)


def check_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def check_rules(value: Any) -> tuple[Rule, ...]:
    """A rule is a non-empty {dotted.path: value} dict; a list of them matches if any does."""
    if value is None:
        return ()
    rules = value if isinstance(value, list | tuple) else [value]
    for rule in rules:
        if not isinstance(rule, dict) or not rule or not all(isinstance(k, str) for k in rule):
            raise ValueError(f"a reject rule is a non-empty dict of dotted paths, got {rule!r}")
    return tuple(dict(r) for r in rules)


_MISSING = object()


def _lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict):
            return _MISSING
        obj = obj.get(part, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


def _json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON means it: true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def matches(event: Mapping[str, Any], rules: Iterable[Rule]) -> bool:
    return any(
        all(_json_equal(_lookup(event, path), want) for path, want in rule.items())
        for rule in rules
    )


def _event_problem(event: Any) -> str | None:
    if not isinstance(event, dict):
        return "event must be a JSON object"
    event_type = event.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        return "event_type is required and must be a non-empty string"
    if not isinstance(event.get("payload"), dict):
        return "payload is required and must be an object"
    return None


def _all_valid(events: list[Any]) -> bool:
    """The hot path: one tight loop, no call per event."""
    for event in events:
        if type(event) is not dict:
            return False
        event_type = event.get("event_type")
        if type(event_type) is not str or not event_type or type(event.get("payload")) is not dict:
            return False
    return True


def validate(path: str, body: bytes, rules: tuple[Rule, ...]) -> list[Any] | Response:
    """The parsed events when the request is acceptable, else the 400 to send."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Response(400, [], error_body("invalid_json", f"body is not JSON: {exc}"))
    if not isinstance(doc, dict):
        return Response(400, [], error_body("invalid_body", "body must be a JSON object"))
    if path == BATCH_PATH:
        events = doc.get("events")
        if not isinstance(events, list):
            return Response(400, [], error_body("invalid_body", "events must be an array"))
        if not events:
            return Response(400, [], error_body("invalid_body", "events must not be empty"))
        if len(events) > MAX_BATCH_EVENTS:
            msg = f"at most {MAX_BATCH_EVENTS} events per request, got {len(events)}"
            return Response(400, [], error_body("too_many_events", msg))
    else:
        events = [doc]
    if not rules and _all_valid(events):
        return events
    rejected: list[int] = []
    reasons: list[dict[str, Any]] = []
    for i, event in enumerate(events):
        problem = _event_problem(event)
        if problem is None and rules and matches(event, rules):
            problem = "rejected by the server"
        if problem is not None:
            rejected.append(i)
            reasons.append({"index": i, "reason": problem})
    if rejected:
        msg = f"{len(rejected)} of {len(events)} events rejected; nothing was accepted"
        body_out = error_body("invalid_events", msg, rejected=rejected, errors=reasons)
        return Response(400, [], body_out)
    return events


def _events_of(path: str, body: bytes) -> list[dict[str, Any]]:
    doc = orjson.loads(body)
    events: list[dict[str, Any]] = doc["events"] if path == BATCH_PATH else [doc]
    return events


class SimulatorCore:
    """Keys, rate limits, fault knobs and records; thread-safe."""

    def __init__(
        self,
        keys: Iterable[str] | Mapping[str, int | None],
        limit_per_window: int | None,
        window_s: float,
        record_events: bool,
        seed: int,
    ) -> None:
        self._lock = threading.Lock()
        self._default_limit = normalise_limit(limit_per_window)
        self._window_s = self._check_window(window_s)
        self._record_events = record_events
        self._seed = seed
        self._random = random.Random(seed)
        self._keys: dict[str, _KeyState] = {}
        if isinstance(keys, Mapping):
            for key, limit in keys.items():
                self._keys[key] = _KeyState(own_limit=normalise_limit(limit))
        else:
            for key in keys:
                self._keys[key] = _KeyState()
        self._error_rate = 0.0
        self._spurious_429_rate = 0.0
        self._latency: Latency = None
        self._rules: tuple[Rule, ...] = ()
        self._seq = 0
        # Raw bodies, parsed again when read: millions of live dicts would slow every GC pass.
        self._records: list[tuple[int, str, float, bytes]] = []
        self._counters = _Counters()

    @staticmethod
    def _check_window(window_s: Any) -> float:
        if isinstance(window_s, bool) or not isinstance(window_s, int | float) or window_s <= 0:
            raise ValueError(f"window_s must be a positive number, got {window_s!r}")
        return float(window_s)

    # ---- configuration -------------------------------------------------------------

    def set_error_rate(self, rate: float) -> None:
        value = check_rate("error_rate", rate)
        with self._lock:
            self._error_rate = value

    def set_rate_limit_429_rate(self, rate: float) -> None:
        value = check_rate("rate_limit_429_rate", rate)
        with self._lock:
            self._spurious_429_rate = value

    def set_latency(self, latency: Latency) -> None:
        value = check_latency(latency)
        with self._lock:
            self._latency = value

    def set_reject_rule(self, rule: Rule | list[Rule] | None) -> None:
        rules = check_rules(rule)
        with self._lock:
            self._rules = rules

    def set_default_limit(self, limit: int | None) -> None:
        value = normalise_limit(limit)
        with self._lock:
            self._default_limit = value

    def set_window(self, window_s: float) -> None:
        value = self._check_window(window_s)
        with self._lock:
            self._window_s = value
            for state in self._keys.values():
                state.window_start, state.used = -1.0, 0

    def set_record_events(self, on: bool) -> None:
        with self._lock:
            self._record_events = bool(on)

    def set_seed(self, seed: int) -> None:
        with self._lock:
            self._seed = seed
            self._random = random.Random(seed)

    def add_key(self, key: str, limit: int | Literal["default"] | None = "default") -> None:
        """Add a key, or change a known one's limit ("default" follows the default limit)."""
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        own = None if limit == "default" else normalise_limit(limit)
        with self._lock:
            state = self._keys.setdefault(key, _KeyState())
            if limit != "default":
                state.own_limit = own

    def set_key_limit(self, key: str, limit: int | None) -> None:
        value = normalise_limit(limit)
        with self._lock:
            self._known(key).own_limit = value

    def remove_key(self, key: str) -> None:
        with self._lock:
            self._known(key)
            del self._keys[key]

    def revoke_key(self, key: str) -> None:
        with self._lock:
            self._known(key).revoked = True

    def restore_key(self, key: str) -> None:
        with self._lock:
            self._known(key).revoked = False

    def _known(self, key: str) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            raise KeyError(f"unknown key {key!r}")
        return state

    def config(self) -> dict[str, Any]:
        with self._lock:
            latency = list(self._latency) if isinstance(self._latency, tuple) else self._latency
            return {
                "error_rate": self._error_rate,
                "rate_limit_429_rate": self._spurious_429_rate,
                "latency_s": latency,
                "reject_rule": [dict(r) for r in self._rules] or None,
                "limit_per_window": self._default_limit or None,
                "window_s": self._window_s,
                "record_events": self._record_events,
                "seed": self._seed,
                "keys": {
                    k: {
                        "limit": self._limit_of(s) or None,
                        "own_limit": s.own_limit is not None,
                        "revoked": s.revoked,
                    }
                    for k, s in self._keys.items()
                },
            }

    def reset(self, faults: bool = False) -> None:
        """Forget records, counters and rate windows; `faults=True` also clears fault knobs."""
        with self._lock:
            self._seq = 0
            self._records = []
            self._counters = _Counters()
            for state in self._keys.values():
                state.window_start, state.used = -1.0, 0
            if faults:
                self._error_rate = self._spurious_429_rate = 0.0
                self._latency = None
                self._rules = ()
                self._random = random.Random(self._seed)

    # ---- reading what happened -----------------------------------------------------

    def records(self) -> list[Record]:
        """Accepted requests in arrival (seq) order."""
        with self._lock:
            self._need_records()
            raw = sorted(self._records, key=lambda r: r[0])
        return [
            Record(seq, path, t, _events_of(path, body), body=body) for seq, path, t, body in raw
        ]

    def accepted_events(self) -> list[dict[str, Any]]:
        return [event for record in self.records() for event in record.events]

    def batches(self) -> list[int]:
        with self._lock:
            return self._counters.batch_sizes.tolist()

    def status_counts(self) -> dict[int, int]:
        with self._lock:
            return dict(self._counters.status)

    def endpoint_counts(self) -> dict[str, dict[int, int]]:
        with self._lock:
            return {p: dict(c) for p, c in self._counters.by_endpoint.items()}

    def events_accepted(self) -> int:
        with self._lock:
            return self._counters.events_accepted

    def requests(self) -> int:
        with self._lock:
            return self._counters.requests

    def _need_records(self) -> None:
        if not self._record_events:
            raise RuntimeError("the simulator runs with record_events=False: only counters kept")

    def stats(self) -> dict[str, Any]:
        with self._lock:
            c = self._counters
            hist = dict(sorted(c.batch_hist.items()))
            count = sum(hist.values())
            total = sum(size * n for size, n in hist.items())
            return {
                "requests": c.requests,
                "accepted_requests": c.accepted_requests,
                "events_accepted": c.events_accepted,
                "status_counts": {str(s): n for s, n in sorted(c.status.items())},
                "endpoint_counts": {
                    p: {str(s): n for s, n in sorted(e.items())}
                    for p, e in sorted(c.by_endpoint.items())
                },
                "batches": {
                    "count": count,
                    "events": total,
                    "min": min(hist) if hist else None,
                    "max": max(hist) if hist else None,
                    "mean": total / count if count else None,
                    "full": hist.get(MAX_BATCH_EVENTS, 0),
                    "histogram": {str(size): n for size, n in hist.items()},
                },
                "record_events": self._record_events,
            }

    def events_json(self, since: int = 0) -> list[dict[str, Any]]:
        """Accepted events flattened, each with its request's seq, path and arrival time."""
        return [
            {"seq": r.seq, "index": i, "path": r.path, "time": r.time, "event": event}
            for r in self.records()
            if r.seq > since
            for i, event in enumerate(r.events)
        ]

    # ---- the request path ----------------------------------------------------------

    def arrive(self) -> tuple[int, float, float]:
        """Number the request and draw its injected delay."""
        now = time.time()
        with self._lock:
            self._seq += 1
            latency = self._latency
            if latency is None:
                delay = 0.0
            elif isinstance(latency, tuple):
                delay = self._random.uniform(*latency)
            else:
                delay = latency
            return self._seq, now, delay

    def _limit_of(self, state: _KeyState) -> int:
        return self._default_limit if state.own_limit is None else state.own_limit

    def _rate_headers(self, limit: int, remaining: int, reset: int) -> Headers:
        if limit == 0:
            limit = remaining = UNLIMITED_HEADER_VALUE
        return [
            ("X-RateLimit-Limit", str(limit)),
            ("X-RateLimit-Remaining", str(remaining)),
            ("X-RateLimit-Reset", str(reset)),
        ]

    def _count(self, path: str, status: int) -> None:
        c = self._counters
        c.requests += 1
        c.status[status] += 1
        endpoint = c.by_endpoint.get(path)
        if endpoint is None:
            endpoint = c.by_endpoint[path] = Counter()
        endpoint[status] += 1

    def admit(self, path: str, key: str | None) -> tuple[Headers, Response | None]:
        """Key check, rate budget and injected faults: the response if the request stops here."""
        now = time.time()
        with self._lock:
            window = self._window_s
            start = math.floor(now / window) * window
            end = start + window
            reset = math.ceil(end)
            state = self._keys.get(key) if key else None
            if state is None or state.revoked:
                if state is None:
                    headers = self._rate_headers(self._default_limit, self._default_limit, reset)
                    status, err = 401, "invalid_api_key"
                    msg = "X-API-Key is missing" if not key else "X-API-Key is not a known key"
                else:
                    limit = self._limit_of(state)
                    used = state.used if state.window_start == start else 0
                    headers = self._rate_headers(limit, max(0, limit - used), reset)
                    status, err, msg = 403, "api_key_revoked", "this API key has been revoked"
                self._count(path, status)
                return headers, Response(status, headers, error_body(err, msg))
            if state.window_start != start:
                state.window_start, state.used = start, 0
            state.used += 1
            limit = self._limit_of(state)
            headers = self._rate_headers(limit, max(0, limit - state.used), reset)
            stop: Response | None = None
            if limit and state.used > limit:
                retry = max(1, math.ceil(end - now))
                stop = Response(
                    429,
                    [*headers, ("Retry-After", str(retry))],
                    error_body("rate_limited", f"rate limit of {limit} requests exceeded"),
                )
            elif self._spurious_429_rate and self._random.random() < self._spurious_429_rate:
                stop = Response(
                    429,
                    [*headers, ("Retry-After", "1")],
                    error_body("rate_limited", "rate limit exceeded (injected)"),
                )
            elif self._error_rate and self._random.random() < self._error_rate:
                stop = Response(
                    500, headers, error_body("internal_error", "server error (injected)")
                )
            if stop is not None:
                self._count(path, stop.status)
            return headers, stop

    def rules(self) -> tuple[Rule, ...]:
        with self._lock:
            return self._rules

    def finish(
        self, seq: int, path: str, arrival: float, headers: Headers, body: bytes
    ) -> Response:
        """Validate an admitted request and record it if accepted."""
        result = validate(path, body, self.rules())
        if isinstance(result, Response):
            with self._lock:
                self._count(path, 400)
            return result._replace(headers=headers)
        n = len(result)
        with self._lock:
            self._count(path, 200)
            c = self._counters
            c.accepted_requests += 1
            c.events_accepted += n
            if path == BATCH_PATH:
                c.batch_sizes.append(n)
                c.batch_hist[n] += 1
            if self._record_events:
                self._records.append((seq, path, arrival, body))
        return Response(200, headers, b'{"status":"ok","accepted":%d}' % n)

    def count_other(self, path: str, status: int) -> None:
        """Count a response to a path that is not an API endpoint (404, 405)."""
        with self._lock:
            self._count("other", status)

    def default_headers(self) -> Headers:
        now = time.time()
        with self._lock:
            window = self._window_s
            reset = math.ceil(math.floor(now / window) * window + window)
            return self._rate_headers(self._default_limit, self._default_limit, reset)


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
