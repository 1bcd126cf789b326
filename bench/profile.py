"""Profile the worker under the throughput scenario with py-spy (not a project dependency).

    python -m bench.profile --py-spy /path/to/py-spy [--events 300000] [--rate 250]

Install py-spy somewhere of its own (`python3 -m venv /tmp/prof && /tmp/prof/bin/pip
install py-spy`). The backlog, the simulator process and the worker are set up as
in `bench.throughput`; py-spy samples the thread holding the GIL (`--gil`: a pool
thread blocked on its queue is not idle to py-spy, so sampling all threads drowns
the profile in waiting),
and the summary lists the functions with the most samples: self (the leaf of a
stack) and total (anywhere in it), each as a share of all samples, and the
share of samples per thread.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.harness import (
    Children,
    SimProcess,
    new_topic,
    produce_values,
    sample_values,
    worker_env,
)
from gr_devtools.kafka_local import open_cluster

PARTITIONS = 12


def summarise(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and total sample shares per function from py-spy's raw (collapsed) output."""
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    n = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:]
        if not frames:
            continue
        n += count
        threads[thread.split(" ", 2)[-1] if "(" in thread else thread] += count
        self_c[_short(frames[-1])] += count
        for f in {_short(f) for f in frames}:
            total_c[f] += count
    return {
        "samples": n,
        "threads": {k: round(100 * v / n, 1) for k, v in threads.most_common(12)},
        "self": [(f, round(100 * c / n, 1)) for f, c in self_c.most_common(top)],
        "total": [(f, round(100 * c / n, 1)) for f, c in total_c.most_common(top)],
    }


_CHECKOUT = str(Path(__file__).resolve().parent.parent)  # wherever the repository is


def _short(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func (file.py:12)`; site-packages paths shortened."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "lib/python3", f"{_CHECKOUT}/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--py-spy", required=True, help="path to a py-spy executable")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    parser.add_argument("--env", action="append", default=[], help="extra worker env NAME=VALUE")
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="sample every non-idle thread (default: only the one holding the GIL, --gil)",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    with open_cluster() as cluster:
        topic = new_topic(cluster.bootstrap, "profile", PARTITIONS)
        produce_values(cluster.bootstrap, topic, PARTITIONS, sample_values(args.events))
        children = Children(workdir)
        try:
            sim = SimProcess(children)
            group = f"bench-profile-{uuid.uuid4().hex[:6]}"
            env = worker_env(cluster.bootstrap, topic, group, sim.url)
            env.update(dict(kv.split("=", 1) for kv in args.env))
            raw = workdir / "worker.pyspy.txt"
            result = workdir / "worker.result.json"
            cmd = [
                args.py_spy, "record", "--format", "raw", "--threads", "--rate", str(args.rate),
                "--output", str(raw), *([] if args.all_threads else ["--gil"]), "--",
                sys.executable, "-m", "bench.runners", "worker", "--expect", str(args.events),
                "--result", str(result),
            ]  # fmt: skip
            started = time.monotonic()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            elapsed = time.monotonic() - started
            sim.stop()
        finally:
            children.stop_all()
    res = json.loads(result.read_text())
    dur = res["t_end"] - res["t_first"]
    summary = summarise(raw)
    summary["events"] = args.events
    summary["events_per_s_under_profiler"] = args.events / dur
    summary["elapsed_s"] = elapsed
    summary["raw"] = str(raw)
    text = json.dumps(summary, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
