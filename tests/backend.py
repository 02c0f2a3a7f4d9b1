"""Start a real dispatcher and real workers for tests, and talk to them over ZeroMQ."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from inference_worker import protocol
from inference_worker.protocol import Kind, TensorMeta
from tests.conftest import DEFAULT_REPOSITORY, ROOT, Processes, ready_workers, wait_for

FAST_HEARTBEAT = ["--heartbeat-interval", "0.2", "--heartbeat-liveness", "5"]


def write_slow_model(
    repository: Path,
    name: str = "slow",
    seconds: float = 0.2,
    max_batch_size: int = 4,
    max_queue_size: int = 8,
) -> None:
    """Write ``name``, a python-backend model (tests/models/slow_double.py) that sleeps then doubles FP32 [-1, 4]."""
    import torch
    from safetensors.torch import save_file

    folder = repository / name
    (folder / "1").mkdir(parents=True)
    module = (ROOT / "tests" / "models" / "slow_double.py").read_text()
    # a module name of its own per model: two slow models in one process must not share sys.modules
    (folder / f"{name}_model.py").write_text(
        module.replace("seconds: float = 0.2", f"seconds: float = {seconds!r}")
    )
    save_file({"scale": torch.tensor(2.0)}, str(folder / "1" / "model.safetensors"))
    (folder / "config.toml").write_text(f"""
name = "{name}"
backend = "python"
factory = "{name}_model:build"
max_batch_size = {max_batch_size}
max_queue_size = {max_queue_size}
[dynamic_batching]
max_queue_delay_us = 0
[[input]]
name = "x"
datatype = "FP32"
dims = [4]
[[output]]
name = "y"
datatype = "FP32"
dims = [4]
""")


PYTHON_CONFIG = """
name = "{name}"
backend = "python"
factory = "model:build"
max_batch_size = 4
[dynamic_batching]
max_queue_delay_us = 0
[[input]]
name = "x"
datatype = "{datatype}"
dims = [{width}]
[[output]]
name = "y"
datatype = "FP32"
dims = [{out}]
"""

# Two models that each ship a model.py and a helper.py, as the README lays a python model out.
LINEAR_SOURCE = """
import torch
from helper import WIDTH

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(WIDTH, 1)

    def forward(self, x):
        return self.linear(x)

def build():
    return Net()
"""
SCALE_SOURCE = """
import torch
from helper import FACTOR

class Scale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.factor = torch.nn.Parameter(torch.tensor(FACTOR))

    def forward(self, x):
        return (x * self.factor).sum(dim=1, keepdim=True)

def build():
    return Scale()
