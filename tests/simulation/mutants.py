"""Does the simulation find the defects it was built to find? Each mutant puts one of them
back into a copy of the package; the simulation runs seeds against it until an invariant
breaks. A mutant it does not catch within the seeds given is a hole in the simulation.

    python -m tests.simulation.mutants [--seeds N] [--scale S] [NAME ...]

Prints, per mutant, the first seed that broke an invariant and which one (or that none
did, or that the mutant no longer applies to the code).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    edits: tuple[tuple[str, str, str], ...]  # (file under consumer/, old text, new text)


MUTANTS = (
    Mutant(
        "starving-partitions",
        "request slots go to the partitions in assignment order every time",
        (
            (
                "ledger.py",
                "            if served:\n                turns.served(tp)\n",
                "",
            ),
        ),
    ),
    Mutant(
        "null-header",
        "a null header value is sized with len()",
        (
            (
                "dlq.py",
                'return sum(len(k) + len(v or b"") for k, v in headers)',
                "return sum(len(k) + len(v) for k, v in headers)  # type: ignore[arg-type]",
            ),
        ),
    ),
    Mutant(
        "dlq-unbounded",
        "records waiting for the DLQ count toward neither the memory nor the run-ahead bound",
        (
            (
                "ledger.py",
                "        part.dlq_bytes += nbytes\n        self.buffered_bytes += nbytes",
                "        part.dlq_bytes += nbytes",
            ),
            (
                "ledger.py",
                "        part.dlq_bytes -= nbytes\n        self.buffered_bytes -= nbytes",
                "        part.dlq_bytes -= nbytes",
            ),
            (
                "ledger.py",
                "ahead = part.offsets.finished_uncommitted + part.dlq_unacked",
                "ahead = part.offsets.finished_uncommitted",
            ),
            (
                "ledger.py",
                "pending = part.batcher.pending_events + part.dlq_unacked",
                "pending = part.batcher.pending_events",
            ),
            (
                "ledger.py",
                "pbytes = part.batcher.pending_bytes + part.dlq_bytes",
                "pbytes = part.batcher.pending_bytes",
            ),
        ),
    ),
    Mutant(
        "stuck-share",
        "the pacer measures its share only from windows of 10 requests or more",
        (
            (
                "pacing.py",
                "if self._reset_unix is not None and used >= 1:",
                "if self._reset_unix is not None and used >= 10:",
            ),
            (
                "pacing.py",
                "return max(self._MIN_SHARE, min(1.0, 2 / limit))",
                "return self._MIN_SHARE",
            ),
        ),
    ),
    Mutant(
        "revoke-mid-search",
        "a revoke commits without what a search given up had delivered",
        (
            (
                "ledger.py",
                "            if result.accepted:\n                part.offsets.finish_many(map(_OFFSET, result.accepted))\n                self._dirty[part.tp] = None\n            return None",
                "            return None",
            ),
            ("worker.py", "            if now >= until - http_timeout:", "            if False:"),
        ),
    ),
    Mutant(
        "fatal-producer",
        "librdkafka's fatal state is known only by fatal(), as confluent-kafka never sets it",
        (("dlq.py", "(callable(code) and code() == KafkaError._FATAL) or ", ""),),
    ),
    Mutant(
        "unbounded-stop",
        "the last commit is librdkafka's synchronous one, waited for as long as it takes",
        (
            (
                "worker.py",
                "self._final_commit(consumer, self._deadline - self._close_reserve / 4)",
                "consumer.commit(offsets=_tps(self._ledger.uncommitted()), asynchronous=False)",
            ),
        ),
    ),
    Mutant(
        "key-order-byte-cap",
        "a key-order batch cut around busy keys counts its body one byte short",
        (("key_order.py", "        size = body_size(0, 0)", "        size = body_size(0, 0) - 1"),),
    ),
    Mutant(
        "fetch-while-in-flight",
        "over the total buffer cap, a partition with all its events in flight keeps fetching",
        (
            (
                "ledger.py",
                "elif pending >= cap_events or pbytes >= cap_bytes or over_total:",
                "elif pending >= cap_events or pbytes >= cap_bytes or (over_total and pending):",
            ),
        ),
    ),
)


def _mutated(mutant: Mutant, into: Path) -> str | None:
    """The package copied into `into` with the mutant's edits; why not, if they do not apply."""
    shutil.copytree(ROOT / "consumer", into / "consumer")
    for name, old, new in mutant.edits:
        path = into / "consumer" / name
        text = path.read_text()
        if old not in text:
            return f"{name}: the code it changes is no longer there"
        path.write_text(text.replace(old, new, 1))
    return None


def hunt(mutant: Mutant, seeds: int, scale: float) -> str:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        problem = _mutated(mutant, Path(tmp))
        if problem is not None:
            return f"{mutant.name}: not applied ({problem})"
        # run from the copy: the current directory comes first on the path, before the
        # installed package
        env = {**os.environ, "PYTHONPATH": f"{tmp}{os.pathsep}{ROOT}", "PYTHONHASHSEED": "0"}
        code = (
            "import sys\n"
            "from tests.simulation.scenario import run\n"
            f"for seed in range({seeds}):\n"
            f"    out = run(seed, scale={scale})\n"
            "    if not out.ok:\n"
            "        print(out.line()); sys.exit(1)\n"
            f"print('none of {seeds} seeds broke an invariant')\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=tmp, capture_output=True, text=True
        )
        found = (done.stdout.strip() or done.stderr.strip()[-500:]).replace("\n", " ")
        if done.returncode == 0:
            found += "; " + _hand_made(Path(tmp))
        return f"{mutant.name} ({mutant.what}): {found}"


# The hand-made tests that drive the worker's logic without a broker: those a mutant the
# seeds missed is put to next.
HAND_MADE = ("tests/simulation/test_scenarios.py", "tests/unit")


def _hand_made(tmp: Path) -> str:
    """Which hand-made tests fail against the mutated copy (run from the copy, so that
    its package is the one imported)."""
    for name in ("tests", "docs", "schemas", "helm"):  # what the tests read beside the package
        shutil.copytree(ROOT / name, tmp / name)
    for path in ROOT.iterdir():  # the Dockerfile, the locks, pyproject.toml
        if path.is_file():
            shutil.copy2(path, tmp / path.name)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null",
         "--rootdir", str(tmp), "--continue-on-collection-errors", *HAND_MADE],
        cwd=tmp, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(tmp)},
    )  # fmt: skip
    failed = sorted(
        line.split()[1].split("::")[-1]
        for line in done.stdout.splitlines()
        if line.startswith("FAILED ")
    )
    if failed:
        return f"caught by the hand-made {', '.join(failed)}"
    return "and none of the hand-made tests (a hole)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation.mutants")
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--seeds", type=int, default=300)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    missed = 0
    for mutant in chosen:
        line = hunt(mutant, args.seeds, args.scale)
        missed += "(a hole)" in line or "not applied" in line
        print(line, flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
