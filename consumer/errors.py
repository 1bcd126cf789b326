"""The service's exception tree, one root so callers can tell ours from the rest.

GrError
└── ConfigError          bad configuration: names the variable; exit 2
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
