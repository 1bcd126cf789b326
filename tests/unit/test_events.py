"""The record decoder: every rule with a passing and a failing example, every
poison reason, hostile input, and properties over arbitrary bytes and JSON."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import events
from consumer.events import (
    DETAIL_MAX_BYTES,
    KNOWN_EVENT_TYPES,
    ROUTES,
    EventDecoder,
    Poison,
    Route,
    Valid,
    cap_detail,
)

# The envelope example of docs/contract.md (section 3), byte for byte.
DOC_EXAMPLE = b"""{"event_type": "transaction",
 "identifiers": {"player_id": "player-12345", "device_id": "device-uuid"},
 "utm": {"source": "facebook", "medium": "cpc", "campaign": "summer_2026"},
 "payload": {"amount": 4.99, "currency": "USD", "type": "iap",
             "description": "Premium Sword", "status": "success", "usd_value": 4.99}}"""

IDENTIFIERS = {"player_id": "player-12345", "device_id": "device-uuid"}
UTM = {"source": "facebook", "medium": "cpc", "campaign": "summer_2026"}

# What the vendor client's calls put on the wire:
# track_impression("summer_2026", placement="main_menu", creative_id="banner_a"), etc.
EXAMPLE_PAYLOADS: dict[str, dict[str, Any]] = {
    "transaction": {"amount": 4.99, "currency": "USD", "type": "iap", "usd_value": 4.99},
    "impression": {"campaign_id": "summer_2026", "placement": "main_menu", "creative_id": "a"},
    "click": {"campaign_id": "summer_2026", "placement": "main_menu", "creative_id": "a"},
    "conversion": {"campaign_id": "summer_2026", "conversion_type": "purchase", "value": 4.99},
    "feature_use": {
        "feature_name": "inventory",
        "category": "menu",
        "type": "ui",
        "time_spent": 12.5,
        "completion_status": "completed",
    },
    "session_start": {"session_id": "8f14e45f-ceea-467a-9575-0c4e1c2b7d1a"},
    "session_stop": {"session_id": "8f14e45f-ceea-467a-9575-0c4e1c2b7d1a"},
    "session_end": {"session_id": "8f14e45f-ceea-467a-9575-0c4e1c2b7d1a", "reason": "normal"},
}
EXPECTED_ROUTES = {
    "transaction": Route.BATCH,
    "impression": Route.BATCH,
    "click": Route.BATCH,
    "conversion": Route.BATCH,
    "feature_use": Route.BATCH,
    "session_start": Route.SESSION_START,
    "session_stop": Route.SESSION_STOP,
    "session_end": Route.SESSION_END,
}

DECODER = EventDecoder()
STRICT = EventDecoder(strict_types=True)
ALL_STRICT = EventDecoder(strict_rules=events.STRICT_RULES)


def event(event_type: Any, payload: Any, **extra: Any) -> bytes:
    """An envelope as a producer would write it (keys in insertion order)."""
    doc = {"event_type": event_type, "payload": payload, **extra}
    return json.dumps(doc).encode()


def with_payload(event_type: str, **changes: Any) -> bytes:
    """The example payload of `event_type` with fields replaced (a `...` value removes one)."""
    payload = dict(EXAMPLE_PAYLOADS[event_type])
    for key, value in changes.items():
        if value is ...:
            payload.pop(key, None)
        else:
            payload[key] = value
    return event(event_type, payload, identifiers=IDENTIFIERS)


def assert_valid(result: Valid | Poison, value: bytes, event_type: str, route: Route) -> None:
    assert isinstance(result, Valid), result
    assert result.event_type == event_type
    assert result.route is route
    assert result.raw is value


def assert_poison(result: Valid | Poison, reason: str, *needles: str) -> Poison:
    assert isinstance(result, Poison), result
    assert result.reason == reason, result
    assert result.detail
    assert len(result.detail.encode("utf-8")) <= DETAIL_MAX_BYTES
    for needle in needles:
        assert needle in result.detail, (needle, result.detail)
    return result


# --------------------------------------------------------------------------
# The public surface
# --------------------------------------------------------------------------


def test_routes_are_the_contract_paths() -> None:
    assert Route.BATCH.value == "/api/v1/events"
    assert Route.SESSION_START.value == "/api/v1/sessions/start"
    assert Route.SESSION_STOP.value == "/api/v1/sessions/stop"
    assert Route.SESSION_END.value == "/api/v1/sessions/end"
    assert ROUTES == EXPECTED_ROUTES
    assert set(KNOWN_EVENT_TYPES) == set(EXAMPLE_PAYLOADS)


def test_results_are_immutable_values() -> None:
    valid = Valid("click", Route.BATCH, b"{}")
    poison = Poison("too_large", "x")
    with pytest.raises(AttributeError):
        valid.event_type = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        poison.reason = "invalid_json"  # type: ignore[misc]
    assert valid == Valid("click", Route.BATCH, b"{}")
    assert hash(poison) == hash(Poison("too_large", "x"))


@pytest.mark.parametrize("max_bytes", [0, -1, True, 1.5, "100"])
def test_max_bytes_must_be_a_positive_int(max_bytes: Any) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        EventDecoder(max_bytes=max_bytes)


def test_settings_are_readable() -> None:
    decoder = EventDecoder(max_bytes=10, strict_types=True)
    assert decoder.max_bytes == 10
    assert decoder.strict_types is True
    assert DECODER.max_bytes == 262_144
    assert DECODER.strict_types is False


# --------------------------------------------------------------------------
# Valid events
# --------------------------------------------------------------------------


def test_contract_example_is_a_batched_transaction() -> None:
    assert_valid(DECODER.decode(DOC_EXAMPLE), DOC_EXAMPLE, "transaction", Route.BATCH)
    assert_valid(STRICT.decode(DOC_EXAMPLE), DOC_EXAMPLE, "transaction", Route.BATCH)


@pytest.mark.parametrize("event_type", sorted(EXAMPLE_PAYLOADS))
def test_every_known_type_passes_and_is_routed(event_type: str) -> None:
    value = event(event_type, EXAMPLE_PAYLOADS[event_type], identifiers=IDENTIFIERS, utm=UTM)
    expected_route = EXPECTED_ROUTES[event_type]
    assert_valid(DECODER.decode(value), value, event_type, expected_route)
    assert_valid(STRICT.decode(value), value, event_type, expected_route)


def test_raw_is_the_value_itself_with_unknown_fields_everywhere() -> None:
    value = (
        b'{"event_type":"transaction","sent_at":"2026-06-01T12:00:00Z",'
        b'"identifiers":{"player_id":"p","idfa":"x","extra":[1,{"a":null}]},'
        b'"utm":{"source":"s","term":"sword","content":{"nested":true}},'
        b'"payload":{"amount":1,"currency":"EUR","sku":"gem_pack_500","meta":{"x":[1.5e10]}},'
        b'"schema_version":3}'
    )
    result = DECODER.decode(value)
    assert_valid(result, value, "transaction", Route.BATCH)
    assert isinstance(result, Valid)
    assert result.raw == value


@pytest.mark.parametrize(
    "value",
    [
        b'{"payload":{"campaign_id":"c"},"event_type":"click"}',  # event_type not first
        b' \t\r\n{"event_type":"click","payload":{"campaign_id":"c"}} \n',  # JSON whitespace
        b'{"event_type":"click","payload":{"campaign_id":"c\\u00e9\\n"}}',  # escapes
        '{"event_type":"click","payload":{"campaign_id":"caf\u00e9 \u2603 \U0001f600"}}'.encode(),
        b'{"event_type":"click","payload":{"campaign_id":"a\\u0000b"}}',  # escaped NUL is fine
        b'{"event_type":"click","payload":{"campaign_id":"c"},"x":1e400}',  # unchecked field
    ],
)
def test_valid_json_variants(value: bytes) -> None:
    assert_valid(DECODER.decode(value), value, "click", Route.BATCH)


# --------------------------------------------------------------------------
# Envelope rules
# --------------------------------------------------------------------------

ENVELOPE_OK = [
    {"identifiers": {}},
    {"identifiers": {"player_id": "p"}},
    {"identifiers": {"device_id": "d", "other": 5}},
    {"utm": {}},
    {"utm": {"source": "s"}},
    {"utm": {"medium": "m", "campaign": "c", "term": None}},
    {"identifiers": IDENTIFIERS, "utm": UTM, "anything": [None, {}]},
    # null counts as absent for the envelope's optional fields (None from Python)
    {"identifiers": None, "utm": None},
    {"identifiers": {"player_id": None, "device_id": "d"}, "utm": {"source": None}},
]

ENVELOPE_BAD = [
    ({"identifiers": "player-1"}, "$.identifiers"),
    ({"identifiers": ["p"]}, "$.identifiers"),
    ({"identifiers": {"player_id": 12345}}, "$.identifiers.player_id"),
    ({"identifiers": {"device_id": ["d"]}}, "$.identifiers.device_id"),
    ({"utm": "facebook"}, "$.utm"),
    ({"utm": {"source": 1}}, "$.utm.source"),
    ({"utm": {"medium": True}}, "$.utm.medium"),
    ({"utm": {"campaign": {}}}, "$.utm.campaign"),
]


@pytest.mark.parametrize("extra", ENVELOPE_OK)
@pytest.mark.parametrize("event_type", ["click", "level_up"])
def test_envelope_ok(extra: dict[str, Any], event_type: str) -> None:
    value = event(event_type, {"campaign_id": "c"}, **extra)
    assert_valid(DECODER.decode(value), value, event_type, Route.BATCH)


@pytest.mark.parametrize(("extra", "path"), ENVELOPE_BAD)
@pytest.mark.parametrize("event_type", ["click", "level_up"])
def test_envelope_bad(extra: dict[str, Any], path: str, event_type: str) -> None:
    value = event(event_type, {"campaign_id": "c"}, **extra)
    assert_poison(DECODER.decode(value), "schema_violation", f"`{path}`")


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (b'{"payload":{}}', "`event_type`"),
        (b'{"event_type":"","payload":{}}', "$.event_type"),
        (b'{"event_type":5,"payload":{}}', "$.event_type"),
        (b'{"event_type":null,"payload":{}}', "$.event_type"),
        (b'{"event_type":["click"],"payload":{}}', "$.event_type"),
        (b'{"event_type":"level_up"}', "`payload`"),
        (b'{"event_type":"level_up","payload":null}', "$.payload"),
        (b'{"event_type":"level_up","payload":[]}', "$.payload"),
        (b'{"event_type":"level_up","payload":"{}"}', "$.payload"),
        (b'{"event_type":"level_up","payload":12}', "$.payload"),
        (b'{"event_type":"click","payload":[]}', "$.payload"),
        (b'{"event_type":"session_end","payload":"s"}', "$.payload"),
    ],
)
def test_event_type_and_payload_are_required(value: bytes, needle: str) -> None:
    assert_poison(DECODER.decode(value), "schema_violation", needle)


@pytest.mark.parametrize(
    "value", [b"[]", b'[{"event_type":"click"}]', b'"click"', b"42", b"4.99", b"true", b"null"]
)
def test_top_level_must_be_an_object(value: bytes) -> None:
    assert_poison(DECODER.decode(value), "schema_violation", "Expected `object`")


# --------------------------------------------------------------------------
# Payload rules, one known type at a time
# --------------------------------------------------------------------------

PAYLOAD_OK = [
    ("transaction", {"amount": 5}),
    ("transaction", {"amount": 0}),
    ("transaction", {"amount": -4.99}),
    ("transaction", {"amount": 1.7976931348623157e308}),
    ("transaction", {"amount": 10**30}),
    ("transaction", {"usd_value": ...}),
    ("transaction", {"usd_value": 5}),
    ("transaction", {"type": ..., "description": ..., "status": ...}),
    ("transaction", {"currency": "EUR", "description": "Premium Sword", "status": "success"}),
    ("transaction", {"currency": "JPY", "amount": 500, "product_id": "gem_pack_500"}),
    # What the documentation does not say is the API's to judge, not ours.
    ("transaction", {"amount": ...}),
    ("transaction", {"currency": ...}),
    ("transaction", {"amount": ..., "currency": ..., "usd_value": ...}),
    ("transaction", {"currency": "usd"}),
    ("transaction", {"currency": "USDT"}),
    ("transaction", {"currency": ""}),
    ("transaction", {"amount": None, "currency": None, "usd_value": None}),
    ("transaction", {"type": 1, "description": ["x"], "status": {}}),
    ("impression", {"placement": ...}),
    ("impression", {"campaign_id": ""}),
    ("click", {"creative_id": None}),
    ("conversion", {"value": ...}),
    ("conversion", {"conversion_type": ""}),
    ("feature_use", {"category": ..., "type": ..., "time_spent": ..., "completion_status": ...}),
    ("feature_use", {"time_spent": 0, "feature": "x"}),
    ("feature_use", {"feature_name": ...}),
    ("feature_use", {"feature_name": 3, "time_spent": "12s", "category": 1}),
    ("session_start", {"platform": "ios"}),
    ("session_start", {"session_id": ...}),
    ("session_stop", {}),
    ("session_stop", {"session_id": ""}),
    ("session_end", {"reason": ...}),
    ("session_end", {"session_id": 42}),
]

PAYLOAD_BAD = [
    ("transaction", {"amount": "4.99"}, "$.payload.amount"),
    ("transaction", {"amount": True}, "$.payload.amount"),
    ("transaction", {"amount": [4.99]}, "$.payload.amount"),
    ("transaction", {"currency": 840}, "$.payload.currency"),
    ("transaction", {"currency": ["USD"]}, "$.payload.currency"),
    ("transaction", {"usd_value": "4.99"}, "$.payload.usd_value"),
    ("transaction", {"usd_value": False}, "$.payload.usd_value"),
    ("impression", {"campaign_id": ...}, "`campaign_id`"),
    ("impression", {"campaign_id": 7}, "$.payload.campaign_id"),
    ("click", {"campaign_id": ...}, "`campaign_id`"),
    ("click", {"campaign_id": None}, "$.payload.campaign_id"),
    ("conversion", {"campaign_id": ...}, "`campaign_id`"),
    ("conversion", {"conversion_type": ...}, "`conversion_type`"),
    ("conversion", {"conversion_type": 1}, "$.payload.conversion_type"),
]


@pytest.mark.parametrize(("event_type", "changes"), PAYLOAD_OK)
def test_payload_ok(event_type: str, changes: dict[str, Any]) -> None:
    value = with_payload(event_type, **changes)
    assert_valid(DECODER.decode(value), value, event_type, EXPECTED_ROUTES[event_type])


@pytest.mark.parametrize(("event_type", "changes", "needle"), PAYLOAD_BAD)
def test_payload_bad(event_type: str, changes: dict[str, Any], needle: str) -> None:
    value = with_payload(event_type, **changes)
    result = assert_poison(DECODER.decode(value), "schema_violation", needle)
    assert result.detail.startswith(repr(event_type))
    # A strict decoder refuses it too: strict rules only ever add checks.
    assert_poison(ALL_STRICT.decode(value), "schema_violation", needle)


@pytest.mark.parametrize(
    "number",
    [b"1e400", b"-1e400", b"1e309", b"0.000001e400", b"1" + b"0" * 400, b"-1" + b"0" * 400 + b".5"],
)
@pytest.mark.parametrize("field", ["amount", "usd_value"])
def test_transaction_numbers_must_be_finite(number: bytes, field: str) -> None:
    base = b'{"event_type":"transaction","payload":{"amount":1,"currency":"USD","%s":%s}}'
    value = base % (field.encode(), number)
    assert_poison(DECODER.decode(value), "schema_violation", f"$.payload.{field}")


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"amount": math.inf, "currency": "USD"}, "amount"),
        ({"amount": -math.inf, "currency": "USD"}, "amount"),
        ({"amount": math.nan, "currency": "USD"}, "amount"),
        ({"amount": 1.0, "currency": "USD", "usd_value": math.inf}, "usd_value"),
    ],
)
def test_finiteness_is_checked_explicitly(fields: dict[str, Any], needle: str) -> None:
    # msgspec.convert runs __post_init__ just as decoding does.
    with pytest.raises(msgspec.ValidationError, match=needle):
        msgspec.convert(fields, events.TransactionPayload)


# --------------------------------------------------------------------------
# Opt-in strict rules
# --------------------------------------------------------------------------

# rule -> (an event the rule refuses, a needle of its detail, the same event made right)
STRICT_CASES: dict[str, tuple[bytes, str, bytes]] = {
    "transaction_fields": (
        with_payload("transaction", amount=...),
        "`amount`",
        with_payload("transaction"),
    ),
    "currency_format": (
        with_payload("transaction", currency="usd"),
        "'usd'",
        with_payload("transaction", currency="EUR"),
    ),
    "feature_name": (
        event("feature_use", {"type": "test", "name": "first_event", "category": "setup"}),
        "`feature_name`",
        with_payload("feature_use"),
    ),
    "session_id": (
        event("session_start", {}),
        "`session_id`",
        with_payload("session_start"),
    ),
    "unknown_types": (event("level_up", {"level": 2}), "$.event_type", with_payload("click")),
}


def test_every_rule_has_a_case_and_a_doc() -> None:
    assert set(STRICT_CASES) == set(events.STRICT_RULES) == set(events.STRICT_RULE_DOCS)


@pytest.mark.parametrize("rule", events.STRICT_RULES)
def test_a_strict_rule_fires_only_when_asked_and_names_itself(rule: str) -> None:
    refused, needle, fine = STRICT_CASES[rule]
    assert isinstance(DECODER.decode(refused), Valid)  # off by default
    strict = EventDecoder(strict_rules=[rule])
    result = assert_poison(
        strict.decode(refused), "schema_violation", needle, f"strict rule {rule}"
    )
    assert len(result.detail) < 300
    assert isinstance(strict.decode(fine), Valid)
    # Every other rule on its own lets the refused event through.
    for other in events.STRICT_RULES:
        if other != rule:
            assert isinstance(EventDecoder(strict_rules=[other]).decode(refused), Valid), other


@pytest.mark.parametrize(
    "currency",
    ["usd", "Usd", "US", "USDT", "US1", "U D", "\u00dcSD", "\uff35\uff33\uff24", "USD\n", ""],
)
def test_currency_format_rule(currency: str) -> None:
    value = with_payload("transaction", currency=currency)
    assert isinstance(DECODER.decode(value), Valid)
    strict = EventDecoder(strict_rules=["currency_format"])
    assert_poison(strict.decode(value), "schema_violation", "strict rule currency_format")


def test_parse_strict_rules() -> None:
    assert events.parse_strict_rules("") == ()
    assert events.parse_strict_rules(" session_id , feature_name,") == (
        "feature_name",
        "session_id",
    )
    assert events.parse_strict_rules("all") == tuple(sorted(events.STRICT_RULES))
    with pytest.raises(ValueError, match=r"'session_ids'.*session_id"):
        events.parse_strict_rules("session_ids")
    with pytest.raises(ValueError, match="unknown strict rules"):
        EventDecoder(strict_rules=["nope"])


def test_strict_types_is_the_unknown_types_rule() -> None:
    assert EventDecoder(strict_types=True).strict_rules == ("unknown_types",)
    assert EventDecoder(strict_rules=["unknown_types"]).strict_types is True
    assert DECODER.strict_rules == ()


# --------------------------------------------------------------------------
# Unknown event types
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event_type", ["level_up", "progression", "Transaction", "SESSION_START", " click", "x" * 300]
)
def test_unknown_types_pass_batched_unless_strict(event_type: str) -> None:
    value = event(event_type, {"level": 12}, identifiers=IDENTIFIERS)
    assert_valid(DECODER.decode(value), value, event_type, Route.BATCH)
    result = assert_poison(STRICT.decode(value), "schema_violation", "$.event_type", "strict")
    assert len(result.detail) < 200  # an excerpt of the type, not all of it


def test_unknown_type_payload_contents_are_not_checked() -> None:
    value = event("level_up", {"amount": "not a number", "currency": 5, "campaign_id": None})
    assert_valid(DECODER.decode(value), value, "level_up", Route.BATCH)


# --------------------------------------------------------------------------
# Empty and oversized values
# --------------------------------------------------------------------------


def test_tombstone_and_empty_value() -> None:
    assert_poison(DECODER.decode(None), "empty_value", "tombstone")
    assert_poison(DECODER.decode(b""), "empty_value")


@pytest.mark.parametrize("value", [b" ", b"\n", b"\x00"])
def test_blank_is_not_empty_but_invalid(value: bytes) -> None:
    assert_poison(DECODER.decode(value), "invalid_json")


def test_too_large_is_refused_without_parsing() -> None:
    decoder = EventDecoder(max_bytes=64)
    ok = event("click", {"campaign_id": "c" * 5})
    assert len(ok) <= 64
    assert isinstance(decoder.decode(ok), Valid)
    garbage = b"\xff" * 65  # would be invalid_json if it were parsed
    assert_poison(decoder.decode(garbage), "too_large", "65 bytes", "64")
    exactly = b'{"event_type":"click","payload":{"campaign_id":"%s"}}'
    exactly = exactly % (b"c" * (64 - len(exactly) + 2))
    assert len(exactly) == 64
    assert isinstance(decoder.decode(exactly), Valid)
    assert_poison(decoder.decode(exactly + b" "), "too_large")


def test_one_mebibyte_value() -> None:
    padding = "x" * (1024 * 1024)
    value = event("level_up", {"blob": padding})
    assert len(value) > 1024 * 1024
    assert_poison(DECODER.decode(value), "too_large", str(len(value)))
    big = EventDecoder(max_bytes=2 * 1024 * 1024)
    assert_valid(big.decode(value), value, "level_up", Route.BATCH)
    broken = value[:-1]  # truncated: the parser must say so, not crash
    assert_poison(big.decode(broken), "invalid_json")


# --------------------------------------------------------------------------
# Hostile input
# --------------------------------------------------------------------------

INVALID_JSON = [
    b"\xff",
    b"\xfe\xff",
    b"\xef\xbb\xbf" + DOC_EXAMPLE,  # a UTF-8 byte-order mark is not JSON
    b"{",
    b"}",
    b'{"event_type":"click"',
    b'{"event_type":"click","payload":{"campaign_id":"c"}',
    b'{"event_type":"click","payload":{"campaign_id":"c"}}}',
    b'{"event_type":"click","payload":{"campaign_id":"c"}} x',
    b'{"event_type":"click","payload":{"campaign_id":"c"}}{}',
    b'{"event_type":"click","payload":{"campaign_id":"c",}}',
    b"{'event_type':'click','payload':{}}",
    b'{event_type:"click",payload:{}}',
    b"NaN",
    b"Infinity",
    b'{"event_type":"level_up","payload":{"x":NaN}}',
    b'{"event_type":"level_up","payload":{"x":Infinity}}',
    b'{"event_type":"level_up","payload":{"x":-Infinity}}',
    b'{"event_type":"transaction","payload":{"amount":NaN,"currency":"USD"}}',
    b'{"event_type":"level_up","payload":{},"x":nan}',
    b'{"event_type":"level_up","payload":{"x":01}}',
    b'{"event_type":"level_up","payload":{"x":.5}}',
    b'{"event_type":"level_up","payload":{"x":"a\x00b"}}',  # raw NUL in a string
    b'{"event_type":"level_up","payload":{"x":"tab\there"}}',  # raw control character
    b'{"event_type":"level_up","payload":{"x":"\\x41"}}',  # not a JSON escape
    b'{"event_type":"level_up","payload":{"x":"\\ud800"}}',  # lone surrogate escape
    b'{"event_type":"level_up","payload":{}}\x00',
    b'\x00{"event_type":"level_up","payload":{}}',
    # A later syntax error wins over an earlier schema error.
    b'{"event_type":"","payload":{},"x":NaN}',
    b'{"event_type":"click","payload":{"campaign_id":5},"x":[1,}',
]


@pytest.mark.parametrize("value", INVALID_JSON)
def test_not_json(value: bytes) -> None:
    assert_poison(DECODER.decode(value), "invalid_json")


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff",  # never valid in UTF-8
        b"\xc0\xaf",  # overlong "/"
        b"\xed\xa0\x80",  # an encoded surrogate
        b"\xe2\x82",  # truncated sequence
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"\x80",  # lone continuation byte
    ],
)
@pytest.mark.parametrize("where", ["unknown_field", "payload_value", "payload_key", "event_type"])
def test_invalid_utf8_anywhere(bad: bytes, where: str) -> None:
    # msgspec skips unknown fields without checking their bytes; the decoder must not.
    templates = {
        "unknown_field": b'{"event_type":"click","payload":{"campaign_id":"c"},"x":"%s"}',
        "payload_value": b'{"event_type":"level_up","payload":{"a":"%s"}}',
        "payload_key": b'{"event_type":"level_up","payload":{"%s":1}}',
        "event_type": b'{"event_type":"lv%s","payload":{}}',
    }
    value = templates[where] % bad
    assert_poison(DECODER.decode(value), "invalid_json", "UTF-8")


def test_every_truncation_of_the_contract_example_is_invalid_json() -> None:
    for end in range(1, len(DOC_EXAMPLE)):
        result = DECODER.decode(DOC_EXAMPLE[:end])
        assert isinstance(result, Poison), end
        assert result.reason == "invalid_json", (end, result)


@pytest.mark.parametrize(
    "template",
    [
        b"%s",
        b'{"event_type":"level_up","payload":{"deep":%s}}',
        b'{"event_type":"transaction","payload":{"amount":%s,"currency":"USD"}}',
        b'{"event_type":"level_up","payload":{},"extra":%s}',
        b'{"event_type":"level_up","identifiers":{"x":%s},"payload":{}}',
    ],
)
@pytest.mark.parametrize(("opener", "closer"), [(b"[", b"]"), (b'{"a":', b"}")])
def test_ten_thousand_deep_nesting(template: bytes, opener: bytes, closer: bytes) -> None:
    nested = opener * 10_000 + b"1" + closer * 10_000
    value = template % nested
    first = DECODER.decode(value)
    assert_poison(first, "invalid_json", "nested too deeply")
    assert DECODER.decode(value) == first  # the same answer every time


def test_nesting_within_the_limit_is_fine() -> None:
    nested = b"[" * 200 + b"]" * 200
    value = b'{"event_type":"level_up","payload":{"deep":%s}}' % nested
    assert_valid(DECODER.decode(value), value, "level_up", Route.BATCH)


def test_unclosed_deep_nesting() -> None:
    assert_poison(DECODER.decode(b"[" * 100_000), "invalid_json")


# --------------------------------------------------------------------------
# Duplicate keys: the last one wins, as in orjson and the API simulator
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "event_type", "route"),
    [
        (
            b'{"event_type":"click","payload":{"campaign_id":"c"},"event_type":"level_up"}',
            "level_up",
            Route.BATCH,
        ),
        (
            b'{"event_type":"level_up","event_type":"session_start","payload":{"session_id":"s"}}',
            "session_start",
            Route.SESSION_START,
        ),
        (
            b'{"event_type":"click","payload":{},"payload":{"campaign_id":"c"}}',
            "click",
            Route.BATCH,
        ),
    ],
)
def test_duplicate_keys_last_wins(value: bytes, event_type: str, route: Route) -> None:
    assert_valid(DECODER.decode(value), value, event_type, route)
    parsed = orjson.loads(value)
    assert parsed["event_type"] == event_type  # what the API will read


@pytest.mark.parametrize(
    "value",
    [
        b'{"event_type":"level_up","payload":{},"event_type":"click"}',
        b'{"event_type":"click","payload":{"campaign_id":"c"},"payload":{}}',
        b'{"event_type":"click","payload":{"campaign_id":"c","campaign_id":5}}',
        # msgspec also checks earlier occurrences of a checked field: stricter, still safe.
        b'{"event_type":"click","payload":{"campaign_id":5,"campaign_id":"c"}}',
    ],
)
def test_duplicate_keys_last_is_checked(value: bytes) -> None:
    assert_poison(DECODER.decode(value), "schema_violation", "campaign_id")


# --------------------------------------------------------------------------
# Details
# --------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["x" * 100_000, "\u00e9" * 50_000, "\U0001f600" * 20_000])
def test_details_are_short_for_huge_values(event_type: str) -> None:
    value = json.dumps({"event_type": event_type, "payload": {}}, ensure_ascii=False).encode()
    assert len(value) < DECODER.max_bytes
    result = assert_poison(STRICT.decode(value), "schema_violation")
    assert len(result.detail) < 200
    bad_payload = value.replace(b'"payload": {}', b'"payload": []')
    result = assert_poison(DECODER.decode(bad_payload), "schema_violation", "$.payload")
    assert len(result.detail) < 200


def test_detail_excerpt_of_bad_json_is_short() -> None:
    value = b'{"event_type":"level_up","payload":{"x":"' + b"a" * 10_000 + b'"}, oops}'
    result = assert_poison(DECODER.decode(value), "invalid_json", "near")
    assert len(result.detail) < 200


@pytest.mark.parametrize(
    "detail",
    [
        "",
        "short",
        "x" * 5000,
        "\u00e9" * 5000,
        "\U0001f600" * 5000,
        "a" * 1023 + "\u00e9",
        "lone \ud800 surrogate" * 100,
        "head " + "\u00e9" * 2000 + " - at `$.payload.amount`",
    ],
)
def test_cap_detail(detail: str) -> None:
    capped = cap_detail(detail)
    encoded = capped.encode("utf-8")  # no lone surrogates left
    assert len(encoded) <= DETAIL_MAX_BYTES
    if len(detail) <= 200 and "\ud800" not in detail:
        assert capped == detail
    if detail.endswith("`$.payload.amount`"):
        assert capped.endswith("`$.payload.amount`")


# --------------------------------------------------------------------------
# Nothing escapes decode
# --------------------------------------------------------------------------


class _Exploding:
    def __init__(self, exc: Exception) -> None:
        self._exc = exc

    def decode(self, value: Any) -> Any:
        raise self._exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (KeyError("boom"), "schema_violation"),
        (MemoryError(), "schema_violation"),
        (RecursionError(), "invalid_json"),
        (msgspec.DecodeError("JSON is malformed: invalid character (byte 3)"), "invalid_json"),
        (msgspec.ValidationError("Expected `str` - at `$.event_type`"), "schema_violation"),
    ],
)
def test_envelope_decoder_failures_become_poison(
    monkeypatch: pytest.MonkeyPatch, exc: Exception, reason: str
) -> None:
    monkeypatch.setattr(events, "_ENVELOPE_DECODER", _Exploding(exc))
    assert_poison(DECODER.decode(DOC_EXAMPLE), reason)


@pytest.mark.parametrize("exc", [KeyError("boom"), RuntimeError("x" * 10_000), RecursionError()])
def test_payload_decoder_failures_become_poison(
    monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    checks = dict(events._PAYLOAD_CHECKS)
    checks["transaction"] = (_Exploding(exc), Route.BATCH)  # type: ignore[assignment]
    monkeypatch.setattr(events, "_PAYLOAD_CHECKS", checks)
    monkeypatch.setattr(events, "_ANY_PAYLOAD_DECODER", _Exploding(exc))
    decoder = EventDecoder()  # takes its checks when built
    assert isinstance(decoder.decode(DOC_EXAMPLE), Poison)
    assert isinstance(decoder.decode(event("level_up", {})), Poison)


@pytest.mark.parametrize("value", [bytearray(b'{"a":1}'), memoryview(b"{}"), "{}", 42])
def test_wrong_argument_types_do_not_raise(value: Any) -> None:
    assert isinstance(DECODER.decode(value), Valid | Poison)


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
event_types = st.sampled_from([*KNOWN_EVENT_TYPES, "level_up", ""]) | st.text(max_size=6)
payload_keys = st.sampled_from(
    ["amount", "currency", "usd_value", "campaign_id", "conversion_type", "feature_name",
     "time_spent", "session_id", "type"]
) | st.text(max_size=6)  # fmt: skip
payload_values = (
    json_scalars | st.sampled_from(["USD", "usd", "EUR", "", "c"]) | st.just(1e308) | json_values
)
envelopes = st.fixed_dictionaries(
    {"event_type": event_types | json_scalars},
    optional={
        "payload": st.dictionaries(payload_keys, payload_values, max_size=5) | json_values,
        "identifiers": st.dictionaries(
            st.sampled_from(["player_id", "device_id", "x"]), json_scalars, max_size=2
        )
        | json_scalars,
        "utm": st.dictionaries(
            st.sampled_from(["source", "medium", "campaign", "x"]), json_scalars, max_size=2
        ),
    },
)
CURRENCY = re.compile(r"[A-Z]{3}")


def _check_invariants(value: bytes, decoder: EventDecoder) -> None:
    result = decoder.decode(value)
    assert isinstance(result, Valid | Poison)
    if isinstance(result, Poison):
        assert result.reason in ("invalid_json", "schema_violation", "empty_value", "too_large")
        assert len(result.detail.encode("utf-8")) <= DETAIL_MAX_BYTES
        return
    # Whatever passes is a JSON object the API's parser reads the same way.
    assert result.raw is value
    doc = orjson.loads(value)
    assert isinstance(doc, dict)
    assert doc["event_type"] == result.event_type != ""
    assert isinstance(doc["payload"], dict)
    assert result.route is ROUTES.get(result.event_type, Route.BATCH)
    for part, fields in (("identifiers", ("player_id", "device_id")), ("utm", ("source",))):
        if part in doc:
            assert doc[part] is None or isinstance(doc[part], dict)  # null counts as absent
            assert all(
                doc[part][f] is None or isinstance(doc[part][f], str)
                for f in fields
                if doc[part] and f in doc[part]
            )
    payload = doc["payload"]
    rules = decoder.strict_rules
    if result.event_type == "transaction":
        for number in ("amount", "usd_value"):
            if payload.get(number) is not None:
                assert isinstance(payload[number], int | float)
                assert not isinstance(payload[number], bool)
                assert math.isfinite(payload[number])
        assert payload.get("currency") is None or isinstance(payload["currency"], str)
        if "transaction_fields" in rules:
            assert isinstance(payload["amount"], int | float)
            assert isinstance(payload["currency"], str)
        if "currency_format" in rules and payload.get("currency") is not None:
            assert CURRENCY.fullmatch(payload["currency"])
    if result.event_type in ("impression", "click", "conversion"):
        assert isinstance(payload["campaign_id"], str)
    if result.event_type == "conversion":
        assert isinstance(payload["conversion_type"], str)
    if result.event_type.startswith("session_") and "session_id" in rules:
        assert isinstance(payload["session_id"], str)
        assert payload["session_id"]
    if result.event_type == "feature_use" and "feature_name" in rules:
        assert isinstance(payload["feature_name"], str)
        assert payload["feature_name"]
    if decoder.strict_types:
        assert result.event_type in KNOWN_EVENT_TYPES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(value: bytes) -> None:
    _check_invariants(value, DECODER)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_arbitrary_json_never_raises(doc: Any) -> None:
    value = json.dumps(doc).encode()  # NaN and Infinity come out as bare words
    _check_invariants(value, DECODER)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes, st.booleans())
def test_arbitrary_envelopes_obey_the_rules(doc: dict[str, Any], strict: bool) -> None:
    value = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    _check_invariants(value, ALL_STRICT if strict else DECODER)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(min_value=0, max_value=len(DOC_EXAMPLE)))
def test_spliced_garbage_never_raises(garbage: bytes, at: int) -> None:
    value = DOC_EXAMPLE[:at] + garbage + DOC_EXAMPLE[at:]
    _check_invariants(value, DECODER)
