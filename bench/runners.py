"""The processes the benchmarks measure, each one alone in its own process.

    python -m bench.runners worker  --result F [--expect N]
    python -m bench.runners bare    --bootstrap B --topic T --group G --expect N --result F
    python -m bench.runners plain   --bootstrap B --topic T --group G --url U --expect N --result F
    python -m bench.runners loadgen --url U --seconds S --threads N --result F

Each writes a JSON result: wall times of its first fetch and its last commit
(`t_first`, `t_end`), its CPU seconds at both (`os.times`: every thread of
the process, librdkafka's included), and its peak RSS (VmHWM).

`worker` is the service exactly as `gr-consumer run` serves it (settings
from the environment, JSON logs, ops endpoints, signal handlers), plus an
`until` that notes the first fetch and, with `--expect`, stops once that
many records are settled (delivered or dead-lettered); the drain and the
final synchronous commit follow, as on SIGTERM.
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _maxrss_kib() -> int:
    """Peak RSS of this process image: VmHWM, which execve resets.

    Not `ru_maxrss`: Linux carries it across execve from the image that called
    exec, so a worker spawned by a big parent would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # pragma: no cover


def _cpu_split() -> dict[str, float]:
    t = os.times()
    return {"user": t.user, "system": t.system}


def thread_cpu() -> dict[str, float]:
    """CPU seconds per OS thread name of this process (librdkafka names its own `rdk:*`)."""
    out: dict[str, float] = {}
    tck = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            raw = (task / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        name = name.rstrip("0123456789") or name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tck
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def _write(path: str, doc: dict[str, Any]) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


class _FirstFetch:
    """Notes the wall time and CPU time of the first fetch that returned records."""

    def __init__(self) -> None:
        self.t: float | None = None
        self.cpu: float | None = None

    def mark(self) -> None:
        if self.t is None:
            self.t, self.cpu = time.time(), _cpu()


# ---- the service ------------------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    from consumer import config
    from consumer.observe import Health, Metrics, OpsServer, setup_logging
    from consumer.worker import Worker, tune_gc

    settings = config.load(os.environ)
    setup_logging(settings.log_level, settings.log_format, [settings.api_key.read().reveal()])
    metrics, health = Metrics(), Health()
    ops = OpsServer(settings.http_port, metrics, health, host="127.0.0.1")
    ops.start()
    w = Worker(settings, metrics=metrics, health=health)
    w.install_signal_handlers()
    tune_gc()
    first = _FirstFetch()
    expect: int = args.expect
    stats = w.stats
    threads: dict[str, float] = {}

    def until() -> bool:
        if first.t is None and stats["consumed"]:
            first.mark()
        done = bool(expect) and stats["delivered"] + stats["dead_lettered"] >= expect
        if done and not threads:
            threads.update(thread_cpu())  # every thread still alive
        return done

    started = time.time()
    try:
        code = w.run(until=until)
    finally:
        ops.stop()
    t_end, cpu_end = time.time(), _cpu()
    _write(
        args.result,
        {
            "role": "worker",
            "exit_code": code,
            "t_start": started,
            "t_first": first.t,
            "cpu_first": first.cpu,
            "t_end": t_end,
            "cpu_end": cpu_end,
            "maxrss_kib": _maxrss_kib(),
            "cpu_split_end": _cpu_split(),
            "stats": dict(stats),
            "dead_lettered_by_reason": dict(w.dead_lettered_by_reason),
            "thread_cpu_s": threads or thread_cpu(),
        },
    )
    return code


# ---- baseline (a): the ceiling ----------------------------------------------------


def bare(args: argparse.Namespace) -> int:
    """Consume the topic and nothing else, `consume(num_messages=1000)` at a time.

    With `--latency`, note each record's produce-to-fetch time instead (the
    `t_produce` the latency scenario puts in every payload).
    """
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([args.topic])
    first = _FirstFetch()
    n = 0
    lat: list[float] = []
    stop = _stop_flag()
    deadline = time.monotonic() + args.timeout
    t_last = 0.0
    while (not args.expect or n < args.expect) and not stop() and time.monotonic() < deadline:
        # consume(n, timeout) waits out its timeout unless n records come; for latency,
        # poll() returns each record as soon as it is there.
        if args.latency:
            one = c.poll(0.5)
            msgs = [one] if one is not None else []
        else:
            msgs = c.consume(1000, 0.5)
        if not msgs:
            continue
        first.mark()
        now = time.time()
        for m in msgs:
            if m.error() is None:
                n += 1
                if args.latency:
                    lat.append(now - orjson.loads(m.value() or b"{}")["payload"]["t_produce"])
        t_last = now
    t_end, cpu_end = time.time(), _cpu()
    c.close()
    _write(
        args.result,
        {
            "role": "bare",
            "t_first": first.t,
            "cpu_first": first.cpu,
            "t_end": t_last if args.latency else t_end,
            "cpu_end": cpu_end,
            "maxrss_kib": _maxrss_kib(),
            "events": n,
            "latencies": lat,
        },
    )
    return 0 if not args.expect or n >= args.expect else 1


# ---- baseline (b): the plain script from the vendor's example ---------------------


def _session(url: str, key: str) -> tuple[str, Callable[[list[Any]], None]]:
    """`requests.Session().post(json=...)` when requests is installed, else urllib3."""
    try:
        requests: Any = importlib.import_module("requests")
    except ImportError:
        import urllib3

        pool = urllib3.PoolManager(headers={"X-API-Key": key})

        def post3(batch: list[Any]) -> None:
            body = json.dumps({"events": batch}).encode()
            r = pool.request("POST", url, body=body, headers={"Content-Type": "application/json"})
            if r.status >= 400:
                raise RuntimeError(f"HTTP {r.status}")

        return "urllib3 " + metadata.version("urllib3"), post3

    session = requests.Session()
    session.headers.update({"X-API-Key": key})

    def post(batch: list[Any]) -> None:
        r = session.post(url, json={"events": batch}, timeout=10)
        r.raise_for_status()

    return "requests " + requests.__version__, post


def plain(args: argparse.Namespace) -> int:
    """What a user writes from the vendor's example: poll, json.loads, a batch of 100
    posted with a requests session, a synchronous commit after each batch."""
    from confluent_kafka import Consumer

    http_client, post = _session(args.url + "/api/v1/events", args.key)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.topic])
    first = _FirstFetch()
    batch: list[Any] = []
    n = requests_sent = 0
    deadline = time.monotonic() + args.timeout
    while n < args.expect and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            continue
        first.mark()
        batch.append(json.loads(msg.value() or b"null"))
        n += 1
        if len(batch) >= 100 or n >= args.expect:
            post(batch)
            requests_sent += 1
            consumer.commit(asynchronous=False)
            batch = []
    t_end, cpu_end = time.time(), _cpu()
    consumer.close()
    _write(
        args.result,
        {
            "role": "plain",
            "http_client": http_client,
            "t_first": first.t,
            "cpu_first": first.cpu,
            "t_end": t_end,
            "cpu_end": cpu_end,
            "maxrss_kib": _maxrss_kib(),
            "cpu_split_end": _cpu_split(),
            "events": n,
            "requests": requests_sent,
        },
    )
    return 0 if n >= args.expect else 1


