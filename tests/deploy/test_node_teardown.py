"""The node leaves the machine as it found it.

Runs after the other node tests (files run in name order): it takes the node down
itself (workloads first, then the broker, then every process by the pid it was
started with, kube-proxy's and the kubelet's iptables chains, the nftables tables
they needed, the mounts under its directories, the bridge, the cgroups, the paths it
created) and compares what `MachineState` reads now with what it read before the
node started.
"""

from __future__ import annotations

import time

import pytest

from tests.deploy.node_env import NodeEnv, report

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_the_machine_is_left_as_found(pods_cluster: NodeEnv) -> None:
    env = pods_cluster
    node = env.node
    before = node.before
    assert before is not None
    pids = node.pids()
    during = node.machine_state()
    # The node did change the machine while it ran (so the comparison below means something).
    assert during.iptables != before.iptables, "no KUBE-* rules while running?"
    assert "gr-node0" in during.links
    started = time.monotonic()
    env.close()
    took = time.monotonic() - started
    after = node.machine_state()
    after.processes = type(after).read((), pids).processes  # every pid the node started
    problems = before.differences(after)
    report(f"[teardown] {took:.1f} s; {len(during.iptables)} node rules and chains, "
          f"{len(during.mounts)} mounts, {len(during.cgroups)} cgroups while running; "
          f"differences after: {problems or 'none'}")  # fmt: skip
    assert not problems, "\n".join(problems)
