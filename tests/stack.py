"""A whole torchgate stack as real processes (gunicorn gateway, dispatcher, workers), HTTP load and process probes.

Used by the reliability tests and by ``benchmarks/overload.py``; every process runs in its own process group
and is killed by :class:`tests.conftest.Processes`.
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests
import zmq

from tests.backend import FAST_HEARTBEAT
from tests.conftest import DEFAULT_REPOSITORY, ROOT, Processes, dispatcher_status

DIGIT_ROW = [float((i * 7) % 17) for i in range(64)]
DIGITS_BODY: dict[str, Any] = {
    "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": DIGIT_ROW}]
}


def copy_digits(repository: Path) -> None:
    shutil.copytree(DEFAULT_REPOSITORY / "digits", repository / "digits")


def slow_body(rows: int = 1, value: float = 1.0, timeout_us: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": [[value] * 4 for _ in range(rows)]}
        ]
    }
    if timeout_us is not None:
        body["parameters"] = {"timeout": timeout_us}
    return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """A gunicorn gateway, a dispatcher and workers started as a user would, in one run directory."""

    processes: Processes
    run_dir: Path
    repository: Path
    port: int = field(default_factory=free_port)
    started: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def frontend(self) -> str:
        return f"ipc://{self.run_dir}/frontend.sock"

    @property
    def backend(self) -> str:
        return f"ipc://{self.run_dir}/backend.sock"

    def start(
        self,
        workers: dict[str, list[str]],
        gateway_processes: int = 1,
        gateway_threads: int = 8,
        gateway_env: dict[str, str] | None = None,
        timeout: float = 180.0,
        ready_path: str = "/v2/health/ready",
    ) -> Stack:
        """Start the dispatcher, each worker (name -> extra arguments) and gunicorn; wait until ``ready_path``
        answers 200."""
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.started["dispatcher"] = self.processes.python(
            "dispatcher",
            "inference_worker.dispatcher",
            "--frontend",
            self.frontend,
            "--backend",
            self.backend,
            *FAST_HEARTBEAT,
        )
        for name, extra in workers.items():
            self.started[name] = self.processes.python(
                name,
                "inference_worker.worker",
                "--model-repository",
                str(self.repository),
                "--dispatcher",
                self.backend,
                "--name",
                name,
                "--device",
                "cpu",
                "--threads",
                "1",
                *FAST_HEARTBEAT,
                *extra,
            )
        env = {
            "TORCHGATE_BIND": f"127.0.0.1:{self.port}",
            "TORCHGATE_DISPATCHER": self.frontend,
            "TORCHGATE_MODEL_REPOSITORY": str(self.repository),
            "TORCHGATE_GATEWAY_PROCESSES": str(gateway_processes),
            "TORCHGATE_GATEWAY_THREADS": str(gateway_threads),
            **(gateway_env or {}),
        }
        self.started["gateway"] = self.processes.start(
            "gateway",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(ROOT / "gateway" / "gunicorn_conf.py"),
                "gateway.wsgi:app",
            ],
            env=env,
        )
        self.wait_ready(timeout, ready_path)
        return self

    def wait_ready(self, timeout: float, path: str = "/v2/health/ready") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if requests.get(f"{self.url}{path}", headers=self.headers, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            for name, proc in self.started.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode}:\n{self.processes.log(name)[-3000:]}"
                    )
            time.sleep(0.2)
        logs = "\n".join(f"--- {n}\n{self.processes.log(n)[-2000:]}" for n in self.started)
        raise RuntimeError(f"stack not ready after {timeout}s\n{logs}")

    def status(self, context: zmq.Context) -> dict[str, Any]:
        status = dispatcher_status(context, self.frontend)
        assert status is not None, "the dispatcher did not answer STATUS"
        return status

    def pids(self) -> dict[str, int]:
        """Every process of the stack, the gateway's gunicorn workers included, by name."""
        pids = {name: proc.pid for name, proc in self.started.items()}
        for i, child in enumerate(sorted(children(self.started["gateway"].pid))):
            pids[f"gateway-{i}"] = child
        return pids


def children(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def model_counters(status: dict[str, Any], model: str) -> dict[str, int]:
    """Sum a model's worker counters from a STATUS reply: inference_count, success, deadline failures."""
    total = {"inference_count": 0, "success": 0, "deadline": 0}
    for entry in status.get("stats") or []:
        if entry.get("model") == model:
            total["inference_count"] += int(entry.get("inference_count", 0))
            total["success"] += int(entry.get("success", 0))
            total["deadline"] += int((entry.get("failure") or {}).get("deadline", 0))
    return total


@dataclass(frozen=True, slots=True)
class Outcome:
    """One HTTP request: status (0 when no HTTP answer came), seconds taken, the body's start, headers."""

    status: int
    seconds: float
    body: str
    headers: dict[str, str]

    def describe(self) -> str:
        return f"{self.status} after {self.seconds:.2f}s: {self.body[:200]}"


def call(send: Callable[[], requests.Response]) -> Outcome:
    """Time one request; a transport failure is status 0 with the exception as body."""
    start = time.monotonic()
    try:
        response = send()
        return Outcome(
            response.status_code, time.monotonic() - start, response.text[:1000], dict(response.headers)
        )
    except requests.RequestException as exc:
        return Outcome(0, time.monotonic() - start, f"{type(exc).__name__}: {exc}", {})


@dataclass
class HttpLoad:
    """Client threads sending one kind of request back to back until stopped; every outcome is kept."""

    url: str
    body: dict[str, Any] = field(default_factory=lambda: DIGITS_BODY)
    path: str = "/v2/models/digits/infer"
    threads: int = 2
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    outcomes: list[tuple[float, Outcome]] = field(
        default_factory=list
    )  # (time.monotonic() at the end, outcome)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> HttpLoad:
        for i in range(self.threads):
            thread = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=self.timeout + 10)
        assert not any(t.is_alive() for t in self._workers), "a load thread did not finish"

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                outcome = call(
                    lambda: session.post(
                        self.url + self.path, json=self.body, headers=self.headers, timeout=self.timeout
                    )
                )
                with self._lock:
                    self.outcomes.append((time.monotonic(), outcome))

    def snapshot(self) -> list[tuple[float, Outcome]]:
        with self._lock:
            return list(self.outcomes)

    @property
    def ok(self) -> int:
        return sum(1 for _, o in self.snapshot() if o.status == 200)

    def failures(self) -> list[Outcome]:
        return [o for _, o in self.snapshot() if o.status != 200]

    def wait_for_more(self, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` more requests succeeded."""
        target = self.ok + count
        end = time.monotonic() + timeout
        while self.ok < target:
            if time.monotonic() > end:
                raise AssertionError(
                    f"{count} more successful requests did not come in {timeout}s; "
                    f"failures: {[o.describe() for o in self.failures()[-5:]]}"
                )
            time.sleep(0.05)


@dataclass(frozen=True, slots=True)
class Usage:
    """Resident memory and open file descriptors of one process at one time."""

    rss: int
    fds: int


def usage(pid: int) -> Usage | None:
    try:
        proc = psutil.Process(pid)
        return Usage(proc.memory_info().rss, proc.num_fds())
    except psutil.NoSuchProcess:
        return None