# ---- the simulator driven alone ---------------------------------------------------


def loadgen(args: argparse.Namespace) -> int:
    """Post full 100-event batches over keep-alive connections as fast as it can."""
    from gr_devtools import samples

    values = [s.value for s in samples.generate(100, poison_share=0.0, seed=5) if s.value]
    body = b'{"events":[' + b",".join(values) + b"]}"
    host, port = args.url.removeprefix("http://").split(":")
    headers = {"Content-Type": "application/json", "X-API-Key": args.key}
    stop_at = time.monotonic() + args.seconds
    counts: list[int] = [0] * args.threads
    errors: list[int] = [0] * args.threads

    def run(i: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        while time.monotonic() < stop_at:
            try:
                conn.request("POST", "/api/v1/events", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    counts[i] += 1
                else:
                    errors[i] += 1
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                conn.close()
        conn.close()

    t0, cpu0 = time.time(), _cpu()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _write(
        args.result,
        {
            "role": "loadgen",
            "t_first": t0,
            "cpu_first": cpu0,
            "t_end": time.time(),
            "cpu_end": _cpu(),
            "maxrss_kib": _maxrss_kib(),
            "requests": sum(counts),
            "events": 100 * sum(counts),
            "errors": sum(errors),
            "threads": args.threads,
        },
    )
    return 0


def _stop_flag() -> Callable[[], bool]:
    import signal

    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    return stopped.is_set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runners")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("worker")
    p.add_argument("--expect", type=int, default=0)
    p.set_defaults(fn=worker)
    for name, fn in (("bare", bare), ("plain", plain)):
        p = sub.add_parser(name)
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--topic", required=True)
        p.add_argument("--group", required=True)
        p.add_argument("--expect", type=int, default=0)
        p.add_argument("--timeout", type=float, default=3600)
        if name == "bare":
            p.add_argument("--latency", action="store_true")
        else:
            p.add_argument("--url", required=True)
            p.add_argument("--key", required=True)
        p.set_defaults(fn=fn)
    p = sub.add_parser("loadgen")
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--threads", type=int, default=8)
    p.set_defaults(fn=loadgen)
    for p in sub.choices.values():
        p.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
