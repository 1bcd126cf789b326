"""What each API answer means for a request, and how long to wait before the next try.

    200             ACCEPT    the events are delivered
    400, 413        SPLIT     halve the batch until the rejected events stand alone;
                    REJECT    a lone rejected event goes to the DLQ (api_rejected)
    401, 403        HALT      the key is refused: wait with backoff, re-read it, never DLQ
    429             WAIT      until Retry-After or X-RateLimit-Reset, then resend
    5xx, other,
    timeout, I/O    RETRY     exponential backoff with jitter, forever

Pure decisions; the delivery module acts on them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping


class Action(enum.Enum):
    ACCEPT = "accept"
    SPLIT = "split"
    REJECT = "reject"
    HALT = "halt"
    WAIT = "wait"
    RETRY = "retry"


def decide(status: int, batch_size: int) -> Action:
    if status == 200:
        return Action.ACCEPT
    if status in (400, 413):
        return Action.SPLIT if batch_size > 1 else Action.REJECT
    if status in (401, 403):
        return Action.HALT
    if status == 429:
        return Action.WAIT
    return Action.RETRY


def wait_after_429(headers: Mapping[str, str], now_unix: float, fallback_s: float) -> float:
    """Seconds to wait: Retry-After (seconds) first, then X-RateLimit-Reset, else fallback."""
    retry_after = headers.get("Retry-After")
    if retry_after is not None:
        try:
            value = float(retry_after)
            if math.isfinite(value) and value >= 0:
                return min(value, 3600.0)
        except ValueError:
            pass  # an HTTP-date: fall through to the reset header
    reset = headers.get("X-RateLimit-Reset")
    if reset is not None:
        try:
            value = float(reset) - now_unix
            if math.isfinite(value):
                return min(max(value, 0.0), 3600.0)
        except ValueError:
            pass
    return fallback_s
