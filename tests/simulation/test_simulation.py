"""The simulation over many seeds (`GR_SIM_SEEDS`, default 2000; `GR_SIM_START` the first).

Each seed is a whole run of the real worker code on virtual time (see
scenario.py); a failing seed is printed with the invariant it broke and how to
replay it. `python -m tests.simulation --minutes M` runs it for as long as asked.
"""

from __future__ import annotations

import os
import time

from tests.simulation.scenario import run

SEEDS = int(os.environ.get("GR_SIM_SEEDS", "2000"))
START = int(os.environ.get("GR_SIM_START", "0"))


def test_every_seed_keeps_every_invariant() -> None:
    started = time.monotonic()
    failures = []
    steps = 0
    for seed in range(START, START + SEEDS):
        out = run(seed)
        steps += out.steps
        if not out.ok:
            failures.append(out.line())
            if len(failures) >= 5:
                break
    took = time.monotonic() - started
    print(f"\n{SEEDS} seeds from {START}, {steps:,} loop turns, {took:.1f}s")
    assert not failures, (
        "seeds broke invariants (replay one: python -m tests.simulation --seed N -v):\n"
        + "\n".join(failures)
    )
