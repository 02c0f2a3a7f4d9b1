"""Triton's own load generator, ``perf_analyzer``, for tests and benchmarks run against torchgate.

It ships as a binary in tritonclient's manylinux wheels up to 2.50 (later wheels leave it out), linked against
CUDA's runtime library (``libcudart.so.12``, from PyPI's ``nvidia-cuda-runtime-cu12``; nothing here touches a
GPU) and libb64 (Debian's ``libb64-0d``). ``python -m harness.perf_analyzer install FOLDER`` puts the binary
and the CUDA library in FOLDER from PyPI (``make perf-analyzer`` does, into ``.venv/perf_analyzer``).
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from harness.procs import ROOT

FOLDER = ROOT / ".venv" / "perf_analyzer"
TRITONCLIENT = "tritonclient==2.50.0"  # the last wheel that ships perf_analyzer
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12==12.9.79"
BINARY = "perf_analyzer"


def missing(folder: Path = FOLDER) -> str | None:
    """Return why perf_analyzer cannot run from ``folder`` (None when it can)."""
    if not (folder / BINARY).is_file():
        return f"perf_analyzer is not installed in {folder}: make perf-analyzer"
    if ctypes.util.find_library("b64") is None and not list(folder.glob("libb64.so*")):
        return "libb64 is not installed: apt-get install libb64-0d (make perf-analyzer does, as root in CI)"
    return None


def command(folder: Path = FOLDER) -> tuple[list[str], dict[str, str]]:
    """Return perf_analyzer's command and the environment it runs in (its libraries found in ``folder``)."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(folder), env.get("LD_LIBRARY_PATH", "")) if p)
    return [str(folder / BINARY)], env


def install(folder: Path) -> None:
    """Download the wheels from PyPI and keep perf_analyzer and libcudart.so.12 in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in (TRITONCLIENT, CUDA_RUNTIME):
            subprocess.run(
                [
                    sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64",
                    "--python-version", "3.11", "--dest", tmp, spec,
                ],
                check=True,
                timeout=600,
            )  # fmt: skip
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name.endswith(f"/bin/{BINARY}") or name.endswith("/libcudart.so.12"):
                        target = folder / Path(name).name
                        with archive.open(name) as source, open(target, "wb") as out:
                            shutil.copyfileobj(source, out)
                        target.chmod(0o755)
    if not (folder / BINARY).is_file() or not (folder / "libcudart.so.12").is_file():
        raise SystemExit(
            f"perf_analyzer or libcudart.so.12 missing from the wheels of {TRITONCLIENT}, {CUDA_RUNTIME}"
        )


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "install":
        raise SystemExit("usage: python -m harness.perf_analyzer install FOLDER")
    install(Path(sys.argv[2]))
