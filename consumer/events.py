"""The event schemas and the record decoder: the hot path of the service.

Every Kafka record value goes through `EventDecoder.decode` exactly once and
comes out as `Valid` (where it goes, plus the untouched bytes to splice into a
request body) or `Poison` (a DLQ reason and a short detail). `decode` never
raises: a record that cannot be read is data for the DLQ, never a reason to
stop a partition.

How a value is checked, cheapest test first:

1. `None` / `b""` -> `empty_value`; longer than `max_bytes` -> `too_large`,
   never parsed.
2. Strict UTF-8, because msgspec only validates the strings it decodes: a bad
   byte in a field it skips would otherwise reach the API. -> `invalid_json`.
3. The envelope, with the payload kept as `msgspec.Raw` (a slice, not parsed
   into objects): syntax errors are `invalid_json`, shape errors
   `schema_violation`.
4. The payload, with the decoder of its event type (which checks only what
   the vendor's documentation makes certain), or as any object for an
   unknown type.
5. Only when asked: the opt-in strict rules (`GR_STRICT_RULES`), each named
   in the detail when it fires.

Two decodes beat one tagged union here: a tagged union raises, at about 1 us,
for every event of an unknown type before a second decode can accept it, and
the known types are a third of the vendor's list.

Duplicate keys: the last one wins, as in orjson, Python's json, JavaScript
and Go, so the route and the payload check follow the `event_type` and the
`payload` that the API will read. (msgspec also checks earlier occurrences of
a field inside a checked object, so those may be refused too.)

Nesting deeper than the interpreter's recursion limit (about 1,000 levels,
less the caller's stack depth) is `invalid_json`.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias, get_args

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DETAIL_MAX_BYTES",
    "EVENT_TYPES",
    "KNOWN_EVENT_TYPES",
    "ROUTES",
    "STRICT_RULES",
    "STRICT_RULE_DOCS",
    "AnyKnownEvent",
    "AnyPayload",
    "ClickEvent",
    "ClickPayload",
    "ConversionEvent",
    "ConversionPayload",
    "EventDecoder",
    "FeatureUseEvent",
    "Identifiers",
    "ImpressionEvent",
    "ImpressionPayload",
    "KnownEvent",
    "OtherEvent",
    "Poison",
    "PoisonReason",
    "Route",
    "SessionEndEvent",
    "SessionStartEvent",
    "SessionStopEvent",
    "StrictRule",
    "TransactionEvent",
    "TransactionPayload",
    "Utm",
    "Valid",
    "cap_detail",
    "event_type_of",
    "parse_strict_rules",
]

PoisonReason = Literal["invalid_json", "schema_violation", "empty_value", "too_large"]

DEFAULT_MAX_BYTES: Final = 262_144
DETAIL_MAX_BYTES: Final = 1024  # the contract's cap on `gr.dlq.detail`


class Route(enum.Enum):
    """Where a valid event is sent; only BATCH events are gathered into batches."""

    BATCH = "/api/v1/events"
    SESSION_START = "/api/v1/sessions/start"
    SESSION_STOP = "/api/v1/sessions/stop"
    SESSION_END = "/api/v1/sessions/end"


class Valid(Struct, frozen=True, gc=False):
    """A record to deliver. A Struct, not a dataclass: built about 3x faster."""

    event_type: str
    route: Route
    raw: bytes  # the record's value, the very object given to `decode`


class Poison(Struct, frozen=True, gc=False):
    """A record for the DLQ: `reason` is `gr.dlq.reason`, `detail` `gr.dlq.detail`."""

    reason: PoisonReason
    detail: str  # at most DETAIL_MAX_BYTES of UTF-8, never more than an excerpt of the value


# --------------------------------------------------------------------------
# Schemas. Docstrings and `description`s here end up in schemas/*.json, so
# they are written for producers. Optional fields use UNSET rather than None:
# a field may be left out, but `null` is not a string or an object.
# --------------------------------------------------------------------------

NonEmptyStr: TypeAlias = Annotated[str, Meta(min_length=1)]
# Envelope and payload fields a producer's JSON library may write as null for
# "not set" (Python's None, Go's nil pointers): null counts as absent. The API
# judges them in the end; refusing them here would dead-letter events it takes.
NullableStr: TypeAlias = str | UnsetType | None
Number: TypeAlias = Annotated[float, Meta(description="A finite JSON number (integer or decimal).")]
NullableNumber: TypeAlias = Number | UnsetType | None


def _require_finite(name: str, value: float | UnsetType | None) -> None:
    # msgspec already refuses numbers that overflow a double; this keeps the
    # rule true whatever the msgspec version.
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")


class Identifiers(Struct, kw_only=True, gc=False):
    """Who the event is about. Both fields optional; other fields pass through."""

    player_id: NullableStr = UNSET
    device_id: NullableStr = UNSET


class Utm(Struct, kw_only=True, gc=False):
    """Campaign attribution. All fields optional; other fields pass through."""

    source: NullableStr = UNSET
    medium: NullableStr = UNSET
    campaign: NullableStr = UNSET


# An empty Struct: an object is required but its contents are skipped, not built.
class AnyPayload(Struct, gc=False):
    """Any JSON object."""


# --------------------------------------------------------------------------
# Payloads by the default rule: only what the vendor's documentation makes
# certain to fail is refused. Its examples type `amount`, `usd_value` and
# `currency`; its client's signatures require `campaign_id` (impression,
# click, conversion) and `conversion_type` (conversion). Nothing else is
# required, and every other field passes through unchecked.
# --------------------------------------------------------------------------


class TransactionPayload(Struct, kw_only=True, gc=False):
    """A purchase. amount and usd_value are numbers, currency a string, when present."""

    amount: NullableNumber = UNSET
    currency: NullableStr = UNSET
    usd_value: NullableNumber = UNSET

    def __post_init__(self) -> None:
        _require_finite("amount", self.amount)
        _require_finite("usd_value", self.usd_value)


class ImpressionPayload(Struct, kw_only=True, gc=False):
    """An ad or promotion shown (the vendor client's `track_impression`)."""

    campaign_id: str


class ClickPayload(Struct, kw_only=True, gc=False):
    """An ad or promotion clicked (the vendor client's `track_click`)."""

    campaign_id: str


class ConversionPayload(Struct, kw_only=True, gc=False):
    """A campaign goal reached (the vendor client's `track_conversion`)."""

    campaign_id: str
    conversion_type: str


# --------------------------------------------------------------------------
# Opt-in strict rules (`GR_STRICT_RULES`). Each checks one thing the vendor
# does not document, runs after the default check, and names itself in the
# DLQ detail when it fires.
# --------------------------------------------------------------------------

StrictRule = Literal[
    "transaction_fields", "currency_format", "feature_name", "session_id", "unknown_types"
]
STRICT_RULES: Final[tuple[str, ...]] = get_args(StrictRule)
STRICT_RULE_DOCS: Final[dict[str, str]] = {
    "transaction_fields": "transaction payloads need amount (a number) and currency (a string)",
    "currency_format": "a transaction's currency is three upper-case ASCII letters (ISO 4217)",
    "feature_name": "feature_use payloads need a non-empty string feature_name",
    "session_id": "session_start/stop/end payloads need a non-empty string session_id",
    "unknown_types": "event types other than the known ones are refused",
}


class _TransactionFields(Struct, kw_only=True, gc=False):
    amount: Number
    currency: str


class _CurrencyFormat(Struct, kw_only=True, gc=False):
    currency: NullableStr = UNSET

    def __post_init__(self) -> None:
        c = self.currency
        # isupper() alone would pass "ÜSD" or fullwidth letters.
        if isinstance(c, str) and not (len(c) == 3 and c.isascii() and c.isalpha() and c.isupper()):
            raise ValueError(f"currency must be 3 upper-case ASCII letters, got {_excerpt(c)}")


class _FeatureName(Struct, kw_only=True, gc=False):
    feature_name: NonEmptyStr


class _SessionId(Struct, kw_only=True, gc=False):
    session_id: NonEmptyStr


_SESSION_TYPES: Final = ("session_start", "session_stop", "session_end")
# rule -> (the event types it applies to, the payload type it checks)
_RULE_CHECKS: Final[dict[str, tuple[tuple[str, ...], type[Struct]]]] = {
    "transaction_fields": (("transaction",), _TransactionFields),
    "currency_format": (("transaction",), _CurrencyFormat),
    "feature_name": (("feature_use",), _FeatureName),
    "session_id": (_SESSION_TYPES, _SessionId),
}


_IDENTIFIERS_DOC: Final = (
    "Optional object (null counts as absent); player_id and device_id are strings if present."
)
_UTM_DOC: Final = (
    "Optional object (null counts as absent); source, medium and campaign are strings if present."
)


class _Envelope(Struct, kw_only=True, gc=False):
    """The optional envelope fields, shared by every envelope below."""

    identifiers: Annotated[Identifiers, Meta(description=_IDENTIFIERS_DOC)] | UnsetType | None = (
        UNSET
    )
    utm: Annotated[Utm, Meta(description=_UTM_DOC)] | UnsetType | None = UNSET


class KnownEvent(_Envelope, tag_field="event_type", kw_only=True, gc=False):
    """An event type whose payload is checked (the schema's view; see `_RawEnvelope`)."""

    ROUTE: ClassVar[Route] = Route.BATCH


class TransactionEvent(KnownEvent, tag="transaction", kw_only=True, gc=False):
    """A purchase; batched."""

    payload: TransactionPayload


class ImpressionEvent(KnownEvent, tag="impression", kw_only=True, gc=False):
    """An impression; batched."""

    payload: ImpressionPayload


class ClickEvent(KnownEvent, tag="click", kw_only=True, gc=False):
    """A click; batched."""

    payload: ClickPayload


class ConversionEvent(KnownEvent, tag="conversion", kw_only=True, gc=False):
    """A conversion; batched."""

    payload: ConversionPayload


class FeatureUseEvent(KnownEvent, tag="feature_use", kw_only=True, gc=False):
    """A feature use; batched. The payload is any object (the vendor names no field)."""

    payload: AnyPayload


class SessionStartEvent(KnownEvent, tag="session_start", kw_only=True, gc=False):
    """Sent alone to /api/v1/sessions/start, in partition order."""

    ROUTE: ClassVar[Route] = Route.SESSION_START
    payload: AnyPayload


class SessionStopEvent(KnownEvent, tag="session_stop", kw_only=True, gc=False):
    """Sent alone to /api/v1/sessions/stop, in partition order."""

    ROUTE: ClassVar[Route] = Route.SESSION_STOP
    payload: AnyPayload


class SessionEndEvent(KnownEvent, tag="session_end", kw_only=True, gc=False):
    """Sent alone to /api/v1/sessions/end, in partition order."""

    ROUTE: ClassVar[Route] = Route.SESSION_END
    payload: AnyPayload


AnyKnownEvent: TypeAlias = (
    TransactionEvent
    | ImpressionEvent
    | ClickEvent
    | ConversionEvent
    | FeatureUseEvent
    | SessionStartEvent
    | SessionStopEvent
    | SessionEndEvent
)
EVENT_TYPES: Final[tuple[type[KnownEvent], ...]] = get_args(AnyKnownEvent)


def event_type_of(cls: type[KnownEvent]) -> str:
    """The `event_type` value a known event class stands for (its msgspec tag)."""
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):  # pragma: no cover - every class above has one
        raise TypeError(f"{cls.__name__} has no string tag")
    return tag


