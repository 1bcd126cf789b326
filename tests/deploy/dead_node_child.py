"""A node that dies without its close(): the test of tests/deploy/node_claim.py runs
this in a process of its own, waits for READY and kills that process, as a timeout or
the end of a machine's session kills a pytest in the middle of the node tests.

The node has what a killed node of the suite would leave: its processes (which live
on, each in a session of its own), a pod with its sandbox, shim, network namespace,
cgroups and mounts, and a process in a directory it owns (the broker beside it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.deploy.control_plane import ApiError, find_binaries
from tests.deploy.node import PAUSE_IMAGE, Node, find_node_binaries

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "left-behind"},
    "spec": {
        "automountServiceAccountToken": False,
        "containers": [{"name": "pause", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}],
    },
}


def main(workdir: Path, out: Path) -> None:
    binaries, node_bins = find_binaries(), find_node_binaries()
    assert binaries is not None
    assert node_bins is not None
    node = Node(binaries, node_bins, workdir / "node").start()
    beside = workdir / "beside"
    beside.mkdir(parents=True, exist_ok=True)
    node.own(beside)
    subprocess.Popen(["sleep", "3600"], cwd=beside, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:  # the namespace's service account comes a moment after the plane
        try:
            node.api.create("/api/v1/namespaces/default/pods", POD)
            break
        except ApiError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    while (
        node.api.get("/api/v1/namespaces/default/pods/left-behind")["status"].get("phase")
        != "Running"
    ):
        if time.monotonic() > deadline:
            raise TimeoutError("the pod never ran")
        time.sleep(0.5)
    out.write_text(json.dumps({"pids": node.pids(), "run_dir": str(node.run_dir)}))
    print("READY", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
