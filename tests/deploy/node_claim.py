"""One node per machine, and what a node that died without its `close()` left behind.

A node's bridge, kube-proxy's chains and the kubelet's fixed paths are machine-wide,
so a node first claims the machine: a lock file (the paths) and an abstract unix
socket (the network namespace, where the bridge and the chains live; the kernel
lets one process bind a name and frees it when that process dies). Both are let go
by the kernel when their holder dies, so holding them means no other node is alive.

Whatever a node is found to have left (its run directory under /run, the processes
it started, its pods' containers, the mounts in its directories, the bridge, the
KUBE-* chains) is then a dead node's: a pytest killed by a timeout, a machine's
session ended in the middle of a run. `sweep_leftovers()` takes it all away before
the new node reads the machine's state, so that node starts, and leaves the machine
as it found it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from tests.deploy.machine_state import (
    CGROUP_ROOT,
    NETNS_PREFIX,
    MachineState,
    iptables_rules,
    remove_iptables,
    remove_kubepods_cgroups,
    remove_nft_tables,
    under,
    unmount_where,
)

RUN_PREFIX = "gr-node-"
RUN_ROOT = Path("/run")
OWNED_FILE = "owned-dirs"
BEFORE_FILE = "machine-before.json"
SOCKET_NAME = b"\0gr-s2s-consumer-node"


class ClaimError(RuntimeError):
    pass


def _lock_path() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "gr-s2s-consumer" / "node.lock"


@contextlib.contextmanager
def machine_claimed(timeout_s: float = 1200, poll_s: float = 2.0) -> Iterator[None]:
    """Waits (up to `timeout_s`) for any other node on the machine to finish."""
    path = _lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with path.open("w") as lock, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                _wait_or_fail(deadline, poll_s, f"{path} is locked by another node")
        try:
            while True:
                try:
                    sock.bind(SOCKET_NAME)
                    sock.listen(1)
                    break
                except OSError as e:
                    if e.errno != errno.EADDRINUSE:
                        raise
                    _wait_or_fail(deadline, poll_s, "another node runs in this network namespace")
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _wait_or_fail(deadline: float, poll_s: float, why: str) -> None:
    if time.monotonic() > deadline:
        raise ClaimError(f"gave up waiting for the machine: {why}")
    time.sleep(poll_s)


def write_owned(run_dir: Path, dirs: list[Path]) -> None:
    """What the node's processes run in or name: a later sweep knows them by it."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (run_dir / OWNED_FILE).open("a") as out:
        for d in dirs:
            out.write(f"{d}\n")


