"""Sample events as producers would publish them."""

from __future__ import annotations

from typing import Any

import orjson


def transaction(i: int, **payload: Any) -> dict[str, Any]:
    return {
        "event_type": "transaction",
        "identifiers": {"player_id": f"player-{i % 97}", "device_id": f"device-{i}"},
        "utm": {"source": "facebook", "medium": "cpc", "campaign": "summer_2026"},
        "payload": {
            "amount": 4.99,
            "currency": "USD",
            "type": "iap",
            "description": f"item-{i}",
            "status": "success",
            "usd_value": 4.99,
            "seq": i,
            **payload,
        },
    }


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def seq_of(event: dict[str, Any]) -> int:
    seq: int = event["payload"]["seq"]
    return seq
