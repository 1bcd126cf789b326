"""A one-node Kubernetes cluster on this machine, which runs the chart's pods for real.

Beside the control plane of tests/deploy/control_plane.py (etcd, kube-apiserver,
kube-controller-manager) it runs kube-scheduler, a kubelet with containerd as its
container runtime, kube-proxy (iptables mode) and CoreDNS as cluster DNS, all as
local processes. Binaries and packages come from `scripts/k8s-tools.sh`: the
Kubernetes ones built from the Go module proxy at the pinned v1.37.2, CoreDNS from
its pinned module, containerd 1.6, runc 1.1 and the CNI plugins from Debian.

The network: a Linux bridge `gr-node0` with the gateway address 10.237.0.1/24,
made before anything starts, so that the host's services for the pods (the Kafka
broker's pod listener, the API simulator, CoreDNS) can bind to that address. Pods
get addresses from the CNI bridge + host-local plugins on that bridge, with a
route to the Service range through the gateway; kube-proxy's rules turn a
Service's address into its endpoints. No IP forwarding and no masquerading are
needed: everything the pods talk to is on the host itself.

Leaving the machine as found is part of the job, and `MachineState` checks it.
Outside its work directory a node touches /run/containerd (the shims' sockets),
/run/netns (pod network namespaces), /var/lib/kubelet/device-plugins,
/var/log/containers, /var/lib/cni, cgroups under `kubepods`, iptables (kube-proxy's
KUBE-* chains) and the bridge. `Node.close()` deletes the workloads, stops each
process by the pid it started, runs `kube-proxy --cleanup`, unmounts what is left
under its directories, deletes the bridge and what it created, and restores
nothing else because it changes nothing else: the kubelet runs in a mount
namespace of its own where the six kernel settings it would otherwise rewrite
(vm.overcommit_memory, kernel.panic, kernel.panic_on_oops, ...) read as what it
wants, so the machine's values are never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import urllib3

from gr_devtools.kafka_local import free_port
from tests.deploy.control_plane import ApiError, Binaries, ControlPlane, find_binaries, running
from tests.deploy.machine_state import (
    BRIDGE,
    KUBELET_SYSCTLS,
    NETNS_PREFIX,
    OUTSIDE_PATHS,
    MachineState,
    remove_iptables,
    remove_kubepods_cgroups,
    remove_nft_tables,
    run_cmd,
    under,
    unmount_where,
)
from tests.deploy.node_claim import machine_claimed, sweep_leftovers, write_before, write_owned

GATEWAY = "10.237.0.1"
POD_CIDR = "10.237.0.0/24"
SERVICE_CIDR = "10.238.0.0/16"
NODE_NAME = "gr-node"
NETWORK_NAME = "gr-node"
PAUSE_IMAGE = "localhost/gr-node/pause:1"
CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class NodeBinaries:
    kube_scheduler: Path
    kubelet: Path
    kube_proxy: Path
    kubectl: Path
    coredns: Path
    pause: Path
    containerd: Path
    ctr: Path
    runc: Path
    packages: str


def find_node_binaries() -> NodeBinaries | None:
    """GR_KUBELET, GR_KUBE_PROXY, ... (set by deploy-check.sh), else the cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    bin_dir = cache / "gr-s2s-consumer" / "k8s" / "bin"

    def pick(var: str, name: str) -> Path:
        return Path(os.environ.get(var) or bin_dir / name)

    found = NodeBinaries(
        kube_scheduler=pick("GR_KUBE_SCHEDULER", "kube-scheduler"),
        kubelet=pick("GR_KUBELET", "kubelet"),
        kube_proxy=pick("GR_KUBE_PROXY", "kube-proxy"),
        kubectl=pick("GR_KUBECTL", "kubectl"),
        coredns=pick("GR_COREDNS", "coredns"),
        pause=pick("GR_PAUSE", "pause"),
        containerd=Path(shutil.which("containerd") or "/usr/bin/containerd"),
        ctr=Path(shutil.which("ctr") or "/usr/bin/ctr"),
        runc=Path(shutil.which("runc") or "/usr/sbin/runc"),
        packages=os.environ.get("GR_NODE_PACKAGES", ""),
    )
    for path in (
        found.kube_scheduler, found.kubelet, found.kube_proxy, found.kubectl, found.coredns,
        found.pause, found.containerd, found.ctr, found.runc,
    ):  # fmt: skip
        if not (path.is_file() and os.access(path, os.X_OK)):
            return None
    if shutil.which("iptables") is None or not Path("/usr/lib/cni/bridge").exists():
        return None
    return found


