"""A rotated SASL password takes effect through a clean restart, with nobody restarting by hand.

The password is read from a file (`KAFKA_SASL_PASSWORD_FILE`; the chart
mounts the SASL Secret there, and the kubelet rewrites the file when the
Secret changes, `existingSecret` included). `watch` re-reads it every few
seconds; once it holds another password, on two reads in a row (a file
edited in place may be caught half-written), it calls `on_change`: the
service's `run` asks the worker to stop as on SIGTERM (deliver what it holds,
commit, leave the group, exit 0). The container's restart policy starts it
again, and the new process reads the new password.

Why a restart and not a swap inside the running process: librdkafka holds
the password in each client (the group consumer, the DLQ producer, which is
re-created after a fatal error), and connections already authenticated keep
the old identity until they reconnect, so a swapped password would only be
proven at some later reconnection, far from the rotation. A new process
proves it at once: its start-up check asks the brokers for metadata with the
new password and exits 2 naming the setting if they refuse it. A clean stop
resends nothing (it commits what it delivered); the cost is one rebalance,
which the cooperative assignor keeps to this worker's partitions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from consumer.config import Settings, read_secret_file
from consumer.errors import ConfigError

log = logging.getLogger(__name__)

INTERVAL_S: Final = 5.0


class FileWatch:
    """Whether the secret in `path` is still `value` (read through symlinks, every time)."""

    def __init__(self, variable: str, path: Path, value: str) -> None:
        self.variable = variable
        self._path = path
        self._value = value
        self._seen: str | None = None  # a different value, read once: wait for a second read

    def changed(self) -> bool:
        """True once the file has held another secret on two reads in a row."""
        try:
            now = read_secret_file(self.variable, self._path)
        except ConfigError as exc:  # missing or empty for a moment: no decision yet
            log.warning("secret file unreadable; still watching", extra={"error": exc.problem})
            self._seen = None
            return False
        if now == self._value:
            self._seen = None
            return False
        if now != self._seen:
            self._seen = now
            return False
        return True


def watch(
    settings: Settings, on_change: Callable[[str], None], interval_s: float = INTERVAL_S
) -> threading.Event | None:
    """Watch the secret files `settings` were read from, on a daemon thread; `on_change`
    is called once, with the variable's name. Returns an Event that stops the watching,
    or None when there is nothing to watch."""
    if settings.sasl_password_file is None:
        return None
    password = settings.kafka_common()["sasl.password"]
    files = [FileWatch("KAFKA_SASL_PASSWORD_FILE", settings.sasl_password_file, password)]
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            for file in files:
                if file.changed():
                    log.warning(
                        "secret file changed; stopping cleanly to restart with it",
                        extra={"variable": file.variable},
                    )
                    on_change(file.variable)
                    return

    threading.Thread(target=loop, name="secret-watch", daemon=True).start()
    return stop