KNOWN_EVENT_TYPES: Final[tuple[str, ...]] = tuple(event_type_of(t) for t in EVENT_TYPES)
ROUTES: Final[dict[str, Route]] = {event_type_of(t): t.ROUTE for t in EVENT_TYPES}


class OtherEvent(_Envelope, kw_only=True, gc=False):
    """Any other event type: only the envelope is checked; batched (refused with strict types)."""

    event_type: Annotated[
        str,
        Meta(
            min_length=1,
            extra_json_schema={"not": {"enum": list(KNOWN_EVENT_TYPES)}},
            description="Any non-empty string other than the known types.",
        ),
    ]
    payload: Annotated[AnyPayload, Meta(description="Any JSON object.")]


class _RawEnvelope(_Envelope, kw_only=True, gc=False):
    """What the decoder reads first: the payload stays unparsed until its type is known."""

    event_type: NonEmptyStr
    payload: msgspec.Raw


def _payload_type(cls: type[KnownEvent]) -> Any:
    (field,) = (f for f in msgspec.structs.fields(cls) if f.name == "payload")
    return field.type


# Built once: a Decoder compiles its type into a fast validator. The payload
# decoders come from the event classes, so the schema and the check agree.
_ENVELOPE_DECODER: Final = msgspec.json.Decoder(_RawEnvelope)
_PAYLOAD_CHECKS: Final[dict[str, tuple[msgspec.json.Decoder[Any], Route]]] = {
    event_type_of(t): (msgspec.json.Decoder(_payload_type(t)), t.ROUTE) for t in EVENT_TYPES
}
_RULE_DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    rule: msgspec.json.Decoder(payload_type) for rule, (_, payload_type) in _RULE_CHECKS.items()
}
_ANY_PAYLOAD_DECODER: Final = msgspec.json.Decoder(AnyPayload)
_ANY_DECODER: Final = msgspec.json.Decoder()

