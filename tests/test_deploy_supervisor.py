"""`torchgate serve` under real supervisord: scaling, draining and rolling restarts under load; a broken model.

Each test starts `torchgate serve` the way an operator does, in a temporary run directory, waits for readiness
by polling (never a fixed sleep), drives it with `supervisorctl` and `torchgate`, and always tears it down.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from deploy.dispatcher_status import wait_until_ready, worker_statuses
from deploy.settings import DeploySettings
from deploy.supervisor_rpc import FATAL, STOPPED, Supervisor
from tests.conftest import DEFAULT_REPOSITORY, wait_for

BIN = Path(sys.executable).parent
DIGIT = [
    0,
    0,
    5,
    13,
    9,
    1,
    0,
    0,
    0,
    0,
    13,
    15,
    10,
    15,
    5,
    0,
    0,
    3,
    15,
    2,
    0,
    11,
    8,
    0,
    0,
    4,
    12,
    0,
    0,
    8,
    8,
    0,
    0,
    5,
    8,
    0,
    0,
    9,
    8,
    0,
    0,
    4,
    11,
    0,
    1,
    12,
    7,
    0,
    0,
    2,
    14,
    5,
    10,
    12,
    0,
    0,
    0,
    0,
    6,
    13,
    10,
    0,
    0,
    0,
]
INFER_BODY: dict[str, Any] = {
    "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": DIGIT}]
}
COMMAND_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Deployment:
    """One `torchgate serve` process and the supervisord it runs, torn down whatever happens."""

    def __init__(self, run_dir: Path, *options: str) -> None:
        self.run_dir = run_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = open(run_dir.parent / "serve.out", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN / "torchgate"), "serve", "--run-dir", str(run_dir), "--port", str(self.port), *options],
            stdout=self.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.settings: DeploySettings | None = None

    def wait_serving(self, timeout: float = 90.0) -> None:
        """Wait until `torchgate serve` says it serves (it checked readiness itself); fail if it exited."""
        wait_for(
            lambda: self.proc.poll() is not None or "torchgate: serving" in self.log(),
            timeout=timeout,
            interval=0.2,
            what="torchgate serve to print its URL",
        )
        assert self.proc.poll() is None, self.log()

    def wait_ready(self, timeout: float = 90.0) -> None:
        self.wait_serving(timeout)
        assert requests.get(f"{self.url}/v2/health/ready", timeout=5).status_code == 200

    def wait_slots(self, *names: str, timeout: float = 60.0) -> None:
        """Wait until exactly these slots are ready in the dispatcher (readiness needs only one per model)."""
        wait_for(
            lambda: self.ready_slots() == set(names),
            timeout=timeout,
            interval=0.2,
            what=f"slots {sorted(names)} to be ready",
        )

    def wait_supervisor(self, timeout: float = 60.0) -> None:
        conf = self.run_dir / "deploy.json"
        wait_for(
            lambda: self.proc.poll() is not None or (conf.exists() and self.supervisor.is_up()),
            timeout=timeout,
            interval=0.2,
            what="supervisord to answer",
        )
        assert self.proc.poll() is None, self.log()

    @property
    def s(self) -> DeploySettings:
        if self.settings is None:
            self.settings = DeploySettings.load(self.run_dir)
        return self.settings

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor.from_conf(self.run_dir / "supervisord.conf", timeout=COMMAND_TIMEOUT)

    def log(self) -> str:
        self.output.flush()
        return (self.run_dir.parent / "serve.out").read_text(errors="replace")

    def pids(self) -> dict[str, int]:
        return {name: info["pid"] for name, info in self.supervisor.processes().items() if info["pid"]}

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run supervisorctl against this run directory, as an operator would."""
        return subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.run_dir / "supervisord.conf"), *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

    def torchgate(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "torchgate"), *args, "--run-dir", str(self.run_dir)],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

    def ready_slots(self) -> set[str]:
        try:
            return {name for name, w in worker_statuses(self.s.frontend_endpoint).items() if w.ready}
        except TimeoutError:
            return set()

    def terminate(self, timeout: float = 90.0) -> int | None:
        """SIGTERM `torchgate serve`, as Ctrl-C or systemd would; return its exit status (None: still running)."""
        try:
            self._pids = [info["pid"] for info in self.supervisor.processes().values() if info["pid"]]
        except Exception:
            pass
        self._supervisord = _read_pid(self.run_dir / "supervisord.pid")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Terminate cleanly if still running; then SIGKILL every process group that is left."""
        if self.proc.poll() is None:
            self.terminate()
        supervisord = getattr(self, "_supervisord", None)
        for pid in [*getattr(self, "_pids", []), *([supervisord] if supervisord else []), self.proc.pid]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.output.close()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class Load:
    """Client threads sending inference requests until stopped; every outcome is recorded."""

    url: str
    threads: int = 2
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for i in range(self.threads):
            thread = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in self._workers), "a load thread did not finish"

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    response = session.post(f"{self.url}/v2/models/digits/infer", json=INFER_BODY, timeout=30)
                    outcome = (
                        None
                        if response.status_code == 200
                        else f"{response.status_code} {response.text[:200]}"
                    )
                except requests.RequestException as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if outcome is None:
                        self.ok += 1
                    else:
                        self.failures.append(outcome)

    def wait_for_more(self, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` more requests succeeded (so the load really ran across a change)."""
        target = self.ok + count
        wait_for(
            lambda: self.ok >= target or self.failures,
            timeout=timeout,
            what=f"{count} more answered requests",
        )


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Short, so that socket paths stay far below the 107-byte unix socket limit.
    base = Path(tempfile.mkdtemp(prefix="tg-"))
    try:
        yield base / "run"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def deployment(run_dir: Path) -> Iterator[Deployment]:
    d = Deployment(
        run_dir,
        "--gpus",
        "none",
        "--cpu-workers",
        "2",
        "--spare-slots",
        "1",
        "--worker-threads",
        "1",
        "--worker-startsecs",
        "2",
        "--gateway-threads",
        "4",
    )
    try:
        d.wait_ready()
        d.wait_slots("worker-cpu-0", "worker-cpu-1")
        yield d
    finally:
        d.stop()


