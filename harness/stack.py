"""One torchgate stack as real processes: a dispatcher, workers and a gunicorn gateway, any of them optional,
started one by one as a developer does, or all at once by ``torchgate serve`` under supervisord.

Every process runs in its own process group and is killed by :meth:`Stack.stop`, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import zmq

from deploy.settings import DeploySettings
from deploy.supervisor_rpc import RUNNING, Supervisor
from harness import commands
from harness.procs import COMMAND_TIMEOUT, DEFAULT_REPOSITORY, Processes, children, free_port, kill_group, run
from harness.procs import wait_for as _wait_for
from harness.wire import dispatcher_status, ready_workers
from inference_worker.protocol import StatusReply

SERVE = "serve"
READY = "/v2/health/ready"


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A temporary directory with a short path (unix socket paths must stay under 107 bytes), removed
    after."""
    base = Path(tempfile.mkdtemp(prefix="tg-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Stack:
    """A gateway on 127.0.0.1:``port``, a dispatcher and workers, in one run directory."""

    processes: Processes
    run_dir: Path
    repository: Path = DEFAULT_REPOSITORY
    port: int = field(default_factory=free_port)
    heartbeat: tuple[str, ...] = commands.FAST_HEARTBEAT
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request the stack makes itself
    started: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # by log name
    _context: zmq.Context[Any] | None = None
    _settings: DeploySettings | None = None
    _serve_children: list[int] = field(default_factory=list)

    @classmethod
    def at(cls, root: Path, repository: Path = DEFAULT_REPOSITORY, **kw: Any) -> Stack:
        """A stack whose logs go to ``root`` and whose run directory is ``root/run``."""
        return cls(Processes(root), root / "run", repository, **kw)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def served(self) -> bool:
        """Whether ``torchgate serve`` runs this stack."""
        return SERVE in self.started

    @property
    def frontend(self) -> str:
        """The dispatcher's endpoint for gateways."""
        if self.served:
            return self.settings.frontend_endpoint
        return f"ipc://{self.run_dir}/frontend.sock"

    @property
    def backend(self) -> str:
        """The dispatcher's endpoint for workers."""
        if self.served:
            return self.settings.backend_endpoint
        return f"ipc://{self.run_dir}/backend.sock"

    @property
    def context(self) -> zmq.Context[Any]:
        """A ZeroMQ context for the test's own sockets, destroyed by :meth:`stop`."""
        if self._context is None:
            self._context = zmq.Context()
        return self._context

    # -- the parts, one by one -----------------------------------------------------------------------------

    def start_dispatcher(self, *extra: str) -> subprocess.Popen[bytes]:
        """Start (or start again) the dispatcher; ``extra`` are more command-line options."""
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        proc = self.processes.start(
            "dispatcher", commands.dispatcher(self.frontend, self.backend, *self.heartbeat, *extra)
        )
        self.started["dispatcher"] = proc
        return proc

    def start_worker(
        self,
        name: str,
        *extra: str,
        wait: bool = True,
        log: str | None = None,
        repository: Path | None = None,
        timeout: float = 120.0,
    ) -> subprocess.Popen[bytes]:
        """Start worker ``name`` (logging as ``log``, default ``name``); with ``wait``, until it is ready."""
        proc = self.processes.start(
            log or name,
            commands.worker(repository or self.repository, self.backend, name, *self.heartbeat, *extra),
        )
        self.started[log or name] = proc
        if wait:
            _wait_for(
                lambda: name in self.ready_workers(),
                timeout=timeout,
                interval=0.1,
                what=f"worker {name} ready",
            )
        return proc

    def start_gateway(
        self, processes: int = 1, threads: int = 8, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start gunicorn serving the gateway; ``env`` adds or overrides ``TORCHGATE_*`` variables."""
        variables = commands.gateway_env(self.port, self.frontend, self.repository, processes, threads)
        proc = self.processes.start("gateway", commands.gateway(), {**variables, **(env or {})})
        self.started["gateway"] = proc
        return proc

    def start(
        self,
        workers: Iterable[str] = ("w0",),
        gateway_processes: int = 1,
        gateway_threads: int = 8,
        gateway_env: dict[str, str] | None = None,
        timeout: float = 180.0,
        ready_path: str = READY,
    ) -> Stack:
        """Start the dispatcher, the named workers and the gateway; wait until every named worker is ready and
        ``ready_path`` answers 200 (readiness alone needs one worker per model: a test could otherwise begin
        while a second worker still loads, and find it had computed nothing)."""
        self.start_dispatcher()
        names = set(workers)
        for name in names:
            self.start_worker(name, wait=False)
        self.start_gateway(gateway_processes, gateway_threads, gateway_env)
        _wait_for(
            lambda: names <= self.ready_workers(),
            timeout=timeout,
            interval=0.1,
            what=f"workers {sorted(names)} ready",
        )
        self.wait_ready(timeout, ready_path)
        return self

    # -- or all of them by `torchgate serve` ---------------------------------------------------------------

    def serve(self, *options: str, env: dict[str, str] | None = None) -> Stack:
        """Start ``torchgate serve --run-dir run_dir --port port options`` (returns at once); ``env`` adds to
        its environment."""
        args = ["serve", "--run-dir", str(self.run_dir), "--port", str(self.port), *options]
        self.started[SERVE] = self.processes.start(SERVE, commands.torchgate(*args), env)
        return self

    @property
    def settings(self) -> DeploySettings:
        """What ``torchgate serve`` wrote to the run directory."""
        if self._settings is None:
            self._settings = DeploySettings.load(self.run_dir)
        return self._settings

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor.from_conf(self.run_dir / "supervisord.conf", timeout=COMMAND_TIMEOUT)

    def wait_serving(self, timeout: float = 90.0) -> None:
        """Wait until ``torchgate serve`` says it serves (it checked readiness itself); fail if it exited."""
        proc = self.started[SERVE]
        _wait_for(
            lambda: proc.poll() is not None or "torchgate: serving" in self.log(),
            timeout=timeout,
            interval=0.2,
            what="torchgate serve to print its URL",
        )
        assert proc.poll() is None, self.log()

    def wait_supervisor(self, timeout: float = 60.0) -> None:
        """Wait until the supervisord of ``torchgate serve`` answers; fail if serve exited."""
        proc, conf = self.started[SERVE], self.run_dir / "deploy.json"
        _wait_for(
            lambda: proc.poll() is not None or (conf.exists() and self.supervisor.is_up()),
            timeout=timeout,
            interval=0.2,
            what="supervisord to answer",
        )
        assert proc.poll() is None, self.log()

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run supervisorctl against this run directory, as an operator would."""
        return run(commands.supervisorctl(self.run_dir, *args))

    def torchgate(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``torchgate args --run-dir run_dir``, as an operator would."""
        return run(commands.torchgate(*args, "--run-dir", str(self.run_dir)))

    def terminate(self, timeout: float = 90.0) -> int | None:
        """SIGTERM ``torchgate serve``, as Ctrl-C or systemd would; return its exit status (None: still
        running)."""
        proc = self.started[SERVE]
        self._note_serve_children()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _note_serve_children(self) -> None:
        """Remember supervisord and its programs, to kill whatever a failed shutdown leaves."""
        with contextlib.suppress(Exception):  # supervisord may be gone already
            self._serve_children = [i["pid"] for i in self.supervisor.processes().values() if i["pid"]]
        supervisord = _read_pid(self.run_dir / "supervisord.pid")
        if supervisord is not None:
            self._serve_children.append(supervisord)

    # -- what a test looks at ------------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 180.0, path: str = READY) -> None:
        """Wait until ``path`` answers 200; fail at once, with its log, if a process exited."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                ready = requests.get(f"{self.url}{path}", headers=self.headers, timeout=2)
                if ready.status_code == 200:
                    return
            except requests.RequestException:
                pass
            for name, proc in self.started.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            time.sleep(0.2)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-2000:]}" for n in self.started)
        raise AssertionError(f"stack not ready after {timeout}s\n{logs}")

    def wait_workers(self, *names: str, timeout: float = 60.0) -> None:
        """Wait until exactly these workers are ready in the dispatcher."""
        _wait_for(
            lambda: self.ready_workers() == set(names),
            timeout=timeout,
            interval=0.1,
            what=f"workers {sorted(names)} ready",
        )

    def wait_healthy(self, *workers: str, gateway_processes: int = 1, timeout: float = 60.0) -> None:
        """Wait until every supervisord program runs (under serve), exactly ``workers`` are ready and the
        gateway has its ``gateway_processes``."""
        if self.served:
            _wait_for(
                lambda: all(i["statename"] == RUNNING for i in self.supervisor.processes().values()),
                timeout=timeout,
                interval=0.1,
                what="every program RUNNING",
            )
        self.wait_workers(*workers, timeout=timeout)
        _wait_for(
            lambda: len(children(self.pids()["gateway"])) == gateway_processes,
            timeout=timeout,
            interval=0.1,
            what=f"{gateway_processes} gateway processes",
        )

    def kill_program(self, name: str, timeout: float = 30.0) -> int:
        """SIGKILL supervisord's program ``name`` and wait until supervisord started it again; return the new
        pid."""
        old = self.pids()[name]
        os.kill(old, signal.SIGKILL)
        return _wait_for(
            lambda: (pid := self.pids().get(name)) not in (None, old) and pid,
            timeout=timeout,
            interval=0.1,
            what=f"supervisord to restart {name}",
        )

    def kill_gateway_process(self, timeout: float = 30.0) -> int:
        """SIGKILL one gunicorn process of the gateway and wait until the arbiter replaced it; return its
        pid."""
        master = self.pids()["gateway"]
        processes = sorted(children(master))
        victim = processes[0]
        os.kill(victim, signal.SIGKILL)
        _wait_for(
            lambda: len(children(master)) == len(processes) and victim not in children(master),
            timeout=timeout,
            interval=0.1,
            what="gunicorn to replace the killed process",
        )
        return victim

    def status(self) -> StatusReply:
        """The dispatcher's STATUS reply; fail if it does not answer."""
        status = dispatcher_status(self.frontend)
        assert status is not None, "the dispatcher did not answer STATUS"
        return status

    def ready_workers(self) -> set[str]:
        """The workers the dispatcher counts as ready (none while it does not answer)."""
        return ready_workers(self.frontend)

    def pids(self) -> dict[str, int]:
        """Every process of the stack by name (under ``torchgate serve``, supervisord's programs)."""
        if self.served:
            return {name: info["pid"] for name, info in self.supervisor.processes().items() if info["pid"]}
        pids = {name: proc.pid for name, proc in self.started.items()}
        if "gateway" in self.started:
            for i, child in enumerate(sorted(children(self.started["gateway"].pid))):
                pids[f"gateway-{i}"] = child
        return pids

    def log(self, name: str = SERVE) -> str:
        """What process ``name`` logged so far."""
        return self.processes.log(name)

    def access_lines(self) -> list[dict[str, Any]]:
        """The gateway's JSON access lines (with ``TORCHGATE_LOG_FORMAT=json``)."""
        lines = []
        for line in self.log("gateway").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if isinstance(entry.get("access"), dict):
                    lines.append(entry)
        return lines

    def stop(self) -> None:
        """Stop ``torchgate serve`` cleanly if it runs; then SIGKILL every process group that is left."""
        if self.served:
            if self.started[SERVE].poll() is None:
                self.terminate()
            elif not self._serve_children:
                self._note_serve_children()
            for pid in self._serve_children:
                kill_group(pid)
        self.processes.kill_all()
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
