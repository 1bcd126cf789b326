"""The image's install, rehearsed without Docker.

The Dockerfile fetches the locked artifacts (each checked against its sha256)
and builds the project's wheel from exactly the files its context admits
(requirements.lock, pyproject.toml, README.md, consumer/), installs them into
a fresh virtualenv from those wheels only, and runs `gr-consumer`. This test
does the same steps in tmp_path and runs the commands a user and the chart
run, so a broken build, a missing runtime dependency or an entry point that
does not start fails here, on a machine with no Docker engine.

The static tests at the end hold the Dockerfile to what this rehearsal and
the chart assume (exec-form entry point, numeric non-root user, port 8080).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support.cli_help import help_commands

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
# What .dockerignore lets into the build context (and the Dockerfile COPYs).
CONTEXT = (
    "requirements.lock",
    "requirements-build.lock",
    "pyproject.toml",
    "README.md",
    "consumer",
)
API_KEY = "secret-key-123"


def _pip(python: Path, *args: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


class Installed:
    def __init__(self, venv_dir: Path, home: Path, wheels: Path) -> None:
        self.bin = venv_dir / "bin"
        self.home = home
        self.wheels = wheels

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        # A clean environment: nothing from the developer's shell or CI leaks in.
        base = {
            "PATH": f"{self.bin}{os.pathsep}/usr/bin:/bin",
            "HOME": str(self.home),
            "PYTHONUNBUFFERED": "1",
            "LANG": "C.UTF-8",
        }
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            env=base | (env or {}),
            cwd=self.home,
            timeout=120,
            check=False,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("image")
    src = tmp / "src"
    src.mkdir()
    for name in CONTEXT:
        path = ROOT / name
        assert path.exists(), f"{name} is in the image's build context but missing from the repo"
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    wheels = tmp / "wheels"
    builder = sys.executable
    # RUN pip download --require-hashes --dest /wheels -r requirements.lock
    _pip(Path(builder), "download", "--require-hashes", "--dest", str(wheels), "-r",
         "requirements.lock", cwd=src)  # fmt: skip
    # RUN python -m venv /opt/build && pip install --require-hashes -r requirements-build.lock
    build_dir = tmp / "build"
    venv.EnvBuilder(with_pip=True, clear=True).create(build_dir)
    build_python = build_dir / "bin" / "python"
    _pip(build_python, "install", "--require-hashes", "-r", str(src / "requirements-build.lock"))
    # RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels/project .
    _pip(build_python, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir",
         str(wheels / "project"), ".", cwd=src)  # fmt: skip
    (project_wheel,) = (wheels / "project").glob("gr_s2s_consumer-*.whl")
    # RUN python -m venv /opt/venv && pip install --no-index --find-links /wheels
    #     --require-hashes -r requirements.lock && pip install --no-index --no-deps project
    venv_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    python = venv_dir / "bin" / "python"
    _pip(python, "install", "--no-index", "--find-links", str(wheels), "--require-hashes",
         "-r", str(src / "requirements.lock"))  # fmt: skip
    _pip(python, "install", "--no-index", "--no-deps", str(project_wheel))
    home = tmp / "home"
    home.mkdir()
    return Installed(venv_dir, home, wheels)


@pytest.mark.integration
@pytest.mark.timeout(900)  # the first one builds the venv
def test_gr_consumer_help_lists_the_production_commands_only(installed: Installed) -> None:
    proc = installed.run("gr-consumer", "--help")
    assert proc.returncode == 0, proc.stderr
    assert help_commands(proc.stdout) == ["run", "check-config", "publish", "dlq"]


@pytest.mark.integration
@pytest.mark.timeout(900)  # the first one builds the venv
def test_the_wheel_holds_no_development_tools(installed: Installed) -> None:
    (wheel,) = installed.wheels.glob("project/gr_s2s_consumer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith("consumer/")], names
    assert not [n for n in names if "devtools" in n or n.endswith(("pom.xml", "simulator.py"))]
    proc = installed.run("python", "-c", "import gr_devtools")
    assert proc.returncode != 0, "the development tools must not be importable in production"


@pytest.mark.integration
@pytest.mark.timeout(900)  # the first one builds the venv
def test_python_m_consumer_help(installed: Installed) -> None:
    proc = installed.run("python", "-m", "consumer", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "gr-consumer" in proc.stdout


@pytest.mark.integration
@pytest.mark.timeout(900)  # the first one builds the venv
def test_only_runtime_dependencies_are_installed(installed: Installed) -> None:
    proc = installed.run(
        "python",
        "-c",
        "import importlib.metadata as m; print('\\n'.join(sorted("
        "d.metadata['Name'].lower().replace('_', '-') for d in m.distributions())))",
    )
    assert proc.returncode == 0, proc.stderr
    names = set(proc.stdout.split()) - {"pip", "setuptools"}
    pinned = {
        line.split("==")[0].strip().lower().replace("_", "-")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    }
    assert names == pinned | {"gr-s2s-consumer"}
    for dev_only in ("pytest", "mypy", "ruff", "testcontainers", "hypothesis"):
        assert dev_only not in names


SAMPLE_ENV = {"KAFKA_BOOTSTRAP_SERVERS": "broker:9092", "GR_API_KEY": API_KEY}


@pytest.mark.integration
@pytest.mark.timeout(900)  # the first one builds the venv
def test_check_config_redacts_the_key(installed: Installed) -> None:
    proc = installed.run("gr-consumer", "check-config", env=SAMPLE_ENV)
    assert proc.returncode == 0, proc.stderr
    assert API_KEY not in proc.stdout
    assert API_KEY not in proc.stderr
    assert "broker:9092" in proc.stdout


@pytest.mark.integration
@pytest.mark.timeout(900)  # the first one builds the venv
def test_check_config_with_the_key_file_the_chart_mounts(
    installed: Installed, tmp_path: Path
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY + "\n")
    env = {"KAFKA_BOOTSTRAP_SERVERS": "broker:9092", "GR_API_KEY_FILE": str(key_file)}
    proc = installed.run("gr-consumer", "check-config", env=env)
    assert proc.returncode == 0, proc.stderr
    assert API_KEY not in proc.stdout + proc.stderr


@pytest.mark.integration
@pytest.mark.timeout(900)  # the first one builds the venv
def test_check_config_rejects_a_batch_over_100(installed: Installed) -> None:
    proc = installed.run(
        "gr-consumer", "check-config", env=SAMPLE_ENV | {"GR_BATCH_MAX_EVENTS": "500"}
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "GR_BATCH_MAX_EVENTS" in proc.stdout + proc.stderr
    assert API_KEY not in proc.stdout + proc.stderr


# ------------------------------------------------- the Dockerfile itself ----


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _runtime_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1] :]


def test_dockerfile_stages_share_one_pinned_base() -> None:
    args = dict(rest.split("=", 1) for word, rest in _instructions() if word == "ARG")
    froms = [rest for word, rest in _instructions() if word == "FROM"]
    base, _, stage = froms[0].partition(" ")
    assert stage == "AS base"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@\$\{PYTHON_BASE_DIGEST\}", base), base
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", args["PYTHON_BASE_DIGEST"])
    assert [f.split()[0] for f in froms[1:]] == ["base", "base"]


def test_dockerfile_runtime_contract() -> None:
    runtime = _runtime_stage()
    assert runtime[0][1].endswith("AS runtime")
    entry = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    cmd = [rest for word, rest in runtime if word == "CMD"]
    assert entry == ['["gr-consumer"]'], "exec form, so SIGTERM reaches gr-consumer"
    assert cmd == ['["run"]']
    (user,) = [rest for word, rest in runtime if word == "USER"]
    assert re.fullmatch(r"10001(:10001)?", user), "numeric non-root user, as the chart runs it"
    assert [rest for word, rest in runtime if word == "EXPOSE"] == ["8080"]
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "the runtime gets the venv only"
    assert not [w for w, _ in runtime if w in {"ADD", "HEALTHCHECK"}]


def test_dockerignore_admits_exactly_the_build_context() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert admitted == set(CONTEXT)
    copied = {
        part.rstrip("/").removeprefix("./")
        for word, rest in _instructions()
        if word == "COPY" and "--from" not in rest
        for part in rest.split()[:-1]
    }
    assert copied == set(CONTEXT)