# --------------------------------------------------------------------------
# Poison details
# --------------------------------------------------------------------------

_EXCERPT_CHARS: Final = 48
_HEAD_CHARS: Final = 240
_TAIL_CHARS: Final = 120
_BYTE_POS: Final = re.compile(r"\(byte (\d+)\)")
_PATH_MARK: Final = " - at `$"
_EMPTY_NONE: Final = Poison("empty_value", "record has no value (a tombstone)")
_EMPTY_BYTES: Final = Poison("empty_value", "record value is empty (0 bytes)")
_TOO_DEEP: Final = Poison("invalid_json", "JSON is nested too deeply for the decoder")


def _excerpt(text: str) -> str:
    """A value quoted in a detail, cut short: the DLQ record holds all of it."""
    if len(text) > _EXCERPT_CHARS:
        text = text[:_EXCERPT_CHARS] + "..."
    return repr(text)


def _near(value: bytes, pos: int) -> str:
    return repr(value[max(0, pos - 16) : pos + 16])


def cap_detail(detail: str) -> str:
    """Fit a detail into DETAIL_MAX_BYTES of UTF-8, keeping head and tail.

    msgspec ends its messages with the path (`- at $.payload.amount`), so the
    tail is worth as much as the head. Lone surrogates, which UTF-8 cannot
    carry, are backslash-escaped.
    """
    if len(detail) > _HEAD_CHARS + _TAIL_CHARS + 5:
        detail = f"{detail[:_HEAD_CHARS]} ... {detail[-_TAIL_CHARS:]}"
    encoded = detail.encode("utf-8", "backslashreplace")
    # A cut may split a character: "ignore" drops the partial one.
    return encoded[:DETAIL_MAX_BYTES].decode("utf-8", "ignore")


