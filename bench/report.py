"""The results as JSON and as a Markdown table, with the benchmark targets judged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TARGETS = "targets"


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every benchmark target that the scenarios in `doc` measure: figure, bar, met."""
    out: list[dict[str, Any]] = []
    sc = doc.get("scenarios", {})

    def add(name: str, figure: str, bar: str, met: bool) -> None:
        out.append({"target": name, "figure": figure, "bar": bar, "met": bool(met)})

    tp = sc.get("throughput", {})
    if "ratios" in tp:
        r = tp["ratios"]
        add("throughput vs bare consume", f"{r['worker_vs_ceiling']:.1%}", ">= 25% (aim 33%)",
            r["worker_vs_ceiling"] >= 0.25)  # fmt: skip
        add("throughput vs plain script", f"{r['worker_vs_plain_events_per_s']:.2f}x", ">= 5x",
            r["worker_vs_plain_events_per_s"] >= 5)  # fmt: skip
        add("CPU per million vs plain script", f"{r['plain_vs_worker_cpu_per_million']:.2f}x less",
            ">= 5x less", r["plain_vs_worker_cpu_per_million"] >= 5)  # fmt: skip
    rl = sc.get("rate_limited", {})
    for run in rl.get("runs", []):
        if run.get("stream") != "batchable":
            continue
        m, w = run["measured"], run["workers"]
        add(f"budget used, {w} worker(s)", f"{m['budget_used']:.1%}", ">= 95%",
            m["budget_used"] >= 0.95)  # fmt: skip
        whole = run["whole_run"]["share_429"]
        add(f"429 share, {w} worker(s)",
            f"{m['share_429']:.2%} (whole run {whole:.2%})", "<= 1%",
            max(m["share_429"], whole) <= 0.01)  # fmt: skip
        add(f"events per request, {w} worker(s)", f"{m['events_per_request']:.1f}", ">= 99",
            m["events_per_request"] >= 99)  # fmt: skip
    dr = sc.get("drain", {})
    for run in dr.get("runs", []):
        w = run["workers"]
        add(f"drain time vs physical limit, {w} worker(s)",
            f"{run['drain_s']:.0f} s vs {run['physical_s']:.0f} s ({run['vs_physical']:.2f}x)",
            "<= 1.1x", run["vs_physical"] <= 1.1)  # fmt: skip
        add(f"requests per refused event, {w} worker(s)", f"{run['requests_per_refused']:.1f}",
            "<= 9", run["requests_per_refused"] <= 9)  # fmt: skip
        if w > 1:
            add(f"429 share draining, {w} workers", f"{run['share_429']:.2%}", "<= 0.5%",
                run["share_429"] <= 0.005)  # fmt: skip
    session_runs = dr.get("session_runs", [])
    for run in session_runs:
        if run["ordering"] != "key":
            continue
        w, stream = run["workers"], run["stream"]
        add(f"key order, {stream} sessions, drain vs physical, {w} worker(s)",
            f"{run['vs_physical']:.2f}x", "<= 1.1x", run["vs_physical"] <= 1.1)  # fmt: skip
        add(f"key order, {stream} sessions, 429 share, {w} worker(s)",
            f"{run['share_429']:.2%}", "< 0.5%", run["share_429"] < 0.005)  # fmt: skip
        other = [r for r in session_runs if r["stream"] == stream and r["workers"] == w
                 and r["ordering"] == "partition"]  # fmt: skip
        if stream == "10%" and other and other[0].get("events_per_request"):
            gain = run["events_per_request"] / other[0]["events_per_request"]
            add(f"events per request, key vs partition order, 10% sessions, {w} worker(s)",
                f"{gain:.2f}x", ">= 1.5x", gain >= 1.5)  # fmt: skip
    for run in sc.get("latency", {}).get("runs", []):
        if run.get("linger_ms") is None:
            continue
        add(f"latency p99, linger {run['linger_ms']} ms", f"{run['p99_ms']:.0f} ms",
            f"<= {run['target_ms']} ms", run["met"])  # fmt: skip
    mem = sc.get("memory", {})
    if "peak_rss_mib" in mem:
        add("peak RSS under backlog + outage", f"{mem['peak_rss_mib']:.0f} MiB",
            f"<= {mem['target_mib']} MiB", mem["peak_rss_mib"] <= mem["target_mib"])  # fmt: skip
        add("stayed in its group during the outage",
            "yes" if mem["stayed_in_group"] else "NO", "no eviction", mem["stayed_in_group"])  # fmt: skip
    return out


