"""`torchgate serve` under real supervisord: scaling, draining and rolling restarts under load; a broken
model.

Each test starts `torchgate serve` the way an operator does, in a temporary run directory, waits for readiness
by polling (never a fixed sleep), drives it with `supervisorctl` and `torchgate`, and always tears it down.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from deploy.dispatcher_status import wait_until_ready, worker_statuses
from deploy.supervisor_rpc import FATAL, STOPPED
from harness import DEFAULT_REPOSITORY, DIGIT_BODY, HttpLoad, Stack, run, short_dir, wait_for

pytestmark = pytest.mark.processes


@pytest.fixture
def base() -> Iterator[Path]:
    with short_dir() as path:
        yield path


def serve(base: Path, *options: str) -> Stack:
    """A stack that `torchgate serve` runs from ``base/run``, logging to ``base``."""
    return Stack.at(base).serve(*options)


@pytest.fixture
def deployment(base: Path) -> Iterator[Stack]:
    options = ("--gpus", "none", "--cpu-workers", "2", "--spare-slots", "1", "--worker-threads", "1")
    with serve(base, *options, "--worker-startsecs", "2", "--gateway-threads", "4") as d:
        d.wait_serving()
        d.wait_ready()
        d.wait_workers("worker-cpu-0", "worker-cpu-1")
        yield d


def test_scale_up_and_down_under_load_fails_no_request(deployment: Stack) -> None:
    d = deployment
    assert d.ready_workers() == {"worker-cpu-0", "worker-cpu-1"}
    assert "(2 worker slots running, 1 not started)" in d.log()  # what serve said: the spare is not started
    status = d.ctl("status")
    assert "worker-cpu-2" in status.stdout and "STOPPED" in status.stdout
    before = d.pids()
    with HttpLoad(d.url) as load:
        load.wait_for_more(20)

        # Up: start the rendered spare slot. Nothing else restarts.
        done = d.ctl("start", "worker-cpu-2")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until_ready(d.frontend, "worker-cpu-2", timeout=60)
        load.wait_for_more(20)

        # Up beyond the rendered slots: a new program in conf.d, activated alone. A pending edit of another
        # slot (which `supervisorctl update` would apply by restarting that slot) is reported and left alone.
        conf = d.run_dir / "supervisord.conf"
        text = conf.read_text()
        at = text.index("startretries=", text.index("[program:worker-cpu-1]"))
        conf.write_text(text[:at] + "startretries=7\n;" + text[at:])
        done = d.torchgate("add-worker")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "worker-cpu-3: ready" in done.stdout
        assert "left untouched" in done.stderr and "worker-cpu-1" in done.stderr
        assert (d.run_dir / "conf.d" / "worker-cpu-3.conf").is_file()
        load.wait_for_more(20)
        after_up = d.pids()
        assert {n: after_up[n] for n in before} == before, "scaling up restarted a running process"
        assert d.ready_workers() == {"worker-cpu-0", "worker-cpu-1", "worker-cpu-2", "worker-cpu-3"}

        # Down: stop (drain) a rendered slot and remove the added one, under load.
        done = d.ctl("stop", "worker-cpu-0")
        assert done.returncode == 0, done.stdout + done.stderr
        assert d.supervisor.info("worker-cpu-0")["statename"] == STOPPED
        assert d.supervisor.info("worker-cpu-0")["exitstatus"] == 0  # drained, not killed
        done = d.torchgate("remove-worker", "worker-cpu-3")
        assert done.returncode == 0, done.stdout + done.stderr
        load.wait_for_more(40)
    assert load.failures() == [], [o.describe() for o in load.failures()[:5]]
    assert d.ready_workers() == {"worker-cpu-1", "worker-cpu-2"}
    after = d.pids()
    assert "worker-cpu-3" not in d.supervisor.processes()
    for name in ("dispatcher", "gateway", "worker-cpu-1"):
        assert after[name] == before[name], f"{name} restarted"


def test_rolling_restart_under_load_fails_no_request(deployment: Stack) -> None:
    d = deployment
    before = d.pids()
    with HttpLoad(d.url) as load:
        load.wait_for_more(20)
        done = d.torchgate("rolling-restart")
        assert done.returncode == 0, done.stdout + done.stderr
        load.wait_for_more(20)
    assert load.failures() == [], [o.describe() for o in load.failures()[:5]]
    assert "restarted 2 slots: worker-cpu-0 worker-cpu-1" in done.stdout
    after = d.pids()
    for name in ("worker-cpu-0", "worker-cpu-1"):
        assert after[name] != before[name], f"{name} was not restarted"
    for name in ("dispatcher", "gateway"):
        assert after[name] == before[name], f"{name} restarted"
    assert "worker-cpu-2" not in after  # the stopped spare stays stopped
    statuses = worker_statuses(d.frontend)
    assert {n for n, w in statuses.items() if w.ready} == {"worker-cpu-0", "worker-cpu-1"}
    assert {statuses[n].pid for n in ("worker-cpu-0", "worker-cpu-1")} == {
        after["worker-cpu-0"],
        after["worker-cpu-1"],
    }

    # SIGTERM to `torchgate serve` (what Ctrl-C and systemd do) stops everything, each worker drained.
    assert d.terminate() == 0, d.log()[-2000:]
    for pid in after.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for name in ("worker-cpu-0", "worker-cpu-1", "gateway", "dispatcher"):
        assert f"stopped: {name} (exit status 0)" in d.log()


def test_serve_exits_non_zero_with_each_fatal_slots_reason_when_no_model_can_be_served(base: Path) -> None:
    repository = base / "broken"
    shutil.copytree(DEFAULT_REPOSITORY, repository)
    (repository / "digits" / "1" / "model.pt2").write_bytes(b"not a model")
    options = ("--model-repository", str(repository), "--gpus", "none", "--cpu-workers", "1")
    with serve(
        base, *options, "--worker-startsecs", "30", "--worker-startretries", "1", "--ready-timeout", "120"
    ) as d:
        assert d.started["serve"].wait(timeout=180) == 1, d.log()
        out = d.log()
        log_path = d.run_dir / "logs" / "worker-cpu-0.log"
        assert "worker-cpu-0 is FATAL (gave up after its retries): " in out, out
        assert "model 'digits' version 1 (" in out and f"see {log_path}" in out, out
        assert "no model can be served" in out
        assert "cannot load" in log_path.read_text()
        assert not d.supervisor.is_up(), "supervisord still runs after serve gave up"


def test_serve_says_so_and_exits_137_when_supervisord_is_killed(base: Path) -> None:
    """kill -9 of supervisord ends `torchgate serve` with a shell's status for SIGKILL and a line saying why
    (it ended with status 247 and not a word); every process supervisord ran ends with it."""
    options = ("--gpus", "none", "--cpu-workers", "1", "--worker-threads", "1", "--worker-startsecs", "2")
    with serve(base, *options) as d:
        d.wait_serving()
        d.wait_ready()
        programs = [info["pid"] for info in d.supervisor.processes().values() if info["pid"]]
        os.kill(int((d.run_dir / "supervisord.pid").read_text()), signal.SIGKILL)
        assert d.started["serve"].wait(timeout=60) == 137, d.log()
        said = "torchgate: supervisord was killed by SIGKILL; every process it ran stops with it. Logs: "
        assert said in d.log(), d.log()
        wait_for(lambda: not any(_alive(pid) for pid in programs), 30, 0.2, "supervisord's programs to end")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; its new parent reaps it when it will


def test_rolling_restart_stops_at_a_slot_that_cannot_load_and_the_others_keep_serving(base: Path) -> None:
    repository = base / "repository"
    shutil.copytree(DEFAULT_REPOSITORY, repository)
    options = ("--model-repository", str(repository), "--gpus", "none", "--cpu-workers", "2")
    with serve(
        base, *options, "--worker-threads", "1", "--worker-startsecs", "30", "--worker-startretries", "0"
    ) as d:
        d.wait_serving()
        d.wait_ready()
        d.wait_workers("worker-cpu-0", "worker-cpu-1")
        before = d.pids()
        with HttpLoad(d.url) as load:
            load.wait_for_more(20)
            (repository / "digits" / "1" / "model.pt2").write_bytes(b"a bad new version")
            done = d.torchgate("rolling-restart", "--ready-timeout", "60")
            assert done.returncode == 1, done.stdout + done.stderr
            assert "worker-cpu-0 did not start again" in done.stderr and "worker-cpu-0.log" in done.stderr
            load.wait_for_more(20)
        assert load.failures() == [], [o.describe() for o in load.failures()[:5]]
        assert d.supervisor.info("worker-cpu-0")["statename"] == FATAL
        assert d.pids()["worker-cpu-1"] == before["worker-cpu-1"], "the restart went on past a failed slot"
        assert d.ready_workers() == {"worker-cpu-1"}
        assert "cannot load" in (d.run_dir / "logs" / "worker-cpu-0.log").read_text()


def test_a_model_in_a_slot_of_its_own_that_cannot_load_leaves_the_others_serving(base: Path) -> None:
    repository = base / "repository"
    shutil.copytree(DEFAULT_REPOSITORY, repository)
    shutil.copytree(DEFAULT_REPOSITORY / "digits", repository / "broken")
    config = (repository / "broken" / "config.toml").read_text().replace('name = "digits"', 'name = "broken"')
    (repository / "broken" / "config.toml").write_text(
        config.replace("[dynamic_batching]", '[[instance_group]]\nkind = "KIND_CPU"\n\n[dynamic_batching]')
    )
    (repository / "broken" / "1" / "model.pt2").write_bytes(b"not a model")
    options = ("--model-repository", str(repository), "--gpus", "none", "--cpu-workers", "1")
    with serve(base, *options, "--worker-startsecs", "2", "--worker-startretries", "0") as d:
        d.wait_serving(timeout=180)
        out = d.log()
        assert "worker-broken-cpu-0: CPU, 1 threads, serves broken" in out, out
        assert "worker-cpu-0: CPU, 1 threads, serves digits" in out, out
        assert re.search(
            r"worker-broken-cpu-0 is (FATAL|EXITED) \(.*\): .*model 'broken' version 1 \(", out
        ), out
        assert "model broken is UNAVAILABLE: model 'broken' version 1 (" in out, out
        assert (
            requests.post(f"{d.url}/v2/models/digits/infer", json=DIGIT_BODY, timeout=30).status_code == 200
        )
        ready = requests.get(f"{d.url}/v2/models/broken/ready", timeout=10)
        assert ready.status_code == 400 and "cannot load as backend 'torch_export'" in ready.json()["error"]
        status = d.torchgate("status")
        assert "model digits version 1: READY on 1 worker(s)" in status.stdout, status.stdout
        resident = re.compile(r"worker-cpu-0 +RUNNING .*dispatcher: READY, \d+ MiB resident")
        wait_for(  # from the worker's heartbeats, the first of which may still be on its way
            lambda: resident.search(d.torchgate("status").stdout), timeout=30, what="the worker's memory"
        )
        assert "model broken version 1: UNAVAILABLE: model 'broken' version 1 (" in status.stdout


def _cuda_usable() -> bool:
    from deploy.gpus import discover_gpus

    if not discover_gpus():
        return False
    probe = run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"])
    return probe.stdout.strip() == "True"


@pytest.mark.gpu
def test_each_gpu_slot_sees_only_its_own_device(base: Path) -> None:
    if not _cuda_usable():
        pytest.skip("no CUDA device (or a CPU-only torch build)")
    from deploy.gpus import discover_gpus

    gpus = [g.index for g in discover_gpus()]
    with serve(base, "--gpus", "all", "--cpu-workers", "0", "--worker-startsecs", "60") as d:
        d.wait_serving(timeout=300)
        d.wait_ready()
        slots = [f"worker-gpu{n}-0" for n in gpus]
        d.wait_workers(*slots, timeout=300)
        statuses = worker_statuses(d.frontend)
        for n, name in zip(gpus, slots, strict=True):
            assert statuses[name].pid is not None
            environ = Path(f"/proc/{statuses[name].pid}/environ").read_bytes().split(b"\0")
            assert f"CUDA_VISIBLE_DEVICES={n}".encode() in environ
        response = requests.post(f"{d.url}/v2/models/digits/infer", json=DIGIT_BODY, timeout=30)
        assert response.status_code == 200, response.text
