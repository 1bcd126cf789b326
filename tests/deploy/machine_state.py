"""What a node may change on the machine outside its own directories, read and undone.

The node (tests/deploy/node.py) reads a `MachineState` before it starts and after it
is taken down, and the two must be equal; the sweep of a dead node's leftovers
(tests/deploy/node_claim.py) undoes its rules with the same functions.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

BRIDGE = "gr-node0"

# The kernel settings a kubelet sets to its own values when it starts (unless
# protectKernelDefaults, which makes it refuse to start instead).
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
# Settings a node could plausibly change; all must read the same after it.
WATCHED_SYSCTLS = (
    *KUBELET_SYSCTLS,
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/netfilter/nf_conntrack_max",
)
# Paths outside the work directory a node may create.
OUTSIDE_PATHS = (
    Path("/run/containerd"),
    Path("/run/netns"),
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
    Path("/var/log/pods"),
    Path("/var/lib/cni"),
    Path("/opt/cni"),
    Path("/etc/cni"),
)
CGROUP_ROOT = Path("/sys/fs/cgroup")


def run_cmd(*args: str, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


# What of iptables, the links and the mounts can be a node's: other work on the
# machine (containers of other tests) is left out of the comparison.
_RULE_MARKS = ("KUBE-", "CNI-", BRIDGE, "10.237.", "10.238.")


def iptables_rules() -> list[str]:
    """The node's kind of rules and chains in every table of both families, no counters."""
    rules = []
    for family in ("iptables", "ip6tables"):
        table = ""
        for line in run_cmd(f"{family}-save", check=False).splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif any(mark in line for mark in _RULE_MARKS):
                entry = line.split(" [", 1)[0] if line.startswith(":") else line
                rules.append(f"{family} {table} {entry}")
    return sorted(rules)


def nft_tables_list() -> list[str]:
    """nftables' tables (iptables-nft makes one per family and table on first use)."""
    if shutil.which("nft") is None:
        return []
    return sorted(
        line for line in run_cmd("nft", "list", "tables", check=False).splitlines() if line
    )


def remove_iptables(before: list[str]) -> None:
    """Undo the node's rules and chains (kube-proxy's and the kubelet's KUBE-*, the CNI
    plugins' CNI-*) that were not there before: rules first, then their chains."""
    added = [r for r in iptables_rules() if r not in set(before)]
    for entry in added:
        family, table, line = entry.split(" ", 2)
        if line.startswith("-A "):
            run_cmd(family, "-t", table, "-D", *shlex.split(line[3:]), check=False)
    for entry in added:
        family, table, line = entry.split(" ", 2)
        if line.startswith(":"):
            chain = line[1:].split()[0]
            run_cmd(family, "-t", table, "-F", chain, check=False)
    for entry in added:
        family, table, line = entry.split(" ", 2)
        if line.startswith(":"):
            run_cmd(family, "-t", table, "-X", line[1:].split()[0], check=False)


def remove_nft_tables(before: list[str]) -> None:
    """The tables iptables-nft made for the node, once empty of rules."""
    for line in nft_tables_list():
        if line in before:
            continue
        _, family, name = line.split()
        listing = run_cmd("nft", "list", "table", family, name, check=False)
        rules = [
            line
            for line in (raw.strip() for raw in listing.splitlines())
            if line and not line.startswith(("table ", "chain ", "type ", "}"))
        ]
        if not rules:
            run_cmd("nft", "delete", "table", family, name, check=False)


# containerd names the pods' network namespaces cni-*; others (podman's netns-*)
# live in the same directory and are not the node's.
NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "/run/netns/cni-"


def is_node_mount(point: str, prefixes: tuple[Path, ...]) -> bool:
    if under(point, (NETNS_DIR,)):
        return point.startswith(NETNS_PREFIX)  # podman bind-mounts the directory itself
    return under(point, prefixes)


def node_mounts(prefixes: tuple[Path, ...]) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    points = []
    for line in lines:
        root, point = line.split()[3:5]
        if is_node_mount(point, prefixes):
            points.append(f"{point} (root {root})")
    return sorted(points)


def kubepods_cgroups() -> list[str]:
    found = []
    for controller in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.exists() else []:
        kubepods = controller / "kubepods"
        if kubepods.is_dir():
            found += [str(p) for p in sorted(kubepods.rglob("*")) if p.is_dir()]
            found.append(str(kubepods))
    return found


def under(path: str, roots: Iterable[Path]) -> bool:
    """`path` is one of `roots` or inside one."""
    return any(path == str(r) or path.startswith(f"{r}/") for r in roots)


def unmount_where(wanted: Callable[[str, str], bool]) -> int:
    """Lazily unmount every mount point `wanted(point, root)` picks, deepest first, in
    up to three rounds (an unmount can uncover one below it). Returns how many went."""
    count = 0
    for _ in range(3):
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            root, point = line.split()[3:5]
            if wanted(point, root):
                points.append(point)
        if not points:
            break
        for point in sorted(points, key=len, reverse=True):
            umount = subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            count += umount.returncode == 0
    return count


def remove_kubepods_cgroups(keep: set[str]) -> int:
    """The `kubepods` cgroups, deepest first, but those in `keep`; a cgroup with a
    process left in it stays. Returns how many went."""
    removed = 0
    for path in sorted(kubepods_cgroups(), key=len, reverse=True):
        if path not in keep:
            with contextlib.suppress(OSError):
                Path(path).rmdir()
                removed += 1
    return removed


@dataclass
class MachineState:
    """What a node may change outside its own directory, read at one moment."""

    links: list[str]
    iptables: list[str]
    nft_tables: list[str]
    mounts: list[str]
    sysctls: dict[str, str]
    paths: dict[str, bool]
    cgroups: list[str]
    processes: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, own_dirs: tuple[Path, ...] = (), pids: list[int] | None = None) -> MachineState:
        links = sorted(
            name
            for line in run_cmd("ip", "-br", "link").splitlines()
            if line.strip()
            and ((name := line.split()[0].split("@")[0]) == BRIDGE or name.startswith("veth"))
        )
        sysctls = {}
        for key in WATCHED_SYSCTLS:
            path = Path("/proc/sys") / key
            sysctls[key] = path.read_text().strip() if path.exists() else "(absent)"
        alive = []
        for pid in pids or []:
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                alive.append(f"{pid} {cmd[:120]}")
        return cls(
            links=links,
            iptables=iptables_rules(),
            nft_tables=nft_tables_list(),
            mounts=node_mounts((*own_dirs, *OUTSIDE_PATHS)),
            sysctls=sysctls,
            paths={str(p): p.exists() for p in OUTSIDE_PATHS},
            cgroups=kubepods_cgroups(),
            processes=alive,
        )

    def differences(self, after: MachineState) -> list[str]:
        out = []
        for name in ("links", "iptables", "nft_tables", "mounts", "cgroups"):
            before_set, after_set = set(getattr(self, name)), set(getattr(after, name))
            for item in sorted(after_set - before_set):
                out.append(f"{name}: left behind: {item}")
            for item in sorted(before_set - after_set):
                out.append(f"{name}: gone: {item}")
        for key, value in self.sysctls.items():
            if after.sysctls.get(key) != value:
                out.append(f"sysctl {key}: {value} before, {after.sysctls.get(key)} after")
        for path, existed in self.paths.items():
            if after.paths.get(path) != existed:
                out.append(f"{path}: {'existed' if existed else 'absent'} before, not after")
        out += [f"process still running: {p}" for p in after.processes]
        return out
