"""The stop plan of `torchgate serve`: SIGTERM waits out the unready grace, anything else stops at once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from deploy.serve import StopPlan, mark_draining
from deploy.settings import DeploySettings


def settings(tmp_path: Path) -> DeploySettings:
    s = DeploySettings(run_dir=tmp_path / "run", cpu_workers=1)
    s.run_dir.mkdir(parents=True)
    return s


def test_sigterm_marks_draining_and_waits_the_grace(tmp_path: Path) -> None:
    s = settings(tmp_path)
    plan = StopPlan(s, unready_grace=60.0)
    assert not plan.requested and not plan.due()
    plan.on_signal(signal.SIGTERM)
    assert s.drain_flag.exists()  # readiness answers 503 from now on
    assert plan.requested and not plan.due()
    plan.on_signal(signal.SIGTERM)  # a second signal: stop now
    assert plan.due()


def test_ctrl_c_skips_the_grace(tmp_path: Path) -> None:
    s = settings(tmp_path)
    plan = StopPlan(s, unready_grace=60.0)
    plan.on_signal(signal.SIGINT)
    assert s.drain_flag.exists() and plan.due()


def test_an_earlier_drain_counts_towards_the_grace(tmp_path: Path) -> None:
    """A preStop hook (`torchgate drain --wait N`) already waited: the SIGTERM after it drains at once."""
    s = settings(tmp_path)
    began = mark_draining(s)
    os.utime(s.drain_flag, (began - 30, began - 30))
    assert mark_draining(s) == began - 30  # kept, not restarted
    plan = StopPlan(s, unready_grace=10.0)
    plan.on_signal(signal.SIGTERM)
    assert plan.due()
    fresh = StopPlan(settings(tmp_path / "other"), unready_grace=10.0)
    fresh.on_signal(signal.SIGTERM)
    assert fresh.stop_at is not None and fresh.stop_at > time.time() + 5
