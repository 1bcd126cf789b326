"""A secret is scrubbed in every form it can leave in, and before anything is cut.

The property: secrets of any characters, quoted anywhere in an API answer
(raw, JSON-escaped either way, URL-encoded), sent through the real code that
turns an answer into a DLQ header and a DEBUG log line, and into a metric
label and a readiness reason served by the real ops server: no prefix of 8
characters or more of the secret, in any of those forms, is in the output
beyond what the same answer gives with the secret already masked at its
source. That comparison keeps text the answer happens to share with the
secret (a secret made of `x`s in an answer padded with `x`s) from counting as
a leak.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest
import urllib3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import redaction
from consumer.batching import Batch, Item
from consumer.config import Secret
from consumer.delivery import Delivery, Send
from consumer.dlq import Source, dlq_headers
from consumer.events import Route
from consumer.jobs import DeliveryJob, DeliveryResult
from consumer.observe import (
    Health,
    JsonFormatter,
    Metrics,
    OpsServer,
    RedactingFormatter,
    TextFormatter,
)
from consumer.pacing import Pacer
from consumer.s2s import Headers, Response

PREFIX = 8  # no run of this many characters of a secret may survive


@contextmanager
def remembered(*secrets: str) -> Iterator[None]:
    """Remember throwaway secrets for one example, then forget them again."""
    saved = _registry()
    try:
        for secret in secrets:
            Secret(secret)
        yield
    finally:
        for name, value in saved.items():
            setattr(redaction, name, value)


def _registry() -> dict[str, object]:
    """The module's remembered state (tuples swapped whole), to put back afterwards."""
    return {k: v for k, v in vars(redaction).items() if k.startswith("_") and isinstance(v, tuple)}


# ---- the forms an answer may quote a secret in, and a leak may take ---------------

ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "json": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "json_ascii": lambda s: json.dumps(s)[1:-1],
    "url": lambda s: quote(s, safe=""),
    "url_plus": lambda s: quote_plus(s, safe=""),
}


def leaks(secret: str, output: str, control: str) -> list[str]:
    """Prefixes of the secret's forms found more often in `output` than in `control`."""
    found = []
    for name, encode in ENCODINGS.items():
        head = encode(secret)[:PREFIX]
        if len(head) == PREFIX and output.count(head) > control.count(head):
            found.append(f"{name} {head!r}")
    return found


# ---- the service's real paths from an answer to what leaves the process ------------


def _deliver(answer: bytes, item: Item[int]) -> DeliveryResult[int]:
    """One lone event through the real delivery, every request answered 400 with `answer`."""
    delivery = Delivery(Pacer(), _Observer(), lambda: None, time.time)
    job = DeliveryJob(("t", 0), Batch(Route.BATCH, [item]))
    result: DeliveryResult[int] = DeliveryResult(job)
    run = delivery.run(job, result)
    step = next(run)
    while True:
        assert isinstance(step, Send)
        try:
            step = run.send(Response(400, Headers(), answer, 0.01))
        except StopIteration:
            return result


class _Observer:
    def on_response(self, endpoint: str, status: int, elapsed_s: float) -> None: ...
    def on_retry(self, reason: str) -> None: ...
    def on_key_rejected(self, status: int) -> None: ...
    def on_key_ok(self) -> None: ...
    def on_request(self, events: int) -> None: ...
    def on_budget_wait(self, seconds: float) -> None: ...


class _Capture:
    """The service's two log formats, each behind the redacting formatter, into buffers."""

    def __init__(self) -> None:
        self.streams = {"json": io.StringIO(), "text": io.StringIO()}
        self.handlers = []
        for fmt, stream in self.streams.items():
            handler = logging.StreamHandler(stream)
            inner = JsonFormatter() if fmt == "json" else TextFormatter()
            handler.setFormatter(RedactingFormatter(inner))
            self.handlers.append(handler)

    def __enter__(self) -> _Capture:
        root = logging.getLogger()
        self._saved = root.handlers[:], root.level
        root.handlers[:] = self.handlers
        root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.handlers[:], level = self._saved
        root.setLevel(level)

    def text(self) -> str:
        return "".join(s.getvalue() for s in self.streams.values())


