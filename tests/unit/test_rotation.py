"""KAFKA_SASL_PASSWORD_FILE: read at start, watched, and a change stops the worker cleanly.

The file is laid out the way the kubelet writes a mounted Secret: the name is
a symlink into `..data`, itself a symlink to a timestamped directory, and an
update swaps `..data` in one rename. (The whole path against a real broker,
with the password changed there too: tests/integration/test_sasl_rotation.py.)
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from consumer import redaction, rotation
from consumer.config import load
from consumer.errors import ConfigError
from tests.support.mounted import Mounted

BASE = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "GR_API_KEY": "gr-live-rotation-test"}
OLD, NEW = "sasl-old-7d2f9a", "sasl-new-c41e08"


def test_the_password_is_read_from_the_file_without_its_line_end(tmp_path: Path) -> None:
    mounted = Mounted(tmp_path, OLD)
    settings = load({**BASE, "KAFKA_SASL_PASSWORD_FILE": str(mounted.path)})
    assert settings.kafka_common()["sasl.password"] == OLD
    assert settings.redacted()["kafka_extra"]["sasl.password"] == "***"
    assert settings.redacted()["sasl_password_file"] == str(mounted.path)
    assert redaction.scrub(f"pw={OLD}") == "pw=***"


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "cannot read"), (b"\n", "is empty"), (b"p\xe4ss", "is not UTF-8 text")],
)
def test_a_bad_password_file_is_named(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load({**BASE, "KAFKA_SASL_PASSWORD_FILE": str(path)})
    assert info.value.variable == "KAFKA_SASL_PASSWORD_FILE"
    assert problem in info.value.problem


def test_the_password_and_its_file_together_are_refused(tmp_path: Path) -> None:
    mounted = Mounted(tmp_path, OLD)
    env = {**BASE, "KAFKA_SASL_PASSWORD": OLD, "KAFKA_SASL_PASSWORD_FILE": str(mounted.path)}
    with pytest.raises(ConfigError) as info:
        load(env)
    assert info.value.variable == "KAFKA_SASL_PASSWORD_FILE"
    assert OLD not in str(info.value)


def test_a_swapped_secret_counts_once_it_reads_the_same_twice(tmp_path: Path) -> None:
    mounted = Mounted(tmp_path, OLD)
    watch = rotation.FileWatch("KAFKA_SASL_PASSWORD_FILE", mounted.path, OLD)
    assert not watch.changed()
    mounted.update(OLD)  # the kubelet rewrote it with the same value: no change
    assert not watch.changed()
    mounted.update(NEW)
    assert not watch.changed()  # seen once
    assert watch.changed()  # and again: a change


def test_a_half_written_or_missing_file_is_no_change(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(OLD)
    watch = rotation.FileWatch("KAFKA_SASL_PASSWORD_FILE", path, OLD)
    path.write_text("sasl-n")  # an editor caught mid-write
    assert not watch.changed()
    path.write_text(NEW)
    assert not watch.changed()
    path.unlink()
    assert not watch.changed()
    path.write_text(NEW)
    assert not watch.changed()
    assert watch.changed()


def test_watch_calls_back_once_the_file_changes(tmp_path: Path) -> None:
    mounted = Mounted(tmp_path, OLD)
    settings = load({**BASE, "KAFKA_SASL_PASSWORD_FILE": str(mounted.path)})
    called: list[str] = []
    done = threading.Event()

    def on_change(variable: str) -> None:
        called.append(variable)
        done.set()

    stop = rotation.watch(settings, on_change, interval_s=0.02)
    assert stop is not None
    try:
        assert not done.wait(0.2)
        mounted.update(NEW)
        assert done.wait(5)
    finally:
        stop.set()
    assert called == ["KAFKA_SASL_PASSWORD_FILE"]


def test_nothing_is_watched_without_a_password_file() -> None:
    assert rotation.watch(load({**BASE, "KAFKA_SASL_PASSWORD": OLD}), lambda _: None) is None
