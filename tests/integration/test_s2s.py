"""The HTTP transport (libcurl) against the simulator: one request at a time and many in flight."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from consumer import config
from consumer.config import ApiKeySource, Secret
from consumer.events import Route
from consumer.s2s import Response, S2SClient, S2SMulti, TransportError
from gr_devtools.simulator import Simulator
from tests.conftest import TopicFactory
from tests.integration.conftest import RunningWorker, wait_for
from tests.support.events import encode, seq_of, transaction
from tests.support.kafka_io import produce

pytestmark = pytest.mark.integration

KEY = "transport-test-key"


def body(n: int, start: int = 0) -> bytes:
    events = [
        {
            "event_type": "transaction",
            "identifiers": {"player_id": f"p{start + i}"},
            "payload": {"amount": 1.5, "currency": "USD"},
        }
        for i in range(n)
    ]
    return orjson.dumps({"events": events})


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(keys=[KEY]) as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[S2SClient]:
    c = S2SClient(sim.url, ApiKeySource(Secret(KEY)), timeout_s=5.0)
    yield c
    c.close()


_MULTIS: dict[int, S2SMulti[int]] = {}


def post(client: S2SClient, route: Route, data: bytes) -> Response:
    """One request, waited for, over a multi handle kept per client (so connections are reused)."""
    multi = _MULTIS.get(id(client))
    if multi is None:
        multi = _MULTIS[id(client)] = S2SMulti(client, 1)
    multi.start(route, data, 0)
    multi.send()
    outcome = drain(multi, 1)[0]
    if isinstance(outcome, TransportError):
        raise outcome
    return outcome


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_post_returns_status_and_rate_headers_case_insensitively(
    client: S2SClient, sim: Simulator
) -> None:
    resp = post(client, Route.BATCH, body(3))
    assert resp.status == 200
    assert int(resp.headers["X-RateLimit-Limit"]) > 0
    assert resp.headers["x-ratelimit-remaining"] == resp.headers.get("X-RATELIMIT-REMAINING")
    assert "X-RateLimit-Reset" in resp.headers
    assert resp.elapsed_s > 0
    assert [e["identifiers"]["player_id"] for e in sim.accepted_events()] == ["p0", "p1", "p2"]


def test_keep_alive_reuses_one_connection(client: S2SClient, sim: Simulator) -> None:
    for i in range(20):
        assert post(client, Route.BATCH, body(1, i)).status == 200
    assert sim.connections_opened == 1


def test_error_answer_keeps_status_and_a_capped_body(client: S2SClient, sim: Simulator) -> None:
    resp = post(client, Route.BATCH, b'{"events": "not a list"}')
    assert resp.status == 400
    assert b"events must be an array" in resp.body
    assert len(resp.body) <= 4096
    sim.set_error_rate(1.0)
    assert post(client, Route.BATCH, body(1)).status >= 500


def test_refused_connection_is_a_transport_error_without_the_key() -> None:
    c = S2SClient(f"http://127.0.0.1:{closed_port()}", ApiKeySource(Secret(KEY)), timeout_s=2.0)
    with pytest.raises(TransportError) as info:
        post(c, Route.BATCH, body(1))
    assert "/api/v1/events" in str(info.value)
    assert KEY not in str(info.value)
    c.close()


def test_slow_answer_times_out(sim: Simulator) -> None:
    sim.set_latency(2.0)
    c = S2SClient(sim.url, ApiKeySource(Secret(KEY)), timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(TransportError):
        post(c, Route.BATCH, body(1))
    assert time.monotonic() - started < 1.5
    c.close()


def test_rotated_key_file_is_used_after_reload(sim: Simulator, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("old-key")
    c = S2SClient(sim.url, ApiKeySource(file=key_file), timeout_s=5.0)
    assert post(c, Route.BATCH, body(1)).status == 401
    key_file.write_text(KEY)
    c.reload_key()
    assert post(c, Route.BATCH, body(1)).status == 200
    c.close()


def drain(multi: S2SMulti[int], expect: int) -> dict[int, Response | TransportError]:
    got: dict[int, Response | TransportError] = {}
    deadline = time.monotonic() + 10
    while len(got) < expect and time.monotonic() < deadline:
        multi.wait(0.05)
        for token, outcome in multi.poll():
            assert token not in got, "a token came back twice"
            got[token] = outcome
    return got


def test_multi_runs_requests_concurrently_and_returns_each_token_once(
    client: S2SClient, sim: Simulator
) -> None:
    sim.set_latency(0.2)
    multi: S2SMulti[int] = S2SMulti(client, 8)
    started = time.monotonic()
    for i in range(8):
        multi.start(Route.BATCH, body(2, 2 * i), i)
    assert multi.active == 8
    got = drain(multi, 8)
    elapsed = time.monotonic() - started
    assert sorted(got) == list(range(8))
    assert all(isinstance(r, Response) and r.status == 200 for r in got.values())
    assert multi.active == 0
    # eight 200 ms answers side by side, not one after another
    assert elapsed < 1.0
    assert len(sim.accepted_events()) == 16
    # handles are reused: a second round opens no new connections
    conns = sim.connections_opened
    sim.set_latency(None)
    for i in range(8):
        multi.start(Route.BATCH, body(1, 100 + i), i)
    assert len(drain(multi, 8)) == 8
    assert sim.connections_opened == conns
    multi.close()


def test_multi_reports_transport_errors_per_request() -> None:
    c = S2SClient(f"http://127.0.0.1:{closed_port()}", ApiKeySource(Secret(KEY)), timeout_s=2.0)
    multi: S2SMulti[int] = S2SMulti(c, 4)
    for i in range(3):
        multi.start(Route.SESSION_START, body(1), i)
    got = drain(multi, 3)
    assert sorted(got) == [0, 1, 2]
    for outcome in got.values():
        assert isinstance(outcome, TransportError)
        assert "/api/v1/sessions/start" in str(outcome)
        assert KEY not in str(outcome)
    multi.close()
    c.close()


def test_multi_close_abandons_requests_in_flight(client: S2SClient, sim: Simulator) -> None:
    sim.set_latency(1.0)
    multi: S2SMulti[int] = S2SMulti(client, 2)
    multi.start(Route.BATCH, body(1), 1)
    multi.close()
    assert multi.active == 0


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made by the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_sim(tls_files: tuple[Path, Path]) -> Iterator[Simulator]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*tls_files)
    with Simulator(keys=[KEY], tls=ctx) as s:
        yield s


def test_https_verifies_the_server_against_ssl_cert_file(
    tls_sim: Simulator, tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tls_sim.url.startswith("https://")
    # the system's CAs do not know a self-signed certificate: no answer, a transport error
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    untrusting = S2SClient(tls_sim.url, ApiKeySource(Secret(KEY)), timeout_s=5.0)
    with pytest.raises(TransportError, match="curl error 60"):
        post(untrusting, Route.BATCH, body(1))
    untrusting.close()
    assert tls_sim.requests() == 0
    # trusting it through SSL_CERT_FILE: both ways of sending work over TLS
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))
    trusting = S2SClient(tls_sim.url, ApiKeySource(Secret(KEY)), timeout_s=5.0)
    assert post(trusting, Route.BATCH, body(2)).status == 200
    multi: S2SMulti[int] = S2SMulti(trusting, 2)
    multi.start(Route.BATCH, body(1, 10), 7)
    got = drain(multi, 1)
    assert isinstance(got[7], Response)
    assert got[7].status == 200
    multi.close()
    trusting.close()
    assert len(tls_sim.accepted_events()) == 3


def test_the_ca_file_setting_wins_over_ssl_cert_file(
    tls_sim: Simulator,
    tls_files: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = tmp_path / "other.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=someone-else", "-keyout", str(tmp_path / "other.key"), "-out", str(other)],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(other))  # trusts another CA only
    with pytest.raises(TransportError, match="curl error 60"):
        post(S2SClient(tls_sim.url, ApiKeySource(Secret(KEY)), timeout_s=5.0), Route.BATCH, body(1))
    trusting = S2SClient(
        tls_sim.url, ApiKeySource(Secret(KEY)), timeout_s=5.0, ca_file=str(tls_files[0])
    )
    assert post(trusting, Route.BATCH, body(1)).status == 200
    trusting.close()


def test_a_worker_delivers_over_https_with_gr_api_ca_file(
    bootstrap: str,
    make_topic: TopicFactory,
    tls_sim: Simulator,
    tls_files: tuple[Path, Path],
    start_worker: Callable[..., RunningWorker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    topic = make_topic(partitions=1)
    produce(bootstrap, topic, (encode(transaction(i)) for i in range(50)), partition=0)
    settings = config.load(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": f"grp-{uuid.uuid4().hex[:8]}",
            "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
            "GR_API_KEY": KEY,
            "GR_BASE_URL": tls_sim.url,  # https: no opt-in needed
            "GR_API_CA_FILE": str(tls_files[0]),
            "GR_BATCH_LINGER_MS": "50",
            "GR_HTTP_PORT": "0",
        }
    )
    rw = start_worker(settings)
    wait_for(lambda: len(tls_sim.accepted_events()) >= 50, 60, "delivery over https")
    assert rw.stop() == 0
    assert sorted(seq_of(e) for e in tls_sim.accepted_events()) == list(range(50))
