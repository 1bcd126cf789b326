"""Run the simulation: `python -m tests.simulation [--seeds N] [--start S] [--minutes M] [--seed S -v]`.

Prints one line per failing seed (and, with -v, the worker's logs on virtual time);
exits 1 if any seed broke an invariant.
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.simulation.scenario import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation")
    parser.add_argument("--seed", type=int, help="run this one seed")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--seeds", type=int, default=1000, help="how many seeds (default 1000)")
    parser.add_argument("--minutes", type=float, help="run seeds from --start for this long")
    parser.add_argument("--ordering", choices=("partition", "key"), help="GR_ORDERING to use")
    parser.add_argument("--scale", type=float, default=1.0, help="records per seed, times this")
    parser.add_argument("-v", "--verbose", action="store_true", help="the worker's logs")
    args = parser.parse_args(argv)
    if args.seed is not None:
        out = run(args.seed, ordering=args.ordering, verbose=args.verbose, scale=args.scale)
        print(out.line())
        return 0 if out.ok else 1
    started = time.monotonic()
    deadline = started + args.minutes * 60 if args.minutes else None
    seed, ran, failed, steps = args.start, 0, 0, 0
    while (deadline is None and ran < args.seeds) or (deadline and time.monotonic() < deadline):
        out = run(seed, ordering=args.ordering, scale=args.scale)
        ran += 1
        steps += out.steps
        if not out.ok:
            failed += 1
            print(out.line(), flush=True)
        seed += 1
    took = time.monotonic() - started
    print(f"{ran} seeds ({args.start}..{seed - 1}), {steps:,} steps, {failed} failed, {took:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
