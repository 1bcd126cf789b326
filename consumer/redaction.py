"""Every secret this process has held, and the one place text is scrubbed of them.

A secret is remembered the moment it exists as a `config.Secret`: the API key
(each one read from `GR_API_KEY_FILE`, so a rotated key stays redacted after
the rotation) and the secret `KAFKA_*` values. Whatever leaves the process as
text (log lines with their fields, exception messages and tracebacks,
/readyz, /healthz, /metrics, DLQ headers) goes through `scrub` first.
"""

from __future__ import annotations

import threading
from typing import Final

MASK: Final = "***"
# Shorter values would mask ordinary words; no real key or password is this short.
MIN_LENGTH: Final = 4

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first, so a secret inside another is masked whole
_encoded: tuple[bytes, ...] = ()


def remember(value: str) -> None:
    """Scrub `value` from everything from now on (idempotent, thread-safe)."""
    global _secrets, _encoded
    if len(value) < MIN_LENGTH or value in _secrets:
        return
    with _lock:
        if value in _secrets:
            return
        ordered = tuple(sorted((*_secrets, value), key=len, reverse=True))
        _secrets, _encoded = ordered, tuple(s.encode("utf-8", "surrogatepass") for s in ordered)


def scrub(text: str) -> str:
    """`text` with every remembered secret replaced by `***`."""
    for secret in _secrets:  # a tuple swapped whole: safe to read without the lock
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub_bytes(data: bytes) -> bytes:
    for secret in _encoded:
        if secret in data:
            data = data.replace(secret, MASK.encode())
    return data


def count() -> int:
    """How many secrets are remembered (for tests and diagnostics; never the values)."""
    return len(_secrets)
