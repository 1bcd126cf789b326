"""Fixtures for the deployment tests: render the Helm chart, parse what it gives.

Helm is the one `scripts/deploy-tools.sh` builds into the user cache
(`${XDG_CACHE_HOME:-~/.cache}/gr-s2s-consumer/tools/bin/helm`), or the one
named by `GR_HELM`, or a `helm` on PATH. Without one the chart tests are
skipped with the reason, except in CI (`CI` set), where a missing helm fails:
CI must run `scripts/deploy-check.sh`, which builds it first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "gr-s2s-consumer"
CI_VALUES = CHART / "ci"
RELEASE = "gr-s2s-consumer"
NAMESPACE = "gr-s2s-consumer"

Manifest = dict[str, Any]


def find_helm() -> Path | None:
    named = os.environ.get("GR_HELM")
    if named:
        return Path(named)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    built = cache / "gr-s2s-consumer" / "tools" / "bin" / "helm"
    if built.is_file() and os.access(built, os.X_OK):
        return built
    found = shutil.which("helm")
    return Path(found) if found else None


@pytest.fixture(scope="session")
def helm() -> Path:
    path = find_helm()
    if path is None or not path.exists():
        message = (
            "helm not found: run scripts/deploy-tools.sh (builds it with `go install` into "
            "~/.cache/gr-s2s-consumer/tools/bin), or set GR_HELM"
        )
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so a missing helm is a failure)")
        pytest.skip(message)
    return path


@dataclass(frozen=True)
class Rendered:
    """The parsed output of one `helm template`."""

    docs: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str) -> Manifest:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        return {str(d.get("kind")) for d in self.docs}

    @cached_property
    def deployment(self) -> Manifest:
        return self.one("Deployment")

    @property
    def pod_spec(self) -> Manifest:
        spec: Manifest = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> Manifest:
        containers: list[Manifest] = self.pod_spec["containers"]
        assert len(containers) == 1
        return containers[0]

    def env(self) -> dict[str, Manifest]:
        return {e["name"]: e for e in self.container.get("env", [])}

    def config_env(self) -> dict[str, str]:
        """The environment the ConfigMap (envFrom) gives the container."""
        refs = [
            e["configMapRef"]["name"]
            for e in self.container.get("envFrom", [])
            if "configMapRef" in e
        ]
        data: dict[str, str] = {}
        for cm in self.of_kind("ConfigMap"):
            if cm["metadata"]["name"] in refs:
                data.update(cm.get("data", {}))
        return data


class RenderError(Exception):
    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


def _run_helm(
    helm: Path,
    values_files: Sequence[Path],
    values: Mapping[str, Any] | None,
    tmp_path: Path,
    release: str,
) -> str:
    args = [str(helm), "template", release, str(CHART), "--namespace", NAMESPACE]
    for f in values_files:
        args += ["-f", str(f)]
    if values:
        extra = tmp_path / f"values-{len(list(tmp_path.glob('values-*.yaml')))}.yaml"
        extra.write_text(yaml.safe_dump(dict(values)), encoding="utf-8")
        args += ["-f", str(extra)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RenderError(proc.stderr)
    return proc.stdout


RenderFn = Callable[..., Rendered]
RenderErrorFn = Callable[..., str]

# The least a user must set (the same as ci/default-values.yaml).
MINIMAL: dict[str, Any] = {
    "kafka": {"bootstrapServers": "kafka-0.kafka:9092,kafka-1.kafka:9092"},
    "api": {"existingSecret": "gr-s2s-api-key"},
}


@pytest.fixture
def render(helm: Path, tmp_path: Path) -> RenderFn:
    """render(values=None, files=(), release=RELEASE) -> Rendered; fails the test on an error."""

    def _render(
        values: Mapping[str, Any] | None = None,
        files: Sequence[Path] = (),
        release: str = RELEASE,
    ) -> Rendered:
        try:
            out = _run_helm(helm, files, values, tmp_path, release)
        except RenderError as exc:
            pytest.fail(f"helm template failed:\n{exc.stderr}")
        return Rendered([d for d in yaml.safe_load_all(out) if d])

    return _render


@pytest.fixture
def render_error(helm: Path, tmp_path: Path) -> RenderErrorFn:
    """render_error(values=None, files=()) -> helm's error text; fails if rendering succeeds."""

    def _render_error(values: Mapping[str, Any] | None = None, files: Sequence[Path] = ()) -> str:
        try:
            _run_helm(helm, files, values, tmp_path, RELEASE)
        except RenderError as exc:
            return exc.stderr
        pytest.fail(f"helm template succeeded but should have failed for {values} {files}")

    return _render_error


@pytest.fixture(scope="session")
def scenarios(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Each ci/*-values.yaml rendered once: {'default': ..., 'all-options': ..., 'hpa': ...}."""
    tmp = tmp_path_factory.mktemp("scenarios")
    out: dict[str, Rendered] = {}
    for f in sorted(CI_VALUES.glob("*-values.yaml")):
        name = f.name.removesuffix("-values.yaml")
        try:
            text = _run_helm(helm, [f], None, tmp, RELEASE)
        except RenderError as exc:
            pytest.fail(f"helm template {f.name} failed:\n{exc.stderr}")
        out[name] = Rendered([d for d in yaml.safe_load_all(text) if d])
    assert {"default", "all-options", "hpa"} <= set(out), sorted(out)
    return out


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge values dicts, later layers winning (as helm does with several -f)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


def need_a_node(*, image_needed: bool) -> None:
    """Skips a node test where no node can run; fails it instead when CI is set."""
    from tests.deploy.node import find_node_binaries

    problem = None
    if image_needed and not os.environ.get("GR_IMAGE"):
        problem = "no image: run scripts/image-check.sh (or make deploy-check), which sets GR_IMAGE"
    elif find_node_binaries() is None:
        problem = "no node: run scripts/k8s-tools.sh (kubelet, containerd, CoreDNS, ...)"
    elif os.geteuid() != 0:
        problem = "a node needs root (bridges, mounts, iptables)"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem + " (CI is set, so a missing node is a failure)")
        pytest.skip(problem)


@pytest.fixture(scope="session")
def pods_cluster(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A one-node cluster that runs the chart's pods (tests/deploy/node.py), with the image
    scripts/image-check.sh built (GR_IMAGE) in its runtime and a broker the pods reach."""
    from tests.deploy.node_env import node_env

    need_a_node(image_needed=True)
    image = os.environ["GR_IMAGE"]
    with node_env(tmp_path_factory.mktemp("pods"), helm, image) as env:
        yield env
        from tests.deploy.node_env import report

        report(f"[node] {', '.join(f'{k} {v:.1f} s' for k, v in env.timings.items())}")
