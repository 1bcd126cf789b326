"""Property tests over the bytes the API documentation shows.

Starting from every body in schemas/examples/vendor-examples.json: additions and
reformatting that keep a body valid never get it dead-lettered; arbitrary byte
damage never makes the decoder raise; lone surrogate escapes, duplicate keys
and the size limit are judged the same way every time; and whatever passes is
spliced into a batch body that is valid JSON equal to the records themselves.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.batching import batch_body
from consumer.events import DETAIL_MAX_BYTES, EventDecoder, Poison, Valid
from gr_devtools.samples import vendor_examples

DECODER = EventDecoder()
EXAMPLES = [e.body for e in vendor_examples()]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

examples = st.sampled_from(EXAMPLES)
# Field names no rule looks at, so adding them can never make an event invalid.
free_names = st.text(min_size=1, max_size=8).filter(
    lambda k: k
    not in {"event_type", "payload", "identifiers", "utm", "amount", "usd_value", "currency",
            "campaign_id", "conversion_type", "player_id", "device_id", "source", "medium",
            "campaign"}
)  # fmt: skip
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _check(value: bytes) -> Valid | Poison:
    result = DECODER.decode(value)  # must not raise, whatever the bytes
    assert isinstance(result, Valid | Poison)
    if isinstance(result, Poison):
        assert len(result.detail.encode("utf-8")) <= DETAIL_MAX_BYTES
    else:
        assert result.raw is value
        assert isinstance(orjson.loads(value), dict)
    return result


def test_every_documented_body_is_valid_as_it_stands() -> None:
    for body in EXAMPLES:
        assert isinstance(DECODER.decode(body), Valid), body


@FUZZ
@given(
    examples,
    st.lists(
        st.tuples(st.sampled_from(["envelope", "payload"]), free_names, json_values), max_size=4
    ),
    st.sampled_from([None, 2]),
    st.booleans(),
)
def test_additions_and_reformatting_never_dead_letter_a_documented_body(
    body: bytes, additions: list[tuple[str, str, Any]], indent: int | None, ascii_only: bool
) -> None:
    doc = json.loads(body)
    for where, name, value in additions:
        (doc if where == "envelope" else doc["payload"])[name] = value
    value = json.dumps(doc, indent=indent, ensure_ascii=ascii_only).encode()
    result = _check(value)
    assert isinstance(result, Valid), (result, value)
    assert result.event_type == doc["event_type"]


@FUZZ
@given(examples, st.data())
def test_byte_damage_never_raises(body: bytes, data: st.DataObject) -> None:
    value = bytearray(body)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        at = data.draw(st.integers(min_value=0, max_value=max(len(value) - 1, 0)))
        if op == "flip" and value:
            value[at] ^= data.draw(st.integers(min_value=1, max_value=255))
        elif op == "insert":
            value[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif value:
            del value[at]
    _check(bytes(value))


@FUZZ
@given(examples, st.integers(min_value=0xD800, max_value=0xDFFF), st.integers(min_value=0))
def test_a_lone_surrogate_escape_is_never_sent(body: bytes, code: int, where: int) -> None:
    """`\\ud800` alone is valid JSON syntax but no Unicode text: parsers differ on it."""
    # the opening quote of every string value: a quote whose previous non-blank byte is ':'
    strings = [
        i for i in range(1, len(body)) if body[i : i + 1] == b'"' and body[:i].rstrip()[-1:] == b":"
    ]
    at = strings[where % len(strings)] + 1
    value = body[:at] + b"\\u%04x" % code + body[at:]
    result = _check(value)
    assert isinstance(result, Poison)
    assert result.reason == "invalid_json"


@FUZZ
@given(examples, free_names, json_values, json_values)
def test_duplicate_free_keys_keep_a_body_valid_and_the_last_one_counts(
    body: bytes, name: str, first: Any, last: Any
) -> None:
    doc = json.loads(body)
    head = json.dumps(doc)[:-1]  # the envelope without its closing brace
    value = (
        f"{head}, {json.dumps(name)}: {json.dumps(first)}, {json.dumps(name)}: {json.dumps(last)}}}"
    )
    result = _check(value.encode())
    assert isinstance(result, Valid)
    assert orjson.loads(value)[name] == orjson.loads(json.dumps(last))  # what the API reads


@FUZZ
@given(examples, st.integers(min_value=-3, max_value=3))
def test_the_size_limit_is_exact(body: bytes, delta: int) -> None:
    limit = len(body) + 64
    decoder = EventDecoder(max_bytes=limit)
    doc = json.loads(body)
    doc["pad"] = ""
    base = json.dumps(doc).encode()
    padded = base.replace(b'"pad": ""', b'"pad": "' + b"x" * (limit + delta - len(base)) + b'"')
    assert len(padded) == limit + delta
    result = decoder.decode(padded)
    if delta <= 0:
        assert isinstance(result, Valid)
    else:
        assert isinstance(result, Poison)
        assert result.reason == "too_large"


@FUZZ
@given(st.lists(st.tuples(examples, st.binary(max_size=3), st.integers(min_value=0)), max_size=12))
def test_a_batch_body_is_valid_json_equal_to_the_spliced_records(
    picks: list[tuple[bytes, bytes, int]],
) -> None:
    raws: list[bytes] = []
    for body, garbage, at in picks:
        cut = at % (len(body) + 1)
        candidate = body if not garbage else body[:cut] + garbage + body[cut:]
        result = _check(candidate)
        if isinstance(result, Valid):
            raws.append(result.raw)
    if not raws:
        return
    sent = orjson.loads(batch_body(raws))
    assert sent == {"events": [orjson.loads(raw) for raw in raws]}
