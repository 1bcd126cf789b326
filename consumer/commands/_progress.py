"""A tiny progress reporter for the command-line tools (no dependency).

On a terminal it redraws one line in place, at most ten times a second:

    publish [##########----------]  50%  5,000/10,000 lines  4,210/s

Elsewhere (a pipe, a log file, CI) it writes a plain line every `interval_s`
seconds, so a log shows the job moving without a line per record:

    publish: 5,000/10,000 lines (50%), 4,210/s

`total` may be unknown (reading stdin): the bar is left out. When `total` is
in bytes but the count is in records (publish reads a file), pass the bytes
as `done` and the records as `count`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_BAR_WIDTH = 20
_TTY_REDRAW_S = 0.1


def rate(count: int, seconds: float) -> str:
    """`1,234/s`, or `-` when no time has passed."""
    return f"{count / seconds:,.0f}/s" if seconds > 0 else "-"


class Progress:
    """Call `update` as work is done and `close` at the end (which draws the last state)."""

    def __init__(
        self,
        label: str,
        *,
        total: int | None,
        unit: str,
        stream: TextIO | None = None,
        interval_s: float = 5.0,
        tty: bool | None = None,
    ) -> None:
        self._label = label
        self._total = total
        self._unit = unit
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._interval = _TTY_REDRAW_S if self._tty else interval_s
        self._started = time.monotonic()
        self._last_draw = self._started
        self._done = 0  # in the unit of `total`
        self._count = 0  # records, shown with the rate
        self._drawn = False

    def update(self, count: int = 1, *, done: int | None = None) -> None:
        """`count` more records; `done` is the absolute progress towards `total`, if it differs."""
        self._count += count
        self._done = self._count if done is None else done
        now = time.monotonic()
        if now - self._last_draw >= self._interval:
            self._last_draw = now
            self._draw(now)

    def _line(self, now: float) -> str:
        elapsed = now - self._started
        speed = rate(self._count, elapsed)
        total = self._total
        if total is None or total <= 0:
            return f"{self._label}: {self._count:,} {self._unit}, {speed}"
        share = min(1.0, self._done / total)
        if self._done == self._count:  # counting records: show n/total
            amount = f"{self._count:,}/{total:,} {self._unit}"
        else:
            amount = f"{self._count:,} {self._unit}"
        if self._tty:
            filled = int(share * _BAR_WIDTH)
            bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
            return f"{self._label} [{bar}] {share:4.0%}  {amount}  {speed}"
        return f"{self._label}: {amount} ({share:.0%}), {speed}"

    def _draw(self, now: float) -> None:
        line = self._line(now)
        if self._tty:
            self._stream.write("\r\x1b[2K" + line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """On a terminal: draw the final state and end the line. Elsewhere: nothing more."""
        if self._tty:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()