# ---------------------------------------------------------------- images


def docker_archive(binary: Path, name: str, out: Path) -> None:
    """A one-layer image holding `binary` as /pause, in the docker-archive format ctr imports."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tar.gettarinfo(str(binary), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        with binary.open("rb") as fh:
            tar.addfile(info, fh)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = orjson.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "tests/deploy/node/pause.c, gcc -static"}],
        }
    )
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = orjson.dumps([{"Config": config_name, "RepoTags": [name], "Layers": ["layer.tar"]}])
    with tarfile.open(out, "w") as tar:
        for arcname, data in (
            ("layer.tar", layer_bytes), (config_name, config), ("manifest.json", manifest),
        ):  # fmt: skip
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# -------------------------------------------------------------------- the node


class NodeError(RuntimeError):
    pass


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


class Node:
    """The control plane plus a node, started by `start()` and taken down by `close()`."""

    def __init__(self, binaries: Binaries, node: NodeBinaries, workdir: Path) -> None:
        self.binaries = binaries
        self.bins = node
        self.workdir = workdir
        # Short paths: unix sockets are limited to 108 bytes.
        # Never a dead node's (a pid comes round again): that one is swept at start.
        self.run_dir = Path(f"/run/gr-node-{os.getpid()}-{secrets.token_hex(3)}")
        self.sock = self.run_dir / "containerd.sock"
        self.plane: ControlPlane | None = None
        self.before: MachineState | None = None
        self.procs: list[Proc] = []
        self._stack = contextlib.ExitStack()
        self._claim = contextlib.ExitStack()
        self.swept: list[str] = []
        self._bridge_made = False
        self._created: list[Path] = []
        self._closed = False
        self.kubeconfig = Path()
        self.started_s = 0.0

    # ---- helpers ----

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # its own process group: stopped as one
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait(self, what: str, predicate: Any, timeout_s: float, proc: Proc | None = None) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc is not None and proc.popen.poll() is not None:
                raise NodeError(f"{proc.name} exited {proc.popen.returncode}:\n"
                                f"{self.log_tail(proc.name)}")  # fmt: skip
            try:
                value = predicate()
            except (OSError, RuntimeError, ApiError, urllib3.exceptions.HTTPError,
                    subprocess.SubprocessError):  # fmt: skip
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                tail = self.log_tail(proc.name) if proc else ""
                raise NodeError(f"timed out after {timeout_s} s waiting for {what}\n{tail}")
            time.sleep(0.3)

    def ctr(self, *args: str, timeout: float = 300) -> str:
        return run_cmd(str(self.bins.ctr), "--address", str(self.sock), "-n", "k8s.io", *args,
                    timeout=timeout)  # fmt: skip

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        proc = subprocess.run(
            [str(self.bins.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise NodeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    @property
    def api(self) -> Any:
        assert self.plane is not None
        return self.plane.api

    # ---- start ----

    def start(self) -> Node:
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # One node per machine at a time (tests/deploy/node_claim.py); what a node that
        # died without close() left is taken away before the machine's state is read.
        self._claim.enter_context(machine_claimed())
        try:
            self.swept = sweep_leftovers(BRIDGE, self.run_dir, self.bins.kube_proxy)
            self.own(self.workdir)
        except BaseException:
            self._claim.close()
            raise
        self.before = self.machine_state()
        for path in OUTSIDE_PATHS:
            if not path.exists():
                self._created.append(path)
        write_before(self.run_dir, self.before, self._created)
        try:
            self._bridge()
            self.plane = self._stack.enter_context(
                running(
                    self.binaries,
                    self.workdir / "plane",
                    service_cidr=SERVICE_CIDR,
                    serving_ips=(GATEWAY,),
                    scheduler=self.bins.kube_scheduler,
                    kubelet_client=True,
                    apiserver_args=self._apiserver_args(),
                )
            )
            self.kubeconfig = self.plane.kubeconfig
            self._containerd()
            self._coredns()
            self._kube_proxy()
            self._kubelet()
        except BaseException:
            self.close()
            raise
        self.started_s = time.monotonic() - started
        return self

    def own(self, *dirs: Path) -> None:
        """Directories the node's processes (or the broker beside it) run in or name:
        if this process dies without close(), the next node finds them by these."""
        write_owned(self.run_dir, list(dirs))

    def _bridge(self) -> None:
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            raise NodeError(f"the bridge {BRIDGE} exists already: another node, or a leftover")
        run_cmd("ip", "link", "add", BRIDGE, "type", "bridge")
        self._bridge_made = True
        run_cmd("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        run_cmd("ip", "link", "set", BRIDGE, "up")

    @staticmethod
    def _apiserver_args() -> tuple[str, ...]:
        return (
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
        )

    def _containerd(self) -> None:
        self.run_dir.mkdir(mode=0o700, exist_ok=True)
        root = self.workdir / "containerd"
        cni_conf = self.workdir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-gr-node.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": NETWORK_NAME,
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            # The gateway address is the host's already; no forwarding, no NAT.
                            "isGateway": False,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                                "routes": [{"dst": SERVICE_CIDR, "gw": GATEWAY}],
                                "dataDir": str(self.workdir / "cni" / "ipam"),
                            },
                        }
                    ],
                },
                indent=2,
            )
        )
        config = self.workdir / "containerd.toml"
        config.write_text(
            f"""version = 2
