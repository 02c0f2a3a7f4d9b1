"""Many hosts behind a real load balancer: two `torchgate serve` hosts in network namespaces, HAProxy in
front.

Each host is a network namespace made for this test (its own loopback; the host serves on 127.0.1.N:8000
there), running a full `torchgate serve`. Debian's HAProxy runs in this namespace and reaches each host
through its
``namespace`` server option, checking ``/v2/health/ready``. Under steady load through HAProxy the test drains
a
host (SIGTERM), restarts the hosts one at a time, and kills one host's supervisord with kill -9, counting the
requests that fail at each step. Every address lies inside the namespaces the test made (or 127.0.0.1), and
everything is torn down at the end. Skips where ``ip netns`` or HAProxy is missing (``make test`` installs
HAProxy in CI).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import HttpLoad, free_port, wait_for

pytestmark = pytest.mark.processes
BIN = Path(sys.executable).parent
HOSTS = 2
GRACE_SECONDS = 6.0  # --unready-grace-seconds: readiness 503 while serving, before draining
LOAD_THREADS = 4
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]}


def _haproxy() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None
    )


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)


@dataclass
class Host:
    name: str  # its network namespace
    address: str
    run_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    log_offset: int = 0  # where this start's lines begin in the host's output

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_offset = len(self.log())
        out = open(self.run_dir.parent / f"{self.name}.out", "ab")
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.name,
                str(BIN / "torchgate"),
                "serve",
                "--run-dir",
                str(self.run_dir),
                "--host",
                self.address,
                "--port",
                "8000",
                "--grpc-port",  # it too must die with a killed supervisord
                "8001",
                "--cpu-workers",
                "1",
                "--gateway-threads",
                "8",
                "--unready-grace-seconds",
                str(GRACE_SECONDS),
                "--drain-seconds",
                "10",
            ],  # fmt: skip
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def log(self) -> str:
        path = self.run_dir.parent / f"{self.name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_serving(self, timeout: float = 120.0) -> None:
        assert self.proc is not None
        wait_for(
            lambda: (
                self.proc is not None
                and (self.proc.poll() is not None or "torchgate: serving" in self.log()[self.log_offset :])
            ),
            timeout=timeout,
            interval=0.2,
            what=f"{self.name} to serve",
        )
        assert self.proc.poll() is None, self.log()[-3000:]

    def stop(self, timeout: float = 90.0) -> int:
        """SIGTERM `torchgate serve`, as an orchestrator would; return its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def supervisord_pid(self) -> int:
        return int((self.run_dir / "supervisord.pid").read_text().strip())


