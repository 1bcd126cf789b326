"""`python -m bench [--scale small|full] [--only NAME ...] [--out DIR]`: run the benchmarks.

Kafka: the cluster named by KAFKA_BOOTSTRAP_SERVERS, else a local broker
(as the tests choose it). `--only` reruns some scenarios and keeps the
others' last results in the report, each with its own date and load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import drain, latency, memory, rate_limited, report, throughput
from bench.harness import SCALES, Context, loadavg, machine

SCENARIOS: dict[str, tuple[str, Callable[[Context], dict[str, Any]]]] = {
    "throughput": ("1. Throughput and CPU", throughput.run),
    "rate_limited": ("2. Rate-limited key", rate_limited.run),
    "latency": ("3. Latency under a trickle", latency.run),
    "memory": ("4. Memory under backlog and outage", memory.run),
    "drain": ("5. Draining a realistic backlog at the key's limit", drain.run),
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument(
        "--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the report goes")
    args = parser.parse_args(argv)
    names = args.only or list(SCENARIOS)
    scale = SCALES[args.scale]
    doc: dict[str, Any] = {"scenarios": {}}
    previous = args.out / "latest.json"
    if args.only and previous.exists():
        old = json.loads(previous.read_text())
        if old.get("scale") == scale.name:
            doc = old  # keep the other scenarios' last results
    doc.update({"date": _now(), "scale": scale.name, "machine": machine()})
    workdir = Path(tempfile.mkdtemp(prefix="gr-bench-"))
    print(f"gr-s2s-consumer benchmarks, scale {scale.name}, scratch {workdir}", flush=True)
    failed = 0
    from gr_devtools.kafka_local import open_cluster

    with open_cluster() as cluster:
        print(f"Kafka: {cluster.kind} at {cluster.bootstrap}", flush=True)
        ctx = Context(cluster.bootstrap, scale, workdir, log=lambda s: print(s, flush=True))
        for name in names:
            title, fn = SCENARIOS[name]
            print(f"\n{title} (load average {loadavg()})", flush=True)
            started, date, load_before = time.monotonic(), _now(), loadavg()
            try:
                result = fn(ctx)
            except Exception as exc:  # noqa: BLE001 - one failed scenario still leaves a report
                traceback.print_exc()
                result = {"error": f"{type(exc).__name__}: {exc}"}
                failed += 1
            result.update(
                {
                    "title": title,
                    "date": date,
                    "seconds": time.monotonic() - started,
                    "load_before": load_before,
                    "load_after": loadavg(),
                }
            )
            doc["scenarios"][name] = result
            report.write(doc, args.out)  # after each scenario: a partial report survives
    print(f"\nreport: {args.out / 'latest.md'}")
    for t in doc.get(report.TARGETS, []):
        print(f"  {'ok ' if t['met'] else 'MISS'} {t['target']}: {t['figure']} (bar {t['bar']})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
