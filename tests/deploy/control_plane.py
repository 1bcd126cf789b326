"""A real Kubernetes control plane on this machine: etcd, kube-apiserver, kube-controller-manager.

The binaries come from `scripts/k8s-tools.sh` (built from the Go module proxy at the
versions pinned in tests/deploy/k8s/go.mod, etcd from Debian). On its own it has no
kubelet and no scheduler: the chart's objects are stored and validated by the API
server, and the controller-manager turns Deployments into ReplicaSets and Pods (which
stay Pending) and garbage-collects them after an uninstall. tests/deploy/node.py adds
the scheduler and a node, which run the pods.

Everything runs as local processes on free ports under one temporary directory;
helm reaches the API server with a bearer token of the system:masters group. The
API server also accepts client certificates signed by the plane's own CA
(`ControlPlane.client_certificate`), which is how a kubelet and kube-proxy
authenticate.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import urllib3

from gr_devtools.kafka_local import free_port

Obj = dict[str, Any]


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path


def find_binaries() -> Binaries | None:
    """The ones named by GR_ETCD / GR_KUBE_APISERVER / GR_KUBE_CONTROLLER_MANAGER, else the cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    k8s = cache / "gr-s2s-consumer" / "k8s"
    found = Binaries(
        etcd=Path(os.environ.get("GR_ETCD") or k8s / "etcd" / "usr" / "bin" / "etcd"),
        kube_apiserver=Path(os.environ.get("GR_KUBE_APISERVER") or k8s / "bin" / "kube-apiserver"),
        kube_controller_manager=Path(
            os.environ.get("GR_KUBE_CONTROLLER_MANAGER") or k8s / "bin" / "kube-controller-manager"
        ),
    )
    for path in (found.etcd, found.kube_apiserver, found.kube_controller_manager):
        if not (path.is_file() and os.access(path, os.X_OK)):
            return None
    return found


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


class Api:
    """A small client for the API server's REST interface (JSON in, JSON out)."""

    def __init__(self, url: str, token: str, ca_file: Path) -> None:
        self.url = url
        self._http = urllib3.PoolManager(
            cert_reqs="CERT_REQUIRED", ca_certs=str(ca_file), timeout=urllib3.Timeout(30)
        )
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Obj:
        resp = self._http.request(
            method,
            self.url + path,
            body=orjson.dumps(body) if body is not None else None,
            headers=self._headers,
        )
        if resp.status >= 300:
            raise ApiError(resp.status, resp.data.decode(errors="replace"))
        out: Obj = orjson.loads(resp.data) if resp.data else {}
        return out

    def get(self, path: str) -> Obj:
        return self.request("GET", path)

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def create(self, path: str, body: Mapping[str, Any]) -> Obj:
        """POST, tolerating an object that is already there (fixtures may run twice)."""
        try:
            return self.request("POST", path, body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            name = body["metadata"]["name"]
            return self.get(f"{path}/{name}")

    def items(self, path: str) -> list[Obj]:
        items: list[Obj] = self.get(path).get("items", [])
        return items


def resource_path(obj: Mapping[str, Any], namespace: str | None = None) -> str:
    """The REST path of a manifest's object (core and named groups, namespaced or not)."""
    api_version: str = obj["apiVersion"]
    kind: str = obj["kind"]
    meta = obj["metadata"]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    plural = PLURALS.get(kind, kind.lower() + "s")
    ns = meta.get("namespace") or namespace
    if kind in CLUSTER_SCOPED or ns is None:
        return f"{base}/{plural}/{meta['name']}"
    return f"{base}/namespaces/{ns}/{plural}/{meta['name']}"


PLURALS = {
    "NetworkPolicy": "networkpolicies",
    "PriorityClass": "priorityclasses",
    "CustomResourceDefinition": "customresourcedefinitions",
}
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "CustomResourceDefinition"}


@dataclass
class ControlPlane:
    api: Api
    kubeconfig: Path
    workdir: Path
    version: str
    url: str = ""
    pki: Path = Path()

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    def client_certificate(self, name: str, user: str, *groups: str) -> tuple[Path, Path]:
        """A client certificate the API server accepts as `user` in `groups`."""
        return _client_cert(self.pki, name, user, groups)

    def kubeconfig_for(self, name: str, user: str, *groups: str) -> Path:
        """A kubeconfig that authenticates with a client certificate of its own."""
        cert, key = self.client_certificate(name, user, *groups)
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(
            orjson.dumps(
                _kubeconfig(self.url, self.ca, {"client-certificate": str(cert),
                                                 "client-key": str(key)}),
                option=orjson.OPT_INDENT_2,
            ).decode()
        )  # fmt: skip
        path.chmod(0o600)
        return path


def _kubeconfig(url: str, ca: Path, user: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": url, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "user"}}],
        "current-context": "local",
    }


def _client_cert(pki: Path, name: str, user: str, groups: tuple[str, ...]) -> tuple[Path, Path]:
    key, cert = pki / f"{name}.key", pki / f"{name}.crt"
    if not cert.exists():
        subj = f"/CN={user}" + "".join(f"/O={g}" for g in groups)
        _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subj,
                 "-keyout", key.name, "-out", f"{name}.csr", cwd=pki)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", cert.name, cwd=pki)  # fmt: skip
    return cert, key


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=120)


