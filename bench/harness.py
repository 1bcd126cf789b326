"""Plumbing shared by the scenarios: the broker, the simulator process, producers,
measured child processes and /proc sampling. Traffic goes to 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import urllib3
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.kafka_config import committed_with_retry
from gr_devtools import samples
from gr_devtools.kafka_local import create_topic

API_KEY = "bench-key-7d1e"
REPO = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- scale ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Sizes of every scenario; `full` is the documented one, `small` a smoke run."""

    name: str
    throughput_events: int
    loadgen_s: float
    rate_backlog: int
    rate_limit: int
    rate_window_s: float
    rate_warmup_windows: int
    rate_measure_windows: int
    latency_rate: float
    latency_s: float
    latency_lingers_ms: tuple[int, int]
    memory_events: int
    memory_outage_s: float
    drain_events: int = 20_000
    drain_refused: int = 25
    drain_limit: int = 60
    drain_window_s: float = 10.0
    drain_session_events: int = 4_000  # each session-heavy stream
    throughput_repeats: int = 1
    rate_mix: bool = True  # also a run on the contract's mix, with session events


SCALES = {
    "full": Scale(
        name="full",
        throughput_events=1_000_000,
        loadgen_s=15.0,
        rate_backlog=200_000,
        rate_limit=100,
        rate_window_s=6.0,
        rate_warmup_windows=2,
        rate_measure_windows=10,
        latency_rate=50.0,
        latency_s=60.0,
        latency_lingers_ms=(100, 1000),
        memory_events=500_000,
        memory_outage_s=60.0,
        throughput_repeats=3,
    ),
    "small": Scale(
        name="small",
        throughput_events=6_000,
        loadgen_s=1.5,
        rate_backlog=6_000,
        rate_limit=10,
        rate_window_s=2.0,
        rate_warmup_windows=0,
        rate_measure_windows=1,
        rate_mix=False,
        latency_rate=50.0,
        latency_s=2.0,
        latency_lingers_ms=(100, 1000),
        memory_events=6_000,
        memory_outage_s=2.0,
        drain_events=2_000,
        drain_refused=3,
        drain_limit=30,
        drain_window_s=2.0,
        drain_session_events=400,
    ),
}


# ---- the machine ---------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "consumer"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        return f"{commit}+uncommitted-changes" if dirty else commit or None
    return None


def machine() -> dict[str, Any]:
    import confluent_kafka

    from gr_devtools.kafka_local import KAFKA_VERSION

    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libraries": {
            "confluent-kafka": _version("confluent-kafka"),
            "librdkafka": confluent_kafka.libversion()[0],
            "msgspec": _version("msgspec"),
            "orjson": _version("orjson"),
            "urllib3": _version("urllib3"),
            "tenacity": _version("tenacity"),
            "prometheus-client": _version("prometheus-client"),
            "requests": _version("requests"),
        },
        "kafka_broker": KAFKA_VERSION,
        "git_commit": _git_commit(),
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---- /proc ---------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a process (all its threads), seconds; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # fields 14 and 15 of stat(5)


def proc_mem_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB; empty once the process is gone."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            name, value = line.split(":", 1)
            out[name] = int(value.split()[0])
    return out


@dataclass
class Sample:
    t: float  # time.time()
    cpu_s: float
    rss_kib: int
    hwm_kib: int


