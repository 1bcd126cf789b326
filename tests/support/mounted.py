"""A Secret volume as the kubelet keeps it, for tests of files that are rotated in place."""

from __future__ import annotations

import os
from pathlib import Path


class Mounted:
    """A Secret volume as the kubelet keeps it: `password -> ..data/password`."""

    def __init__(self, root: Path, value: str) -> None:
        self.root = root
        self.n = 0
        self.update(value)
        (root / "password").symlink_to("..data/password")

    def update(self, value: str) -> None:
        self.n += 1
        version = self.root / f"..2026_12_07_00_00_0{self.n}"
        version.mkdir()
        (version / "password").write_text(value + "\n")
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, self.root / "..data")

    @property
    def path(self) -> Path:
        return self.root / "password"