_ESCAPE: Final = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


def _lone_surrogate(value: bytes) -> tuple[int, str] | None:
    """The first `\\uD800`-`\\uDFFF` escape without its other half: (byte, escape).

    msgspec reports a high surrogate followed by anything but an escape as
    "Input data was truncated", which sends whoever reads the DLQ looking for
    a cut record. Error path only: a scan of the escapes is affordable.
    """
    high: tuple[int, int, str] | None = None  # (start, end, escape) of a waiting high half
    for match in _ESCAPE.finditer(value):
        code = int(match.group(1), 16) if match.group(1) else -1
        if high is not None and (match.start() != high[1] or not 0xDC00 <= code <= 0xDFFF):
            return high[0], high[2]
        if 0xD800 <= code <= 0xDBFF:
            high = (match.start(), match.end(), match.group().decode())
        elif 0xDC00 <= code <= 0xDFFF and high is None:
            return match.start(), match.group().decode()
        else:
            high = None
    if high is not None and high[1] < len(value.rstrip()):
        return high[0], high[2]
    return None


def _json_error(exc: msgspec.DecodeError, value: bytes) -> Poison:
    message = str(exc)
    match = _BYTE_POS.search(message)
    if match is not None:
        message = f"{message}, near {_near(value, int(match.group(1)))}"
    elif message.startswith("Input data was truncated"):
        lone = _lone_surrogate(value)
        if lone is not None:
            at, escape = lone
            message = (
                f"JSON is malformed: lone UTF-16 surrogate escape {escape} at byte {at} "
                "(\\ud800-\\udbff and \\udc00-\\udfff come in pairs, the two halves of one "
                f"character), near {_near(value, at)}"
            )
    return Poison("invalid_json", cap_detail(message))


def _envelope_violation(value: bytes, message: str) -> Poison:
    """schema_violation, unless the value turns out not to be JSON further on.

    A typed decode stops at the first wrong field, before the parser has seen
    the rest; a value that is not JSON at all is `invalid_json` whatever else
    is wrong with it. Error path only, so one more parse is affordable.
    """
    try:
        _ANY_DECODER.decode(value)
    except msgspec.ValidationError:
        pass  # valid syntax (e.g. a number out of range): the schema reason stands
    except msgspec.DecodeError as exc:
        return _json_error(exc, value)
    except RecursionError:
        return _TOO_DEEP
    return Poison("schema_violation", cap_detail(message))


def _payload_violation(event_type: str, message: str) -> Poison:
    """Re-root a payload decoder's path (`$.amount`) at the envelope (`$.payload.amount`)."""
    head, mark, tail = message.rpartition(_PATH_MARK)
    message = f"{head}{mark}.payload{tail}" if mark else f"{message}{_PATH_MARK}.payload`"
    return Poison("schema_violation", cap_detail(f"{_excerpt(event_type)}: {message}"))


def _unexpected(exc: Exception) -> Poison:
    """A failure nobody planned for still sends the record to the DLQ.

    The bytes are UTF-8 and every syntax error is a DecodeError, so anything
    else arose while checking a parsed value: schema_violation.
    """
    if isinstance(exc, RecursionError):
        return _TOO_DEEP
    detail = f"unexpected decoder error: {type(exc).__name__}: {exc}"
    return Poison("schema_violation", cap_detail(detail))


