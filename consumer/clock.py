"""Time, behind one seam: the service reads and waits on the clock only through a `Clock`.

Production uses `SYSTEM`: `time.monotonic` for intervals and deadlines,
`time.time` for the API's rate-limit resets (Unix seconds), `time.sleep` to
wait. The simulation (tests/simulation) passes a virtual clock that moves only
when its world says so, so one seed replays exactly.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def wall(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The machine's clocks."""

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)
    sleep = staticmethod(time.sleep)


SYSTEM: Clock = SystemClock()
