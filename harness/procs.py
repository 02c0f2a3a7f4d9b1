"""Processes for tests and benchmarks: free ports, polling with a deadline, process groups killed at the
end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = ROOT / "deploy" / "model_repository"
# Where `torchgate` and `supervisorctl` are: beside this Python, or in TORCHGATE_TEST_BIN (gpu_host.sh).
BIN = Path(os.environ.get("TORCHGATE_TEST_BIN") or Path(sys.executable).parent)
COMMAND_TIMEOUT = 120.0

T = TypeVar("T")


class Forbidden(RuntimeError):
    """A test not marked ``processes`` tried to start a process."""


_allowed = True


def allow_processes(allowed: bool) -> None:
    """Let the test about to run start processes or not (set by tests/conftest.py from its markers)."""
    global _allowed
    _allowed = allowed


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy and return it; AssertionError after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_settled(
    read: Callable[[], tuple[bool, T]], spacing: float = 0.5, timeout: float = 60.0, what: str = "counters"
) -> T:
    """Return the value ``read`` gives (``(busy, value)``) once two reads ``spacing`` seconds apart find
    nothing busy and the same value: what workers report with their heartbeats (their counters) lags their
    answers by up to a heartbeat, so ``spacing`` must be longer than one."""
    last: tuple[bool, T] | None = None

    def calm() -> tuple[T] | None:
        nonlocal last
        previous, last = last, read()
        return (last[1],) if previous is not None and not last[0] and previous == last else None

    return wait_for(calm, timeout=timeout, interval=spacing, what=f"{what} to settle")[0]


def run(
    args: Sequence[str],
    timeout: float = COMMAND_TIMEOUT,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end (from the repository root by default); its output comes back as text."""
    if not _allowed:
        raise Forbidden(f"a test that runs {args[0]} needs @pytest.mark.processes")
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=check
    )


# Python code run after this finds every file write failing past one byte (EFBIG), as on a full disk.
FULL_DISK = (
    "import resource, signal\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))\n"
)


def run_on_a_full_disk(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` (``sys.argv[1:]`` = ``args``) in a process where no file can grow past one byte."""
    return run([sys.executable, "-c", FULL_DISK + code, *args])


class Processes:
    """Start processes in their own process groups, each logging to a file; kill every group at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, args: Sequence[str], env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` in a new session (from ``cwd``); stdout and stderr go to
        ``<log_dir>/<name>.log``."""
        if not _allowed:
            raise Forbidden(f"a test that starts {name} needs @pytest.mark.processes")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                list(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def python(
        self, name: str, module: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m module args`` with this interpreter."""
        return self.start(name, [sys.executable, "-m", module, *args], env)

    def log(self, name: str) -> str:
        """Return what process ``name`` wrote so far ('' before it wrote anything)."""
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_all(self) -> None:
        """SIGKILL the process group of every process started here, and reap them."""
        for proc in self.started:
            if proc.poll() is None:
                kill_group(proc.pid)
        for proc in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.started.clear()


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid``, if it is still there."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def children(pid: int) -> list[int]:
    """Return the pids of every descendant of ``pid`` ([] once it is gone)."""
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@dataclass(frozen=True, slots=True)
class Usage:
    """Resident memory and open file descriptors of one process at one time."""

    rss: int
    fds: int


def usage(pid: int) -> Usage | None:
    """Return the RSS and descriptor count of ``pid``; None once it is gone."""
    try:
        proc = psutil.Process(pid)
        return Usage(proc.memory_info().rss, proc.num_fds())
    except psutil.NoSuchProcess:
        return None
