"""Tensors in shared memory (inference_worker.shm) under kill -9 of each process kind, as a user runs
torchgate.

One deployment (two gateway processes, the dispatcher, two CPU workers) serves a python model, ``y = 2 x + 1``
on 256 KiB tensors (inputs and outputs both travel in the gateways' segments). Clients send binary requests
with their own random tensors and compare every answer with the model called directly: no answer may carry
another request's data. Each test kills one process with SIGKILL under that load; afterwards no process maps a
segment any more, nothing is in /dev/shm, and the requests fared as without shared memory (none lost to a
worker's death, 503s at most for the dispatcher's, transport errors only for a gateway process's).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import zmq

from harness import (
    DEFAULT_REPOSITORY,
    HttpLoad,
    Outcome,
    Processes,
    Stack,
    call,
    children,
    commands,
    free_port,
    ready_workers,
    short_dir,
    wait_for,
    write_python_model,
)
from harness.commands import FAST_HEARTBEAT
from harness.load import Sender
from inference_worker import protocol, shm
from inference_worker.protocol import TensorMeta
from inference_worker.security import create_keys

pytestmark = [pytest.mark.processes, pytest.mark.timeout(300), pytest.mark.xdist_group("dev-shm")]

MEMFD = "memfd:torchgate-tensors"
WIDTH = 65536  # FP32: 256 KiB per tensor, above inference_worker.shm.MIN_BYTES
SLOTS = {"worker-cpu-0", "worker-cpu-1"}
SOURCE = """
import torch

class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor(0.0))

    def forward(self, x):
        return x * self.scale + 1

def build():
    return Affine()
