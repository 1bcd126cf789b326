"""gr-consumer's commands: production ones built in, development ones from an entry point."""

from __future__ import annotations

import importlib.metadata

import pytest

from consumer import cli
from tests.support.cli_help import help_commands


def test_production_commands_are_built_in() -> None:
    assert list(cli.COMMANDS) == ["run", "check-config", "publish", "dlq"]
    assert not any("devtools" in module for module, _ in cli.COMMANDS.values())


def test_the_checkout_adds_the_development_commands(capsys: pytest.CaptureFixture[str]) -> None:
    # make setup installs gr-s2s-consumer-dev, which registers demo and simulate-api.
    entries = importlib.metadata.entry_points(group=cli.ENTRY_POINT_GROUP)
    assert {e.name for e in entries} == {"demo", "simulate-api"}
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert help_commands(capsys.readouterr().out) == [
        "run",
        "check-config",
        "publish",
        "dlq",
        "demo",
        "simulate-api",
    ]
