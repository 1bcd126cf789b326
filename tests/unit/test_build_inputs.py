"""Every input of the image build is pinned: the base by digest, every package by sha256.

The image is built by scripts/image-check.sh and rehearsed without Docker by
tests/deploy/test_package_install.py; these checks hold the Dockerfile and
the lock files to what makes that build reproducible: nothing fetched by a
name alone, the build backend included.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _locked(name: str) -> dict[str, tuple[str, list[str]]]:
    """A hashed lock: package -> (version, its sha256 hashes)."""
    text = (ROOT / name).read_text().replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            spec, *hashes = line.split()
            package, _, version = spec.partition("==")
            assert version, f"{name}: {spec} is not pinned to one version"
            pins[package.lower()] = (version, [h.removeprefix("--hash=sha256:") for h in hashes])
    return pins


def test_every_locked_artifact_is_pinned_by_sha256() -> None:
    for name in ("requirements.lock", "requirements-build.lock"):
        for package, (_, hashes) in _locked(name).items():
            assert hashes, f"{name}: {package} has no hash"
            assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), (name, package)


def test_the_build_backend_is_locked_at_a_version_pyproject_accepts() -> None:
    system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    locked = _locked("requirements-build.lock")
    for text in system["requires"]:
        requirement = Requirement(text)
        version, _ = locked[requirement.name.lower()]
        assert requirement.specifier.contains(version), f"{text}: locked at {version}"
    assert system["build-backend"].split(".")[0] in locked


def test_the_wheel_is_built_from_the_locked_backend_only() -> None:
    runs = [rest for word, rest in _instructions() if word == "RUN"]
    install = next(r for r in runs if "requirements-build.lock" in r)
    assert "/opt/build/bin/pip install" in install
    assert "--require-hashes -r requirements-build.lock" in install
    (wheel,) = [r for r in runs if " wheel " in r]
    assert wheel.startswith("/opt/build/bin/pip wheel")
    assert "--no-build-isolation" in wheel
    # every other pip command is hashed or offline: nothing is fetched by name alone
    for command in re.findall(r"pip (?:install|download|wheel)[^&]*", " && ".join(runs)):
        assert any(f in command for f in ("--require-hashes", "--no-index", "--no-build-isolation"))
    # and the build backend never reaches the runtime stage
    instructions = _instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    runtime = instructions[last_from:]
    assert runtime[0][1] == "base AS runtime"
    assert not [rest for word, rest in runtime if "/opt/build" in rest]


def test_the_base_image_is_pinned_by_digest() -> None:
    instructions = _instructions()
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG")
    froms = [rest for word, rest in instructions if word == "FROM"]
    base, _, stage = froms[0].partition(" ")
    assert stage == "AS base"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@\$\{PYTHON_BASE_DIGEST\}", base), base
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", args["PYTHON_BASE_DIGEST"])
    assert all(f.split()[0] == "base" for f in froms[1:])
