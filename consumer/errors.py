"""The service's exception tree, one root so callers can tell ours from the rest.

GrError
├── ConfigError          bad configuration: names the variable; exit 2
├── TransportError       no HTTP answer (refused, reset, timeout, TLS); retried
├── JobAbandonedError    the worker gave up a delivery job (revoked, stopping)
├── DlqWriteError        the DLQ did not take a record (yet); retried, never fatal
└── WorkerFailedError    the loop hit something it cannot go on from; exit 1
"""

from __future__ import annotations


class GrError(Exception):
    """Root of everything this package raises on purpose."""


class ConfigError(GrError):
    """A configuration variable is missing or wrong; the message names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable
        self.problem = problem


class TransportError(GrError):
    """No HTTP answer: connection refused or reset, timeout, TLS failure."""


class JobAbandonedError(GrError):
    """The worker gave up on this job (revoked partition or shutdown): no result counts."""


class DlqWriteError(GrError):
    """The DLQ could not take a record (yet); `code` is librdkafka's error name."""

    def __init__(self, code: str) -> None:
        super().__init__(f"dlq write failed: {code}")
        self.code = code


class WorkerFailedError(GrError):
    """The main loop cannot go on (a fatal Kafka error, a bug): the process exits 1."""
