"""Records of every shape Kafka can hold, and what the contract says becomes of each.

A valid event carries its own coordinates in its payload (`"sim": "p:o"`), so
the simulated API can tell which record each accepted event is. What the
contract expects is decided here, when the record is made: delivered, sent
to the DLQ with a given reason, or refused by the API and dead-lettered as
`api_rejected`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson

Headers = list[tuple[str, bytes | None]] | None

SESSION_TYPES = ("session_start", "session_stop", "session_end")
BATCH_TYPES = ("transaction", "feature_use", "level_up", "custom_thing")


@dataclass(frozen=True, slots=True)
class Rec:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int
    # what the contract says: "deliver", or the DLQ reason it must end with
    expect: str
    player: str  # the key as text, for order checks ("" when there is none)
    session: bool = False

    @property
    def size(self) -> int:
        return len(self.value or b"")


def _key(rng: random.Random, players: int) -> tuple[bytes | None, str]:
    roll = rng.random()
    if roll < 0.05:
        return None, ""
    if roll < 0.07:
        return b"", ""
    if roll < 0.09:
        return b"\xff\xfeplayer\x00", "\\xff"  # not UTF-8
    player = f"player-{rng.randrange(players)}"
    return player.encode(), player


def _headers(rng: random.Random, big: bool) -> Headers:
    roll = rng.random()
    if roll < 0.55:
        return None
    if roll < 0.65:
        return []
    if roll < 0.75:
        return [("trace", None)]  # a null value: legal in Kafka
    if roll < 0.83:
        return [("h", b"1"), ("h", b"2"), ("h", None)]  # duplicate keys
    if roll < 0.91:
        return [("bin", b"\xff\xfe\x00\x80")]  # not UTF-8
    if roll < 0.96:
        return [("gr.dlq.reason", b"stale"), ("x", b"y")]  # an earlier DLQ trip
    if big:
        return [("bulk", b"h" * 200_000), ("n", None)]  # 200 KB of headers
    return [("n", None)]


def event(kind: str, partition: int, offset: int, player: str, **payload: object) -> bytes:
    body: dict[str, object] = {
        "event_type": kind,
        "identifiers": {"player_id": player or "anon"},
        "payload": {"sim": f"{partition}:{offset}", **payload},
    }
    return orjson.dumps(body)


def make(
    rng: random.Random,
    partition: int,
    offset: int,
    *,
    players: int,
    poison: float,
    refused: float,
    sessions: float,
    big_headers: bool,
    event_max_bytes: int,
) -> Rec:
    key, player = _key(rng, players)
    headers = _headers(rng, big_headers and rng.random() < 0.02)
    ts = 1_700_000_000_000 + offset
    roll = rng.random()
    if roll < poison:
        value, reason = _poison(rng, partition, offset, player, event_max_bytes)
        return Rec(partition, offset, key, value, headers, ts, reason, player)
    roll = rng.random()
    if roll < refused:
        value = event("transaction", partition, offset, player, amount=1, refuse=True)
        return Rec(partition, offset, key, value, headers, ts, "api_rejected", player)
    if rng.random() < sessions:
        kind = rng.choice(SESSION_TYPES)
        return Rec(
            partition,
            offset,
            key,
            event(kind, partition, offset, player),
            headers,
            ts,
            "deliver",
            player,
            True,
        )
    kind = rng.choice(BATCH_TYPES)
    pad = "x" * rng.choice((0, 0, 0, 40, 400, 4000))
    value = event(kind, partition, offset, player, amount=2.5, currency="USD", note=pad)
    return Rec(partition, offset, key, value, headers, ts, "deliver", player)


def _poison(
    rng: random.Random, partition: int, offset: int, player: str, event_max_bytes: int
) -> tuple[bytes | None, str]:
    roll = rng.randrange(7)
    if roll == 0:
        return None, "empty_value"  # a tombstone
    if roll == 1:
        return b"", "empty_value"
    if roll == 2:
        return b'{"event_type": "transaction", "payload": {', "invalid_json"
    if roll == 3:
        return b'{"event_type": "x", "payload": {"a": "\xff"}}', "invalid_json"
    if roll == 4:
        return orjson.dumps({"payload": {"sim": f"{partition}:{offset}"}}), "schema_violation"
    if roll == 5:
        return orjson.dumps({"event_type": "transaction", "payload": []}), "schema_violation"
    return (
        b'{"event_type": "t", "payload": {"pad": "' + b"p" * event_max_bytes + b'"}}',
        "too_large",
    )


def mark_of(doc: object) -> tuple[int, int] | None:
    """The (partition, offset) a decoded valid event carries in its payload."""
    try:
        mark = doc["payload"]["sim"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    p, _, o = str(mark).partition(":")
    return int(p), int(o)