# --------------------------------------------------------------------------
# The decoder
# --------------------------------------------------------------------------


def parse_strict_rules(text: str) -> tuple[str, ...]:
    """`GR_STRICT_RULES`: comma-separated rule names, or `all`; sorted, no repeats.

    Raises ValueError naming the unknown rule and listing the known ones.
    """
    names = {part.strip() for part in text.split(",")} - {""}
    unknown = sorted(names - set(STRICT_RULES) - {"all"})
    if unknown:  # checked first: `all,bogus` names a rule that does not exist, too
        known = ", ".join(STRICT_RULES)
        raise ValueError(f"unknown rule {unknown[0]!r}; the rules are: {known}, or all")
    if "all" in names:
        return tuple(sorted(STRICT_RULES))
    return tuple(sorted(names))


_Check: TypeAlias = tuple[
    msgspec.json.Decoder[Any], Route, tuple[tuple[str, msgspec.json.Decoder[Any]], ...]
]


class EventDecoder:
    """Decodes and validates record values; build one, reuse it for every record.

    By default only what the vendor's documentation makes certain to fail is
    refused; `strict_rules` adds opt-in checks (see `STRICT_RULE_DOCS`), each
    named in the detail when it fires. `strict_types=True` is the rule
    `unknown_types`. Thread-safe: msgspec Decoders keep no state between calls.
    """

    __slots__ = ("_checks", "_max_bytes", "_strict_rules", "_strict_types")

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        strict_types: bool = False,
        strict_rules: Iterable[str] = (),
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        rules = set(strict_rules)
        unknown = rules - set(STRICT_RULES)
        if unknown:
            raise ValueError(f"unknown strict rules: {sorted(unknown)}")
        if strict_types:
            rules.add("unknown_types")
        self._max_bytes = max_bytes
        self._strict_rules = tuple(sorted(rules))
        self._strict_types = "unknown_types" in rules
        self._checks: dict[str, _Check] = {
            event_type: (
                decoder,
                route,
                tuple(
                    (rule, _RULE_DECODERS[rule])
                    for rule in self._strict_rules
                    if rule in _RULE_CHECKS and event_type in _RULE_CHECKS[rule][0]
                ),
            )
            for event_type, (decoder, route) in _PAYLOAD_CHECKS.items()
        }

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def strict_types(self) -> bool:
        return self._strict_types

    @property
    def strict_rules(self) -> tuple[str, ...]:
        return self._strict_rules

    def decode(self, value: bytes | None) -> Valid | Poison:
        """Classify one record value. Never raises an Exception."""
        if value is None:
            return _EMPTY_NONE
        try:
            if not value:
                return _EMPTY_BYTES
            if len(value) > self._max_bytes:
                return Poison(
                    "too_large",
                    f"value is {len(value)} bytes, over the limit of {self._max_bytes} bytes",
                )
            if not value.isascii():
                value.decode("utf-8")  # strict: refuses surrogates and overlong forms too
            envelope = _ENVELOPE_DECODER.decode(value)
        except msgspec.ValidationError as exc:
            return _envelope_violation(value, str(exc))
        except msgspec.DecodeError as exc:
            return _json_error(exc, value)
        except UnicodeDecodeError as exc:
            detail = f"value is not UTF-8: {exc.reason} at byte {exc.start}, near "
            return Poison("invalid_json", detail + _near(value, exc.start))
        except Exception as exc:  # noqa: BLE001 - one record must never stop a partition
            return _unexpected(exc)

        event_type = envelope.event_type
        check = self._checks.get(event_type)
        try:
            if check is None:
                if self._strict_types:
                    detail = f"strict rule unknown_types: unknown event_type {_excerpt(event_type)}"
                    return Poison("schema_violation", detail + " - at `$.event_type`")
                _ANY_PAYLOAD_DECODER.decode(envelope.payload)
                return Valid(event_type, Route.BATCH, value)
            payload_decoder, route, rules = check
            payload_decoder.decode(envelope.payload)
        except msgspec.ValidationError as exc:
            return _payload_violation(event_type, str(exc))
        except Exception as exc:  # noqa: BLE001
            return _unexpected(exc)
        for rule, rule_decoder in rules:
            try:
                rule_decoder.decode(envelope.payload)
            except msgspec.ValidationError as exc:
                return _payload_violation(event_type, f"strict rule {rule}: {exc}")
            except Exception as exc:  # noqa: BLE001
                return _unexpected(exc)
        return Valid(event_type, route, value)
