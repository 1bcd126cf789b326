"""Every secret this process has held, and the one place text is scrubbed of them.

A secret is remembered the moment it exists as a `config.Secret`: the API key
(each one read from `GR_API_KEY_FILE`, so a rotated key stays redacted after
the rotation) and the secret `KAFKA_*` values. Whatever leaves the process as
text (log lines with their fields, exception messages and tracebacks,
/readyz, /healthz, /metrics, DLQ headers) goes through `scrub` first.

A secret does not always leave in the form it was read. What carries it may
have escaped it on the way: JSON (a log line; an API answer quoting the key;
Python's `json` with its `\\u00e9`; other encoders' `\\u00E9` and `\\u003c`), a
URL (`?key=a%2Bb`), Python's `repr` of a string or of bytes (an exception
message quoting a value), Prometheus label escaping, or one of these inside
another (a JSON answer quoted in a JSON log line). So each secret is kept as
a pattern that matches it written in any of those forms, character by
character, nested up to two deep, and `scrub` masks every match.

Scrub first, then cut. A text shortened before it is scrubbed may end with
the start of a secret, which no pattern of the whole secret finds: every cut
of something that may quote a secret (the DLQ detail's 1 KiB, the logged
excerpt of an API answer) is made on the scrubbed text.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from typing import Final
from urllib.parse import quote, quote_plus

MASK: Final = "***"
# Shorter values would mask ordinary words; no real key or password is this short.
MIN_LENGTH: Final = 4

_lock = threading.Lock()
# Swapped whole under the lock, read without it: (the secrets, longest first; one
# pattern matching any of them in any form, longest secret first).
_state: tuple[tuple[str, ...], re.Pattern[str] | None] = ((), None)

# ---- the forms a character takes ---------------------------------------------------

_JSON_SHORT: Final = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n"} | {
    "\r": "\\r",
    "\t": "\\t",
}


def _u_escape(c: str, upper: bool) -> str:
    """JSON's \\uXXXX, a surrogate pair above the BMP."""
    code = ord(c)
    units = (
        [code] if code < 0x10000 else [0xD800 + ((code - 0x10000) >> 10), 0xDC00 + (code & 0x3FF)]
    )
    text = "".join(f"\\u{u:04x}" for u in units)
    return text.upper().replace("\\U", "\\u") if upper else text


def _json_min(text: str) -> str:
    """What orjson and json(ensure_ascii=False) write: quotes, backslashes, controls."""
    return "".join(_JSON_SHORT.get(c) or (_u_escape(c, False) if c < " " else c) for c in text)


def _json_ascii(upper: bool) -> Callable[[str], str]:
    """What json(ensure_ascii=True), Java and Go encoders write: every non-ASCII escaped."""

    def encode(text: str) -> str:
        return "".join(
            _JSON_SHORT.get(c) or (c if " " <= c <= "~" else _u_escape(c, upper)) for c in text
        )

    return encode


def _url(text: str) -> str:
    return quote(text, safe="")


def _url_lower(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(text, safe=""))


def _url_plus(text: str) -> str:
    return quote_plus(text, safe="")


def _repr(text: str) -> str:
    """Inside Python's repr of a str (either quote)."""
    return repr(text)[1:-1]


def _bytes_repr(text: str) -> str:
    """Inside Python's repr of the UTF-8 bytes."""
    return repr(text.encode("utf-8", "surrogatepass"))[2:-1]


def _prometheus(text: str) -> str:
    """A label value in the text exposition format."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_ENCODINGS: Final[tuple[Callable[[str], str], ...]] = (
    _json_min,
    _json_ascii(False),
    _json_ascii(True),
    _url,
    _url_lower,
    _url_plus,
    _repr,
    _bytes_repr,
    _prometheus,
)


def forms(c: str) -> set[str]:
    """Every way one character may be written by the encodings above, nested two deep."""
    utf8 = c.encode("utf-8", "surrogatepass")
    # Any character may be written as \\uXXXX in JSON and as %XX in a URL, needed or not.
    once = {c, _u_escape(c, False), _u_escape(c, True)}
    once |= {"".join(f"%{b:02X}" for b in utf8), "".join(f"%{b:02x}" for b in utf8)}
    once.update(encode(c) for encode in _ENCODINGS)
    twice = {encode(form) for form in once for encode in _ENCODINGS}
    return once | twice


def _pattern(secret: str) -> str:
    cache: dict[str, str] = {}
    parts = []
    for c in secret:
        if c not in cache:
            alternatives = sorted(forms(c), key=lambda f: (-len(f), f))
            cache[c] = "(?:" + "|".join(map(re.escape, alternatives)) + ")"
        parts.append(cache[c])
    return "".join(parts)


def _compile(secrets: Iterable[str]) -> re.Pattern[str] | None:
    patterns = [_pattern(s) for s in secrets]
    return re.compile("|".join(patterns)) if patterns else None


# ---- the registry ----------------------------------------------------------------


def remember(value: str) -> None:
    """Scrub `value`, in every form, from everything from now on (idempotent, thread-safe)."""
    if len(value) < MIN_LENGTH or value in _state[0]:
        return
    with _lock:
        secrets = _state[0]
        if value in secrets:
            return
        # longest first, so a secret inside another is masked whole
        ordered = tuple(sorted((*secrets, value), key=len, reverse=True))
        _set(ordered)


def _set(secrets: tuple[str, ...]) -> None:
    global _state
    _state = (secrets, _compile(secrets))


def scrub(text: str) -> str:
    """`text` with every remembered secret, in any of its forms, replaced by `***`."""
    pattern = _state[1]
    if pattern is None:
        return text
    return pattern.sub(MASK, text)


def scrub_bytes(data: bytes) -> bytes:
    """`scrub` for UTF-8 output (bytes that are not UTF-8 pass through unchanged)."""
    if _state[1] is None:
        return data
    return scrub(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


def count() -> int:
    """How many secrets are remembered (for tests and diagnostics; never the values)."""
    return len(_state[0])