"""


def write_python_model(
    root: Path,
    name: str,
    source: str,
    weights: dict[str, Any],
    helper: str = "",
    width: int = 3,
    out: int = 1,
    datatype: str = "FP32",
) -> Path:
    """Write a python-backend model ``name``: ``model.py`` (``source``), ``helper.py`` and safetensors weights."""
    from safetensors.torch import save_file

    folder = root / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.toml").write_text(
        PYTHON_CONFIG.format(name=name, width=width, out=out, datatype=datatype)
    )
    (folder / "model.py").write_text(source)
    (folder / "helper.py").write_text(helper)
    save_file(weights, str(folder / "1" / "model.safetensors"))
    return folder


def write_linear_model(root: Path, name: str = "a", source: str = LINEAR_SOURCE) -> Path:
    """A model whose y is the sum of its three inputs (a Linear(3, 1) of ones), from its own model.py."""
    import torch

    weights = {"linear.weight": torch.ones(1, 3), "linear.bias": torch.zeros(1)}
    return write_python_model(root, name, source, weights, "WIDTH = 3\n")


def write_scale_model(root: Path, name: str = "b") -> Path:
    """A model whose y is ten times the sum of its three inputs, from its own model.py."""
    import torch

    return write_python_model(root, name, SCALE_SOURCE, {"factor": torch.tensor(10.0)}, "FACTOR = 10.0\n")


def write_sleeper_model(root: Path, name: str = "sleeper") -> Path:
    """A model that sleeps as many seconds as its largest input, then doubles it (tests/models/sleeper.py)."""
    import torch

    source = (ROOT / "tests" / "models" / "sleeper.py").read_text()
    return write_python_model(root, name, source, {"scale": torch.tensor(2.0)}, width=1, out=1)


def slow_repository(
    root: Path, seconds: float = 0.2, max_queue_size: int = 4, max_batch_size: int = 4
) -> Path:
    """Write a repository holding only the model `slow` (see :func:`write_slow_model`); return its root."""
    write_slow_model(root, "slow", seconds, max_batch_size, max_queue_size)
    return root


@dataclass
class Backend:
    """A dispatcher and its workers, started as real processes in a run directory."""

    processes: Processes
    context: zmq.Context
    run_dir: Path
    repository: Path = DEFAULT_REPOSITORY
    workers: dict[str, Any] = field(default_factory=dict)

    @property
    def frontend(self) -> str:
        return f"ipc://{self.run_dir}/frontend.sock"

    @property
    def backend(self) -> str:
        return f"ipc://{self.run_dir}/backend.sock"

    def start_dispatcher(self, *args: str) -> Any:
        self.dispatcher = self.processes.python(
            "dispatcher",
            "inference_worker.dispatcher",
            "--frontend",
            self.frontend,
            "--backend",
            self.backend,
            *FAST_HEARTBEAT,
            *args,
        )
        return self.dispatcher

    def start_worker(self, name: str, wait: bool = True, repository: Path | None = None) -> Any:
        proc = self.processes.python(
            name,
            "inference_worker.worker",
            "--model-repository",
            str(repository or self.repository),
            "--dispatcher",
            self.backend,
            "--name",
            name,
            "--device",
            "cpu",
            "--threads",
            "1",
            *FAST_HEARTBEAT,
        )
        self.workers[name] = proc
        if wait:
            wait_for(
                lambda: name in ready_workers(self.context, self.frontend),
                timeout=120,
                what=f"worker {name} ready",
            )
        return proc


class Client:
    """A gateway-like DEALER socket that sends REQUESTs and waits, with a timeout, for their answers."""

    def __init__(self, context: zmq.Context, frontend: str) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(frontend)
        self.answers: dict[str, protocol.Message] = {}  # answers that arrived while waiting for another

    def close(self) -> None:
        self.socket.close(linger=0)

    def send(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        timeout: float = 30.0,
        deadline: float | None = None,
        version: str | None = None,
    ) -> str:
        request_id = uuid.uuid4().hex
        fields: dict[str, Any] = {
            "id": request_id,
            "model": model,
            "deadline": deadline or time.time() + timeout,
            "request_id": request_id,
            "outputs": [],
        }
        if version:
            fields["version"] = version
        tensors = [
            (TensorMeta(name, "FP32", tuple(a.shape)), np.ascontiguousarray(a)) for name, a in inputs.items()
        ]
        self.socket.send_multipart(protocol.encode(Kind.REQUEST, fields, tensors))
        return request_id

    def receive(self, request_id: str, timeout: float = 60.0) -> protocol.Message:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if request_id in self.answers:
                return self.answers.pop(request_id)
            if self.socket.poll(int(left * 1000) + 1):
                message = protocol.decode(self.socket.recv_multipart())
                self.answers[str(message.get("id"))] = message
        raise TimeoutError(f"no answer to {request_id} in {timeout}s")

    def infer(
        self, model: str, inputs: dict[str, np.ndarray], timeout: float = 30.0, **kw: Any
    ) -> protocol.Message:
        return self.receive(self.send(model, inputs, timeout, **kw), timeout + 30)


def outputs(message: protocol.Message) -> dict[str, np.ndarray]:
    assert message.kind is Kind.REPLY, f"{message.kind}: {message.fields}"
    return {meta.name: np.frombuffer(buf, np.float32).reshape(meta.shape) for meta, buf in message.tensors}