def write_before(run_dir: Path, before: MachineState, created: list[Path]) -> None:
    """The machine as the node found it: a later sweep undoes the rest."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = {
        "iptables": before.iptables,
        "nft_tables": before.nft_tables,
        "created": [str(p) for p in created],
    }
    (run_dir / BEFORE_FILE).write_bytes(orjson.dumps(record))


def sweep_leftovers(bridge: str, own_run_dir: Path, kube_proxy: Path | None) -> list[str]:
    """Takes away what dead nodes left; to be called with the machine claimed. Says what
    it found, one line per kind."""
    found: list[str] = []
    dead_runs = [
        p for p in sorted(RUN_ROOT.glob(f"{RUN_PREFIX}*")) if p.is_dir() and p != own_run_dir
    ]
    dirs: list[Path] = []
    befores: list[dict[str, list[str]]] = []
    for run in dead_runs:
        dirs.append(run)
        with contextlib.suppress(OSError):
            dirs += [Path(line) for line in (run / OWNED_FILE).read_text().splitlines() if line]
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            befores.append(orjson.loads((run / BEFORE_FILE).read_bytes()))
    killed = _kill_under(dirs) if dirs else []
    if killed:
        found.append(f"{len(killed)} processes of a dead node: {', '.join(killed[:6])}")
    # A kubelet still running is no node of ours (ours are dead or were killed above):
    # its pods are not ours to touch.
    pods = 0 if _running("kubelet") else _kill_pod_processes()
    if pods:
        found.append(f"{pods} processes of a dead node's pods")
    unmounted = unmount_where(lambda point, _root: under(point, dirs)) if dirs else 0
    # The pods' network namespaces (containerd names them cni-*): with no containerd
    # left running, nobody's but a dead node's.
    if not _running("containerd"):
        unmounted += _unmount_netns()
    if unmounted:
        found.append(f"{unmounted} mounts in a dead node's directories")
    for run in dead_runs:
        shutil.rmtree(run, ignore_errors=True)
    if dead_runs:
        found.append(f"run directories {', '.join(str(p) for p in dead_runs)}")
    if Path(f"/sys/class/net/{bridge}").exists():
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        found.append(f"the bridge {bridge}")
    if found and kube_proxy is not None:
        subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, check=False,
                       timeout=120)  # fmt: skip
        found.append("kube-proxy's chains (kube-proxy --cleanup)")
    for before in befores:
        rules = [r for r in iptables_rules() if r not in set(before["iptables"])]
        remove_iptables(before["iptables"])
        remove_nft_tables(before["nft_tables"])
        if rules:
            found.append(f"{len(rules)} iptables rules and chains a dead node added")
        for path in map(Path, before["created"]):
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)
                found.append(f"{path}, which a dead node made")
    if not _running("kubelet"):
        empty = remove_kubepods_cgroups(set())
        if empty:
            found.append(f"{empty} empty kubepods cgroups")
    return found


def _names(value: str, dirs: list[Path]) -> bool:
    """`value` (a working directory, an argument like --root-dir=...) is or names a path
    in one of `dirs`."""
    return any(value == str(d) or str(d) + "/" in value for d in dirs)


def _kill_under(dirs: list[Path]) -> list[str]:
    """Every process that runs in, or names, one of `dirs` (a plane's and a kubelet's
    working directory, containerd's socket, the broker's log directory)."""
    killed: list[str] = []
    me = os.getpid()
    for _ in range(5):
        round_: list[int] = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == me:
                continue
            with contextlib.suppress(OSError):
                cwd = os.readlink(proc / "cwd")
                args = [a.decode(errors="replace")
                        for a in (proc / "cmdline").read_bytes().split(b"\0") if a]  # fmt: skip
                if args and (_names(cwd, dirs) or any(_names(a, dirs) for a in args)):
                    os.kill(int(proc.name), signal.SIGKILL)
                    round_.append(int(proc.name))
                    killed.append(f"{proc.name} {Path(args[0]).name}")
        if not round_:
            break
        _wait_gone(round_)
    return killed


def _kill_pod_processes() -> int:
    pids: set[int] = set()
    for procs in CGROUP_ROOT.glob("**/kubepods/**/cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids |= {int(p) for p in procs.read_text().split()}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(list(pids))
    return len(pids)


def _wait_gone(pids: list[int], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            found = _name_and_state(Path(f"/proc/{pid}"))
            if found is not None and found[1] != "Z":
                alive.append(pid)
        if not alive:
            return
        time.sleep(0.1)


def _unmount_netns() -> int:
    """The pods' network namespaces, their files too."""
    points: list[str] = []

    def netns(point: str, _root: str) -> bool:
        if point.startswith(NETNS_PREFIX):
            points.append(point)
            return True
        return False

    count = unmount_where(netns)
    for point in points:
        Path(point).unlink(missing_ok=True)
    return count


def _name_and_state(proc: Path) -> tuple[str, str] | None:
    """A process's name and state letter (Z: a zombie), from /proc/<pid>/stat."""
    try:
        name, rest = (proc / "stat").read_text().rsplit(")", 1)
        return name.split("(", 1)[1], rest.split()[0]
    except (OSError, IndexError):
        return None


def _running(comm: str) -> bool:
    """A live process of that name (a process killed a moment ago may still be a zombie)."""
    for proc in Path("/proc").iterdir():
        found = _name_and_state(proc) if proc.name.isdigit() else None
        if found is not None and found[0] == comm and found[1] != "Z":
            return True
    return False
