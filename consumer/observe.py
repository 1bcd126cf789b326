"""What the service tells operators: Prometheus metrics, health and readiness, JSON logs.

`/healthz` says the main loop is turning (a stuck loop gets the pod
restarted). `/readyz` says the worker has joined its group and can deliver;
when it cannot (key refused, shutting down) it answers 503 with the reason.
An idle member (more workers than partitions) is ready: failing it would stall
a rolling update whose surge pod happens to get no partition.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from consumer import redaction
from consumer.clock import SYSTEM, Clock

log = logging.getLogger("consumer")
API_FAILING_S = 30.0  # readiness reports an API failing this long without a good answer


class Metrics:
    """Every metric the service exports, on its own registry (tests get a fresh one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events_consumed = Counter(
            "gr_events_consumed", "Records read from Kafka", ["topic"], registry=r
        )
        self.events_delivered = Counter(
            "gr_events_delivered", "Events the API accepted (200)", registry=r
        )
        self.events_dead_lettered = Counter(
            "gr_events_dead_lettered", "Records acknowledged in the DLQ", ["reason"], registry=r
        )
        self.api_requests = Counter(
            "gr_api_requests", "API requests by answer", ["endpoint", "status"], registry=r
        )
        self.batch_size = Histogram(
            "gr_batch_size_events",
            "Events per accepted request",
            buckets=(1, 2, 5, 10, 20, 50, 80, 99, 100),
            registry=r,
        )
        self.request_seconds = Histogram(
            "gr_api_request_seconds",
            "API request latency",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.retries = Counter(
            "gr_delivery_retries", "Requests sent again, by cause", ["reason"], registry=r
        )
        self.pauses = Counter(
            "gr_partition_pauses", "Times a partition was paused", ["cause"], registry=r
        )
        self.partitions_paused = Gauge("gr_partitions_paused", "Partitions paused now", registry=r)
        self.partitions_assigned = Gauge(
            "gr_partitions_assigned", "Partitions owned now", registry=r
        )
        self.commit_lag = Gauge(
            "gr_commit_lag",
            "Records read but not yet committable",
            ["topic", "partition"],
            registry=r,
        )
        self.commits = Counter(
            "gr_commits",
            "Offset commits by result: ok, error, repaired (the group stood behind a "
            "confirmed commit, which went again)",
            ["result"],
            registry=r,
        )
        self.rate_limit_limit = Gauge(
            "gr_rate_limit_limit",
            "X-RateLimit-Limit last seen: the key's requests per window",
            registry=r,
        )
        self.rate_limit_share = Gauge(
            "gr_rate_limit_share",
            "This worker's learnt share of the key's budget (1: it alone uses the key)",
            registry=r,
        )
        self.request_events = Histogram(
            "gr_request_events",
            "Events per batch request sent (first attempts, retries and isolation probes)",
            buckets=(1, 2, 5, 10, 25, 50, 75, 90, 99, 100),
            registry=r,
        )
        self.isolation_requests = Counter(
            "gr_isolation_requests",
            "Requests spent on batches the API answered 400: the 400 itself and the probes "
            "that found the refused event",
            registry=r,
        )
        self.budget_wait_seconds = Counter(
            "gr_budget_wait_seconds",
            "Time delivery threads waited for a slot in the API key's budget",
            registry=r,
        )
        self.rate_limit_remaining = Gauge(
            "gr_rate_limit_remaining", "X-RateLimit-Remaining last seen", registry=r
        )
        self.buffered_bytes = Gauge(
            "gr_buffered_bytes", "Event bytes held in memory awaiting delivery", registry=r
        )
        self.rebalances = Counter(
            "gr_rebalances", "Rebalance callbacks by kind", ["kind"], registry=r
        )
        self.fetch_restarts = Counter(
            "gr_fetch_restarts",
            "Partitions assigned again because librdkafka never started fetching them "
            "(their committed offsets were never looked up)",
            registry=r,
        )
        self.partition_commit_age = Gauge(
            "gr_partition_last_commit_age_seconds",
            "Seconds since the partition's committed offset last moved (or it was assigned)",
            ["topic", "partition"],
            registry=r,
        )
        self.partition_uncommitted = Gauge(
            "gr_partition_uncommitted_events",
            "Events delivered or dead-lettered but not yet committed",
            ["topic", "partition"],
            registry=r,
        )
        self.dlq_write_failures = Counter(
            "gr_dlq_write_failures", "DLQ writes that failed (retried)", ["error"], registry=r
        )
        self.partitions_waiting = Gauge(
            "gr_partitions_waiting",
            "Partitions held up outside the worker: the API (requests retried), the key's "
            "budget (spent as fast as it comes), the key (refused), the DLQ (writes "
            "failing), the group coordinator (commits unanswered)",
            ["cause"],
            registry=r,
        )
        # Fed by consumer/lag.py from librdkafka's statistics.
        self.partition_consumer_lag = Gauge(
            "gr_partition_consumer_lag",
            "Records of the partition the group has not committed past: log-end offset "
            "minus committed offset",
            ["topic", "partition"],
            registry=r,
        )
        self.partition_committed_offset = Gauge(
            "gr_partition_committed_offset",
            "The group's committed offset on the partition (-1: none yet)",
            ["topic", "partition"],
            registry=r,
        )
        # States, not counts: an alert can ask for one held for minutes.
        self.key_refused = Gauge(
            "gr_api_key_refused",
            "1 while delivery is halted because the API refuses the key (401/403), else 0",
            registry=r,
        )
        self.dlq_failing = Gauge(
            "gr_dlq_write_failing",
            "1 while DLQ writes fail (since the last failure, none succeeded), else 0",
            registry=r,
        )

        # Known label values start at zero, so dashboards and alerts see a
        # series before the first occurrence.
        for reason in (
            "invalid_json", "schema_violation", "empty_value", "too_large", "api_rejected",
        ):  # fmt: skip
            self.events_dead_lettered.labels(reason)
        for reason in (
            "transport",
            "status_5xx",
            "status_4xx",
            "rate_limited",
            "key_401",
            "key_403",
        ):
            self.retries.labels(reason)
        for cause in ("buffer_full", "uncommitted", "draining"):
            self.pauses.labels(cause)
        for result in ("ok", "error"):
            self.commits.labels(result)
        for kind in ("assign", "revoke", "lost"):
            self.rebalances.labels(kind)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def watch(self, health: Health) -> None:
        """The state gauges read `health` whenever they are scraped."""
        self.key_refused.set_function(lambda: float(health.halted))
        self.dlq_failing.set_function(lambda: float(health.dlq_troubled))


class Health:
    """Liveness and readiness, set from any thread."""

    def __init__(self, stale_after_s: float = 60.0, clock: Clock = SYSTEM) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._beat = clock.monotonic()
        self._stale_after = stale_after_s
        self._joined = False
        self._key_problem: str | None = None
        self._dlq_problem: str | None = None
        self._stopping = False
        self._stall_limit_s = 0.0
        self._stalled_s = 0.0
        self._api_failing_since: float | None = None
        self._api_problem = ""

    def stall_limit(self, seconds: float) -> None:
        """Liveness fails once a partition with work has committed nothing for this long,
        with nothing outside the worker holding it up (0: never). Waiting on the API, the
        key, the DLQ or the coordinator shows in readiness and metrics: a restart would not
        end it, and every worker would restart at once."""
        self._stall_limit_s = seconds

    def stalled(self, seconds: float) -> None:
        """The longest a partition with work has gone without a commit, as of now."""
        self._stalled_s = seconds

    def dlq_failing(self, error: str) -> None:
        self._dlq_problem = f"DLQ writes failing ({error}); retrying"

    def dlq_ok(self) -> None:
        self._dlq_problem = None

    @property
    def dlq_troubled(self) -> bool:
        return self._dlq_problem is not None

    def api_failing(self, what: str) -> None:
        """An answer that is no answer (5xx, a transport error): readiness says so once
        the API has failed for `API_FAILING_S` without a good answer between."""
        if self._api_failing_since is None:
            self._api_failing_since = self._clock.monotonic()
        self._api_problem = what

    def api_ok(self) -> None:
        self._api_failing_since = None

    def beat(self) -> None:
        self._beat = self._clock.monotonic()

    def joined(self) -> None:
        self._joined = True

    def key_rejected(self, status: int) -> None:
        with self._lock:
            if self._key_problem is None:
                log.error("api key refused; delivery halted", extra={"status": status})
            self._key_problem = f"API key refused ({status}); delivery halted, retrying"

    def key_ok(self) -> None:
        if self._key_problem is not None:
            with self._lock:
                if self._key_problem is not None:
                    log.warning("api key accepted again; delivery resumed")
                self._key_problem = None

    def stopping(self) -> None:
        self._stopping = True

    @property
    def halted(self) -> bool:
        return self._key_problem is not None

    def live(self) -> tuple[bool, str]:
        age = self._clock.monotonic() - self._beat
        if age > self._stale_after:
            return False, f"main loop stalled for {age:.0f}s"
        stalled = self._stalled_s
        if self._stall_limit_s and stalled > self._stall_limit_s:
            return False, f"a partition with work has committed nothing for {stalled:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self._stopping:
            return False, "shutting down"
        if not self._joined:
            return False, "not yet joined the consumer group"
        problem = self._key_problem or self._dlq_problem
        if problem is not None:
            return False, problem
        since = self._api_failing_since
        if since is not None and self._clock.monotonic() - since >= API_FAILING_S:
            failing = self._clock.monotonic() - since
            return False, f"API failing ({self._api_problem}) for {failing:.0f}s; retrying"
        return True, "ok"


class _Handler(BaseHTTPRequestHandler):
    metrics: ClassVar[Metrics]
    health: ClassVar[Health]
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the body waited for
    # the client's delayed ACK of the headers (tens of ms per scrape).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._send(200, redaction.scrub_bytes(self.metrics.render()), CONTENT_TYPE_LATEST)
        elif self.path in ("/healthz", "/readyz"):
            ok, reason = self.health.live() if self.path == "/healthz" else self.health.ready()
            body = orjson.dumps(
                {"status": "ok" if ok else "unavailable", "reason": redaction.scrub(reason)}
            )
            self._send(200 if ok else 503, body, "application/json")
        else:
            self._send(404, b'{"error":"not found"}', "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds are not news."""


class OpsServer:
    """/healthz, /readyz and /metrics on GR_HTTP_PORT (0 picks a free port)."""

    def __init__(self, port: int, metrics: Metrics, health: Health, host: str = "0.0.0.0") -> None:
        metrics.watch(health)
        handler = type("Handler", (_Handler,), {"metrics": metrics, "health": health})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ops-http", daemon=True
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---- logging ----

_log = logging.getLogger("consumer")


def _log_uncaught(
    kind: type[BaseException], exc: BaseException, tb: types.TracebackType | None
) -> None:
    _log.critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    exc = args.exc_value if args.exc_value is not None else args.exc_type()
    name = args.thread.name if args.thread is not None else "?"
    _log.critical(
        "uncaught exception in thread %s", name, exc_info=(args.exc_type, exc, args.exc_traceback)
    )


_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _scrub_tree(node: Any) -> Any:
    if isinstance(node, str):
        return redaction.scrub(node)
    if isinstance(node, dict):
        return {redaction.scrub(k): _scrub_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_scrub_tree(v) for v in node]
    return node


class RedactingFormatter(logging.Formatter):
    """Scrubs the finished line: message, fields, exception text and traceback alike.

    A JSON line is scrubbed string by string, decoded: a secret is masked in the
    form it had before the line escaped it, and no mask ever cuts an escape
    sequence of the line in two (which would leave it unreadable as JSON).
    """

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner
        self._json = isinstance(inner, JsonFormatter)

    def format(self, record: logging.LogRecord) -> str:
        line = self._inner.format(record)
        if self._json:
            return orjson.dumps(_scrub_tree(orjson.loads(line))).decode()
        return redaction.scrub(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = {
            k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")
        }
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.getMessage()}"
        if extras:
            line += " " + json.dumps(extras, default=str)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str, fmt: str, secrets: list[str] | None = None) -> None:
    """JSON or text lines on stderr, every one scrubbed of every secret (see redaction).

    `secrets` adds values that are not `config.Secret`s; uncaught exceptions in any
    thread are logged through the same handler instead of printed raw.
    """
    for secret in secrets or ():
        redaction.remember(secret)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(JsonFormatter() if fmt == "json" else TextFormatter()))
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
