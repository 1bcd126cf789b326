"""The S2S API over HTTP: pooled keep-alive connections, timeouts, one call per request.

Nothing here decides what an answer means (that is `policy`) or retries
(that is `delivery`). Transport failures become `TransportError`, whose text
never carries the key: urllib3 errors name the host, not our headers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import urllib3

from consumer.config import ApiKeySource, Secret
from consumer.errors import GrError
from consumer.events import Route

_MAX_ERROR_BODY = 4096


class TransportError(GrError):
    """No HTTP answer: connection refused or reset, timeout, TLS failure."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive (urllib3's HTTPHeaderDict)
    body: bytes  # at most 4 KiB of it; only read for errors
    elapsed_s: float


class S2SClient:
    """Thread-safe: the delivery threads share one pool."""

    def __init__(
        self,
        base_url: str,
        key_source: ApiKeySource,
        *,
        timeout_s: float = 10.0,
        pool_size: int = 8,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._key_source = key_source
        self._key_lock = threading.Lock()
        self._key: Secret = key_source.read()
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=pool_size,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s),
            headers={"Content-Type": "application/json", "User-Agent": "gr-s2s-consumer"},
        )

    def reload_key(self) -> None:
        """Re-read the key (a rotated Secret file); keep the old one if the file is unreadable."""
        try:
            key = self._key_source.read()
        except GrError:
            return
        with self._key_lock:
            self._key = key

    def post(self, route: Route, body: bytes) -> Response:
        url = self._base + route.value
        headers = {"X-API-Key": self._key.reveal()}
        started = time.monotonic()
        try:
            resp = self._pool.request(
                "POST", url, body=body, headers=headers, preload_content=False
            )
        except urllib3.exceptions.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__} posting to {route.value}") from None
        try:
            status = resp.status
            if status == 200:
                payload = b""
                resp.drain_conn()
            else:
                payload = resp.read(_MAX_ERROR_BODY)
                resp.drain_conn()
        except urllib3.exceptions.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__} reading from {route.value}") from None
        finally:
            resp.release_conn()
        return Response(status, resp.headers, payload, time.monotonic() - started)

    def close(self) -> None:
        self._pool.clear()
