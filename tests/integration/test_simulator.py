"""The S2S API simulator, driven over real HTTP as the service and the benchmarks drive it.

Other tests trust the simulator to behave like the API as docs/contract.md describes it;
these check it does.
"""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPException
from typing import Any

import orjson
import pytest
import urllib3

from consumer.events import ROUTES, Route
from gr_devtools.samples import vendor_examples
from gr_devtools.simulator import Simulator

pytestmark = pytest.mark.integration

KEY = "test-key"
EVENTS = "/api/v1/events"
EVENT = "/api/v1/event"
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def make_event(i: int, **payload: Any) -> dict[str, Any]:
    return {
        "event_type": "transaction",
        "identifiers": {"player_id": f"player-{i}", "device_id": "device-uuid"},
        "payload": {"amount": 4.99, "currency": "USD", "description": f"item {i}", **payload},
    }


@pytest.fixture
def http() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2.0, read=5.0))
    yield pool
    pool.clear()


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(keys=[KEY]) as s:
        yield s


def post(
    http: urllib3.PoolManager,
    sim: Simulator,
    path: str,
    body: Any,
    key: str | None = KEY,
) -> urllib3.BaseHTTPResponse:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    return http.request("POST", sim.url + path, body=data, headers=headers)


def admin(
    http: urllib3.PoolManager, sim: Simulator, name: str, body: Any = None
) -> urllib3.BaseHTTPResponse:
    if body is None:
        return http.request("GET", f"{sim.url}/_sim/{name}")
    return http.request("POST", f"{sim.url}/_sim/{name}", body=orjson.dumps(body))


def body_of(resp: urllib3.BaseHTTPResponse) -> Any:
    return orjson.loads(resp.data)


def rate(resp: urllib3.BaseHTTPResponse) -> tuple[int, int, int]:
    limit, remaining, reset = (int(resp.headers[h]) for h in RATE_HEADERS)
    return limit, remaining, reset


def fresh_window(window_s: float) -> float:
    """Sleep to just after a window boundary, so a short test stays inside one window."""
    now = time.time()
    boundary = math.floor(now / window_s) * window_s + window_s
    time.sleep(boundary - now + 0.02)
    return boundary


def clear_of_boundary(window_s: float, need_s: float = 3.0) -> None:
    now = time.time()
    boundary = math.floor(now / window_s) * window_s + window_s
    if boundary - now < need_s:
        time.sleep(boundary - now + 0.02)


# ---- 200 and what was recorded --------------------------------------------------------


def test_single_and_session_endpoints_accept_one_envelope(
    sim: Simulator, http: urllib3.PoolManager
) -> None:
    sent = [
        (EVENT, make_event(1)),
        ("/api/v1/sessions/start", {"event_type": "session_start", "payload": {"s": "a"}}),
        ("/api/v1/sessions/stop", {"event_type": "session_stop", "payload": {"s": "a"}}),
        ("/api/v1/sessions/end", {"event_type": "session_end", "payload": {"s": "a"}}),
    ]
    t0 = time.time()
    for path, event in sent:
        resp = post(http, sim, path, event)
        assert resp.status == 200, resp.data
        assert body_of(resp)["accepted"] == 1
    t1 = time.time()

    records = sim.records()
    assert [(r.path, r.events) for r in records] == [(p, [e]) for p, e in sent]
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert all(t0 <= r.time <= t1 for r in records)
    assert all(r.status == 200 for r in records)
    assert sim.batches() == []  # single sends are not batches
    assert sim.status_counts() == {200: 4}
    assert sim.endpoint_counts()[EVENT] == {200: 1}


def test_batches_are_recorded_exactly_in_order(sim: Simulator, http: urllib3.PoolManager) -> None:
    sizes = [100, 7, 1]
    sent: list[dict[str, Any]] = []
    for size in sizes:
        batch = [make_event(len(sent) + i) for i in range(size)]
        resp = post(http, sim, EVENTS, {"events": batch})
        assert resp.status == 200, resp.data
        assert body_of(resp) == {"status": "ok", "accepted": size}
        sent.extend(batch)

    assert sim.accepted_events() == sent
    assert sim.batches() == sizes
    assert sim.events_accepted() == 108
    assert sim.requests() == 3
    assert sim.status_counts() == {200: 3}