def test_scale_up_and_down_under_load_fails_no_request(deployment: Deployment) -> None:
    d = deployment
    assert d.ready_slots() == {"worker-cpu-0", "worker-cpu-1"}
    status = d.ctl("status")
    assert "worker-cpu-2" in status.stdout and "STOPPED" in status.stdout
    before = d.pids()
    with Load(d.url) as load:
        load.wait_for_more(20)

        # Up: start the rendered spare slot. Nothing else restarts.
        done = d.ctl("start", "worker-cpu-2")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until_ready(d.s.frontend_endpoint, "worker-cpu-2", timeout=60)
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
        assert d.ready_slots() == {"worker-cpu-0", "worker-cpu-1", "worker-cpu-2", "worker-cpu-3"}

        # Down: stop (drain) a rendered slot and remove the added one, under load.
        done = d.ctl("stop", "worker-cpu-0")
        assert done.returncode == 0, done.stdout + done.stderr
        assert d.supervisor.info("worker-cpu-0")["statename"] == STOPPED
        assert d.supervisor.info("worker-cpu-0")["exitstatus"] == 0  # drained, not killed
        done = d.torchgate("remove-worker", "worker-cpu-3")
        assert done.returncode == 0, done.stdout + done.stderr
        load.wait_for_more(40)
    assert load.failures == [], load.failures[:5]
    assert d.ready_slots() == {"worker-cpu-1", "worker-cpu-2"}
    after = d.pids()
    assert "worker-cpu-3" not in d.supervisor.processes()
    for name in ("dispatcher", "gateway", "worker-cpu-1"):
        assert after[name] == before[name], f"{name} restarted"


def test_rolling_restart_under_load_fails_no_request(deployment: Deployment) -> None:
    d = deployment
    before = d.pids()
    with Load(d.url) as load:
        load.wait_for_more(20)
        done = d.torchgate("rolling-restart")
        assert done.returncode == 0, done.stdout + done.stderr
        load.wait_for_more(20)
    assert load.failures == [], load.failures[:5]
    assert "restarted 2 slots: worker-cpu-0 worker-cpu-1" in done.stdout
    after = d.pids()
    for name in ("worker-cpu-0", "worker-cpu-1"):
        assert after[name] != before[name], f"{name} was not restarted"
    for name in ("dispatcher", "gateway"):
        assert after[name] == before[name], f"{name} restarted"
    assert "worker-cpu-2" not in after  # the stopped spare stays stopped
    statuses = worker_statuses(d.s.frontend_endpoint)
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


