"""Process life cycle for the systems under test: launch in their own session, poll readiness, kill the
tree."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

POLL_INTERVAL_S = 0.2
IDLE_CORES = 0.3  # below this (in cores) a system has served its backlog; idle LitServe polls at ~0.15


class StartError(RuntimeError):
    """A system did not come up; the message points at its log."""


def http_status(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> int:
    """Return the HTTP status of one request, or 0 when nothing answered."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return 0


def http_call(
    url: str, data: bytes, headers: dict[str, str], timeout: float = 60.0
) -> tuple[int, dict[str, str], bytes]:
    """POST ``data``; return the status, the headers and the body (status 0: nothing answered)."""
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(exc.headers.items()), exc.read()
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}, b""


@dataclass
class Launched:
    """A system's root process, where it logs, and every process seen in its tree (for the final kill)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tree(self) -> list[psutil.Process]:
        """Return the root and its live descendants, remembering them for :meth:`stop`."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = []
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return procs

    def rss_bytes(self) -> int:
        """Return the total resident memory of the process tree."""
        total = 0
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        """Return the CPU time (user + system) used so far by the live processes of the tree."""
        total = 0.0
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
        return total

    def wait_idle(
        self, timeout_s: float, busy_cores: float = IDLE_CORES, interval_s: float = 0.5
    ) -> tuple[bool, float]:
        """Wait until the tree uses less than ``busy_cores`` for two intervals in a row (a backlog left by the
        previous load has been served). Return whether it got there and the seconds waited."""
        start = time.monotonic()
        previous, quiet = self.cpu_seconds(), 0
        while time.monotonic() - start < timeout_s:
            time.sleep(interval_s)
            now = self.cpu_seconds()
            quiet = quiet + 1 if 0 <= now - previous < busy_cores * interval_s else 0
            previous = now
            if quiet >= 2:
                return True, time.monotonic() - start
        return False, time.monotonic() - start

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 20.0, stop_signal: int = signal.SIGTERM) -> None:
        """Signal the root (and its process group), wait up to ``grace_s``, then SIGKILL every process
        seen."""
        self.tree()
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in self.seen.values():
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def launch(
    name: str,
    cmd: list[str],
    log_path: Path,
    url: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Launched:
    """Start ``cmd`` in a new session (its own process group), output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    return Launched(name, proc, log_path, url)


def wait_ready(launched: Launched, ready: Callable[[], bool], timeout_s: float) -> float:
    """Poll ``ready`` until it holds; fail early if the root exits. Return the seconds it took."""
    start = time.monotonic()
    deadline = start + timeout_s
    while time.monotonic() < deadline:
        if not launched.alive():
            raise StartError(
                f"{launched.name} exited with {launched.proc.returncode}; "
                f"log {launched.log_path}:\n{launched.log_tail()}"
            )
        if ready():
            launched.tree()
            return time.monotonic() - start
        time.sleep(POLL_INTERVAL_S)
    raise StartError(
        f"{launched.name} not ready after {timeout_s:.0f} s; log {launched.log_path}:\n{launched.log_tail()}"
    )


@contextlib.contextmanager
def checkout(revision: str, repository: Path, where: Path) -> Iterator[Path]:
    """Check ``revision`` of ``repository`` out at ``where`` (a detached git worktree) for a before/after
    comparison; remove it afterwards."""
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(where), revision],
        cwd=repository,
        check=True,
        capture_output=True,
    )
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=repository, check=False)