root = "{root / "root"}"
state = "{self.run_dir / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{self.sock}"

[ttrpc]
  address = "{self.run_dir / "ttrpc.sock"}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Without it every sandbox fails: the machine lacks CAP_SYS_RESOURCE, so an
  # oom_score_adj below containerd's own is refused.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{self.bins.runc}"
        Root = "{self.run_dir / "runc"}"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
"""
        )
        proc = self._start("containerd", [str(self.bins.containerd), "--config", str(config)])
        self._wait("containerd", lambda: self.sock.exists() and self.ctr("version"), 60, proc)
        archive = self.workdir / "pause.tar"
        docker_archive(self.bins.pause, PAUSE_IMAGE, archive)
        self.ctr("images", "import", "--no-unpack", str(archive))

    def import_image(self, source: str, *names: str) -> None:
        """Copy an image from buildah's storage (the one image-check.sh built into) into the
        node's containerd under `names`, as a registry pull would have."""
        archive = self.workdir / f"image-{hashlib.sha256(source.encode()).hexdigest()[:12]}.tar"
        if not archive.exists():
            run_cmd("buildah", "push", "--quiet", source, f"docker-archive:{archive}:{names[0]}",
                 timeout=600)  # fmt: skip
        self.ctr("images", "import", str(archive))
        first = _normalise(names[0])
        for name in names[1:]:
            with contextlib.suppress(RuntimeError):
                self.ctr("images", "rm", _normalise(name))
            self.ctr("images", "tag", first, _normalise(name))

    def _coredns(self) -> None:
        assert self.plane is not None
        ready = free_port()
        corefile = self.workdir / "Corefile"
        corefile.write_text(
            f""".:53 {{
    bind {GATEWAY}
    errors
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.plane.kubeconfig} local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""
        )
        proc = self._start("coredns", [str(self.bins.coredns), "-conf", str(corefile)])
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(2))
        self._wait(
            "CoreDNS ready",
            lambda: http.request("GET", f"http://127.0.0.1:{ready}/ready").status == 200,
            60,
            proc,
        )

    def _kube_proxy(self) -> None:
        assert self.plane is not None
        kubeconfig = self.plane.kubeconfig_for("kube-proxy", "system:kube-proxy")
        config = self.workdir / "kube-proxy.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(kubeconfig)},
                    "mode": "iptables",
                    "clusterCIDR": POD_CIDR,
                    "hostnameOverride": NODE_NAME,
                    "healthzBindAddress": f"127.0.0.1:{free_port()}",
                    "metricsBindAddress": f"127.0.0.1:{free_port()}",
                    "nodePortAddresses": [f"{GATEWAY}/32"],
                    # Leave the machine's conntrack and localnet settings alone.
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                        "udpTimeout": "0s",
                        "udpStreamTimeout": "0s",
                    },
                    "iptables": {"localhostNodePorts": False, "syncPeriod": "10s",
                                 "minSyncPeriod": "0s"},
                }
            )
        )  # fmt: skip
        self._start("kube-proxy", [str(self.bins.kube_proxy), "--config", str(config)])

    def _kubelet(self) -> None:
        assert self.plane is not None
        plane = self.plane
        kubeconfig = plane.kubeconfig_for("kubelet", f"system:node:{NODE_NAME}", "system:nodes")
        root = self.workdir / "kubelet"
        root.mkdir(exist_ok=True)
        port, healthz = free_port(), free_port()
        self.kubelet_healthz = healthz
        config = self.workdir / "kubelet.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "cgroupDriver": "cgroupfs",
                    "failCgroupV1": False,  # this machine has cgroup v1 only
                    "failSwapOn": False,
                    "containerRuntimeEndpoint": f"unix://{self.sock}",
                    "address": GATEWAY,
                    "port": port,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": healthz,
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": False},
                        "x509": {"clientCAFile": str(plane.ca)},
                    },
                    "authorization": {"mode": "AlwaysAllow"},
                    "clusterDNS": [GATEWAY],
                    "clusterDomain": CLUSTER_DOMAIN,
                    "podLogsDir": str(self.workdir / "pod-logs"),
                    # A test node: Secret volumes refresh within seconds, not a minute.
                    "syncFrequency": "10s",
                    "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                                     "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "serializeImagePulls": False,
                    "maxPods": 40,
                    "protectKernelDefaults": False,
                    "registerNode": True,
                    "shutdownGracePeriod": "0s",
                }
            )
        )  # fmt: skip
        # The kubelet's root must be a shared mount, so that what the kubelet mounts
        # there (Secret volumes) reaches containerd; made so here, in the machine's
        # mount namespace, before the kubelet starts in its own.
        run_cmd("mount", "--bind", str(root), str(root))
        run_cmd("mount", "--make-rshared", str(root))
        fake = self.workdir / "kernel-settings"
        fake.mkdir(exist_ok=True)
        binds = []
        for key, value in KUBELET_SYSCTLS.items():
            f = fake / key.replace("/", ".")
            f.write_text(value + "\n")
            binds.append(f"mount --bind {f} /proc/sys/{key}")
        script = "set -e; mount --make-rprivate /proc; " + "; ".join(binds) + '; exec "$@"'
        args = [
            "unshare", "--mount", "--propagation", "unchanged", "--",
            "/bin/sh", "-c", script, "kubelet",
            str(self.bins.kubelet),
            f"--config={config}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={root}",
            f"--cert-dir={root / 'pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={GATEWAY}",
            "--v=1",
        ]  # fmt: skip
        proc = self._start("kubelet", args)

        def ready() -> bool:
            node = plane.api.get(f"/api/v1/nodes/{NODE_NAME}")
            return any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node.get("status", {}).get("conditions", [])
            )

        self._wait("the node Ready", ready, 120, proc)

    # ---- teardown ----

    def pids(self) -> list[int]:
        return [p.popen.pid for p in self.procs] + self._shim_pids()

    def machine_state(self) -> MachineState:
        return MachineState.read((self.workdir, self.run_dir), self.pids())

    def _shim_pids(self) -> list[int]:
        """containerd's shims daemonise away from it: found by the address they serve."""
        found = []
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmd = (proc_dir / "cmdline").read_bytes().split(b"\0")
                if (
                    cmd
                    and cmd[0].endswith(b"containerd-shim-runc-v2")
                    and str(self.sock).encode() in cmd
                ):
                    found.append(int(proc_dir.name))
        return found

    def _stop(self, proc: Proc, timeout_s: float = 30) -> None:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(10)

    def _by_name(self, name: str) -> Proc | None:
        return next((p for p in self.procs if p.name == name), None)

    def delete_workloads(self) -> None:
        """Every namespace the tests made, and with them the pods, gracefully: the kubelet
        unmounts their volumes and containerd removes their sandboxes."""
        if self.plane is None:
            return
        api = self.plane.api
        with contextlib.suppress(Exception):
            for ns in api.items("/api/v1/namespaces"):
                name = ns["metadata"]["name"]
                if name not in ("default", "kube-system", "kube-public", "kube-node-lease"):
                    with contextlib.suppress(ApiError):
                        api.request("DELETE", f"/api/v1/namespaces/{name}")
            for pod in api.items("/api/v1/pods"):
                meta = pod["metadata"]
                with contextlib.suppress(ApiError):
                    api.request(
                        "DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
                    )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                kubelet = self._by_name("kubelet")
                if kubelet is None or kubelet.popen.poll() is not None:
                    break
                # Pods gone from the API and nothing left running: the kubelet has
                # stopped their sandboxes (network torn down). The stopped sandbox
                # containers wait for its garbage collection (a minute); close()
                # removes them.
                if not api.items("/api/v1/pods") and not self._running_tasks():
                    break
                time.sleep(1)

    def _running_tasks(self) -> list[str]:
        try:
            lines = self.ctr("tasks", "ls").splitlines()[1:]
        except (RuntimeError, subprocess.SubprocessError, OSError):
            return []
        return [line for line in lines if "RUNNING" in line]

    def _sandboxes(self) -> list[str]:
        try:
            return [line for line in self.ctr("containers", "ls", "-q").splitlines() if line]
        except (RuntimeError, subprocess.SubprocessError, OSError):
            return []

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.delete_workloads()
            for name in ("kubelet", "kube-proxy", "coredns"):
                proc = self._by_name(name)
                if proc is not None:
                    self._stop(proc)
            # Anything the kubelet left running: containerd stops it.
            with contextlib.suppress(Exception):
                for task in self.ctr("tasks", "ls", "-q").split():
                    self.ctr("tasks", "kill", "-s", "SIGKILL", task, timeout=30)
                time.sleep(1)
                for task in self.ctr("tasks", "ls", "-q").split():
                    self.ctr("tasks", "rm", "-f", task, timeout=30)
                for container in self._sandboxes():
                    self.ctr("containers", "rm", container, timeout=30)
            proc = self._by_name("containerd")
            if proc is not None:
                self._stop(proc)
            for pid in self._shim_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            run_cmd(str(self.bins.kube_proxy), "--cleanup", check=False)
            if self.before is not None:
                remove_iptables(self.before.iptables)
                remove_nft_tables(self.before.nft_tables)
        finally:
            self._stack.close()  # the control plane
            self._unmount_under((self.workdir, self.run_dir))
            if self._bridge_made and Path(f"/sys/class/net/{BRIDGE}").exists():
                run_cmd("ip", "link", "del", BRIDGE, check=False)
            self._remove_cgroups()
            for path in self._created:
                if path.exists():
                    shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self._claim.close()

    def _unmount_under(self, roots: tuple[Path, ...]) -> None:
        """What is still mounted in the node's directories, and the pods' network
        namespaces it made (never a mount that was there before it started)."""
        before = set(self.before.mounts) if self.before else set()
        unmount_where(
            lambda point, root: (
                f"{point} (root {root})" not in before
                and (point.startswith(NETNS_PREFIX) or under(point, roots))
            )
        )

    def _remove_cgroups(self) -> None:
        remove_kubepods_cgroups(set(self.before.cgroups) if self.before else set())


def _normalise(name: str) -> str:
    """The name containerd (and the kubelet) know an image by: docker.io/library/... for a bare one."""
    first = name.split("/", 1)[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{name}"
    return name


@contextlib.contextmanager
def node_running(workdir: Path) -> Iterator[Node]:
    binaries = find_binaries()
    node_bins = find_node_binaries()
    if binaries is None or node_bins is None:
        raise NodeError("no node binaries: run scripts/k8s-tools.sh")
    node = Node(binaries, node_bins, workdir).start()
    try:
        yield node
    finally:
        node.close()
