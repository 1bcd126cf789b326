"""A local stand-in for the GameRebellion S2S API, as a real HTTP server (docs/contract.md).

Integration tests, fault tests, benchmarks and the demo all talk to it over the
network exactly as the service talks to the vendor, so what they measure is the
client's behaviour, not a mock's. Faults can be injected while it runs, from the
same process (`Simulator` methods) or another one (`/_sim/` admin endpoints).

Run it alone with `gr-consumer simulate-api`.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs

import orjson

from gr_devtools.simulator_core import (
    API_PATHS,
    API_PREFIX,
    DEFAULT_KEY,
    DEFAULT_LIMIT,
    DEFAULT_WINDOW_S,
    DROP,
    Latency,
    Record,
    Response,
    SimulatorCore,
    check_latency,
    check_rate,
    check_rules,
    check_seconds,
    error_body,
    json_response,
    normalise_limit,
    reason,
)

__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_LIMIT",
    "DEFAULT_WINDOW_S",
    "Record",
    "Simulator",
    "add_arguments",
    "run",
]

ADMIN_PREFIX = "/_sim/"
MAX_BODY_BYTES = 8 * 1024 * 1024
_MAX_LINE = 65536
_MAX_HEADERS = 100
_POLL_S = 0.05  # how fast serve_forever notices a shutdown request

AfterResponse = Callable[[], None] | None


class _Server(socketserver.ThreadingTCPServer):
    """Tracks open connections so an outage can cut keep-alive clients off, as a crash would."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self, address: tuple[str, int], sim: Simulator, tls: ssl.SSLContext | None = None
    ) -> None:
        self.sim = sim
        self._tls = tls
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self.opened = 0  # connections accepted so far: shows whether clients keep them alive
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        if self._tls is not None:
            # the handshake happens on the handler's thread, at its first read
            conn = self._tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
            self.opened += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients vanishing (and outages cutting them off) are normal here, not tracebacks."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(socketserver.StreamRequestHandler):
    """A lean HTTP/1.1 keep-alive handler.

    http.server's handler parses headers with the email package, which costs more
    than parsing a 100-event body; this one reads only what the simulator needs.
    """

    disable_nagle_algorithm = True
    timeout = 300.0  # idle keep-alive connections are let go after this
    server: _Server
    close_connection = False
    command = ""

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # timeouts and resets end the connection quietly
            while not self.close_connection:
                self._handle_one()

    def _handle_one(self) -> None:
        rfile = self.rfile
        line = rfile.readline(_MAX_LINE + 1)
        if not line:
            self.close_connection = True
            return
        if line in (b"\r\n", b"\n"):
            return  # a stray empty line between requests is allowed
        parts = line.split()
        if len(line) > _MAX_LINE or len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._refuse(400, "bad_request", "malformed request line")
            return
        self.command = parts[0].decode("latin-1")
        target = parts[1].decode("latin-1")
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS):
            raw = rfile.readline(_MAX_LINE + 1)
            if raw in (b"\r\n", b"\n"):
                break
            name, sep, value = raw.partition(b":")
            if not raw or not sep or len(raw) > _MAX_LINE:
                self._refuse(400, "bad_request", "malformed header")
                return
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        else:
            self._refuse(431, "bad_request", "too many headers")
            return
        connection = headers.get("connection", "").lower()
        if parts[2] == b"HTTP/1.1":
            self.close_connection = "close" in connection
        else:
            self.close_connection = "keep-alive" not in connection
        self.headers = headers
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self._read_body()
        if body is not None:
            self._dispatch(target, body)

    def _dispatch(self, target: str, body: bytes) -> None:
        path, _, query = target.partition("?")
        sim = self.server.sim
        after: AfterResponse = None
        if path in API_PATHS:
            if self.command == "POST":
                resp = self._api(sim, path, body)
            else:
                resp = self._other(sim, path, 405, "method_not_allowed", f"{path} takes POST")
        elif path.startswith(ADMIN_PREFIX):
            resp, after = sim.handle_admin(self.command, path, query, body)
        else:
            resp = self._other(sim, path, 404, "not_found", f"no endpoint {path}")
        if after is not None:
            self.close_connection = True
        self._send(resp)
        if after is not None:
            after()

    def _api(self, sim: Simulator, path: str, body: bytes) -> Response:
        seq, arrival, delay = sim.arrive()
        if delay:
            time.sleep(delay)
        if sim.outage:
            return DROP
        headers, stopped = sim.admit(path, self.headers.get("x-api-key"))
        if stopped is not None:
            return stopped
        return sim.finish(seq, path, arrival, headers, body)

    def _other(self, sim: Simulator, path: str, status: int, error: str, message: str) -> Response:
        if path.startswith(API_PREFIX):
            sim.count_other(path, status)
        return Response(status, sim.default_headers(), error_body(error, message))

    def _read_body(self) -> bytes | None:
        """The request body, or None when the connection is unusable (answered or gone)."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            return self._read_chunked()
        raw = self.headers.get("content-length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            return self._refuse(400, "invalid_body", "bad Content-Length")
        if length > MAX_BODY_BYTES:
            return self._refuse(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
        data = self.rfile.read(length)
        if len(data) < length:
            self.close_connection = True
            return None
        return data

    def _read_chunked(self) -> bytes | None:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(_MAX_LINE)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return self._refuse(400, "invalid_body", "bad chunked encoding")
            if size == 0:
                break
            total += size
            if total > MAX_BODY_BYTES:
                return self._refuse(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
            chunk = self.rfile.read(size + 2)
            if len(chunk) < size + 2:
                self.close_connection = True
                return None
            parts.append(chunk[:size])
        while self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(parts)

    def _refuse(self, status: int, error: str, message: str) -> bytes | None:
        """Answer a request that cannot be read; the connection is closed after."""
        self.close_connection = True
        self._send(Response(status, self.server.sim.default_headers(), error_body(error, message)))
        return None

    def _send(self, resp: Response) -> None:
        """Status line, headers and body in one write: no Nagle stall between them."""
        if resp.drop:
            self.close_connection = True
            return
        lines = [
            f"HTTP/1.1 {resp.status} {reason(resp.status)}",
            "Server: gr-s2s-simulator",
            "Content-Type: application/json",
            f"Content-Length: {len(resp.body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in resp.headers)
        lines.append("Connection: close" if self.close_connection else "Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head + resp.body)
        except OSError:
            self.close_connection = True


class Simulator(SimulatorCore):
    """The S2S API simulator: a real HTTP server with knobs a test can turn while it runs.

    Records (`records`, `accepted_events`, `batches`), counters (`status_counts`,
    `endpoint_counts`, `stats`) and the fault setters come from `SimulatorCore`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        keys: Iterable[str] | Mapping[str, int | None] = (DEFAULT_KEY,),
        limit_per_window: int | None = DEFAULT_LIMIT,
        window_s: float = DEFAULT_WINDOW_S,
        record_events: bool = True,
        seed: int = 0,
        limits: Mapping[str, int | None] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`limit_per_window` (0/None: unlimited) is every key's budget unless `limits` or
        a `keys` mapping gives a key its own; `tls` (a server context) serves HTTPS."""
        super().__init__(keys, limit_per_window, window_s, record_events, seed)
        for key, limit in (limits or {}).items():
            self.add_key(key, limit)
        self._host = host
        self._port = port
        self._tls = tls
        self._ctl = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._outage = False
        self._outage_timer: threading.Timer | None = None

    # ---- life cycle ----------------------------------------------------------------

    def start(self) -> Simulator:
        with self._ctl:
            if self._running:
                return self
            self._running = True
            if not self._outage:
                self._bind()
            return self

    def stop(self) -> None:
        with self._ctl:
            self._running = False
            self._cancel_outage_timer()
            self._unbind()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the one picked for port=0 after `start`); kept across outages."""
        return self._port

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self._host, self._host)
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{host}:{self._port}"

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted since the last bind (an outage rebinds)."""
        server = self._server
        return 0 if server is None else server.opened

    def _bind(self) -> None:
        server = _Server((self._host, self._port), self, self._tls)
        self._port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_S},
            name=f"s2s-simulator:{self._port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()

    def _unbind(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if thread is not None:
            thread.join()

    # ---- outage --------------------------------------------------------------------

    @property
    def outage(self) -> bool:
        return self._outage

    def set_outage(self, on: bool, duration_s: float | None = None) -> None:
        """Connection refused while on: the port is closed and keep-alive clients cut off.

        With `duration_s` the outage ends by itself, which is the only way out of one
        started over HTTP. Ending it binds the same port again.
        """
        if duration_s is not None:
            duration_s = check_seconds("outage_s", duration_s)
        with self._ctl:
            self._cancel_outage_timer()
            if on:
                if not self._outage:
                    self._outage = True
                    self._unbind()
                if duration_s is not None:
                    timer = threading.Timer(duration_s, self.set_outage, (False,))
                    timer.daemon = True
                    self._outage_timer = timer
                    timer.start()
            elif self._outage:
                self._outage = False
                if self._running:
                    self._bind()

    def _cancel_outage_timer(self) -> None:
        if self._outage_timer is not None:
            self._outage_timer.cancel()
            self._outage_timer = None

    # ---- configuration as data (for /_sim/config and the CLI) ----------------------

    def configure(self, config: Mapping[str, Any]) -> None:
        """Apply any fault knob / limit fields at once; all are checked before any applies.

        Fields: error_rate, rate_limit_429_rate, latency_s (seconds or [min, max]),
        latency_ms, reject_rule (a rule, a list of rules, or null), limit_per_window,
        window_s, record_events, seed, outage, outage_s.
        """
        checks: dict[str, Callable[[Any], Any]] = {
            "error_rate": lambda v: check_rate("error_rate", v),
            "rate_limit_429_rate": lambda v: check_rate("rate_limit_429_rate", v),
            "latency_s": check_latency,
            "latency_ms": lambda v: _ms_to_s(check_latency(v)),
            "reject_rule": check_rules,
            "limit_per_window": normalise_limit,
            "window_s": self._check_window,
            "record_events": lambda v: _check_bool("record_events", v),
            "seed": _check_int,
            "outage": lambda v: _check_bool("outage", v),
            "outage_s": lambda v: None if v is None else check_seconds("outage_s", v),
        }
        unknown = sorted(set(config) - set(checks))
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        values = {name: checks[name](value) for name, value in config.items()}
        setters: dict[str, Callable[[Any], None]] = {
            "error_rate": self.set_error_rate,
            "rate_limit_429_rate": self.set_rate_limit_429_rate,
            "latency_s": self.set_latency,
            "latency_ms": self.set_latency,
            "reject_rule": lambda v: self.set_reject_rule(list(v)),
            "limit_per_window": self.set_default_limit,
            "window_s": self.set_window,
            "record_events": self.set_record_events,
            "seed": self.set_seed,
        }
        for name, value in values.items():
            if name in setters:
                setters[name](value)
        if "outage" in values or values.get("outage_s") is not None:
            self.set_outage(values.get("outage", True), values.get("outage_s"))

    def config(self) -> dict[str, Any]:
        out = super().config()
        out["outage"] = self._outage
        return out

    # ---- /_sim/ --------------------------------------------------------------------

    def handle_admin(
        self, method: str, path: str, query: str, body: bytes
    ) -> tuple[Response, AfterResponse]:
        """Serve /_sim/*; the callable, if any, runs after the response is written."""
        name = path[len(ADMIN_PREFIX) :].rstrip("/")
        try:
            if method == "GET":
                return self._admin_get(name, query), None
            if method == "POST":
                doc = orjson.loads(body) if body.strip() else {}
                if not isinstance(doc, dict):
                    raise ValueError("body must be a JSON object")
                return self._admin_post(name, doc)
            return json_response(405, _err("method_not_allowed", "GET or POST")), None
        except orjson.JSONDecodeError as exc:
            return json_response(400, _err("invalid_json", str(exc))), None
        except KeyError as exc:
            return json_response(404, _err("not_found", str(exc.args[0]))), None
        except (ValueError, TypeError) as exc:
            return json_response(400, _err("invalid_config", str(exc))), None
        except RuntimeError as exc:
            return json_response(409, _err("conflict", str(exc))), None

    def _admin_get(self, name: str, query: str) -> Response:
        if name == "health":
            return json_response(200, {"ok": True})
        if name == "stats":
            return json_response(200, self.stats())
        if name == "config":
            return json_response(200, self.config())
        if name == "events":
            since = int(parse_qs(query).get("since", ["0"])[0])
            events = self.events_json(since)
            last = max((e["seq"] for e in events), default=since)
            return json_response(200, {"count": len(events), "last_seq": last, "events": events})
        raise KeyError(f"no admin endpoint GET /_sim/{name}")

    def _admin_post(self, name: str, doc: dict[str, Any]) -> tuple[Response, AfterResponse]:
        if name == "config":
            outage = doc.get("outage")
            if outage is True and doc.get("outage_s") is None:
                msg = "an outage set over HTTP needs outage_s, or nothing could end it"
                raise ValueError(msg)
            rest = {k: v for k, v in doc.items() if k not in ("outage", "outage_s")}
            self.configure(rest)
            after: AfterResponse = None
            if outage is True or (outage is None and doc.get("outage_s") is not None):
                duration = check_seconds("outage_s", doc["outage_s"])
                after = lambda: self.set_outage(True, duration)  # noqa: E731
            elif outage is False:
                self.set_outage(False)
            return json_response(200, self.config()), after
        if name == "keys":
            key, action = doc.get("key"), doc.get("action")
            if not isinstance(key, str) or not key:
                raise ValueError("key must be a non-empty string")
            if action == "add":
                self.add_key(key, doc.get("limit", "default"))
            elif action == "revoke":
                self.revoke_key(key)
            elif action == "restore":
                self.restore_key(key)
            elif action == "remove":
                self.remove_key(key)
            elif action == "limit":
                self.set_key_limit(key, doc.get("limit"))
            else:
                raise ValueError("action must be add, revoke, restore, remove or limit")
            return json_response(200, self.config()["keys"]), None
        if name == "reset":
            faults = doc.get("faults", False)
            self.reset(faults=_check_bool("faults", faults))
            if faults:
                self.set_outage(False)
            return json_response(200, {"ok": True}), None
        raise KeyError(f"no admin endpoint POST /_sim/{name}")


def _err(error: str, message: str) -> dict[str, str]:
    return {"error": error, "message": message}


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _check_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"seed must be an integer, got {value!r}")
    return value


def _ms_to_s(latency: Latency) -> Latency:
    if latency is None:
        return None
    if isinstance(latency, tuple):
        return (latency[0] / 1000, latency[1] / 1000)
    return latency / 1000


# ---- gr-consumer simulate-api --------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8088, help="port, 0 for any (default 8088)")
    parser.add_argument(
        "--key",
        action="append",
        metavar="KEY",
        help=f"an accepted API key; repeatable (default {DEFAULT_KEY})",
    )
    parser.add_argument(
        "--limit-per-window",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help="requests per key per window, 0 for unlimited (default %(default)s)",
    )
    parser.add_argument(
        "--window-s",
        type=float,
        default=DEFAULT_WINDOW_S,
        metavar="S",
        help="rate-limit window in seconds (default %(default)s)",
    )
    parser.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        help="share of requests answered 500 (default %(default)s)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay added to each API request"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for injected faults")
    parser.add_argument(
        "--no-record", action="store_true", help="keep counters only, not the events"
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT."""
    try:
        sim = Simulator(
            host=args.host,
            port=args.port,
            keys=args.key or [DEFAULT_KEY],
            limit_per_window=args.limit_per_window,
            window_s=args.window_s,
            record_events=not args.no_record,
            seed=args.seed,
        )
        sim.set_error_rate(args.error_rate)
        sim.set_latency(args.latency_ms / 1000 if args.latency_ms else None)
    except ValueError as exc:
        print(f"simulate-api: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sim.start()
    except OSError as exc:
        print(f"simulate-api: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    limit = f"{args.limit_per_window} requests/{args.window_s:g}s per key"
    if not args.limit_per_window:
        limit = "no rate limit"
    print(
        f"S2S API simulator listening on {sim.url} ({limit}, "
        f"{len(args.key or [DEFAULT_KEY])} key(s), admin at {sim.url}/_sim/stats)",
        flush=True,
    )
    while not done.wait(1.0):
        pass
    sim.stop()
    return 0