def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    lines = [
        "# gr-s2s-consumer benchmarks",
        "",
        f"- date: {doc['date']} (scale `{doc['scale']}`, commit {m.get('git_commit') or '?'})",
        f"- machine: {m['nproc']} cores (`nproc`), {m['cpu_model']}, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}",
        f"- Python {m['python']}; {libs}; Kafka {m['kafka_broker']} (local broker)",
        "- command: `make bench` (`python -m bench --scale full`)",
        "",
        "## Targets",
        "",
        "| target | figure | bar | met |",
        "| --- | --- | --- | --- |",
    ]
    for t in doc.get(TARGETS, []):
        lines.append(
            f"| {t['target']} | {t['figure']} | {t['bar']} | {'yes' if t['met'] else '**no**'} |"
        )
    sc = doc["scenarios"]
    for name, render in (
        ("throughput", _throughput),
        ("rate_limited", _rate_limited),
        ("latency", _latency),
        ("memory", _memory),
        ("drain", _drain),
    ):
        if name not in sc:
            continue
        s = sc[name]
        lines += ["", f"## {s.get('title', name)}", ""]
        lines.append(
            f"Run {s.get('date', '?')}, {s.get('seconds', 0):.0f} s, load average "
            f"{s.get('load_before', '?')} before, {s.get('load_after', '?')} after."
        )
        lines.append("")
        if "error" in s:
            lines.append(f"**failed**: `{s['error']}`")
            continue
        lines += render(s)
    return "\n".join(lines) + "\n"


