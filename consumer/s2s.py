"""The S2S API over HTTP (libcurl, through pycurl): keep-alive, timeouts, TLS.

`S2SMulti` sends without blocking, from the worker's loop: libcurl does the
whole exchange in C, so answers cost the loop one short call per turn
(measured in bench/: delivery threads handing the GIL back and forth with a
busy loop waited up to the 5 ms switch interval per socket call, and capped
one worker near 330 requests/s). `S2SClient` holds what every request shares:
the address, the key (re-read from its file on demand), timeouts and TLS.

Nothing here decides what an answer means (that is `policy`) or retries
(that is `delivery`). Transport failures become `TransportError`, whose text
never carries the key: libcurl's messages name the host, not our headers.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import pycurl

from consumer.config import ApiKeySource, Secret
from consumer.errors import GrError
from consumer.errors import TransportError as TransportError
from consumer.events import Route

_MAX_ERROR_BODY = 4096
_USER_AGENT = "gr-s2s-consumer"
T = TypeVar("T")


class Headers(dict[str, str]):
    """Response headers; look-ups ignore case (keys are stored lower-cased)."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive (`Headers`)
    body: bytes  # at most 4 KiB of it
    elapsed_s: float


class _Exchange:
    """What one curl handle collects for one request: header lines and a capped body."""

    __slots__ = ("body", "key", "lines", "started", "url")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.body = bytearray()
        self.started = 0.0
        # what the handle was last pointed at: set again only when it changes
        self.url = ""
        self.key: Secret | None = None

    def reset(self) -> None:
        self.lines.clear()
        self.body.clear()
        self.started = time.monotonic()

    def write(self, data: bytes) -> None:
        room = _MAX_ERROR_BODY - len(self.body)
        if room > 0:
            self.body += data[:room]

    def response(self, status: int) -> Response:
        headers = Headers()
        for line in self.lines:
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
            elif line.startswith(b"HTTP/"):
                headers.clear()  # a new status line (after a 1xx): keep only the final headers
        return Response(status, headers, bytes(self.body), time.monotonic() - self.started)


def _transport_error(exc: pycurl.error, route: Route) -> TransportError:
    code, message = exc.args if len(exc.args) == 2 else (0, str(exc))
    return TransportError(f"curl error {code} posting to {route.value}: {message}")


class S2SClient:
    """The API's address, key, timeouts and TLS settings, and the curl handles made from them."""

    def __init__(
        self,
        base_url: str,
        key_source: ApiKeySource,
        *,
        timeout_s: float = 10.0,
        ca_file: str | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        # The API's certificate is always verified (libcurl's default, never turned off),
        # against GR_API_CA_FILE, else SSL_CERT_FILE, else the system's bundle.
        self._ca_file = ca_file or os.environ.get("SSL_CERT_FILE") or None
        self._key_source = key_source
        self._key: Secret = key_source.read()
        self._timeout_ms = max(1, round(timeout_s * 1000))
        self._connect_ms = max(1, round(min(timeout_s, 5.0) * 1000))
        self._handles: list[pycurl.Curl] = []

    def reload_key(self) -> None:
        """Re-read the key (a rotated Secret file); keep the old one if the file is unreadable."""
        try:
            key = self._key_source.read()
        except GrError:
            return
        self._key = key

    def new_handle(self) -> tuple[pycurl.Curl, _Exchange]:
        """A configured curl handle and the exchange it writes into."""
        curl = pycurl.Curl()
        exchange = _Exchange()
        curl.setopt(pycurl.NOSIGNAL, 1)  # threads: no SIGALRM for timeouts
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, self._connect_ms)
        curl.setopt(pycurl.TIMEOUT_MS, self._timeout_ms)
        curl.setopt(pycurl.FOLLOWLOCATION, 0)
        curl.setopt(pycurl.USERAGENT, _USER_AGENT)
        curl.setopt(pycurl.HEADERFUNCTION, exchange.lines.append)
        curl.setopt(pycurl.WRITEFUNCTION, exchange.write)
        curl.setopt(pycurl.SSL_VERIFYPEER, 1)
        curl.setopt(pycurl.SSL_VERIFYHOST, 2)
        if self._ca_file:
            curl.setopt(pycurl.CAINFO, self._ca_file)
        self._handles.append(curl)
        return curl, exchange

    def prepare(self, curl: pycurl.Curl, exchange: _Exchange, route: Route, body: bytes) -> None:
        """Point a handle at one request: URL, the current key, the body."""
        url = self._base + route.value
        if url != exchange.url:
            curl.setopt(pycurl.URL, url)
            exchange.url = url
        key = self._key
        if key is not exchange.key:
            curl.setopt(
                pycurl.HTTPHEADER,
                [
                    "Content-Type: application/json",
                    "X-API-Key: " + key.reveal(),
                    "Expect:",  # no 100-continue round trip for large bodies
                ],
            )
            exchange.key = key
        curl.setopt(pycurl.POSTFIELDS, body)
        exchange.reset()

    def close(self) -> None:
        handles, self._handles = self._handles, []
        for curl in handles:
            with contextlib.suppress(pycurl.error):
                curl.close()