class HAProxy:
    def __init__(self, folder: Path, hosts: list[Host], binary: str) -> None:
        self.port = free_port()
        self.socket = folder / "haproxy.sock"
        servers = "\n".join(f"    server {h.name} {h.address}:8000 namespace {h.name} check" for h in hosts)
        self.config = folder / "haproxy.cfg"
        self.config.write_text(
            f"""global
    stats socket {self.socket} mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 2s
    retries 3
    option redispatch 1
    retry-on all-retryable-errors
    option http-buffer-request
frontend torchgate
    bind 127.0.0.1:{self.port}
    default_backend hosts
backend hosts
    balance roundrobin
    option httpchk GET /v2/health/ready
    http-check expect status 200
    default-server inter 300ms fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down
{servers}
"""
        )
        check = subprocess.run(
            [binary, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
        self.out = open(folder / "haproxy.out", "wb")
        self.proc = subprocess.Popen(
            [binary, "-db", "-f", str(self.config)], stdout=self.out, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def states(self) -> dict[str, str]:
        """Each server's state as HAProxy sees it (UP, DOWN, ...)."""
        return {name: row[17] for name, row in self.stats().items()}

    def stats(self) -> dict[str, list[str]]:
        """Each server's row of ``show stat`` (17: status, 15: retries, 16: redispatches, 13: connect
        errors)."""
        data = b""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            try:
                s.connect(str(self.socket))
            except (FileNotFoundError, ConnectionRefusedError):
                return {}  # HAProxy is still starting
            s.sendall(b"show stat\n")
            while chunk := s.recv(65536):
                data += chunk
        rows = {}
        for line in data.decode().splitlines():
            cols = line.split(",")
            if len(cols) > 17 and cols[0] == "hosts" and cols[1] not in ("FRONTEND", "BACKEND"):
                rows[cols[1]] = cols
        return rows

    def wait_state(self, server: str, state: str, timeout: float = 60.0) -> None:
        wait_for(lambda: self.states().get(server, "").startswith(state), timeout, 0.05, f"{server} {state}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.out.close()


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip netns)")
    if _haproxy() is None:
        pytest.skip("HAProxy is not installed (apt-get install haproxy; make test does it in CI)")
    names = [f"tg6h{i}-{os.getpid()}" for i in range(1, HOSTS + 1)]
    made = []
    try:
        for name in names:
            done = _run("ip", "netns", "add", name)
            if done.returncode != 0:
                pytest.skip(f"ip netns add failed: {done.stderr.strip()}")
            made.append(name)
            assert _run("ip", "-n", name, "link", "set", "lo", "up").returncode == 0
        yield names
    finally:
        for name in made:
            pids = _run("ip", "netns", "pids", name).stdout.split()
            for pid in pids:  # whatever a failed test left running in the namespace
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run("ip", "netns", "del", name)


def test_drain_rolling_restart_and_kill_behind_haproxy(tmp_path: Path, namespaces: list[str]) -> None:
    hosts = [Host(name, f"127.0.1.{i}", tmp_path / f"h{i}" / "run") for i, name in enumerate(namespaces, 1)]
    binary = _haproxy()
    assert binary is not None
    lb: HAProxy | None = None
    load: HttpLoad | None = None
    try:
        for host in hosts:
            host.start()
        for host in hosts:
            host.wait_serving()
        lb = HAProxy(tmp_path, hosts, binary)
        for host in hosts:
            lb.wait_state(host.name, "UP")
        load = HttpLoad(lb.url, body=BODY, threads=LOAD_THREADS, timeout=15).start()
        wait_for(lambda: load is not None and load.between(0, time.monotonic())[0] >= 20, 60, 0.1, "load")
        a, b = hosts

        # 1. Drain host a: readiness 503 at once, HAProxy takes it out, then it stops serving and exits.
        began = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        lb.wait_state(a.name, "DOWN", timeout=GRACE_SECONDS)  # before the grace ends: still serving
        assert a.proc.wait(timeout=90) == 0, a.log()[-3000:]  # type: ignore[union-attr]
        drained = time.monotonic()
        count, failed = load.between(began, drained + 1)
        assert count > 0 and failed == [], failed

        # 2. Rolling restart: a back, then b drained, restarted and back, one host at a time.
        a.start()
        a.wait_serving()
        lb.wait_state(a.name, "UP")
        assert b.stop() == 0, b.log()[-3000:]
        b.start()
        b.wait_serving()
        lb.wait_state(b.name, "UP")
        rolled = time.monotonic()
        count, failed = load.between(drained, rolled)
        assert count > 0 and failed == [], failed

        # 3. kill -9 b's supervisord: its processes die with it (no orphan keeps the port), HAProxy sees it
        # DOWN.
        killed = time.monotonic()
        os.kill(b.supervisord_pid(), signal.SIGKILL)
        lb.wait_state(b.name, "DOWN", timeout=10)
        b.proc.wait(timeout=30)  # type: ignore[union-attr]
        # Nothing left running on b (gunicorn's worker notices its arbiter is gone within a second or two).
        wait_for(
            lambda: _run("ip", "netns", "pids", b.name).stdout.split() == [], 20, 0.2, "b's processes to end"
        )
        wait_for(
            lambda: load is not None and load.between(killed, time.monotonic())[0] >= 20, 60, 0.1, "load"
        )
        count, failed = load.between(killed, time.monotonic())
        # At most the requests in flight on b can fail (one per load thread); HAProxy's retries (retry-on
        # all-retryable-errors, redispatch, the request buffered) re-send those, and in our runs none failed.
        row = lb.stats()[b.name]
        print(
            f"kill -9 of a host's supervisord: {len(failed)} of {count} requests "
            f"failed {failed}; HAProxy on that "
            f"host: {row[13] or 0} connection errors, {row[15] or 0} retries, {row[16] or 0} redispatches"
        )
        assert len(failed) <= LOAD_THREADS, failed
        load.stop()
        total, failed = load.between(0, time.monotonic() + 1)
        print(f"{total} requests through HAProxy, {len(failed)} failed")
        assert a.stop() == 0
    finally:
        if load is not None:
            load.stop()
        if lb is not None:
            lb.stop()
        for host in hosts:
            if host.proc is not None and host.proc.poll() is None:
                host.proc.send_signal(signal.SIGINT)  # no grace
                try:
                    host.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    host.proc.kill()
