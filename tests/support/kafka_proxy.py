"""A TCP proxy in front of the test broker that can make the group coordinator
answer OffsetFetch with a request-level error, the way a coordinator that has
just moved or restarted does.

Clients reach the broker only through the proxy: the broker advertises the
proxy's port on a listener of its own (`listener_properties`), so the
coordinator connection librdkafka opens after FindCoordinator goes through it
too (`LocalKafka(extra_listeners={"PROXIED": (inner_port, proxy.port)})`). Everything is forwarded byte for byte, except the answers to the
OffsetFetch requests `fail_offset_fetches` arms: those are replaced by an
answer with the error at the request (group) level and no partitions.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator

from gr_devtools.kafka_local import free_port

OFFSET_FETCH = 9
COORDINATOR_LOAD_IN_PROGRESS = 14
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
_FLEXIBLE_FROM = 6  # OffsetFetch's first flexible version (compact fields, tagged fields)


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _put_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _first_group(body: bytes, version: int) -> bytes:
    """The group id an OffsetFetch request body asks about."""
    if version >= 8:  # groups: compact array of (compact string group_id, ...)
        _count, at = _uvarint(body, 0)
        length, at = _uvarint(body, at)
        return body[at : at + length - 1]
    if version >= _FLEXIBLE_FROM:
        length, at = _uvarint(body, 0)
        return body[at : at + length - 1]
    (length,) = struct.unpack_from(">h", body, 0)
    return body[2 : 2 + length]


def _error_answer(correlation_id: int, version: int, group: bytes, error: int) -> bytes:
    """An OffsetFetch response of `version` with `error` for the whole request, no partitions."""
    if version >= 8:
        body = (
            struct.pack(">i", 0)  # throttle_time_ms
            + _put_uvarint(2)  # one group
            + _put_uvarint(len(group) + 1)
            + group
            + _put_uvarint(1)  # no topics
            + struct.pack(">h", error)
            + b"\x00"  # the group's tagged fields
            + b"\x00"  # the response's tagged fields
        )
    elif version >= _FLEXIBLE_FROM:
        body = struct.pack(">i", 0) + _put_uvarint(1) + struct.pack(">h", error) + b"\x00"
    elif version >= 3:
        body = struct.pack(">iih", 0, 0, error)
    else:
        body = struct.pack(">ih", 0, error)
    header = struct.pack(">i", correlation_id) + (b"\x00" if version >= _FLEXIBLE_FROM else b"")
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


class KafkaProxy:
    """Forwards 127.0.0.1:`port` to the broker's PROXIED listener on `inner_port`."""

    def __init__(self, inner_port: int, port: int | None = None) -> None:
        self.inner_port = inner_port
        self.port = port or free_port()
        self._armed = 0
        self._error = NOT_COORDINATOR
        self.failed = 0  # OffsetFetch answers replaced so far
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def fail_offset_fetches(self, count: int, error: int = NOT_COORDINATOR) -> None:
        """Answer the next `count` OffsetFetch requests with `error`, request-level
        (and count those answers in `failed` from 0)."""
        with self._lock:
            self.failed = 0
            self._armed = count
            self._error = error

    def _take(self) -> int | None:
        with self._lock:
            if self._armed <= 0:
                return None
            self._armed -= 1
            self.failed += 1
            return self._error

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                broker = socket.create_connection(("127.0.0.1", self.inner_port))
            except OSError:
                client.close()
                continue
            self._sockets += [client, broker]
            pending: dict[int, tuple[int, int, bytes]] = {}  # correlation id -> request
            lock = threading.Lock()
            threading.Thread(
                target=self._requests, args=(client, broker, pending, lock), daemon=True
            ).start()
            threading.Thread(
                target=self._responses, args=(broker, client, pending, lock), daemon=True
            ).start()

    @staticmethod
    def _frames(sock: socket.socket) -> Iterator[bytes]:
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 4:
                (size,) = struct.unpack_from(">i", buf, 0)
                if len(buf) < 4 + size:
                    break
                yield buf[: 4 + size]
                buf = buf[4 + size :]

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, rewrite: Callable[[bytes], bytes]) -> None:
        for frame in KafkaProxy._frames(src):
            try:
                dst.sendall(rewrite(frame))
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _requests(
        self,
        src: socket.socket,
        dst: socket.socket,
        pending: dict[int, tuple[int, int, bytes]],
        lock: threading.Lock,
    ) -> None:
        def note(frame: bytes) -> bytes:
            api_key, version, correlation_id = struct.unpack_from(">hhi", frame, 4)
            if api_key == OFFSET_FETCH:
                (client_len,) = struct.unpack_from(">h", frame, 12)
                at = 14 + max(client_len, 0)
                if version >= _FLEXIBLE_FROM:
                    tags, at = _uvarint(frame, at)
                    for _ in range(tags):
                        _tag, at = _uvarint(frame, at)
                        size, at = _uvarint(frame, at)
                        at += size
                with lock:
                    pending[correlation_id] = (api_key, version, _first_group(frame[at:], version))
            return frame

        self._pump(src, dst, note)

    def _responses(
        self,
        src: socket.socket,
        dst: socket.socket,
        pending: dict[int, tuple[int, int, bytes]],
        lock: threading.Lock,
    ) -> None:
        def replace(frame: bytes) -> bytes:
            (correlation_id,) = struct.unpack_from(">i", frame, 4)
            with lock:
                request = pending.pop(correlation_id, None)
            if request is not None:
                error = self._take()
                if error is not None:
                    _api, version, group = request
                    return _error_answer(correlation_id, version, group, error)
            return frame

        self._pump(src, dst, replace)
