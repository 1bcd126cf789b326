"""Start-up errors an operator can act on: exit 2, the variable named, no traceback, no secret.

Left to the libraries, these end badly: a ValueError traceback and exit 1 for
an unclosed IPv6 bracket, a SystemError from the Kafka client for a Latin-1
password, silence for `all,bogus` and for a blank in a host name. The
commands run as processes, with the environment as raw bytes, the way a
container gets it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from consumer.config import load
from consumer.errors import ConfigError
from consumer.events import EventDecoder, Poison
from consumer.producer import GameRebellionKafka

API_KEY = "gr-live-clear-errors-5b7d"
PASSWORD_LATIN1 = "p\xe4ssw\xf6rt-Geheim-91".encode("latin-1")  # not UTF-8
BASE = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "GR_API_KEY": API_KEY}


def _command(args: list[str], extra: dict[bytes, bytes]) -> subprocess.CompletedProcess[bytes]:
    environ = {k: v for k, v in os.environb.items() if not k.startswith((b"KAFKA_", b"GR_"))}
    environ.update({k.encode(): v.encode() for k, v in BASE.items()})
    environ.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        env=environ,
        capture_output=True,
        timeout=60,
        check=False,
    )


def _assert_exit_2_naming(proc: subprocess.CompletedProcess[bytes], variable: str) -> None:
    err = proc.stderr.decode("utf-8", "backslashreplace")
    assert proc.returncode == 2, err
    assert variable in err
    assert "Traceback" not in err
    assert API_KEY.encode() not in proc.stderr + proc.stdout


@pytest.mark.parametrize("url", ["https://[::1", "https://x]", "https://a b.example"])
@pytest.mark.parametrize("command", [["check-config"], ["run"]])
def test_a_malformed_base_url_exits_2_naming_it(command: list[str], url: str) -> None:
    _assert_exit_2_naming(_command(command, {b"GR_BASE_URL": url.encode()}), "GR_BASE_URL")


@pytest.mark.parametrize(
    "url",
    [
        "https://[::1",
        "https://x]",
        "https://a b.example",
        "https://a\tb.example",
        "https://exa\u0301mple.com",
        "https://-bad.example",
        "https://[not-v6]",
        "https://host..example",
    ],
)
def test_a_base_url_that_is_no_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({**BASE, "GR_BASE_URL": url})
    assert info.value.variable == "GR_BASE_URL"


@pytest.mark.parametrize(
    "url",
    ["https://[::1]:8443", "https://10.0.0.7", "https://api_gw.internal", "https://a.example./v1"],
)
def test_hosts_libcurl_takes_are_accepted(url: str) -> None:
    assert load({**BASE, "GR_BASE_URL": url}).base_url == url


@pytest.mark.parametrize(
    "command", [["check-config"], ["run"], ["publish", "-"], ["dlq", "inspect"]]
)
def test_a_latin1_sasl_password_exits_2_naming_it_and_never_shows_it(command: list[str]) -> None:
    proc = _command(command, {b"KAFKA_SASL_PASSWORD": PASSWORD_LATIN1})
    _assert_exit_2_naming(proc, "KAFKA_SASL_PASSWORD")
    shown = proc.stdout + proc.stderr
    for piece in (PASSWORD_LATIN1, b"Geheim", b"ssw"):
        assert piece not in shown


@pytest.mark.parametrize("variable", [b"KAFKA_CLIENT_ID", b"KAFKA_TOPICS", b"KAFKA_GROUP_ID"])
def test_a_non_utf8_byte_in_any_kafka_value_exits_2_naming_it(variable: bytes) -> None:
    proc = _command(["check-config"], {variable: b"caf\xe9"})
    _assert_exit_2_naming(proc, variable.decode())


def test_the_producer_library_names_the_variable_too() -> None:
    password = PASSWORD_LATIN1.decode("utf-8", "surrogateescape")  # as os.environ holds it
    with pytest.raises(ConfigError) as info:
        GameRebellionKafka.from_env({**BASE, "KAFKA_SASL_PASSWORD": password})
    assert info.value.variable == "KAFKA_SASL_PASSWORD"
    assert "Geheim" not in str(info.value)


def test_all_with_an_unknown_rule_is_refused() -> None:
    proc = _command(["check-config"], {b"GR_STRICT_RULES": b"all,bogus"})
    _assert_exit_2_naming(proc, "GR_STRICT_RULES")
    assert b"'bogus'" in proc.stderr


def test_a_lone_surrogate_is_named_as_such_not_as_truncation() -> None:
    value = b'{"event_type": "custom", "payload": {"s": "\\ud800"}}'
    verdict = EventDecoder().decode(value)
    assert isinstance(verdict, Poison)
    assert verdict.reason == "invalid_json"
    assert "truncated" not in verdict.detail
    assert "lone UTF-16 surrogate escape \\ud800 at byte 43" in verdict.detail
    # a record cut in the middle of one still says it was cut
    cut = EventDecoder().decode(b'{"event_type": "custom", "payload": {"s": "\\ud800')
    assert isinstance(cut, Poison)
    assert cut.detail == "Input data was truncated"
