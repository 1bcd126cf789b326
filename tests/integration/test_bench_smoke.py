"""The benchmarks at tiny sizes, so that `python -m bench` does not rot.

Only the shape of the report is checked (every scenario, sane non-zero
figures): timings depend on the machine and on who else is using it, so no
assertion here is about speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_bench_small_writes_a_report_with_every_scenario(bootstrap: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "GR_"))}
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "small", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=360, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads((out / "latest.json").read_text())
    sc = doc["scenarios"]
    assert set(sc) == {"throughput", "rate_limited", "latency", "memory", "drain"}
    assert not [name for name, s in sc.items() if "error" in s]
    assert doc["machine"]["nproc"] >= 1
    assert doc["machine"]["cpu_model"]

    tp = sc["throughput"]
    for role in ("bare", "worker", "plain"):
        assert tp["median"]["events_per_s"][role] > 0
        # CPU comes in 10 ms clock ticks: a tiny run may measure none
        assert tp["median"]["cpu_s_per_million"][role] >= 0
        assert tp["median"]["peak_rss_mib"][role] > 0
    assert all(r["committed_all"] and r["delivered_all"] for r in tp["runs"] if r["role"] != "bare")
    assert tp["simulator_alone"]["requests"] > 0
    assert tp["ratios"]["worker_vs_ceiling"] > 0

    rl = sc["rate_limited"]
    assert sorted(r["workers"] for r in rl["runs"]) == [1, 3]
    for r in rl["runs"]:
        assert r["whole_run"]["requests"] > 0
        assert sum(w["delivered"] for w in r["worker_stats"]) > 0
        assert 0 <= r["measured"]["budget_used"] <= 1.5
        assert 0 <= r["whole_run"]["share_429"] <= 1

    lat = sc["latency"]
    assert len(lat["runs"]) == 3
    for r in lat["runs"]:
        assert r["count"] > 0
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]

    mem = sc["memory"]
    assert mem["peak_rss_mib"] > 0
    assert mem["worker_stats"]["delivered"] == mem["events"]
    assert isinstance(mem["stayed_in_group"], bool)
    assert mem["rss_timeline"]

    dr = sc["drain"]
    assert [r["workers"] for r in dr["runs"]] == [1, 3]
    for r in dr["runs"]:
        assert r["drain_s"] > 0
        assert r["vs_physical"] > 0
        assert r["requests"] > 0
        assert sum(r["batch_sizes"].values()) > 0
    assert dr["physical_requests"] > 0

    targets = doc["targets"]
    assert {t["target"].split(",")[0] for t in targets} >= {
        "throughput vs bare consume",
        "budget used",
        "latency p99",
        "peak RSS under backlog + outage",
        "drain time vs physical limit",
    }
    md = (out / "latest.md").read_text()
    for title in ("Throughput", "Rate-limited", "Latency", "Memory", "Draining", "machine:"):
        assert title in md
    assert (out / "memory_rss.svg").read_text().startswith("<svg")
