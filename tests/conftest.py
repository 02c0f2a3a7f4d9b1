"""Shared fixtures: real processes started the way a user would, always cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from inference_worker import protocol
from inference_worker.protocol import Kind

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = ROOT / "deploy" / "model_repository"


class Processes:
    """Start processes in their own process groups; kill every group at the end of the test."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT, start_new_session=True
        )
        log.close()
        self.started.append(proc)
        return proc

    def python(
        self, name: str, module: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, "-m", module, *args], env)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.kill_all()


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def dispatcher_status(context: zmq.Context, frontend: str, timeout_ms: int = 2000) -> dict[str, Any] | None:
    """Ask a dispatcher for its STATUS; None if it does not answer in time."""
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(frontend)
    try:
        socket.send_multipart(protocol.encode(Kind.STATUS, {"id": "status"}))
        if not socket.poll(timeout_ms):
            return None
        return protocol.decode(socket.recv_multipart()).fields
    finally:
        socket.close(linger=0)


def ready_workers(context: zmq.Context, frontend: str) -> set[str]:
    """Return the names of the workers the dispatcher counts as ready."""
    status = dispatcher_status(context, frontend)
    if status is None:
        return set()
    return {w["worker"] for w in status["workers"] if w["state"] == "READY"}


from tests.wheel import installed_wheel  # noqa: E402, F401 - a session fixture: the wheel, built and installed
