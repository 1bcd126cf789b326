"""The exported JSON Schema: in step with the Structs, complete, and stable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from consumer import schema_export
from consumer.events import KNOWN_EVENT_TYPES, ROUTES, EventDecoder, Valid
from consumer.schema_export import (
    EVENT_SCHEMA_FILE,
    default_schema_dir,
    drifted,
    event_schema,
    main,
    render_all,
    write_all,
)
from gr_devtools.samples import vendor_examples

# What each known type's payload must list as required: the decoder's default rule
# (the vendor client's signatures), nothing more.
REQUIRED_PAYLOAD_FIELDS: dict[str, list[str]] = {
    "transaction": [],
    "impression": ["campaign_id"],
    "click": ["campaign_id"],
    "conversion": ["campaign_id", "conversion_type"],
    "feature_use": [],
    "session_start": [],
    "session_stop": [],
    "session_end": [],
}

DOC_EXAMPLE: dict[str, Any] = {
    "event_type": "transaction",
    "identifiers": {"player_id": "player-12345", "device_id": "device-uuid"},
    "utm": {"source": "facebook", "medium": "cpc", "campaign": "summer_2026"},
    "payload": {
        "amount": 4.99,
        "currency": "USD",
        "type": "iap",
        "description": "Premium Sword",
        "status": "success",
        "usd_value": 4.99,
    },
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    text = (default_schema_dir() / EVENT_SCHEMA_FILE).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    prefix = "#/$defs/"
    assert ref.startswith(prefix), ref
    resolved: dict[str, Any] = schema["$defs"][ref.removeprefix(prefix)]
    return resolved


def _event_def(schema: dict[str, Any], event_type: str) -> dict[str, Any]:
    """The definition among oneOf whose event_type is exactly `event_type`."""
    matches = [
        definition
        for definition in (_resolve(schema, option) for option in schema["oneOf"])
        if definition["properties"]["event_type"].get("enum") == [event_type]
    ]
    assert len(matches) == 1, (event_type, len(matches))
    return matches[0]


# --------------------------------------------------------------------------
# Drift
# --------------------------------------------------------------------------


def test_committed_schemas_match_the_structs() -> None:
    problems = drifted(default_schema_dir())
    assert problems == [], "run `python -m consumer.schema_export` and commit schemas/"


@pytest.fixture
def copy_of_schemas(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(default_schema_dir(), target)
    return target


def test_drift_is_detected_and_named(
    copy_of_schemas: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_of_schemas / EVENT_SCHEMA_FILE
    path.write_text(path.read_text(encoding="utf-8").replace("minLength", "minLen"), "utf-8")
    assert main(["--check", "--dir", str(copy_of_schemas)]) == 1
    err = capsys.readouterr().err
    assert EVENT_SCHEMA_FILE in err
    assert "differs" in err


def test_whitespace_change_is_drift(copy_of_schemas: Path) -> None:
    path = copy_of_schemas / EVENT_SCHEMA_FILE
    path.write_text(path.read_text(encoding="utf-8").rstrip("\n"), "utf-8")
    assert [p for p in drifted(copy_of_schemas) if EVENT_SCHEMA_FILE in p]


def test_missing_file_is_drift(copy_of_schemas: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (copy_of_schemas / EVENT_SCHEMA_FILE).unlink()
    assert main(["--check", "--dir", str(copy_of_schemas)]) == 1
    assert "missing" in capsys.readouterr().err


def test_stale_generated_file_is_drift(copy_of_schemas: Path) -> None:
    stale = copy_of_schemas / "old_event.schema.json"
    stale.write_text("{}\n", "utf-8")
    assert any("old_event.schema.json" in p and "stale" in p for p in drifted(copy_of_schemas))
    write_all(copy_of_schemas)
    assert not stale.exists()
    assert drifted(copy_of_schemas) == []


def test_write_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "fresh"
    assert main(["--dir", str(target)]) == 0
    assert EVENT_SCHEMA_FILE in capsys.readouterr().out
    assert main(["--check", "--dir", str(target)]) == 0
    assert write_all(target) == []  # nothing to change the second time
    assert (target / EVENT_SCHEMA_FILE).read_text("utf-8") == render_all()[EVENT_SCHEMA_FILE]


def test_module_entry_point_checks() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "consumer.schema_export", "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_output_is_stable_and_pretty() -> None:
    first = render_all()
    assert first == render_all()
    for text in first.values():
        assert text.endswith("}\n")
        doc = json.loads(text)
        assert text == json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_the_check_follows_the_structs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A change to the Structs' schema shows up as drift of the committed file."""
    original = schema_export.event_schema

    def changed() -> dict[str, Any]:
        doc = original()
        doc["$defs"]["ClickPayload"]["required"] = []
        return doc

    monkeypatch.setattr(schema_export, "event_schema", changed)
    assert any(EVENT_SCHEMA_FILE in p for p in drifted(default_schema_dir()))


