"""`torchgate check` on good and bad repositories, run as a user would (each model loads in a subprocess)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import DEFAULT_REPOSITORY, run

pytestmark = pytest.mark.processes


def torchgate(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "deploy.cli", *args], timeout=300)


def test_check_passes_good_models_and_names_each_broken_one(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_REPOSITORY / "digits", tmp_path / "digits")
    typo = tmp_path / "typo"
    shutil.copytree(DEFAULT_REPOSITORY / "digits", typo)
    config = (typo / "config.toml").read_text().replace('name = "digits"', 'name = "typo"')
    (typo / "config.toml").write_text(config.replace("max_batch_size", "max_batch_sise"))
    broken = tmp_path / "broken"
    shutil.copytree(DEFAULT_REPOSITORY / "digits", broken)
    (broken / "config.toml").write_text(config.replace('name = "typo"', 'name = "broken"'))
    (broken / "1" / "model.pt2").write_bytes(b"not an exported program")
    done = torchgate("check", "--model-repository", str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = {
        line.split()[1].rstrip(":"): line
        for line in done.stdout.splitlines()
        if line.startswith(("OK", "FAIL"))
    }
    assert lines["digits"].startswith("OK    digits version 1: loaded and warmed up in ")
    assert "input FP32 [-1, 64] -> output FP32 [-1, 10] (torch_export)" in lines["digits"]
    assert lines["typo"].startswith("FAIL  typo: ") and "did you mean max_batch_size?" in lines["typo"]
    assert lines["broken"].startswith("FAIL  broken version 1: model 'broken' version 1 (")
    assert "cannot load as backend 'torch_export'" in lines["broken"]
    assert "1 OK, 2 failed" in done.stdout
    # --no-load checks the configs only, and --model a subset.
    done = torchgate("check", "--model-repository", str(tmp_path), "--no-load", "--model", "digits")
    assert done.returncode == 0 and "1 OK, 0 failed" in done.stdout, done.stdout + done.stderr
    # ... and says so: nothing was loaded or warmed up.
    assert "OK    digits: config checked, not loaded (--no-load); input FP32 [-1, 64]" in done.stdout
    assert "warmed up" not in done.stdout
