"""Sample game events, valid and poison, for the demo, tests and benchmarks.

Deterministic for a seed, so a run can be repeated and compared. About 300
bytes each, in the documented mix of types, with the S2S API documentation's
own example bodies (`schemas/examples/vendor-examples.json`) among them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson

POISON_KINDS = ("invalid_json", "schema_violation", "empty_value", "too_large")
VENDOR_EXAMPLES_FILE = Path("schemas", "examples", "vendor-examples.json")


@dataclass(frozen=True, slots=True)
class VendorExample:
    """One body the S2S API documentation shows or implies; `body` is its exact bytes."""

    name: str
    shown: str
    body: bytes


def vendor_examples_path() -> Path:
    """The fixture in the checkout this module runs from (development tools need one)."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / VENDOR_EXAMPLES_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{VENDOR_EXAMPLES_FILE} not found above {Path(__file__).parent}")


@cache
def vendor_examples() -> tuple[VendorExample, ...]:
    """Every documented body, in the fixture's order."""
    doc = orjson.loads(vendor_examples_path().read_bytes())
    return tuple(
        VendorExample(e["name"], e["shown"], e["body"].encode("utf-8")) for e in doc["examples"]
    )


@dataclass(frozen=True, slots=True)
class Sample:
    key: bytes
    value: bytes | None
    expect: str  # "valid", a DLQ reason, or "api_rejected"
    seq: int


def valid_event(i: int, rng: random.Random) -> dict[str, Any]:
    player = f"player-{rng.randrange(1, 5000)}"
    ids = {"player_id": player, "device_id": f"device-{rng.randrange(1, 10**9):09d}"}
    utm = {"source": rng.choice(["facebook", "google", "tiktok"]), "medium": "cpc",
           "campaign": "summer_2026"}  # fmt: skip
    roll = rng.random()
    if roll < 0.35:
        amount = round(rng.uniform(0.99, 49.99), 2)
        return {
            "event_type": "transaction", "identifiers": ids, "utm": utm,
            "payload": {"amount": amount, "currency": "USD", "type": "iap",
                        "description": "Premium Sword", "status": "success",
                        "usd_value": amount, "seq": i},
        }  # fmt: skip
    if roll < 0.6:
        kind = "impression" if roll < 0.5 else "click"
        return {"event_type": kind, "identifiers": ids, "utm": utm,
                "payload": {"campaign_id": f"cmp-{rng.randrange(100)}",
                            "placement": "main_menu_banner", "seq": i}}  # fmt: skip
    if roll < 0.7:
        return {"event_type": "conversion", "identifiers": ids, "utm": utm,
                "payload": {"campaign_id": f"cmp-{rng.randrange(100)}",
                            "conversion_type": "install", "seq": i}}  # fmt: skip
    if roll < 0.995:
        if rng.random() < 0.5:  # as the documentation's cURL example writes it: no feature_name
            return {"event_type": "feature_use", "identifiers": ids,
                    "payload": {"type": rng.choice(["test", "tutorial", "menu"]),
                                "name": rng.choice(["first_event", "daily_bonus", "guild_chat"]),
                                "category": "setup", "seq": i}}  # fmt: skip
        return {"event_type": "feature_use", "identifiers": ids, "utm": utm,
                "payload": {"feature_name": rng.choice(["daily_bonus", "guild_chat", "pvp_arena"]),
                            "level": rng.randrange(1, 80), "seq": i}}  # fmt: skip
    kind = rng.choice(["session_start", "session_end"])
    if rng.random() < 0.5:  # the documentation shows no session body: no session_id either
        return {"event_type": kind, "identifiers": ids, "payload": {"seq": i}}
    return {"event_type": kind, "identifiers": ids,
            "payload": {"session_id": f"s-{player}-{i}", "seq": i}}  # fmt: skip


def poison(kind: str, i: int) -> bytes | None:
    if kind == "invalid_json":
        return b'{"event_type": "transaction", "payload": {"amount": 4.99,'
    if kind == "schema_violation":
        return orjson.dumps(
            {"event_type": "transaction", "payload": {"amount": "free", "currency": "usd"}}
        )
    if kind == "empty_value":
        return None
    return b'{"event_type": "click", "payload": {"campaign_id": "' + b"x" * 300_000 + b'"}}'


def generate(
    count: int,
    *,
    poison_share: float = 0.01,
    reject_share: float = 0.0,
    seed: int = 7,
) -> Iterator[Sample]:
    """`count` records; about `poison_share` poison of every kind, `reject_share` marked for
    the simulator's reject rule (`payload.description == "reject-me"`)."""
    rng = random.Random(seed)
    for i in range(count):
        roll = rng.random()
        key = f"player-{rng.randrange(1, 5000)}".encode()
        if roll < poison_share:
            kind = POISON_KINDS[i % len(POISON_KINDS)]
            yield Sample(key, poison(kind, i), kind, i)
        elif roll < poison_share + reject_share:
            event = valid_event(i, rng)
            event["event_type"] = "transaction"
            event["payload"] = {"amount": 1.0, "currency": "USD", "description": "reject-me",
                                "seq": i}  # fmt: skip
            yield Sample(key, orjson.dumps(event), "api_rejected", i)
        else:
            yield Sample(key, orjson.dumps(valid_event(i, rng)), "valid", i)