"""


def expected(x: np.ndarray) -> np.ndarray:
    """The model called directly."""
    return (torch.from_numpy(x) * torch.tensor(2.0) + 1).numpy()


def segments() -> tuple[dict[int, set[int]], set[int]]:
    """Return pid -> inodes of the torchgate segments it maps, and the inodes some live process holds open."""
    mapped: dict[int, set[int]] = {}
    held: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            lines = [line for line in Path(f"/proc/{entry}/maps").read_text().splitlines() if MEMFD in line]
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if MEMFD in os.readlink(f"/proc/{entry}/fd/{fd}"):
                    held.add(os.stat(f"/proc/{entry}/fd/{fd}").st_ino)
        except OSError:
            continue
        if lines:
            mapped[int(entry)] = {int(line.split()[4]) for line in lines}
    return mapped, held


def orphans() -> dict[int, set[int]]:
    """Return the segments mapped somewhere that no live process holds open any more (leaked memory)."""
    mapped, held = segments()
    return {pid: inos - held for pid, inos in mapped.items() if inos - held}


def affine_sender(url: str) -> Callable[[int], Sender]:
    """Thread i sends binary requests of random rows; each 200 answer is compared with the model."""

    def for_thread(index: int) -> Sender:
        rng = np.random.default_rng(index)

        def send(session: requests.Session) -> Outcome:
            rows = int(rng.integers(1, 3))
            x = rng.standard_normal((rows, WIDTH), dtype=np.float32)
            header = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "x",
                            "shape": [rows, WIDTH],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": x.nbytes},
                        }
                    ],
                    "parameters": {"binary_data_output": True},
                }
            ).encode()

            def check(r: requests.Response) -> str:
                length = int(r.headers["Inference-Header-Content-Length"])
                y = np.frombuffer(r.content[length:], dtype="<f4").reshape(rows, WIDTH)
                if np.array_equal(y, expected(x)):
                    return ""
                return f"thread {index}: rows {rows}, y[0,:3] {y[0, :3]} vs {expected(x)[0, :3]}"

            return call(
                lambda: session.post(
                    f"{url}/v2/models/affine/infer",
                    data=header + x.tobytes(),
                    headers={"Inference-Header-Content-Length": str(len(header))},
                    timeout=30,
                ),
                check,
            )

        return send

    return for_thread


def checked_load(d: Stack) -> HttpLoad:
    return HttpLoad(d.url, threads=4, sender=affine_sender(d.url))


@pytest.fixture(scope="module")
def deployment() -> Iterator[Stack]:
    shm_before = set(os.listdir("/dev/shm"))
    with short_dir() as base:
        repository = base / "repo"
        folder = write_python_model(
            repository, "affine", SOURCE, {"scale": torch.tensor(2.0)}, width=WIDTH, out=WIDTH
        )
        config = (folder / "config.toml").read_text()
        (folder / "config.toml").write_text(
            config.replace("max_queue_delay_us = 0", "max_queue_delay_us = 2000")
        )
        options = ("--model-repository", str(repository), "--gpus", "none", "--cpu-workers", "2")
        gateway = ("--gateway-processes", "2", "--gateway-threads", "4")
        with Stack.at(base).serve(
            *options, "--worker-threads", "1", "--worker-startsecs", "2", *gateway
        ) as d:
            d.wait_serving(timeout=120)
            yield d
    assert set(os.listdir("/dev/shm")) <= shm_before, "something was left in /dev/shm"


@pytest.fixture
def healthy(deployment: Stack) -> Stack:
    deployment.wait_healthy(*SLOTS, gateway_processes=2)
    return deployment


def stack_pids(d: Stack) -> set[int]:
    pids = set(d.pids().values())
    return pids | {c for p in list(pids) for c in children(p)}


def settle(d: Stack) -> None:
    """A segment whose owner closed it or died is mapped by no process for long (a worker drops it within a
    heartbeat): no memory outlives its owner."""
    wait_for(lambda: not orphans(), timeout=20, what=f"no orphaned segment (still: {orphans()})")


def test_answers_travel_in_shared_memory(healthy: Stack) -> None:
    d = healthy
    seen: dict[int, set[int]] = {}
    with checked_load(d) as load:
        load.wait_for_more(10)
        end = time.monotonic() + 10
        while not seen and time.monotonic() < end:
            seen = {pid: inos for pid, inos in segments()[0].items() if pid in stack_pids(d)}
        load.wait_for_more(10)
    assert load.wrong() == [] and load.failures() == [], (load.wrong()[:3], load.failures()[:3])
    workers = {d.pids()[slot] for slot in SLOTS}
    assert seen and set(seen) & (set(children(d.pids()["gateway"])) | workers), "no segment was ever seen"
    settle(d)


def test_kill_9_a_worker_loses_and_crosses_nothing(healthy: Stack) -> None:
    d = healthy
    with checked_load(d) as load:
        load.wait_for_more(10)
        d.kill_program("worker-cpu-0")
        wait_for(lambda: d.ready_workers() == SLOTS, timeout=60, what="the restarted worker ready")
        load.wait_for_more(20)
    assert load.wrong() == [], load.wrong()[:3]
    assert load.failures() == [], [o.describe() for o in load.failures()[:5]]
    settle(d)


def test_kill_9_the_dispatcher_crosses_nothing(healthy: Stack) -> None:
    d = healthy
    with checked_load(d) as load:
        load.wait_for_more(10)
        d.kill_program("dispatcher")
        wait_for(lambda: d.ready_workers() == SLOTS, timeout=60, what="both workers registered again")
        load.wait_for_more(20)
    assert load.wrong() == [], load.wrong()[:3]
    assert all(o.status == 503 for o in load.failures()), [o.describe() for o in load.failures()[:5]]
    settle(d)


def test_kill_9_a_gateway_process_crosses_nothing(healthy: Stack) -> None:
    d = healthy
    with checked_load(d) as load:
        load.wait_for_more(10)
        d.kill_gateway_process()
        load.wait_for_more(20)
    assert load.wrong() == [], load.wrong()[:3]
    failures = load.failures()
    assert len(failures) <= load.threads and all(o.status == 0 for o in failures), failures[:5]
    settle(d)


def test_a_worker_on_another_host_gets_frames(
    processes: Processes, zmq_context: zmq.Context, tmp_path: Path, digits_model: torch.nn.Module
) -> None:
    """A worker that reaches the dispatcher over tcp cannot map segments: the dispatcher inlines the
    tensors."""
    keys, authorized = tmp_path / "keys", tmp_path / "authorized"
    authorized.mkdir(mode=0o700)
    server_public, server_secret = create_keys(keys, "dispatcher")
    public, secret = create_keys(keys, "remote")
    (authorized / public.name).write_bytes(public.read_bytes())
    frontend, backend = f"ipc://{tmp_path}/frontend.sock", f"tcp://127.0.0.1:{free_port()}"
    curve = ("--curve-secret-key", str(server_secret), "--curve-authorized", str(authorized))
    processes.start("dispatcher", commands.dispatcher(frontend, backend, *curve, *FAST_HEARTBEAT))
    keys_of = ("--curve-server-key", str(server_public), "--curve-secret-key", str(secret))
    processes.start(
        "remote", commands.worker(DEFAULT_REPOSITORY, backend, "remote", *keys_of, *FAST_HEARTBEAT)
    )
    wait_for(lambda: "remote" in ready_workers(frontend), timeout=120, what="the tcp worker")
    x = np.random.default_rng(3).integers(0, 17, size=(3, 64)).astype(np.float32)
    meta = TensorMeta("input", "FP32", x.shape)
    pool = shm.Pool()
    segment = pool.take(shm.HEADER + x.nbytes + 4096)
    memoryview(segment.memory)[shm.HEADER : shm.HEADER + x.nbytes] = x.tobytes()
    ref = {
        **segment.ref(),
        "inputs": [shm.Placed(meta, shm.HEADER).to_wire()],
        "reply": [4096, segment.size - 4096],
    }
    sock = zmq_context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(frontend)
    try:
        request = protocol.Request("r1", "digits", [], deadline=time.time() + 30, shm=ref)
        sock.send_multipart(request.frames())
        assert sock.poll(30_000), "no answer"
        reply = protocol.receive(sock.recv_multipart(), protocol.Link.DISPATCHER_TO_GATEWAY)
    finally:
        sock.close(linger=0)
        segment.close()
    assert isinstance(reply, protocol.Reply) and reply.worker == "remote", reply
    assert reply.shm_outputs is None  # the answer came back in frames, as the request went
    with torch.inference_mode():
        want = digits_model(torch.from_numpy(x)).numpy()
    ((meta, buf),) = reply.outputs
    assert meta.name == "output" and np.allclose(
        np.frombuffer(buf, "<f4").reshape(meta.shape), want, atol=1e-5
    )
