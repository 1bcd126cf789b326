"""docs/contract.md section 7, the one table of every setting, held to the code.

Every variable `config.load` reads has a row, and every row names a variable
it reads; each default is what `load` gives when the variable is unset; each
range's bounds load and one step past either is refused naming the
variable; each choice loads and something else is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from consumer import config
from consumer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BASE = {"KAFKA_BOOTSTRAP_SERVERS": "broker:9092", "GR_API_KEY": "gr-live-contract-test"}


def _rows() -> dict[str, tuple[str, str]]:
    """variable -> (default cell, accepted cell), from section 7's table."""
    text = (ROOT / "docs" / "contract.md").read_text()
    section = text[text.index("## 7. Configuration") :]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("variable", "---"):
            continue
        for name in re.findall(r"`([A-Za-z_]+)`", cells[0]) if "other" not in cells[0] else []:
            rows[name] = (cells[1], cells[2])
    return rows


ROWS = _rows()
DEFAULTS = config.load(BASE)


class _Recording(dict[str, str]):
    def __init__(self, items: dict[str, str]) -> None:
        super().__init__(items)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def _field(variable: str) -> str:
    return variable.removeprefix("GR_").removeprefix("KAFKA_").lower()


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def test_every_variable_read_has_a_row_and_every_row_is_read() -> None:
    env = _Recording(BASE)
    config.load(env)
    ours = {name for name in ROWS if name.startswith(("GR_", "KAFKA_"))}
    assert env.read == ours


@pytest.mark.parametrize("variable", sorted(n for n in ROWS if n.startswith(("GR_", "KAFKA_"))))
def test_the_documented_default_is_the_default(variable: str) -> None:
    cell, _ = ROWS[variable]
    literal = re.fullmatch(r"`([^`]*)`", cell)
    if literal:
        assert _shown(getattr(DEFAULTS, _field(variable))) == literal.group(1)
    elif cell == "required":
        with pytest.raises(ConfigError) as info:
            config.load({k: v for k, v in BASE.items() if k != variable})
        assert info.value.variable == variable
    else:
        assert cell in ("unset", "empty"), (
            f"{variable}: default {cell!r} is neither a value nor a word"
        )
        if variable.startswith("GR_API_KEY"):
            return  # one of the two is required: the row of each says so
        assert getattr(DEFAULTS, _field(variable)) in (None, (), "")


def _number(token: str, kind: type) -> Any:
    """A bound: a number, or a setting's default, minus a constant."""
    name, _, minus = token.partition(" - ")
    value = getattr(DEFAULTS, _field(name)) if name.startswith("GR_") else kind(name)
    return value - kind(minus) if minus else value


def _ranges() -> list[tuple[str, str, str]]:
    out = []
    for variable, (_, accepted) in ROWS.items():
        match = re.fullmatch(r"`([^`]+)` to `([^`]+)`", accepted)
        if match:
            out.append((variable, match.group(1), match.group(2)))
    return out


def _refused(variable: str, value: str) -> bool:
    """Whether `load` refuses the value, naming that variable (any other error fails)."""
    try:
        config.load({**BASE, variable: value})
    except ConfigError as exc:
        refused_by = exc.variable
    else:
        return False
    assert refused_by == variable
    return True


@pytest.mark.parametrize(("variable", "low", "high"), _ranges())
def test_each_range_holds_at_both_ends(variable: str, low: str, high: str) -> None:
    kind = type(getattr(DEFAULTS, _field(variable)) or 0)
    if variable == "GR_RATE_LIMIT_PER_MINUTE":
        kind = int  # unset by default
    lo, hi = _number(low, kind), _number(high, kind)
    if kind is int:
        inside, outside = [lo, hi], [lo - 1, hi + 1]
    else:
        step = max(abs(lo) * 0.1, 1e-4), max(abs(hi) * 0.1, 1e-4)
        inside, outside = [lo, hi], [lo - step[0], hi + step[1]]
    for value in inside:
        assert not _refused(variable, repr(value)), f"{variable}={value} refused"
    for value in outside:
        assert _refused(variable, repr(value)), f"{variable}={value} accepted"


def _choices() -> list[tuple[str, list[str]]]:
    out = []
    for variable, (_, accepted) in ROWS.items():
        if accepted.startswith("one of ") or accepted == "`true` or `false`":
            out.append((variable, re.findall(r"`([^`]+)`", accepted)))
    return out


@pytest.mark.parametrize(("variable", "choices"), _choices())
def test_each_choice_loads_and_nothing_else(variable: str, choices: list[str]) -> None:
    for choice in choices:
        assert not _refused(variable, choice)
    assert _refused(variable, "bogus")


def test_the_table_covers_the_strict_rules_and_the_refused_kafka_settings() -> None:
    from consumer.config import _OWNED_KAFKA_KEYS, _SECRET_WORDS
    from consumer.events import STRICT_RULES

    text = (ROOT / "docs" / "contract.md").read_text()
    section = text[text.index("## 7. Configuration") :]
    for name in [*STRICT_RULES, *_OWNED_KAFKA_KEYS, *_SECRET_WORDS]:
        assert f"`{name}`" in section, name