def test_concurrent_clients_are_all_recorded(sim: Simulator, http: urllib3.PoolManager) -> None:
    def client(n: int) -> None:
        for j in range(20):
            batch = [make_event(n * 1000 + j * 10 + k) for k in range(10)]
            assert post(http, sim, EVENTS, {"events": batch}).status == 200

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    events = sim.accepted_events()
    assert len(events) == 1200
    assert len({e["identifiers"]["player_id"] for e in events}) == 1200
    assert sorted(r.seq for r in sim.records()) == list(range(1, 121))
    assert sim.batches() == [10] * 120


def test_keep_alive_and_chunked_bodies(sim: Simulator) -> None:
    conn = HTTPConnection("127.0.0.1", sim.port, timeout=5)
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    for i in range(3):
        conn.request("POST", EVENT, body=orjson.dumps(make_event(i)), headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Connection") == "keep-alive"
        resp.read()
    first_sock = conn.sock
    chunks = iter([b'{"events": [', orjson.dumps(make_event(9)), b"]}"])
    conn.request("POST", EVENTS, body=chunks, headers=headers, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    assert conn.sock is first_sock  # one connection for all four requests
    conn.request(
        "POST", EVENT, body=orjson.dumps(make_event(10)), headers=headers | {"Connection": "close"}
    )
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Connection") == "close"
    conn.close()
    assert sim.accepted_events() == [make_event(i) for i in (0, 1, 2, 9, 10)]


# ---- 400 ------------------------------------------------------------------------------

BAD_BODIES: list[tuple[str, bytes, str]] = [
    (EVENTS, b'{"events": [', "invalid_json"),
    (EVENT, b"not json at all", "invalid_json"),
    (EVENTS, b"[]", "invalid_body"),
    (EVENT, b'"just a string"', "invalid_body"),
    (EVENTS, b'{"batch": []}', "invalid_body"),
    (EVENTS, b'{"events": {"a": 1}}', "invalid_body"),
    (EVENTS, b'{"events": []}', "invalid_body"),
    (EVENTS, orjson.dumps({"events": [make_event(i) for i in range(101)]}), "too_many_events"),
    (EVENT, orjson.dumps({"payload": {}}), "invalid_events"),
    (EVENT, orjson.dumps({"event_type": "", "payload": {}}), "invalid_events"),
    (EVENT, orjson.dumps({"event_type": 5, "payload": {}}), "invalid_events"),
    (EVENT, orjson.dumps({"event_type": "click"}), "invalid_events"),
    (EVENT, orjson.dumps({"event_type": "click", "payload": [1]}), "invalid_events"),
    ("/api/v1/sessions/start", orjson.dumps({"event_type": "session_start"}), "invalid_events"),
    (EVENTS, orjson.dumps({"events": [make_event(0), 7]}), "invalid_events"),
]


@pytest.mark.parametrize(("path", "body", "error"), BAD_BODIES)
def test_400_for_each_invalid_body(
    sim: Simulator, http: urllib3.PoolManager, path: str, body: bytes, error: str
) -> None:
    resp = post(http, sim, path, body)
    assert resp.status == 400
    doc = body_of(resp)
    assert doc["error"] == error
    assert isinstance(doc["message"], str)
    assert doc["message"]
    assert all(h in resp.headers for h in RATE_HEADERS)
    assert sim.accepted_events() == []
    assert sim.status_counts() == {400: 1}


def test_batch_with_invalid_events_names_them_and_accepts_none(
    sim: Simulator, http: urllib3.PoolManager
) -> None:
    batch: list[Any] = [make_event(i) for i in range(10)]
    batch[3] = {"event_type": "transaction", "payload": "not an object"}
    batch[7] = {"payload": {}}
    resp = post(http, sim, EVENTS, {"events": batch})
    assert resp.status == 400
    doc = body_of(resp)
    assert doc["rejected"] == [3, 7]
    assert [e["index"] for e in doc["errors"]] == [3, 7]
    assert sim.accepted_events() == []
    assert sim.batches() == []

    del batch[7], batch[3]
    assert post(http, sim, EVENTS, {"events": batch}).status == 200
    assert sim.accepted_events() == batch


def test_reject_rule_rejects_matching_events(sim: Simulator, http: urllib3.PoolManager) -> None:
    sim.set_reject_rule({"payload.description": "reject-me"})
    batch = [make_event(i) for i in range(10)]
    for i in (3, 7):
        batch[i]["payload"]["description"] = "reject-me"
    resp = post(http, sim, EVENTS, {"events": batch})
    assert resp.status == 400
    assert body_of(resp)["rejected"] == [3, 7]

    single = post(http, sim, EVENT, batch[3])
    assert single.status == 400
    assert body_of(single)["rejected"] == [0]
    assert sim.accepted_events() == []

    # Every field of a rule must match; a missing path never matches; true is not 1.
    sim.set_reject_rule(
        [
            {"payload.description": "reject-me", "payload.currency": "EUR"},
            {"utm.source": "spam"},
            {"payload.flag": True},
        ]
    )
    near_misses = [batch[3], make_event(20, flag=1)]
    assert post(http, sim, EVENTS, {"events": near_misses}).status == 200
    spam = make_event(21) | {"utm": {"source": "spam"}}
    assert body_of(post(http, sim, EVENTS, {"events": [batch[0], spam]}))["rejected"] == [1]

    sim.set_reject_rule(None)
    assert post(http, sim, EVENTS, {"events": batch}).status == 200
    assert sim.batches() == [2, 10]


# ---- 401, 403 -------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "not-a-key"])
def test_401_for_missing_or_unknown_key(
    sim: Simulator, http: urllib3.PoolManager, key: str | None
) -> None:
    resp = post(http, sim, EVENT, make_event(0), key=key)
    assert resp.status == 401
    assert body_of(resp)["error"] == "invalid_api_key"
    limit, remaining, _ = rate(resp)
    assert (limit, remaining) == (1000, 1000)  # the default limit, nothing counted
    assert sim.accepted_events() == []


def test_403_when_revoked_then_restored(sim: Simulator, http: urllib3.PoolManager) -> None:
    sim.revoke_key(KEY)
    resp = post(http, sim, EVENT, make_event(0))
    assert resp.status == 403
    assert body_of(resp)["error"] == "api_key_revoked"
    assert rate(resp)[:2] == (1000, 1000)
    assert sim.accepted_events() == []

    sim.restore_key(KEY)
    resp = post(http, sim, EVENT, make_event(1))
    assert resp.status == 200
    assert sim.accepted_events() == [make_event(1)]
    assert sim.status_counts() == {403: 1, 200: 1}
    with pytest.raises(KeyError):
        sim.revoke_key("never-added")


# ---- rate limits and 429 --------------------------------------------------------------


def test_429_past_the_limit_and_every_request_counts(http: urllib3.PoolManager) -> None:
    with Simulator(keys=[KEY], limit_per_window=3, window_s=60) as sim:
        clear_of_boundary(60)
        assert post(http, sim, EVENT, make_event(0)).status == 200
        assert post(http, sim, EVENT, {"no": "event_type"}).status == 400  # still counts
        sim.set_error_rate(1.0)
        last = post(http, sim, EVENT, make_event(1))
        assert last.status == 500  # counts too
        assert rate(last)[1] == 0
        sim.set_error_rate(0.0)

        for _ in range(2):
            resp = post(http, sim, EVENT, make_event(2))
            assert resp.status == 429
            assert body_of(resp)["error"] == "rate_limited"
            retry_after = int(resp.headers["Retry-After"])
            limit, remaining, reset = rate(resp)
            assert (limit, remaining) == (3, 0)
            assert 1 <= retry_after <= 60
            assert reset - 61 <= time.time() <= reset
        assert sim.status_counts() == {200: 1, 400: 1, 500: 1, 429: 2}
        assert sim.accepted_events() == [make_event(0)]


def test_rate_headers_count_down_and_reset_after_the_window(http: urllib3.PoolManager) -> None:
    with Simulator(keys=[KEY], limit_per_window=3, window_s=1.0) as sim:
        boundary = fresh_window(1.0)
        seen = [rate(post(http, sim, EVENT, make_event(i))) for i in range(3)]
        assert seen == [(3, 2, math.ceil(boundary + 1)), (3, 1, boundary + 1), (3, 0, boundary + 1)]
        over = post(http, sim, EVENT, make_event(3))
        assert over.status == 429
        assert over.headers["Retry-After"] == "1"
        assert rate(over) == (3, 0, boundary + 1)

        time.sleep(max(0.0, boundary + 1 - time.time()) + 0.02)
        again = post(http, sim, EVENT, make_event(4))
        assert again.status == 200
        assert rate(again) == (3, 2, boundary + 2)


def test_window_and_limits_are_configurable_per_key(http: urllib3.PoolManager) -> None:
    keys: dict[str, int | None] = {"small": 2, "unlimited": 0}
    with Simulator(keys=keys, limits={"medium": 4}, limit_per_window=1000) as sim:
        clear_of_boundary(60)
        assert [post(http, sim, EVENT, make_event(0), key="small").status for _ in range(3)] == [
            200,
            200,
            429,
        ]
        medium = [post(http, sim, EVENT, make_event(0), key="medium") for _ in range(5)]
        assert [r.status for r in medium] == [200, 200, 200, 200, 429]
        free = [post(http, sim, EVENT, make_event(0), key="unlimited") for _ in range(10)]
        assert {r.status for r in free} == {200}
        limit, remaining, _ = rate(free[-1])
        assert limit == remaining >= 10**9

        sim.set_key_limit("small", 5)
        assert post(http, sim, EVENT, make_event(0), key="small").status == 200


def test_spurious_429(sim: Simulator, http: urllib3.PoolManager) -> None:
    sim.set_rate_limit_429_rate(1.0)
    resp = post(http, sim, EVENT, make_event(0))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    assert rate(resp)[1] == 999
    sim.set_rate_limit_429_rate(0.0)
    assert post(http, sim, EVENT, make_event(0)).status == 200


# ---- 500 and reproducible faults ------------------------------------------------------


def test_500_from_error_rate(sim: Simulator, http: urllib3.PoolManager) -> None:
    sim.set_error_rate(1.0)
    resp = post(http, sim, EVENTS, {"events": [make_event(0)]})
    assert resp.status == 500
    assert body_of(resp)["error"] == "internal_error"
    assert all(h in resp.headers for h in RATE_HEADERS)
    assert sim.accepted_events() == []
    sim.set_error_rate(0.0)
    assert post(http, sim, EVENTS, {"events": [make_event(0)]}).status == 200


def test_faults_are_reproducible_with_a_seed(http: urllib3.PoolManager) -> None:
    def statuses(seed: int) -> list[int]:
        with Simulator(keys=[KEY], seed=seed) as sim:
            sim.set_error_rate(0.5)
            return [post(http, sim, EVENT, make_event(0)).status for _ in range(30)]

    first = statuses(7)
    assert first == statuses(7)
    assert set(first) == {200, 500}
    assert first != statuses(8)


# ---- latency and outage ---------------------------------------------------------------


def test_latency_injection(sim: Simulator, http: urllib3.PoolManager) -> None:
    def timed() -> float:
        t0 = time.perf_counter()
        assert post(http, sim, EVENT, make_event(0)).status == 200
        return time.perf_counter() - t0

    timed()  # connection set up
    baseline = timed()
    sim.set_latency(0.3)
    assert timed() >= 0.3
    sim.set_latency((0.1, 0.2))
    delays = [timed() for _ in range(3)]
    assert all(0.1 <= d < 0.2 + baseline + 0.2 for d in delays)
    sim.set_latency(None)
    assert timed() < 0.1 + baseline


def test_outage_refuses_connections_then_recovers_on_the_same_port(sim: Simulator) -> None:
    port = sim.port
    conn = HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"X-API-Key": KEY}
    conn.request("POST", EVENT, body=orjson.dumps(make_event(0)), headers=headers)
    assert conn.getresponse().read()

    sim.set_outage(True)
    assert sim.outage

    # The idle keep-alive connection is cut off at once (EOF, not a timeout)...
    assert conn.sock is not None
    conn.sock.settimeout(2)
    assert conn.sock.recv(1) == b""

    def send_again() -> None:
        conn.request("POST", EVENT, body=orjson.dumps(make_event(1)), headers=headers)
        conn.getresponse().read()

    with pytest.raises((ConnectionError, HTTPException)):
        send_again()
    conn.close()
    # ...and new ones are refused.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

    sim.set_outage(False)
    assert sim.port == port
    pool = urllib3.PoolManager(retries=False)
    resp = pool.request(
        "POST", f"http://127.0.0.1:{port}{EVENT}", body=orjson.dumps(make_event(2)), headers=headers
    )
    assert resp.status == 200
    assert sim.accepted_events() == [make_event(0), make_event(2)]


def test_outage_over_http_needs_a_duration_and_ends_by_itself(
    sim: Simulator, http: urllib3.PoolManager
) -> None:
    refused = admin(http, sim, "config", {"outage": True})
    assert refused.status == 400
    assert not sim.outage

    resp = admin(http, sim, "config", {"outage": True, "outage_s": 0.6})
    assert resp.status == 200
    time.sleep(0.2)
    assert sim.config()["outage"] is True
    with pytest.raises(urllib3.exceptions.HTTPError):
        post(http, sim, EVENT, make_event(0))
    deadline = time.monotonic() + 3
    while sim.config()["outage"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sim.outage
    assert post(http, sim, EVENT, make_event(1)).status == 200


# ---- other paths ----------------------------------------------------------------------


def test_unknown_path_and_wrong_method(sim: Simulator, http: urllib3.PoolManager) -> None:
    missing = post(http, sim, "/api/v1/nothing", make_event(0))
    assert missing.status == 404
    assert all(h in missing.headers for h in RATE_HEADERS)
    wrong = http.request("GET", sim.url + EVENTS, headers={"X-API-Key": KEY})
    assert wrong.status == 405
    assert body_of(wrong)["error"] == "method_not_allowed"
    assert sim.accepted_events() == []


# ---- /_sim/ admin ---------------------------------------------------------------------


def test_admin_stats_events_and_reset(sim: Simulator, http: urllib3.PoolManager) -> None:
    assert body_of(admin(http, sim, "health")) == {"ok": True}
    batch = [make_event(i) for i in range(5)]
    post(http, sim, EVENTS, {"events": batch})
    post(http, sim, EVENT, make_event(9))
    post(http, sim, EVENT, make_event(9), key="wrong")
    post(http, sim, EVENTS, {"events": batch[:2]})

    stats = body_of(admin(http, sim, "stats"))
    assert stats["requests"] == 4
    assert stats["events_accepted"] == 8
    assert stats["status_counts"] == {"200": 3, "401": 1}
    assert stats["endpoint_counts"][EVENTS] == {"200": 2}
    assert stats["batches"] == {
        "count": 2,
        "events": 7,
        "min": 2,
        "max": 5,
        "mean": 3.5,
        "full": 0,
        "histogram": {"2": 1, "5": 1},
    }

    events = body_of(admin(http, sim, "events"))
    assert [e["event"] for e in events["events"]] == [*batch, make_event(9), *batch[:2]]
    assert [e["seq"] for e in events["events"]] == [1] * 5 + [2] + [4] * 2
    assert events["last_seq"] == 4
    later = body_of(admin(http, sim, "events?since=2"))
    assert [e["event"] for e in later["events"]] == batch[:2]

    assert body_of(admin(http, sim, "reset", {})) == {"ok": True}
    assert body_of(admin(http, sim, "stats"))["requests"] == 0
    assert body_of(admin(http, sim, "events"))["events"] == []
    assert admin(http, sim, "nothing").status == 404


def test_admin_config(sim: Simulator, http: urllib3.PoolManager) -> None:
    resp = admin(
        http,
        sim,
        "config",
        {
            "error_rate": 1.0,
            "latency_ms": 10,
            "reject_rule": {"payload.description": "x"},
            "limit_per_window": 50,
            "window_s": 2,
        },
    )
    assert resp.status == 200, resp.data
    config = body_of(resp)
    assert config["error_rate"] == 1.0
    assert config["latency_s"] == pytest.approx(0.01)
    assert config["reject_rule"] == [{"payload.description": "x"}]
    assert config["keys"][KEY]["limit"] == 50
    assert body_of(admin(http, sim, "config")) == config

    failed = post(http, sim, EVENT, make_event(0))
    assert failed.status == 500
    assert rate(failed)[:2] == (50, 49)

    for bad in ({"error_rate": 2}, {"nonsense": 1}, {"latency_s": [0.3, 0.1]}, {"window_s": 0}):
        resp = admin(http, sim, "config", bad)
        assert resp.status == 400, bad
        assert body_of(resp)["error"] == "invalid_config"
    assert sim.config()["error_rate"] == 1.0  # a rejected update changes nothing

    assert admin(http, sim, "reset", {"faults": True}).status == 200
    assert sim.config()["error_rate"] == 0.0
    assert post(http, sim, EVENT, make_event(0)).status == 200


def test_admin_keys(sim: Simulator, http: urllib3.PoolManager) -> None:
    assert admin(http, sim, "keys", {"key": "new", "action": "add", "limit": 1}).status == 200
    assert post(http, sim, EVENT, make_event(0), key="new").status == 200
    assert post(http, sim, EVENT, make_event(0), key="new").status == 429

    assert admin(http, sim, "keys", {"key": KEY, "action": "revoke"}).status == 200
    assert post(http, sim, EVENT, make_event(0)).status == 403
    assert admin(http, sim, "keys", {"key": KEY, "action": "restore"}).status == 200
    assert post(http, sim, EVENT, make_event(0)).status == 200
    assert admin(http, sim, "keys", {"key": KEY, "action": "remove"}).status == 200
    assert post(http, sim, EVENT, make_event(0)).status == 401

    assert admin(http, sim, "keys", {"key": "ghost", "action": "revoke"}).status == 404
    assert admin(http, sim, "keys", {"key": "x", "action": "explode"}).status == 400


# ---- counters only --------------------------------------------------------------------


def test_record_events_false_keeps_counting(http: urllib3.PoolManager) -> None:
    with Simulator(keys=[KEY], record_events=False) as sim:
        for size in (100, 100, 3):
            body = {"events": [make_event(i) for i in range(size)]}
            assert post(http, sim, EVENTS, body).status == 200
        post(http, sim, EVENT, {"payload": {}})

        assert sim.events_accepted() == 203
        assert sim.requests() == 4
        assert sim.batches() == [100, 100, 3]
        assert sim.status_counts() == {200: 3, 400: 1}
        assert body_of(admin(http, sim, "stats"))["batches"]["full"] == 2
        with pytest.raises(RuntimeError):
            sim.accepted_events()
        assert admin(http, sim, "events").status == 409


# ---- gr-consumer simulate-api ---------------------------------------------------------


def test_cli_serves_until_sigterm(http: urllib3.PoolManager) -> None:
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consumer",
            "simulate-api",
            "--port",
            "0",
            "--key",
            "k1",
            "--key",
            "k2",
            "--limit-per-window",
            "2",
            "--no-record",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            assert match, line
            url = match.group(0)
            statuses = [
                http.request(
                    "POST", url + EVENT, body=orjson.dumps(make_event(0)), headers={"X-API-Key": k}
                ).status
                for k in ("k1", "k1", "k1", "k2", "demo-key")
            ]
            assert statuses == [200, 200, 429, 200, 401]
            stats = orjson.loads(http.request("GET", url + "/_sim/stats").data)
            assert stats["record_events"] is False
            assert stats["events_accepted"] == 3
            http.clear()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_every_documented_body_is_accepted_alone_and_in_a_batch(
    http: urllib3.PoolManager, sim: Simulator
) -> None:
    """The simulator stands in for the API: it must take what the API's documentation shows."""
    examples = vendor_examples()
    for example in examples:
        route = ROUTES.get(json.loads(example.body)["event_type"], Route.BATCH)
        path = EVENT if route is Route.BATCH else route.value
        resp = post(http, sim, path, example.body)
        assert resp.status == 200, (example.name, resp.data)
    batchable = [e.body for e in examples if b'"session_' not in e.body]
    resp = post(http, sim, EVENTS, b'{"events":[' + b",".join(batchable) + b"]}")
    assert resp.status == 200, resp.data
    assert body_of(resp)["accepted"] == len(batchable)
    bodies = [r.body for r in sim.records()]
    assert bodies[: len(examples)] == [e.body for e in examples]  # recorded as sent