@pytest.fixture(scope="module")
def ops() -> Iterator[tuple[OpsServer, Metrics, Health, urllib3.PoolManager]]:
    metrics, health = Metrics(), Health()
    health.joined()
    server = OpsServer(0, metrics, health, host="127.0.0.1")
    server.start()
    try:
        yield server, metrics, health, urllib3.PoolManager()
    finally:
        server.stop()


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def outputs(
    answer: str, ops: tuple[OpsServer, Metrics, Health, urllib3.PoolManager]
) -> dict[str, str]:
    """What leaves the process when the API answers a lone event with `answer`: the DLQ
    header, the log lines (as written, and each JSON line's strings decoded), the
    scraped /metrics and /readyz (as served, and decoded)."""
    item: Item[int] = Item(7, b'{"event_type":"x","payload":{}}', Route.BATCH, 7, 0.0)
    with _Capture() as logs:
        result = _deliver(answer.encode("utf-8"), item)
        (rejection,) = result.rejected
        log = logging.getLogger("consumer.test")
        log.warning("dlq write failed: %s", rejection.detail, extra={"answer": answer})
        try:
            raise RuntimeError(answer)
        except RuntimeError:
            log.exception("delivery raised", extra={"nested": {"answer": [answer]}})
    headers = dlq_headers(
        [],
        reason="api_rejected",
        detail=rejection.detail,
        source=Source("t", 0, 7, None),
        group="g",
        http_status=400,
    )
    detail = (dict(headers)["gr.dlq.detail"] or b"").decode("utf-8")
    written = logs.text()
    decoded = [
        s
        for line in logs.streams["json"].getvalue().split("\n")
        if line
        for s in _strings(orjson.loads(line))
    ]
    server, metrics, health, http = ops
    metrics.dlq_write_failures.clear()
    metrics.dlq_write_failures.labels(answer).inc()
    health.dlq_failing(answer)
    base = f"http://127.0.0.1:{server.port}"
    scraped = http.request("GET", f"{base}/metrics").data.decode("utf-8")
    ready = http.request("GET", f"{base}/readyz").data.decode("utf-8")
    return {
        "dlq header": detail,
        "logs": written + "\n".join(decoded),
        "/metrics": scraped,
        "/readyz": ready + "\n" + orjson.loads(ready)["reason"],
    }


# ---- the property ---------------------------------------------------------------------

secrets = st.text(st.characters(exclude_categories=["Cs"]), min_size=PREFIX, max_size=48)
fillers = st.text(max_size=40)


@st.composite
def answers(draw: st.DrawFn, secret: str) -> tuple[str, str]:
    """An answer quoting the secret once or more, in any encoding, anywhere (often right
    across the 300-character and 1 KiB cuts); and the same answer with each quote
    replaced by the mask."""
    quoted, masked = [], []
    for _ in range(draw(st.integers(1, 3))):
        pad = "x" * draw(st.sampled_from([0, 0, 260, 290, 295, 300, 990, 1010, 1020, 1024]))
        pad += draw(fillers)
        encode = ENCODINGS[draw(st.sampled_from(sorted(ENCODINGS)))]
        quoted.append(pad + encode(secret))
        masked.append(pad + redaction.MASK)
    tail = draw(fillers)
    return "".join(quoted) + tail, "".join(masked) + tail


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), secret=secrets)
def test_no_secret_or_prefix_of_one_leaves_in_any_form(
    data: st.DataObject,
    secret: str,
    ops: tuple[OpsServer, Metrics, Health, urllib3.PoolManager],
) -> None:
    answer, masked = data.draw(answers(secret))
    with remembered(secret):
        got = outputs(answer, ops)
        control = outputs(masked, ops)
    for where, text in got.items():
        found = leaks(secret, text, control[where])
        assert not found, f"{where}: {found}"


# ---- named cases: escaped quotes, a key across a cut, an OAuth client secret ------------


def test_a_key_with_quotes_and_backslashes_is_masked_in_its_escaped_form(
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = 'abc"def\\ghi123'
    with remembered(key), _Capture() as logs:
        logging.getLogger("consumer.test").info("sending", extra={"key": key})
        assert redaction.scrub(json.dumps({"key": key})) == '{"key": "***"}'
        assert redaction.scrub(f"?api_key={quote(key)}") == "?api_key=***"
        assert redaction.scrub(repr(key.encode())) == "b'***'"
    text = logs.text()
    assert 'abc\\"def\\\\ghi123' not in text
    assert "***" in text


def test_an_answer_is_scrubbed_before_it_is_cut(
    ops: tuple[OpsServer, Metrics, Health, urllib3.PoolManager],
) -> None:
    key = "gr-live-7a1c0e9f3b5d2468ace0"
    for cut in (300, 1024):  # the DEBUG log's excerpt, the DLQ detail
        answer = "e" * (cut - 10) + key + " invalid"
        with remembered(key):
            got = outputs(answer, ops)
        assert key[:10] not in got["dlq header"] + got["logs"]
        assert key[:PREFIX] not in got["dlq header"] + got["logs"]


def test_sasl_oauthbearer_config_is_a_secret() -> None:
    from consumer.config import load

    conf = "principal=svc clientId=gr clientSecret=Zq8-oauth-client-secret"
    with remembered():
        settings_ = load(
            {
                "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
                "GR_API_KEY": "gr-live-oauth-test-key",
                "KAFKA_SASL_OAUTHBEARER_CONFIG": conf,
            }
        )
        assert settings_.redacted()["kafka_extra"]["sasl.oauthbearer.config"] == "***"
        assert "Zq8-oauth" not in redaction.scrub(f"config: {conf}")


def test_an_answer_ending_in_a_secret_with_a_line_end_is_scrubbed_before_it_is_stripped(
    ops: tuple[OpsServer, Metrics, Health, urllib3.PoolManager],
) -> None:
    """Found by the property above: stripping the answer first cut the secret's last
    character off, and the rest was logged."""
    key = "000000\u00f5\r"
    with remembered(key):
        got = outputs("x" * 20 + key, ops)
    for where, text in got.items():
        assert "000000" not in text, where
