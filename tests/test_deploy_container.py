"""The container recipe: hadolint finds nothing, and the image's exact start command serves and stops on the
host.

No image can be built here (no container daemon, no base images), so the test runs the image's ENTRYPOINT with
the image's environment, only the run directory and the ports moved into the test's own, and checks what a
container runtime would see: readiness through the HEALTHCHECK command, SIGTERM (``docker stop``) turning
readiness to 503 (gRPC's ServerReady to false) while requests are still served over HTTP and gRPC, then a
clean exit with every process drained and no supervisord CRIT or WARN line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from packaging.requirements import Requirement

from harness import ROOT, Processes, free_port, run, wait_for
from harness.dockerfile import environment, exec_form, healthcheck, instructions
from harness.wheel import InstalledWheel

pytestmark = pytest.mark.xdist_group("wheel")  # one wheel build per session, never two at once in one tree
DOCKERFILE = ROOT / "deploy" / "container" / "Dockerfile"
BIN = Path(sys.executable).parent
DIGIT = [0.0] * 64


@pytest.mark.processes
def test_hadolint_finds_nothing() -> None:
    done = run([str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)], timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_recipe_runs_as_a_user_with_the_run_directory_on_a_volume() -> None:
    steps = instructions(DOCKERFILE)
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = environment(DOCKERFILE)
    volumes = [rest for word, rest in steps if word == "VOLUME"]
    assert volumes and any(env["TORCHGATE_RUN_DIR"].startswith(v.strip('[]" ')) for v in volumes)
    assert "cuda" in steps[[w for w, _ in steps].index("FROM") - 1][1].lower()  # the ARG naming the base
    assert exec_form(DOCKERFILE, "ENTRYPOINT")[:2] == ["torchgate", "serve"]
    assert healthcheck(DOCKERFILE) == ["torchgate", "probe"]  # /v2/health/ready, with the run dir's token
    assert [rest for word, rest in steps if word == "STOPSIGNAL"] == ["SIGTERM"]


def test_image_installs_torch_from_the_supported_range() -> None:
    """The image's default torch is the range the worker extra declares, not a pin of its own."""
    args = [
        rest for word, rest in instructions(DOCKERFILE) if word == "ARG" and rest.startswith("TORCH_SPEC=")
    ]
    assert len(args) == 1
    spec = args[0].split("=", 1)[1].strip('"')
    worker = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "worker"
    ]
    declared = next(r for r in worker if Requirement(r).name == "torch")
    assert Requirement(spec) == Requirement(declared)


@pytest.mark.processes
def test_the_image_start_command_serves_and_drains_on_sigterm(
    tmp_path: Path, processes: Processes, installed_wheel: InstalledWheel
) -> None:
    """As the image does: the wheel installed (here into a folder of its own), started from another folder."""
    env = {**os.environ, **environment(DOCKERFILE), **installed_wheel.environment}
    assert (env["TORCHGATE_SERVE_PORT"], env["TORCHGATE_SERVE_GRPC_PORT"]) == ("8000", "8001")  # Triton's
    port, grpc_port = free_port(), free_port()
    env.update(
        PATH=f"{installed_wheel.target / 'bin'}:{BIN}:{os.environ['PATH']}",
        TORCHGATE_RUN_DIR=str(tmp_path / "run"),
        TORCHGATE_SERVE_HOST="127.0.0.1",  # the image binds 0.0.0.0 inside its own network namespace
        TORCHGATE_SERVE_PORT=str(port),
        TORCHGATE_SERVE_GRPC_PORT=str(grpc_port),
        TORCHGATE_SERVE_CPU_WORKERS="1",
        TORCHGATE_SERVE_GPUS="none",
    )
    grace = float(env["TORCHGATE_SERVE_UNREADY_GRACE_SECONDS"])
    assert grace > 0
    proc = processes.start("serve", exec_form(DOCKERFILE, "ENTRYPOINT"), env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    infer = f"{url}/v2/models/digits/infer"
    body: dict[str, Any] = {
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": DIGIT}]
    }

    def log() -> str:
        return processes.log("serve")

    try:
        wait_for(
            lambda: proc.poll() is not None or "torchgate: serving" in log(),
            timeout=120,
            interval=0.2,
            what="the start command to serve",
        )
        assert proc.poll() is None, log()
        probe = run(healthcheck(DOCKERFILE), timeout=30, env=env)
        assert probe.returncode == 0, probe.stdout + probe.stderr

        # `torchgate ctl` is supervisorctl with the run directory's file (and its generated credentials); a
        # worker counts as RUNNING once it stayed up --worker-startsecs, which may come after readiness.
        def every_program_running() -> subprocess.CompletedProcess[str] | None:
            done = run(["torchgate", "ctl", "status"], timeout=30, env=env)
            running = {line.split()[0] for line in done.stdout.splitlines() if " RUNNING " in line}
            return (
                done
                if done.returncode == 0 and running >= {"gateway", "grpc", "dispatcher", "worker-cpu-0"}
                else None
            )

        ctl = wait_for(
            every_program_running,
            timeout=60,
            interval=0.5,
            what="torchgate ctl status to show every process RUNNING",
        )
        running = {line.split()[0] for line in ctl.stdout.splitlines() if " RUNNING " in line}
        assert running >= {"gateway", "grpc", "dispatcher", "worker-cpu-0"}, ctl.stdout
        assert requests.post(infer, json=body, timeout=10).status_code == 200
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert grpc.is_server_ready(client_timeout=10)

        proc.send_signal(signal.SIGTERM)  # docker stop, or the kubelet
        wait_for(
            lambda: requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 503,
            timeout=grace,
            interval=0.05,
            what="readiness to turn 503",
        )
        # Still serving during the grace period: the load balancer has not caught up yet.
        assert requests.post(infer, json=body, timeout=10).status_code == 200
        assert not grpc.is_server_ready(client_timeout=10)
        tensor = grpcclient.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
        assert grpc.infer("digits", [tensor], client_timeout=10).as_numpy("output").shape == (1, 10)
        grpc.close()
        assert requests.get(f"{url}/v2/health/live", timeout=5).status_code == 200
        unhealthy = run(healthcheck(DOCKERFILE), timeout=30, env=env)
        assert unhealthy.returncode != 0
        assert proc.wait(timeout=grace + 90) == 0, log()
    finally:
        processes.kill_all()
    text = log()
    shipped = installed_wheel.target / "deploy" / "model_repository"
    assert f"--model-repository {shipped}" in (tmp_path / "run" / "supervisord.conf").read_text()
    assert "waiting for" in text and "stopped: gateway" in text, text
    noisy = [line for line in text.splitlines() if " CRIT " in line or " WARN " in line]
    assert not noisy, noisy
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=5)
