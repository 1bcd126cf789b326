"""Writes the hostile-record corpus in tests/data/hostile/ (run it to regenerate).

Each file is one Kafka record value; manifest.json says which DLQ reason the
service must give it ("valid" for records that are odd but acceptable).
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent / "hostile"

GOOD_PAYLOAD = '{"amount": 4.99, "currency": "USD"}'


def corpus() -> dict[str, tuple[bytes, str]]:
    tx = '{"event_type": "transaction", "payload": %s}'
    cases: dict[str, tuple[bytes, str]] = {
        "invalid_utf8": (
            b'{"event_type": "click", "payload": {"campaign_id": "\xff\xfe"}}',
            "invalid_json",
        ),
        "lone_continuation_byte": (b"\x80", "invalid_json"),
        "truncated_object": (
            b'{"event_type": "transaction", "payload": {"amount": 4.9',
            "invalid_json",
        ),
        "trailing_garbage": (b'{"event_type": "x", "payload": {}} extra', "invalid_json"),
        "deeply_nested_arrays": (
            b'{"event_type": "x", "payload": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
            "invalid_json",
        ),
        "deeply_nested_objects": (
            b'{"event_type": "x", "payload": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}",
            "invalid_json",
        ),
        "nan_literal": ((tx % '{"amount": NaN, "currency": "USD"}').encode(), "invalid_json"),
        "infinity_literal": (
            (tx % '{"amount": Infinity, "currency": "USD"}').encode(),
            "invalid_json",
        ),
        "huge_amount_overflows_to_inf": (
            (tx % '{"amount": 1e400, "currency": "USD"}').encode(),
            "schema_violation",
        ),
        "huge_integer_amount": (
            (tx % ('{"amount": ' + "9" * 400 + ', "currency": "USD"}')).encode(),
            "schema_violation",
        ),
        "duplicate_keys_last_wins_valid": (
            b'{"event_type": "click", "event_type": "transaction", "payload": '
            + GOOD_PAYLOAD.encode()
            + b"}",
            "valid",
        ),
        "duplicate_payload_keys_bad_last": (
            (tx % '{"amount": 1, "currency": "USD", "amount": "1"}').encode(),
            "schema_violation",
        ),
        "null_byte_inside_string_valid": (
            b'{"event_type": "click", "payload": {"campaign_id": "a\\u0000b"}}',
            "valid",
        ),
        "raw_null_byte": (
            b'{"event_type": "click",\x00 "payload": {"campaign_id": "c"}}',
            "invalid_json",
        ),
        "json_array": (
            b'[{"event_type": "click", "payload": {"campaign_id": "c"}}]',
            "schema_violation",
        ),
        "json_string": (b'"transaction"', "schema_violation"),
        "json_number": (b"42", "schema_violation"),
        "json_null": (b"null", "schema_violation"),
        "empty_object": (b"{}", "schema_violation"),
        "whitespace_only": (b"   \n\t ", "invalid_json"),
        "event_type_empty": (b'{"event_type": "", "payload": {}}', "schema_violation"),
        "event_type_number": (b'{"event_type": 7, "payload": {}}', "schema_violation"),
        "event_type_null": (b'{"event_type": null, "payload": {}}', "schema_violation"),
        "payload_missing": (b'{"event_type": "click"}', "schema_violation"),
        "payload_array": (b'{"event_type": "custom", "payload": []}', "schema_violation"),
        "payload_string": (b'{"event_type": "custom", "payload": "x"}', "schema_violation"),
        "identifiers_string": (
            b'{"event_type": "custom", "payload": {}, "identifiers": "p1"}',
            "schema_violation",
        ),
        "player_id_number": (
            b'{"event_type": "custom", "payload": {}, "identifiers": {"player_id": 5}}',
            "schema_violation",
        ),
        "device_id_object": (
            b'{"event_type": "custom", "payload": {}, "identifiers": {"device_id": {}}}',
            "schema_violation",
        ),
        "utm_array": (b'{"event_type": "custom", "payload": {}, "utm": []}', "schema_violation"),
        "utm_source_bool": (
            b'{"event_type": "custom", "payload": {}, "utm": {"source": true}}',
            "schema_violation",
        ),
        "amount_string": (
            (tx % '{"amount": "4.99", "currency": "USD"}').encode(),
            "schema_violation",
        ),
        "amount_bool": ((tx % '{"amount": true, "currency": "USD"}').encode(), "schema_violation"),
        # The API documentation sets no currency format: the API judges these.
        "currency_lowercase_valid": ((tx % '{"amount": 1, "currency": "usd"}').encode(), "valid"),
        "currency_four_letters_valid": (
            (tx % '{"amount": 1, "currency": "USDT"}').encode(),
            "valid",
        ),
        "currency_number": ((tx % '{"amount": 1, "currency": 840}').encode(), "schema_violation"),
        "usd_value_string": (
            (tx % '{"amount": 1, "currency": "USD", "usd_value": "1"}').encode(),
            "schema_violation",
        ),
        "campaign_id_missing": (b'{"event_type": "impression", "payload": {}}', "schema_violation"),
        "conversion_type_missing": (
            b'{"event_type": "conversion", "payload": {"campaign_id": "c"}}',
            "schema_violation",
        ),
        # Nor does it show a session body or name a feature_use field.
        "session_without_id_valid": (b'{"event_type": "session_start", "payload": {}}', "valid"),
        "feature_use_without_feature_name_valid": (
            b'{"event_type": "feature_use", "payload": {"type": "test", "name": "first_event"}}',
            "valid",
        ),
        "bom_prefixed": (b'\xef\xbb\xbf{"event_type": "custom", "payload": {}}', "invalid_json"),
        "unknown_type_with_extras_valid": (
            b'{"event_type": "level_up", "payload": {"level": 9}, "extra": [1, {"x": null}]}',
            "valid",
        ),
        "lone_surrogate_escape": (
            b'{"event_type": "custom", "payload": {"s": "\\ud800"}}',
            "invalid_json",
        ),
    }
    return cases


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name, (value, reason) in corpus().items():
        (HERE / f"{name}.bin").write_bytes(value)
        manifest[f"{name}.bin"] = reason
    # Generated at test time rather than stored: an empty value, a tombstone, and
    # a 1 MiB value (over the default 256 KiB event cap).
    manifest["<empty>"] = "empty_value"
    manifest["<tombstone>"] = "empty_value"
    manifest["<1MiB>"] = "too_large"
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
