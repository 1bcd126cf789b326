"""Redaction covers everything a process writes: every log field, exception text and
traceback, the ops endpoints, and every key ever read, rotated ones included."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import orjson
import pytest
import urllib3

from consumer import redaction
from consumer.config import ApiKeySource, Secret
from consumer.observe import Health, Metrics, OpsServer, setup_logging

KEY_1 = "gr-live-ROTATE-1-7d1e5a0c9b"
KEY_2 = "gr-live-ROTATE-2-e83f0a61d4"


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    hooks = (sys.excepthook, threading.excepthook)
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook, threading.excepthook = hooks


def test_scrub_masks_every_remembered_value_longest_first() -> None:
    redaction.remember("abcd-outer-abcd-inner")
    redaction.remember("abcd-inner")
    redaction.remember("abc")  # too short to mask: would eat ordinary words
    text = "x abcd-outer-abcd-inner y abcd-inner z abc"
    assert redaction.scrub(text) == "x *** y *** z abc"
    assert redaction.scrub_bytes(text.encode()) == b"x *** y *** z abc"


def test_a_secret_is_remembered_when_it_is_made() -> None:
    before = redaction.count()
    Secret("made-here-9f2c41")
    assert redaction.count() == before + 1
    assert redaction.scrub("made-here-9f2c41") == "***"


def test_every_key_ever_read_from_the_file_is_scrubbed(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    source = ApiKeySource(file=key_file)
    key_file.write_text(KEY_1 + "\n")
    assert source.read().reveal() == KEY_1
    key_file.write_text(KEY_2 + "\n")  # rotated: the next read finds the new key
    assert source.read().reveal() == KEY_2
    assert redaction.scrub(f"{KEY_1} then {KEY_2}") == "*** then ***"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_fields_exceptions_and_tracebacks_are_scrubbed(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY_1)
    ApiKeySource(file=key_file).read()
    setup_logging("DEBUG", fmt)
    log = logging.getLogger("consumer.test")
    log.debug("the key is %s", KEY_1, extra={"header": f"X-API-Key: {KEY_1}", "n": 3})

    def fail() -> None:
        raise RuntimeError(f"request with {KEY_1} refused")

    try:
        fail()
    except RuntimeError:
        log.exception("delivery failed", extra={"nested": {"key": KEY_1}})
    err = capsys.readouterr().err
    assert KEY_1 not in err
    assert err.count("***") >= 4  # message, field, nested field, exception text
    assert "Traceback" in err
    assert "fail()" in err
    if fmt == "json":
        lines = [orjson.loads(line) for line in err.splitlines()]
        assert lines[0]["header"] == "X-API-Key: ***"
        assert lines[0]["n"] == 3


def test_uncaught_exceptions_in_threads_go_through_the_scrubbed_log(
    capsys: pytest.CaptureFixture[str],
) -> None:
    Secret(KEY_2)
    setup_logging("INFO", "json")

    def boom() -> None:
        raise ValueError(f"bad key {KEY_2}")

    thread = threading.Thread(target=boom, name="boom-thread")
    thread.start()
    thread.join()
    err = capsys.readouterr().err
    assert KEY_2 not in err
    entry = orjson.loads(err.splitlines()[-1])
    assert entry["level"] == "CRITICAL"
    assert "boom-thread" in entry["msg"]
    assert "ValueError: bad key ***" in entry["exc"]


def test_ops_endpoints_are_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    Secret(KEY_2)
    metrics, health = Metrics(), Health()
    # any reason text (an error message, say) that happens to carry the key
    monkeypatch.setattr(health, "ready", lambda: (False, f"DLQ write failed: {KEY_2}"))
    metrics.retries.labels(f"odd-{KEY_2}").inc()
    server = OpsServer(0, metrics, health, host="127.0.0.1")
    server.start()
    try:
        http = urllib3.PoolManager()
        ready = http.request("GET", f"http://127.0.0.1:{server.port}/readyz")
        assert ready.status == 503
        assert KEY_2.encode() not in ready.data
        assert b"***" in ready.data
        scraped = http.request("GET", f"http://127.0.0.1:{server.port}/metrics").data
        assert KEY_2.encode() not in scraped
        assert b"odd-***" in scraped
    finally:
        server.stop()