class ProcSampler:
    """Samples a process's CPU time and memory on a thread, every `interval_s`."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"sample-{pid}")

    def __enter__(self) -> ProcSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> Sample | None:
        cpu = proc_cpu_s(self.pid)
        mem = proc_mem_kib(self.pid)
        if cpu is None or not mem:
            return None
        s = Sample(time.time(), cpu, mem.get("VmRSS", 0), mem.get("VmHWM", 0))
        self.samples.append(s)
        return s

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def cpu_between(self, t0: float, t1: float) -> float:
        """CPU seconds used between two wall times (linear between samples)."""
        return self._cpu_at(t1) - self._cpu_at(t0)

    def _cpu_at(self, t: float) -> float:
        s = self.samples
        if not s:
            return 0.0
        if t <= s[0].t:
            return s[0].cpu_s
        for a, b in itertools.pairwise(s):
            if a.t <= t <= b.t:
                if b.t == a.t:
                    return b.cpu_s
                return a.cpu_s + (b.cpu_s - a.cpu_s) * (t - a.t) / (b.t - a.t)
        return s[-1].cpu_s

    def peak_cpu_pct(self, t0: float, t1: float, span_s: float = 1.0) -> float:
        """The highest CPU% (100 = one core) over any `span_s` stretch inside [t0, t1]."""
        best = 0.0
        inside = [x for x in self.samples if t0 <= x.t <= t1]
        j = 0
        for i, a in enumerate(inside):
            j = max(j, i)
            while j < len(inside) and inside[j].t - a.t < span_s:
                j += 1
            if j < len(inside):
                b = inside[j]
                best = max(best, 100 * (b.cpu_s - a.cpu_s) / (b.t - a.t))
        return best

    @property
    def peak_rss_kib(self) -> int:
        return max((x.hwm_kib for x in self.samples), default=0)


# ---- child processes -----------------------------------------------------------------


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without the service's own variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "GR_"))}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    result_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout_s: float = 60.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise TimeoutError(f"{self.name} did not finish in {timeout_s:.0f}s") from None

    def result(self) -> dict[str, Any]:
        if self.result_path is None or not self.result_path.exists():
            raise RuntimeError(f"{self.name} wrote no result; log: {self.log_tail()}")
        doc: dict[str, Any] = json.loads(self.result_path.read_text())
        return doc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class Children:
    """Every process a scenario started; all are stopped when it ends, whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._all: list[Child] = []

    def spawn(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        result: bool = True,
    ) -> Child:
        log_path = self.workdir / f"{name}.log"
        result_path = self.workdir / f"{name}.result.json" if result else None
        if result_path is not None:
            result_path.unlink(missing_ok=True)
            args = [*args, "--result", str(result_path)]
        out = log_path.open("wb")
        proc = subprocess.Popen(
            [sys.executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
        out.close()
        child = Child(name, proc, log_path, result_path)
        self._all.append(child)
        return child

    def stop_all(self) -> None:
        for child in self._all:
            if child.alive():
                child.proc.send_signal(signal.SIGTERM)
        for child in self._all:
            try:
                child.proc.wait(30)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(10)


def runner_args(role: str, *args: str) -> list[str]:
    return ["-m", "bench.runners", role, *args]


def worker_env(
    bootstrap: str, topic: str, group: str, base_url: str, **extra: str
) -> dict[str, str]:
    """The service's environment for a benchmark worker: defaults, except where noted."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "GR_API_KEY": API_KEY,
        "GR_BASE_URL": base_url,
        "GR_ALLOW_INSECURE_HTTP": "true",  # the local simulator speaks http
        "GR_HTTP_PORT": "0",
    }
    env.update(extra)
    return child_env(env)


# ---- the simulator in its own process ------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SimProcess:
    """`gr-consumer simulate-api` as a child process, driven over its /_sim/ admin API."""

    def __init__(
        self,
        children: Children,
        name: str = "simulator",
        *,
        limit_per_window: int = 0,
        window_s: float = 60.0,
        record: bool = False,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            "-m", "consumer", "simulate-api", "--host", "127.0.0.1", "--port", str(self.port),
            "--key", API_KEY, "--limit-per-window", str(limit_per_window),
            "--window-s", str(window_s),
        ]  # fmt: skip
        if not record:
            args.append("--no-record")
        self.child = children.spawn(name, args, child_env({}), result=False)
        self._http = urllib3.PoolManager(
            maxsize=2, retries=False, timeout=urllib3.Timeout(connect=2, read=60)
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(urllib3.exceptions.HTTPError):
                if self._http.request("GET", self.url + "/_sim/health").status == 200:
                    break
            if not self.child.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"simulator did not start: {self.child.log_tail()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.child.pid

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        resp = self._http.request(method, self.url + path, body=data)
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status} {resp.data[:300]!r}")
        return orjson.loads(resp.data)

    def stats(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._call("GET", "/_sim/stats")
        return doc

    def reset(self) -> None:
        self._call("POST", "/_sim/reset", {})

    def configure(self, **config: Any) -> None:
        self._call("POST", "/_sim/config", config)

    def events(self, since: int = 0) -> dict[str, Any]:
        doc: dict[str, Any] = self._call("GET", f"/_sim/events?since={since}")
        return doc

    def stop(self) -> None:
        self.child.terminate(15)
        self._http.clear()


# ---- Kafka ---------------------------------------------------------------------------


def new_topic(bootstrap: str, prefix: str, partitions: int) -> str:
    name = f"bench-{prefix}-{uuid.uuid4().hex[:6]}"
    create_topic(bootstrap, name, partitions)
    create_topic(bootstrap, f"{name}.dlq", 1)
    return name


def fast_producer(bootstrap: str, **extra: Any) -> Producer:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 50,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "acks": 1,
        "enable.idempotence": False,
        "compression.type": "none",
    }
    conf.update(extra)
    return Producer(conf)


def produce_values(
    bootstrap: str, topic: str, partitions: int, values: Iterable[bytes], keys: bool = True
) -> int:
    """Produce fast (batched, acks=1), spread round-robin; returns the count."""
    producer = fast_producer(bootstrap)
    n = 0
    for n, value in enumerate(values, 1):
        while True:
            try:
                producer.produce(
                    topic,
                    value=value,
                    key=b"player-%d" % (n % 5000) if keys else None,
                    partition=n % partitions,
                )
                break
            except BufferError:
                producer.poll(0.05)
        if n % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} records not acknowledged")
    return n


def sample_values(count: int, seed: int = 11, batchable_only: bool = False) -> Iterator[bytes]:
    """The contract's mix (about 300 bytes each), no poison; optionally no session events."""
    made = 0
    for s in samples.generate(10 * count if batchable_only else count, poison_share=0.0, seed=seed):
        if made >= count:
            return
        assert s.value is not None
        if batchable_only and b'"event_type":"session_' in s.value:
            continue
        made += 1
        yield s.value


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-probe"})
    try:
        return [
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        ]
    finally:
        c.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = committed_with_retry(c, [TopicPartition(topic, p) for p in range(partitions)])
        return [max(tp.offset, 0) for tp in tps]
    finally:
        c.close()


@dataclass
class GroupView:
    state: str
    members: int
    member_ids: list[str]
    assigned: int


def describe_group(admin: AdminClient, group: str, timeout_s: float = 20.0) -> GroupView:
    """The group as the coordinator sees it; retried while the coordinator is not ready."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            desc = admin.describe_consumer_groups([group])[group].result(15)
            break
        except KafkaException as exc:
            if time.monotonic() > deadline or "COORDINATOR" not in str(exc):
                raise
            time.sleep(0.2)
    assigned = sum(len(m.assignment.topic_partitions) for m in desc.members)
    state = getattr(desc.state, "name", str(desc.state))
    return GroupView(state, len(desc.members), sorted(m.member_id for m in desc.members), assigned)


def wait_until(pred: Callable[[], bool], timeout_s: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


@dataclass
class Context:
    """What every scenario gets: the cluster, the sizes, a scratch directory."""

    bootstrap: str
    scale: Scale
    workdir: Path
    log: Callable[[str], None] = field(default=print)
