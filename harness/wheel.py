"""Build torchgate's wheel with ``python -m build`` and install it into a folder of its own."""

from __future__ import annotations

import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from harness.procs import ROOT, run


@dataclass(frozen=True)
class InstalledWheel:
    wheel: Path
    target: Path  # pip install --target: the packages, and bin/torchgate

    @property
    def environment(self) -> dict[str, str]:
        """Variables that make this folder's copy of torchgate the one imported (ahead of the checkout's)."""
        return {"PYTHONPATH": str(self.target)}

    def metadata(self) -> str:
        with zipfile.ZipFile(self.wheel) as z:
            name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            return z.read(name).decode()

    def names(self) -> list[str]:
        with zipfile.ZipFile(self.wheel) as z:
            return z.namelist()


def build_and_install(out: Path) -> InstalledWheel:
    """Build the wheel into ``out`` with ``python -m build`` and install it, without dependencies, beside
    it."""
    run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        timeout=300,
        check=True,
    )
    wheel = next(out.glob("torchgate-*.whl"))
    target = out / "site"
    run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        timeout=300,
        check=True,
    )
    return InstalledWheel(wheel, target)