class S2SMulti(Generic[T]):
    """Requests in flight without a thread each; drive it from one thread with `poll()`.

    Each request carries a token of the caller's; `poll()` returns finished
    ones as (token, Response or TransportError), in no particular order.

    Driven by libcurl's socket interface: one epoll tells which connections
    have something to do and libcurl touches only those. (`perform()` would
    visit every transfer on each call, a system call or two apiece whether it
    has news or not: measured, most of the client's cost per request.)
    """

    def __init__(self, client: S2SClient, max_active: int) -> None:
        self._client = client
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_MAXCONNECTS, max_active)
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._selector = selectors.DefaultSelector()
        self._timer_at: float | None = None  # when libcurl wants SOCKET_TIMEOUT
        self._idle: list[tuple[pycurl.Curl, _Exchange]] = []
        self._active: dict[int, tuple[pycurl.Curl, _Exchange, T, Route]] = {}

    @property
    def active(self) -> int:
        return len(self._active)

    # ---- libcurl's callbacks: which sockets to watch, when to wake it ----

    def _on_socket(self, what: int, fd: int, _multi: object, _data: object) -> None:
        if what == pycurl.POLL_REMOVE:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
            return
        events = 0
        if what & pycurl.POLL_IN:
            events |= selectors.EVENT_READ
        if what & pycurl.POLL_OUT:
            events |= selectors.EVENT_WRITE
        try:
            self._selector.modify(fd, events)
        except KeyError:
            self._selector.register(fd, events)

    def _on_timer(self, timeout_ms: int) -> None:
        self._timer_at = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000

    # ---- driving it ----

    def start(self, route: Route, body: bytes, token: T) -> None:
        """Queue a request; it goes out at the next `send()` or `poll()`."""
        curl, exchange = self._idle.pop() if self._idle else self._client.new_handle()
        self._client.prepare(curl, exchange, route, body)
        self._active[id(curl)] = (curl, exchange, token, route)
        self._multi.add_handle(curl)

    def send(self) -> None:
        """Put what `start` queued on the wire now."""
        self._run_timer()

    def _run_timer(self) -> None:
        at = self._timer_at
        if at is not None and at <= time.monotonic():
            self._timer_at = None
            self._multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        action = self._multi.socket_action
        for key, mask in ready:
            flags = 0
            if mask & selectors.EVENT_READ:
                flags |= pycurl.CSELECT_IN
            if mask & selectors.EVENT_WRITE:
                flags |= pycurl.CSELECT_OUT
            action(key.fd, flags)
        self._run_timer()

    def wait(self, timeout_s: float) -> None:
        """Sleep until a connection has news or libcurl's timer is due, at most `timeout_s`."""
        if not self._active:
            return
        if self._timer_at is not None:
            timeout_s = max(0.0, min(timeout_s, self._timer_at - time.monotonic()))
        self._act(self._selector.select(timeout_s))

    def poll(self) -> list[tuple[T, Response | TransportError]]:
        """Move the transfers on (never blocks) and return those that finished."""
        if not self._active:
            return []
        self._act(self._selector.select(0))
        finished: list[tuple[T, Response | TransportError]] = []
        while True:
            queued, ok, failed = self._multi.info_read()
            for curl in ok:
                _, exchange, token, _route = self._release(curl)
                status = int(curl.getinfo(pycurl.RESPONSE_CODE))
                finished.append((token, exchange.response(status)))
            for curl, code, message in failed:
                _, _, token, route = self._release(curl)
                finished.append((token, _transport_error(pycurl.error(code, message), route)))
            if not queued:
                return finished

    def abort(self, token: T) -> bool:
        """Drop the request carrying `token`, unanswered; False when it is not in flight."""
        for curl, _exchange, held, _route in self._active.values():
            if held is token:
                self._release(curl)
                return True
        return False

    def reload_key(self) -> None:
        self._client.reload_key()

    def _release(self, curl: pycurl.Curl) -> tuple[pycurl.Curl, _Exchange, T, Route]:
        entry = self._active.pop(id(curl))
        self._multi.remove_handle(curl)
        self._idle.append((curl, entry[1]))
        return entry

    def close(self) -> None:
        for curl, _exchange, _token, _route in list(self._active.values()):
            self._multi.remove_handle(curl)
        self._active.clear()
        self._idle.clear()
        self._multi.close()
        self._selector.close()
        self._client.close()
