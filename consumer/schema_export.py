"""The JSON Schema of the event Structs, for producers in other languages.

The Structs in `consumer.events` are the source of truth; `schemas/*.schema.json`
are generated from them, committed, and checked in CI so the two never drift:

    python -m consumer.schema_export            # (re)write schemas/
    python -m consumer.schema_export --check    # exit 1, naming each drifted file

Output is stable (sorted keys, two-space indent, trailing newline) so a diff
shows only real changes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from consumer.events import (
    DEFAULT_MAX_BYTES,
    EVENT_TYPES,
    ROUTES,
    OtherEvent,
    event_type_of,
)

EVENT_SCHEMA_FILE: Final = "event.schema.json"
# Every file matching this in the schemas directory is generated, so one that
# is no longer generated is stale.
GENERATED_GLOB: Final = "*.schema.json"
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

_DESCRIPTION: Final = (
    "One Kafka record value: a UTF-8 JSON object, the envelope the GameRebellion "
    "S2S API takes. The consumer refuses only what the API's documentation makes "
    "certain to fail: event_type (a non-empty string) and payload (an object) are "
    "required; identifiers and utm, when present, are objects whose known fields "
    "are strings; a transaction's amount and usd_value are numbers and its "
    "currency a string, when present; impression, click and conversion payloads "
    "carry a string campaign_id, and conversion a string conversion_type. "
    "Everything else, unknown event types included, is forwarded unchanged for "
    "the API to judge. null counts as absent for optional fields. If a key is "
    "repeated, the last one counts. Stricter opt-in checks of the consumer "
    "(GR_STRICT_RULES) are not part of this schema. "
    f"Values over {DEFAULT_MAX_BYTES} bytes (the default limit) are refused. "
    "Generated from consumer/events.py by `python -m consumer.schema_export`; "
    "do not edit by hand."
)


def default_schema_dir() -> Path:
    """The repository's schemas/ directory (next to the consumer package)."""
    return Path(__file__).resolve().parent.parent / "schemas"


def event_schema() -> dict[str, Any]:
    """The envelope schema: one of the known event types, or any other type."""
    classes: tuple[type[msgspec.Struct], ...] = (*EVENT_TYPES, OtherEvent)
    refs, defs = msgspec.json.schema_components(classes, ref_template="#/$defs/{name}")
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "GameRebellion S2S event",
        "description": _DESCRIPTION,
        "type": "object",
        "required": ["event_type", "payload"],
        "oneOf": list(refs),
        "x-known-event-types": [event_type_of(t) for t in EVENT_TYPES],
        # Where each known type is delivered; any other type is batched.
        "x-routes": {event_type: route.value for event_type, route in ROUTES.items()},
        "$defs": defs,
    }


def _render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """Every generated file's name and exact text."""
    return {EVENT_SCHEMA_FILE: _render(event_schema())}


def drifted(directory: Path) -> list[str]:
    """Names of the files in `directory` that differ from what would be generated.

    A file is drifted when it is missing, differs, or is a generated-looking
    file that is no longer generated.
    """
    expected = render_all()
    problems: list[str] = []
    for name, text in expected.items():
        path = directory / name
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"{path}: missing")
            continue
        if current != text:
            problems.append(f"{path}: differs from the Structs")
    for path in sorted(directory.glob(GENERATED_GLOB)):
        if path.name not in expected:
            problems.append(f"{path}: stale (no longer generated)")
    return problems


def write_all(directory: Path) -> list[Path]:
    """Write the generated files, remove stale ones; the paths that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    expected = render_all()
    changed: list[Path] = []
    for name, text in expected.items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8", newline="\n")
            changed.append(path)
    for path in sorted(directory.glob(GENERATED_GLOB)):
        if path.name not in expected:
            path.unlink()
            changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m consumer.schema_export",
        description="Write (or check) the JSON Schema exported from the event Structs.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if any file differs from the Structs",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=default_schema_dir(),
        help="the schemas directory (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    directory: Path = args.dir
    if args.check:
        problems = drifted(directory)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run `python -m consumer.schema_export` and commit the result", file=sys.stderr)
            return 1
        return 0
    for path in write_all(directory):
        print(f"wrote {path}" if path.exists() else f"removed {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