def _throughput(s: dict[str, Any]) -> list[str]:
    med = s["median"]
    names = {
        "bare": "(a) bare consume loop (ceiling)",
        "worker": "gr-s2s-consumer worker (GR_MAX_UNCOMMITTED_EVENTS=5000)",
        "worker_default": "gr-s2s-consumer worker, every default",
        "plain": "(b) plain script (poll, json, requests, sync commit)",
    }
    out = [
        f"{s['events']:,} events (~300 B, the contract's mix, no poison) in {s['partitions']} "
        "partitions; each runner in its own process and consumer group, same topic; "
        "medians of the repeats. Events/s from first fetch to last commit.",
        "",
        "| runner | events/s | vs ceiling | CPU s / M events | peak RSS MiB | requests |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for role in [r for r in names if r in med["events_per_s"]]:
        reqs = [r["simulator"]["requests"] for r in s["runs"] if r["role"] == role]
        out.append(
            f"| {names[role]} | {_n(med['events_per_s'][role])} | "
            f"{med['events_per_s'][role] / med['events_per_s']['bare']:.1%} | "
            f"{med['cpu_s_per_million'][role]:.1f} | {med['peak_rss_mib'][role]:.0f} | "
            f"{_n(max(reqs)) if role != 'bare' else '-'} |"
        )
    r, h, a = s["ratios"], s["simulator_headroom"], s["simulator_alone"]
    plain: dict[str, Any] = next((x for x in s["runs"] if x["role"] == "plain"), {})
    out += [
        "",
        f"Worker / plain script: {r['worker_vs_plain_events_per_s']:.2f}x the events/s, "
        f"{r['plain_vs_worker_cpu_per_million']:.2f}x less CPU per million events. "
        f"The plain script posts with {plain.get('http_client', '?')}.",
        "",
        _simulator_headroom(med["events_per_s"]["worker"], h, a),
    ]
    return out


def _simulator_headroom(worker_eps: float, h: dict[str, Any], a: dict[str, Any]) -> str:
    """Whether the simulator kept up, from its CPU per event (a Python server: one core).

    Its load generator is 8 Python threads, which can be a weaker client than the
    worker; so the capacity is extrapolated from the simulator's own CPU share.
    """
    during = h["simulator_cpu_pct_during_worker"] / 100
    at_core_during = worker_eps / during if during > 0 else float("inf")
    at_core_alone = a["events_per_s"] / (a["cpu_pct"] / 100) if a["cpu_pct"] > 0 else float("inf")
    low, high = sorted((at_core_during, at_core_alone))
    return (
        f"Simulator not the bottleneck: during the worker's runs it used "
        f"{h['simulator_cpu_pct_during_worker']:.0f}% of one core on average "
        f"(peak {h['simulator_peak_cpu_pct_1s_during_worker']:.0f}% over 1 s) answering "
        f"{_n(h['worker_asked_requests_per_s'])} requests/s; driven alone by "
        f"{a['client_threads']} Python client threads it answered {_n(a['requests_per_s'])} "
        f"requests/s ({_n(a['events_per_s'])} events/s) at {a['cpu_pct']:.0f}% CPU. At its "
        f"CPU cost per event, a full core would serve {_n(low)} to {_n(high)} events/s, "
        f"{low / worker_eps:.1f}x to {high / worker_eps:.1f}x what the worker sent."
    )


def _rate_limited(s: dict[str, Any]) -> list[str]:
    out = [
        f"Budget {s['limit']} requests per {s['window_s']:g} s window (scaled down), a "
        f"{s['backlog']:,}-event backlog, {s['partitions']} partitions; whole windows measured "
        "after warm-up; the 429 share also over the whole run (start-up included).",
        "",
        "| workers | stream | windows | budget used | 429 share (measured / whole run) | "
        "events per request | best possible |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in s["runs"]:
        m = r["measured"]
        best = r.get("best_events_per_request")
        out.append(
            f"| {r['workers']} | {r['stream']} | {r['windows_measured']} | "
            f"{m['budget_used']:.1%} | {m['share_429']:.2%} / {r['whole_run']['share_429']:.2%} | "
            f"{m['events_per_request']:.1f} | {f'{best:.1f}' if best else '100'} |"
        )
    out += [
        "",
        "`batchable`: no session events. `mix`: the contract's mix, where each session event "
        "(0.5%) is a request of its own and cuts the batch before it (per-partition order), "
        "so 100 events per request is out of reach; `best possible` is computed from the "
        "stream itself.",
    ]
    return out


def _drain(s: dict[str, Any]) -> list[str]:
    out = [
        f"A {s['events']:,}-event backlog in {s['partitions']} partitions: {s['poison']} poison "
        f"records, {s['refused']} events the API refuses (its 400 names none of them), "
        f"{s['sessions']} session events. Key: {s['limit']} requests per {s['window_s']:g} s. "
        f"Physical limit in key order (the default): {s['physical_requests']} requests (one "
        f"per session event, full batches of the rest, 7 failing per refused event), "
        f"{s['physical_s']:.0f} s at the key's rate. Window floor: the earliest those "
        "requests can all be sent when the budget comes in whole windows from the run's start "
        "(the last window's part at once).",
        "",
        "| workers | drain time | vs physical limit | vs window floor | requests / allowed | "
        "429 share | answered 400 | requests per refused event | events per batch request |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in s["runs"]:
        out.append(
            f"| {r['workers']} | {r['drain_s']:.1f} s | {r['vs_physical']:.2f}x | "
            f"{_vs_floor(r)} | "
            f"{r['requests']} / {r['allowed']} | {r['share_429']:.2%} | {r['answered_400']} | "
            f"{r['requests_per_refused']:.1f} | {r['events_per_batch_request']:.1f} |"
        )
    out += ["", "Accepted batch requests by size:", "", "| workers | "
            + " | ".join(s["runs"][0]["batch_sizes"]) + " |",
            "| ---: |" + " ---: |" * len(s["runs"][0]["batch_sizes"])]  # fmt: skip
    for r in s["runs"]:
        out.append(
            f"| {r['workers']} | " + " | ".join(str(v) for v in r["batch_sizes"].values()) + " |"
        )
    out += [
        "",
        "Requests under 100 events are the halves that isolate a refused event (about four "
        "accepted per refused event), what is free to go when a partition's turn comes "
        "near the end of the drain, and each partition's last batch.",
    ]
    runs = s.get("session_runs", [])
    if runs:
        out += [
            "",
            "Session-heavy streams (players interleaved, each in one partition), in each order "
            "the service keeps; the fewest requests that carry the stream in that order, and the "
            "drain's physical limit, are the stream's own:",
            "",
            "| session events | order | workers | requests / fewest | drain time | vs physical "
            "limit | vs window floor | 429 share | events per request | events per batch "
            "request |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in runs:
            out.append(
                f"| {r['stream']} | {r['ordering']} | {r['workers']} | {r['requests']} / "
                f"{r['physical_requests']} | {r['drain_s']:.1f} s | {r['vs_physical']:.2f}x | "
                f"{_vs_floor(r)} | "
                f"{r['share_429']:.2%} | {r.get('events_per_request', 0):.1f} | "
                f"{r['events_per_batch_request']:.1f} |"
            )
    return out


def _vs_floor(r: dict[str, Any]) -> str:
    floor = r.get("window_floor_s")
    return f"{r['vs_window_floor']:.2f}x ({floor:.0f} s)" if floor else "-"


def _latency(s: dict[str, Any]) -> list[str]:
    out = [
        f"{s['events']:,} events at {s['rate_per_s']:g}/s, the contract's mix, produce time in "
        "the payload, arrival time at the simulator; all runners read the same trickle at once.",
        "",
        "| runner | p50 ms | p90 ms | p99 ms | max ms | target p99 | events |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in s["runs"]:
        target = f"<= {r['target_ms']} ms" if r.get("target_ms") else "-"
        out.append(
            f"| {r['runner']} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['max_ms']:.0f} | {target} | {r['count']:,} |"
        )
    return out


def _memory(s: dict[str, Any]) -> list[str]:
    st = s["worker_stats"]
    return [
        f"{s['events']:,} events waiting; the simulator refuses connections for "
        f"{s['outage_s']:g} s from the worker's start; then the backlog drains.",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| peak RSS (VmHWM), whole run | {s['peak_rss_mib']:.0f} MiB |",
        f"| peak RSS during the outage | {s['peak_rss_mib_during_outage']:.0f} MiB |",
        f"| RSS when the outage ended | {s['rss_mib_at_outage_end']:.0f} MiB |",
        f"| group members seen ({s['group_checks']} checks) | {s['members_seen']} |",
        f"| distinct member ids | {s['member_ids_seen']} |",
        f"| log: assigned / revoked / lost before shutdown | "
        f"{s['log_assigned']} / {s['log_revoked']} / {s['log_lost']} |",
        f"| backlog drained, after the outage ended | {s['drain_after_outage_s']:.0f} s |",
        f"| delivered / requests | {st['delivered']:,} / {st['requests']:,} |",
        "",
        "RSS over time: `memory_rss.svg`.",
    ]


def rss_svg(s: dict[str, Any]) -> str:
    """RSS over time with the outage shaded; a plain SVG, no plotting library needed."""
    pts: list[tuple[float, float]] = [(float(t), float(m)) for t, m in s["rss_timeline"]]
    if not pts:
        return ""
    w, h, pad = 640, 260, 40
    tmax = max(p[0] for p in pts) or 1.0
    ymax = max(float(s["target_mib"]), max(p[1] for p in pts)) * 1.1

    def x(t: float) -> float:
        return pad + (w - 2 * pad) * t / tmax

    def y(v: float) -> float:
        return h - pad - (h - 2 * pad) * v / ymax

    o0, o1 = s["outage_window_s"]
    poly = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
    target = y(float(s["target_mib"]))
    return f"""<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<rect x="{x(max(o0, 0)):.1f}" y="{pad}" width="{x(min(o1, tmax)) - x(max(o0, 0)):.1f}" height="{h - 2 * pad}" fill="#fde2e2"/>
<text x="{x(max(o0, 0)) + 4:.1f}" y="{pad + 12}">API outage</text>
<line x1="{pad}" y1="{target:.1f}" x2="{w - pad}" y2="{target:.1f}" stroke="#c00" stroke-dasharray="4 3"/>
<text x="{w - pad - 90}" y="{target - 4:.1f}" fill="#c00">target {s["target_mib"]} MiB</text>
<polyline points="{poly}" fill="none" stroke="#1f5fbf" stroke-width="1.5"/>
<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#000"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#000"/>
<text x="{w / 2 - 40:.0f}" y="{h - 8}">seconds since start</text>
<text x="4" y="{pad - 8}">worker RSS, MiB (max {ymax / 1.1:.0f})</text>
<text x="{pad - 4}" y="{h - pad + 14}">0</text>
<text x="{w - pad - 10}" y="{h - pad + 14}">{tmax:.0f}</text>
</svg>
"""


def write(doc: dict[str, Any], out_dir: Path) -> None:
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    doc[TARGETS] = targets(doc)
    (out_dir / "latest.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / "latest.md").write_text(markdown(doc))
    mem = doc["scenarios"].get("memory", {})
    if "rss_timeline" in mem:
        (out_dir / "memory_rss.svg").write_text(rss_svg(mem))


def readme_section(doc: dict[str, Any]) -> str:
    """The README's "## Benchmarks" section: how to run, the machine, the figures."""
    m = doc["machine"]
    sc = doc["scenarios"]
    lines = [
        "## Benchmarks",
        "",
        "`make bench` (`python -m bench`; `--scale small` for a quick run, `--only NAME` for one",
        "scenario) starts a local Kafka broker and the S2S API simulator, runs each scenario",
        "with its baselines on the same topic in the same run, every measured program in",
        "a process of its own, and writes `bench/results/latest.md` (the full tables) and",
        "`latest.json`. It takes about 25 minutes; it is not part of `make test`, which runs a",
        "tiny smoke run of it instead. `python -m bench.profile --py-spy PATH` profiles the",
        "worker under the throughput scenario (py-spy installed apart from the project).",
        "",
        f"Latest run: {doc['date']}, {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, "
        f"confluent-kafka {m['libraries']['confluent-kafka']} (librdkafka "
        f"{m['libraries']['librdkafka']}), msgspec {m['libraries']['msgspec']}, Kafka "
        f"{m['kafka_broker']}; the machine is shared, load averages are in the report.",
        "",
        "| target | figure | bar | met |",
        "| --- | --- | --- | --- |",
    ]
    for t in doc.get(TARGETS, []):
        lines.append(
            f"| {t['target']} | {t['figure']} | {t['bar']} | {'yes' if t['met'] else '**no**'} |"
        )
    tp = sc.get("throughput", {})
    if "median" in tp:
        med = tp["median"]
        lines += [
            "",
            f"Throughput, {tp['events']:,} events in {tp['partitions']} partitions:",
            "",
            "| runner | events/s | CPU s per million events | peak RSS MiB |",
            "| --- | ---: | ---: | ---: |",
        ]
        for role, name in (
            ("bare", "bare consume loop (ceiling)"),
            ("worker", "gr-s2s-consumer"),
            ("plain", "plain script (json, requests, sync commit)"),
        ):
            lines.append(
                f"| {name} | {_n(med['events_per_s'][role])} | "
                f"{med['cpu_s_per_million'][role]:.1f} | {med['peak_rss_mib'][role]:.0f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import json
    import sys

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results/latest.json"
    print(readme_section(json.loads(path.read_text())), end="")