def _wait_http(
    url: str,
    ca: Path | None,
    token: str | None,
    timeout_s: float,
    what: str,
    proc: subprocess.Popen[bytes],
    log: Path,
) -> None:
    http = urllib3.PoolManager(
        cert_reqs="CERT_REQUIRED" if ca else "CERT_NONE",
        ca_certs=str(ca) if ca else None,
        timeout=urllib3.Timeout(5),
        retries=False,
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail}")
        try:
            resp = http.request("GET", url, headers=headers)
            if resp.status == 200:
                return
            last = f"HTTP {resp.status}: {resp.data[:300]!r}"
        except urllib3.exceptions.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout_s} s: {last}")


@contextmanager
def running(
    binaries: Binaries,
    workdir: Path,
    *,
    service_cidr: str = "10.96.0.0/16",
    serving_ips: tuple[str, ...] = (),
    apiserver_args: tuple[str, ...] = (),
    scheduler: Path | None = None,
    kubelet_client: bool = False,
) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver and kube-controller-manager (and kube-scheduler, when given its
    binary) until the block ends. `serving_ips` are added to the serving certificate."""
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    pki.mkdir(exist_ok=True)
    # The plane's CA; a serving certificate for 127.0.0.1 signed by it (helm and the
    # tests trust the CA); the service-account signing key pair.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=gr-test-cluster-ca",
             cwd=pki)  # fmt: skip
    sans = ",".join(["IP:127.0.0.1", "DNS:localhost", *(f"IP:{ip}" for ip in serving_ips)])
    (pki / "serving.ext").write_text(f"subjectAltName={sans}\n")
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
             "-keyout", "serving.key", "-out", "serving.csr", cwd=pki)  # fmt: skip
    _openssl("x509", "-req", "-in", "serving.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "serving.ext", "-out", "serving.crt",
             cwd=pki)  # fmt: skip
    if kubelet_client:  # the API server's identity towards kubelets (logs, exec)
        _client_cert(pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                     ("system:masters",))  # fmt: skip
        apiserver_args = (
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            *apiserver_args,
        )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    token = secrets.token_hex(24)
    (pki / "tokens.csv").write_text(f"{token},admin,admin,system:masters\n")

    etcd_port, etcd_peer, api_port, kcm_port, sched_port = (free_port() for _ in range(5))
    api_url = f"https://127.0.0.1:{api_port}"
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        orjson.dumps(
            _kubeconfig(api_url, pki / "ca.crt", {"token": token}), option=orjson.OPT_INDENT_2
        ).decode()
    )
    kubeconfig.chmod(0o600)

    procs: list[subprocess.Popen[bytes]] = []

    def start(
        name: str, args: list[str], overrides: tuple[str, ...] = ()
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """`overrides` replace the flags of the same name (list flags would add up)."""
        names = {flag.split("=", 1)[0] for flag in overrides}
        args = [a for a in args if a.split("=", 1)[0] not in names] + list(overrides)
        log = workdir / f"{name}.log"
        with log.open("wb") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        procs.append(proc)
        return proc, log

    try:
        etcd = start(
            "etcd",
            [
                str(binaries.etcd),
                "--name=test",
                f"--data-dir={workdir / 'etcd-data'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=test=http://127.0.0.1:{etcd_peer}",
            ],
        )
        _wait_http(f"http://127.0.0.1:{etcd_port}/health", None, None, 60, "etcd", *etcd)
        apiserver = start(
            "kube-apiserver",
            [
                str(binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                f"--cert-dir={pki}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={service_cidr}",
                # The `kubernetes` Service's endpoint would be 127.0.0.1, which
                # the reconciler refuses; nothing here needs that Service.
                "--endpoint-reconciler-type=none",
            ],
            apiserver_args,
        )
        _wait_http(f"{api_url}/readyz", pki / "ca.crt", token, 180, "kube-apiserver", *apiserver)
        kcm = start(
            "kube-controller-manager",
            [
                str(binaries.kube_controller_manager),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
            ],
        )
        if scheduler is not None:
            start(
                "kube-scheduler",
                [
                    str(scheduler),
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={sched_port}",
                    "--leader-elect=false",
                ],
            )
        api = Api(api_url, token, pki / "ca.crt")
        # The controllers are running once the service-account controller has
        # made the default namespace's ServiceAccount.
        deadline = time.monotonic() + 120
        while not api.exists("/api/v1/namespaces/default/serviceaccounts/default"):
            if kcm[0].poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(kcm[1].read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"kube-controller-manager not working:\n{tail}")
            time.sleep(0.5)
        version = str(api.get("/version")["gitVersion"])
        yield ControlPlane(
            api=api, kubeconfig=kubeconfig, workdir=workdir, version=version, url=api_url, pki=pki
        )
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(workdir / "etcd-data", ignore_errors=True)


def log_tail(plane: ControlPlane, name: str, lines: int = 40) -> str:
    path = plane.workdir / f"{name}.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
