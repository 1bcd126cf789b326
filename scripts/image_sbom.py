"""Write a CycloneDX 1.5 SBOM (JSON) of a built image's Python environment.

    python scripts/image_sbom.py IMAGE OUT.json

The distributions are read inside the image itself (podman runs its own Python
on its virtualenv, read-only, no network), so the SBOM lists what the image
holds, not what a lock file says it should.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run inside the image: every distribution the virtualenv holds, as JSON.
_DUMP = """
import importlib.metadata as md, json, sys
out = []
for d in md.distributions():
    m = d.metadata
    out.append({"name": m["Name"], "version": d.version,
                "license": m.get("License-Expression") or m.get("License") or "",
                "summary": m.get("Summary") or ""})
json.dump(sorted(out, key=lambda x: x["name"].lower()), sys.stdout)
"""


def distributions(image: str) -> list[dict[str, str]]:
    proc = subprocess.run(
        ["podman", "run", "--rm", "--read-only", "--network", "none", "--user", "10001:10001",
         "--entrypoint", "/opt/venv/bin/python", image, "-c", _DUMP],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    found: list[dict[str, str]] = json.loads(proc.stdout)
    return found


def _purl_name(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def bom(image: str, dists: list[dict[str, str]]) -> dict[str, Any]:
    components = []
    for d in dists:
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": f"pkg:pypi/{_purl_name(d['name'])}@{d['version']}",
            "name": d["name"],
            "version": d["version"],
            "purl": f"pkg:pypi/{_purl_name(d['name'])}@{d['version']}",
        }
        if d["summary"]:
            component["description"] = d["summary"]
        license_text = d["license"].strip()
        if license_text and "\n" not in license_text and len(license_text) < 100:
            component["licenses"] = [{"expression": license_text}]
        components.append(component)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "scripts/image_sbom.py"}]},
            "component": {"type": "container", "bom-ref": image, "name": image},
        },
        "components": components,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    image, out = argv
    doc = bom(image, distributions(image))
    Path(out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"SBOM of {image}: {len(doc['components'])} components in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
