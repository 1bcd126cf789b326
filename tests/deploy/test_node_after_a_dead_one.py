"""A node killed without its close() does not stop the next one, and the next one
leaves the machine as it was before either started.

Runs before the suite's node (files run in name order), since one node runs on a
machine at a time."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.conftest import need_a_node
from tests.deploy.machine_state import BRIDGE, MachineState
from tests.deploy.node import find_node_binaries, node_running
from tests.deploy.node_claim import machine_claimed, sweep_leftovers
from tests.deploy.node_env import report

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _wait_ready(child: subprocess.Popen[str], timeout_s: float) -> None:
    assert child.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(child.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    lines = []
    while time.monotonic() < deadline:
        if selector.select(timeout=1):
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.strip() == "READY":
                return
    raise AssertionError("the node to be killed never got ready:\n" + "".join(lines[-40:]))


@pytest.mark.timeout(600)
def test_a_node_killed_without_its_close_is_swept_by_the_next(tmp_path: Path) -> None:
    need_a_node(image_needed=False)
    bins = find_node_binaries()
    assert bins is not None
    dead_dir, next_dir = tmp_path / "dead", tmp_path / "next"
    own = (dead_dir, next_dir)
    # Whatever earlier dead nodes left is swept first (the killed node's start would
    # sweep it, and then it would not be there after).
    with machine_claimed():
        sweep_leftovers(BRIDGE, Path("/run/none"), bins.kube_proxy)
        before = MachineState.read(own)
    info_path = tmp_path / "dead.json"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.deploy.dead_node_child", str(dead_dir), str(info_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_ready(child, 240)
        info = json.loads(info_path.read_text())
    finally:
        os.kill(child.pid, signal.SIGKILL)  # the node's processes live on, as after a timeout
        child.wait(30)
        assert child.stdout is not None
        child.stdout.close()
    left = MachineState.read(own, info["pids"])
    # What it left is real: its processes, its bridge, its rules, its pod's mounts.
    assert left.processes, "nothing of the killed node was left running"
    assert BRIDGE in left.links
    assert left.iptables != before.iptables
    assert set(left.mounts) - set(before.mounts)

    started = time.monotonic()
    with node_running(next_dir) as node:
        took = time.monotonic() - started
        swept = list(node.swept)
        still = MachineState.read((), info["pids"]).processes
        assert not still, f"the killed node's processes run beside the next one: {still}"
        assert "Ready" in node.kubectl("get", "nodes")
    after = MachineState.read(own, info["pids"])
    report(f"[dead node] the next node started in {took:.1f} s after taking away: "
           f"{'; '.join(swept)}")  # fmt: skip
    assert any("processes of a dead node" in s for s in swept), swept
    assert any(BRIDGE in s for s in swept), swept
    problems = before.differences(after)
    assert not problems, "\n".join(problems)