# --------------------------------------------------------------------------
# Content
# --------------------------------------------------------------------------


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """The object branch of an optional envelope field (null counts as absent)."""
    options: list[dict[str, Any]] = prop["anyOf"]
    assert {"type": "null"} in options
    (other,) = [o for o in options if o != {"type": "null"}]
    return other


def test_envelope(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert set(schema["required"]) == {"event_type", "payload"}
    assert schema["x-known-event-types"] == list(KNOWN_EVENT_TYPES)
    assert schema["x-routes"] == {t: r.value for t, r in ROUTES.items()}
    assert len(schema["oneOf"]) == len(KNOWN_EVENT_TYPES) + 1
    for option in schema["oneOf"]:
        definition = _resolve(schema, option)
        assert definition.get("additionalProperties", True) is not False  # extras pass
        assert set(definition["required"]) == {"event_type", "payload"}
        nullable = {"anyOf": [{"type": "string"}, {"type": "null"}]}
        identifiers = _resolve(schema, _not_null(definition["properties"]["identifiers"]))
        assert identifiers["properties"] == {"player_id": nullable, "device_id": nullable}
        assert identifiers["required"] == []
        utm = _resolve(schema, _not_null(definition["properties"]["utm"]))
        assert set(utm["properties"]) == {"source", "medium", "campaign"}
        assert utm["required"] == []


@pytest.mark.parametrize("event_type", KNOWN_EVENT_TYPES)
def test_every_known_type_and_its_required_fields(schema: dict[str, Any], event_type: str) -> None:
    definition = _event_def(schema, event_type)
    payload = _resolve(schema, definition["properties"]["payload"])
    assert payload["type"] == "object"
    assert sorted(payload.get("required", [])) == sorted(REQUIRED_PAYLOAD_FIELDS[event_type])
    assert payload.get("additionalProperties", True) is not False
    for field in REQUIRED_PAYLOAD_FIELDS[event_type]:
        assert field in payload["properties"]


def test_transaction_rules(schema: dict[str, Any]) -> None:
    payload = _resolve(schema, _event_def(schema, "transaction")["properties"]["payload"])
    props = payload["properties"]
    assert set(props) == {"amount", "usd_value", "currency"}  # the documented types, no more
    for name in ("amount", "usd_value"):
        assert _not_null(props[name])["type"] == "number"
    assert _not_null(props["currency"]) == {"type": "string"}  # no format: not documented


def test_other_types_exclude_the_known_ones(schema: dict[str, Any]) -> None:
    other = [
        d
        for d in (_resolve(schema, o) for o in schema["oneOf"])
        if "enum" not in d["properties"]["event_type"]
    ]
    assert len(other) == 1
    event_type = other[0]["properties"]["event_type"]
    assert event_type["type"] == "string"
    assert event_type["minLength"] == 1
    assert sorted(event_type["not"]["enum"]) == sorted(KNOWN_EVENT_TYPES)
    assert _resolve(schema, other[0]["properties"]["payload"])["type"] == "object"


def test_in_memory_schema_is_the_committed_one(schema: dict[str, Any]) -> None:
    assert json.loads(json.dumps(event_schema())) == schema


def test_documented_bodies_validate_and_the_certain_failures_do_not(
    schema: dict[str, Any],
) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    for example in vendor_examples():
        errors = [e.message for e in validator.iter_errors(json.loads(example.body))]
        assert errors == [], example.name
    validator.validate(DOC_EXAMPLE)
    validator.validate({"event_type": "level_up", "payload": {"level": 3}})
    lower = json.loads(json.dumps(DOC_EXAMPLE))
    lower["payload"]["currency"] = "usd"  # not documented either way: the API judges
    validator.validate(lower)
    validator.validate({"event_type": "transaction", "payload": {"amount": None}})
    assert not validator.is_valid({**DOC_EXAMPLE, "payload": {"amount": "4.99"}})
    assert not validator.is_valid({**DOC_EXAMPLE, "payload": {"currency": 840}})
    assert not validator.is_valid({"event_type": "click", "payload": {}})
    assert not validator.is_valid({"event_type": "conversion", "payload": {"campaign_id": "c"}})
    assert not validator.is_valid({"event_type": "", "payload": {}})
    assert not validator.is_valid({"event_type": "feature_use", "payload": []})
    assert not validator.is_valid(
        {"event_type": "x", "identifiers": {"player_id": 1}, "payload": {}}
    )


def test_schema_and_decoder_agree_on_every_documented_body(schema: dict[str, Any]) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    decoder = EventDecoder()
    for example in vendor_examples():
        assert validator.is_valid(json.loads(example.body))
        assert isinstance(decoder.decode(example.body), Valid), example.name
