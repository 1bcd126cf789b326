"""A TCP proxy in front of the test broker that can make the group coordinator
answer OffsetFetch with a request-level error, the way a coordinator that has
just moved or restarted does.

Clients reach the broker only through the proxy: the broker advertises the
proxy's port on a listener of its own
(`LocalKafka(extra_listeners={"PROXIED": (inner_port, proxy.port)})`), so the
coordinator connection librdkafka opens after FindCoordinator goes through it
too. Everything is forwarded byte for byte, except the answers to the
OffsetFetch requests `fail_offset_fetches` arms: those are replaced by an
answer with the error at the request (group) level and no partitions.

Only OffsetFetch v8 and later (a list of groups) are understood: what
librdkafka 2.16 sends to Kafka 4 is v9. An older version goes through
unchanged, and `failed` stays 0 for it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator

OFFSET_FETCH = 9
COORDINATOR_LOAD_IN_PROGRESS = 14
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
_GROUPS_FROM = 8  # OffsetFetch's first version with a list of groups (flexible, too)


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


def _first_group(body: bytes) -> bytes:
    """The group id an OffsetFetch (v8+) request body asks about: the first of a compact
    array of groups, each led by its compact-string id."""
    _count, at = _uvarint(body, 0)
    length, at = _uvarint(body, at)
    return body[at : at + length - 1]


def _error_answer(correlation_id: int, group: bytes, error: int) -> bytes:
    """An OffsetFetch (v8+) response with `error` for the whole request, no partitions."""
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
    payload = struct.pack(">i", correlation_id) + b"\x00" + body  # header v1: tagged fields
    return struct.pack(">i", len(payload)) + payload


class KafkaProxy:
    """Forwards 127.0.0.1:`port` to the broker's PROXIED listener on `inner_port`."""

    def __init__(self, inner_port: int, port: int | None = None) -> None:
        self.inner_port = inner_port
        self._armed = 0
        self._error = NOT_COORDINATOR
        self.failed = 0  # OffsetFetch answers replaced so far
        self._lock = threading.Lock()
        # port 0: the system picks a free one, with no window for another to take it
        self._server = socket.create_server(("127.0.0.1", port or 0))
        self.port: int = self._server.getsockname()[1]
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
            # correlation id -> the group an OffsetFetch asks about, on this connection
            pending: dict[int, bytes] = {}
            threading.Thread(
                target=self._pump, args=(client, broker, self._noter(pending)), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(broker, client, self._replacer(pending)), daemon=True
            ).start()

    @staticmethod
    def _frames(sock: socket.socket) -> Iterator[bytes]:
        buf = bytearray()
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
                yield bytes(buf[: 4 + size])
                del buf[: 4 + size]

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, rewrite: Callable[[bytes], bytes]) -> None:
        for frame in KafkaProxy._frames(src):
            try:
                dst.sendall(rewrite(frame))
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    @staticmethod
    def _noter(pending: dict[int, bytes]) -> Callable[[bytes], bytes]:
        """Requests go through unchanged; an OffsetFetch's group is noted."""

        def note(frame: bytes) -> bytes:
            api_key, version, correlation_id = struct.unpack_from(">hhi", frame, 4)
            if api_key == OFFSET_FETCH and version >= _GROUPS_FROM:
                (client_len,) = struct.unpack_from(">h", frame, 12)
                at = 14 + max(client_len, 0)
                tags, at = _uvarint(frame, at)  # the request header's tagged fields
                for _ in range(tags):
                    _tag, at = _uvarint(frame, at)
                    size, at = _uvarint(frame, at)
                    at += size
                pending[correlation_id] = _first_group(frame[at:])
            return frame

        return note

    def _replacer(self, pending: dict[int, bytes]) -> Callable[[bytes], bytes]:
        """Answers go through unchanged, but an armed OffsetFetch's, replaced."""

        def replace(frame: bytes) -> bytes:
            (correlation_id,) = struct.unpack_from(">i", frame, 4)
            group = pending.pop(correlation_id, None)
            if group is not None:
                error = self._take()
                if error is not None:
                    return _error_answer(correlation_id, group, error)
            return frame

        return replace