def test_serve_exits_non_zero_with_each_fatal_slots_reason_when_no_model_can_be_served(run_dir: Path) -> None:
    repository = run_dir.parent / "broken"
    shutil.copytree(DEFAULT_REPOSITORY, repository)
    (repository / "digits" / "1" / "model.pt2").write_bytes(b"not a model")
    d = Deployment(
        run_dir,
        "--model-repository",
        str(repository),
        "--gpus",
        "none",
        "--cpu-workers",
        "1",
        "--worker-startsecs",
        "30",
        "--worker-startretries",
        "1",
        "--ready-timeout",
        "120",
    )
    try:
        assert d.proc.wait(timeout=180) == 1, d.log()
        out = d.log()
        log_path = run_dir / "logs" / "worker-cpu-0.log"
        assert "worker-cpu-0 is FATAL (gave up after its retries): " in out, out
        assert "model 'digits' version 1 (" in out and f"see {log_path}" in out, out
        assert "no model can be served" in out
        assert "cannot load" in log_path.read_text()
        assert not d.supervisor.is_up(), "supervisord still runs after serve gave up"
    finally:
        d.stop()


def test_rolling_restart_stops_at_a_slot_that_cannot_load_and_the_others_keep_serving(run_dir: Path) -> None:
    repository = run_dir.parent / "repository"
    shutil.copytree(DEFAULT_REPOSITORY, repository)
    d = Deployment(
        run_dir,
        "--model-repository",
        str(repository),
        "--gpus",
        "none",
        "--cpu-workers",
        "2",
        "--worker-threads",
        "1",
        "--worker-startsecs",
        "30",
        "--worker-startretries",
        "0",
    )
    try:
        d.wait_ready()
        d.wait_slots("worker-cpu-0", "worker-cpu-1")
        before = d.pids()
        with Load(d.url) as load:
            load.wait_for_more(20)
            (repository / "digits" / "1" / "model.pt2").write_bytes(b"a bad new version")
            done = d.torchgate("rolling-restart", "--ready-timeout", "60")
            assert done.returncode == 1, done.stdout + done.stderr
            assert "worker-cpu-0 did not start again" in done.stderr and "worker-cpu-0.log" in done.stderr
            load.wait_for_more(20)
        assert load.failures == [], load.failures[:5]
        assert d.supervisor.info("worker-cpu-0")["statename"] == FATAL
        assert d.pids()["worker-cpu-1"] == before["worker-cpu-1"], "the restart went on past a failed slot"
        assert d.ready_slots() == {"worker-cpu-1"}
        assert "cannot load" in (run_dir / "logs" / "worker-cpu-0.log").read_text()
    finally:
        d.stop()


def _cuda_usable() -> bool:
    from deploy.gpus import discover_gpus

    if not discover_gpus():
        return False
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return probe.stdout.strip() == "True"


@pytest.mark.gpu
def test_each_gpu_slot_sees_only_its_own_device(run_dir: Path) -> None:
    if not _cuda_usable():
        pytest.skip("no CUDA device (or a CPU-only torch build)")
    from deploy.gpus import discover_gpus

    gpus = [g.index for g in discover_gpus()]
    d = Deployment(run_dir, "--gpus", "all", "--cpu-workers", "0", "--worker-startsecs", "60")
    try:
        d.wait_ready(timeout=300)
        slots = [f"worker-gpu{n}-0" for n in gpus]
        d.wait_slots(*slots, timeout=300)
        statuses = worker_statuses(d.s.frontend_endpoint)
        for n, name in zip(gpus, slots, strict=True):
            assert statuses[name].pid is not None
            environ = Path(f"/proc/{statuses[name].pid}/environ").read_bytes().split(b"\0")
            assert f"CUDA_VISIBLE_DEVICES={n}".encode() in environ
        response = requests.post(f"{d.url}/v2/models/digits/infer", json=INFER_BODY, timeout=30)
        assert response.status_code == 200, response.text
    finally:
        d.stop()
