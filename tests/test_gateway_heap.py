"""gateway.heap: a served gateway process uses freed memory again instead of faulting in fresh pages.

Each check runs in a fresh Python (the settings are process-wide): it loads ``gateway.wsgi`` as gunicorn
does, then allocates and frees request-sized blocks on a thread, as a request thread does, and counts the
thread's page faults (``ru_minflt``).
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from gateway.config import GatewayConfig
from gateway.heap import keep_freed
from harness.procs import run

pytestmark = pytest.mark.timeout(120)

ROUNDS = 20
BLOCK = 4 << 20  # a large body, or one of its copies
LIVE = 4  # blocks held at once; freed together, the heap's top passes glibc's trim threshold
PROBE = f"""
import json, resource, threading
import gateway.wsgi
faults = []
def requests():
    held = [bytearray({BLOCK}) for _ in range({LIVE})]  # the heap grows to its working size
    del held
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range({ROUNDS}):
        held = [bytearray({BLOCK}) for _ in range({LIVE})]
        del held
    faults.append((resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) / {ROUNDS})
thread = threading.Thread(target=requests); thread.start(); thread.join()
print(json.dumps(faults[0]))
"""


def _faults_per_round(keep: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHGATE_")}
    if keep is not None:
        env["TORCHGATE_HEAP_KEEP_BYTES"] = keep
    env["TORCHGATE_MODEL_REPOSITORY"] = "deploy/model_repository"
    done = run([sys.executable, "-c", PROBE], env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.processes
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and ru_minflt per thread")
def test_a_served_gateway_reuses_freed_blocks() -> None:
    kept = _faults_per_round(None)  # the default
    given_back = _faults_per_round("0")  # glibc's own thresholds
    pages = LIVE * BLOCK // 4096
    assert given_back > pages / 2, f"without the setting the probe should fault ({given_back} faults)"
    assert kept < pages / 100, f"{kept} page faults per round of {LIVE} x {BLOCK} bytes allocated and freed"


def test_zero_keeps_the_allocators_defaults() -> None:
    assert keep_freed(0) is False


def test_a_negative_amount_is_refused() -> None:
    with pytest.raises(ValueError, match="HEAP_KEEP_BYTES"):
        GatewayConfig.from_env({"TORCHGATE_HEAP_KEEP_BYTES": "-1"})
