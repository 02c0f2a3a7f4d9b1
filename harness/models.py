"""Model repositories and request bodies for tests and benchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from harness.procs import DEFAULT_REPOSITORY
from inference_worker.repository import ModelConfig, TensorSpec

SLOW_MODEL = Path(__file__).with_name("slow_double.py")
SLEEPER_MODEL = Path(__file__).with_name("sleeper.py")

# One 8x8 digit (a zero) from scikit-learn's digits, the default model's input, row by row.
DIGIT_IMAGE = (
    (0, 0, 5, 13, 9, 1, 0, 0),
    (0, 0, 13, 15, 10, 15, 5, 0),
    (0, 3, 15, 2, 0, 11, 8, 0),
    (0, 4, 12, 0, 0, 8, 8, 0),
    (0, 5, 8, 0, 0, 9, 8, 0),
    (0, 4, 11, 0, 1, 12, 7, 0),
    (0, 2, 14, 5, 10, 12, 0, 0),
    (0, 0, 6, 13, 10, 0, 0, 0),
)
DIGIT = [value for row in DIGIT_IMAGE for value in row]
DIGIT_BODY: dict[str, Any] = {
    "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": DIGIT}]
}
# A row of the digits range (0..16) that is not a real digit: any row the model takes will do.
DIGIT_ROW = [float((i * 7) % 17) for i in range(64)]
DIGITS_BODY: dict[str, Any] = {
    "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": DIGIT_ROW}]
}


def signature(
    max_batch_size: int,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    backend: str = "python",
) -> ModelConfig:
    """A model config ``m`` with these tensors and nothing on disk: for what reads only the signature."""
    return ModelConfig(
        name="m",
        backend=backend,
        max_batch_size=max_batch_size,
        max_queue_delay_us=0,
        inputs=inputs,
        outputs=outputs,
        path=Path("/nonexistent/m"),
        versions={"1": Path("/nonexistent/m/1")},
    )


def copy_digits(repository: Path) -> None:
    """Copy the default model ``digits`` into ``repository``."""
    shutil.copytree(DEFAULT_REPOSITORY / "digits", repository / "digits")


def write_slow_model(
    repository: Path,
    name: str = "slow",
    seconds: float = 0.2,
    max_batch_size: int = 4,
    max_queue_size: int = 8,
) -> None:
    """Write ``name``, a python-backend model (harness/slow_double.py) that sleeps then doubles FP32 [-1,
    4]."""
    import torch
    from safetensors.torch import save_file

    folder = repository / name
    (folder / "1").mkdir(parents=True)
    module = SLOW_MODEL.read_text()
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
    """Write a python-backend model ``name``: ``model.py`` (``source``), ``helper.py`` and safetensors
    weights."""
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
    """A model that sleeps as many seconds as its largest input, then doubles it (harness/sleeper.py)."""
    import torch

    source = SLEEPER_MODEL.read_text()
    return write_python_model(root, name, source, {"scale": torch.tensor(2.0)}, width=1, out=1)


def slow_repository(
    root: Path, seconds: float = 0.2, max_queue_size: int = 4, max_batch_size: int = 4
) -> Path:
    """Write a repository holding only the model `slow` (see :func:`write_slow_model`); return its root."""
    write_slow_model(root, "slow", seconds, max_batch_size, max_queue_size)
    return root


def write_unloadable_model(root: Path, name: str, versions: list[int]) -> None:
    """Write a torchscript model config with placeholder weights: enough for the gateway, never loaded."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(f"""
name = "{name}"
backend = "torchscript"
max_batch_size = 4
[[input]]
name = "x"
datatype = "FP32"
dims = [2]
[[output]]
name = "y"
datatype = "FP32"
dims = [2]
""")
    for v in versions:
        (folder / str(v)).mkdir(exist_ok=True)
        (folder / str(v) / "model.pt").write_bytes(b"not loaded by the gateway")


def slow_body(rows: int = 1, value: float = 1.0, timeout_us: int | None = None) -> dict[str, Any]:
    """An inference body for `slow`: ``rows`` rows of ``value``, with ``parameters.timeout`` when given."""
    body: dict[str, Any] = {
        "inputs": [
            {"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": [[value] * 4 for _ in range(rows)]}
        ]
    }
    if timeout_us is not None:
        body["parameters"] = {"timeout": timeout_us}
    return body


# A plain model (no handler) that takes padded ids and the worker's mask: it returns, per token, the id times
# the mask (so padding shows as zeros) and, per sample, how many tokens the mask let through.
MASKED_SUM = """
import torch

class MaskedSum(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, ids, mask):
        return (ids * mask).float() * self.scale, mask.sum(1, keepdim=True).float()

def build():
    return MaskedSum()
"""


def write_masked_model(root: Path, handler: str = "") -> Path:
    """Write ``masked``: a python model with [padding] (ids padded with 0, the worker's mask, tokens cut
    back)."""
    import torch
    from safetensors.torch import save_file

    folder = root / "masked"
    (folder / "1").mkdir(parents=True)
    (folder / "masked_model.py").write_text(MASKED_SUM)
    save_file({"scale": torch.ones(())}, str(folder / "1" / "model.safetensors"))
    (folder / "config.toml").write_text(f"""
name = "masked"
backend = "python"
factory = "masked_model:build"
max_batch_size = 8
{handler}
[padding]
inputs = {{ ids = 0 }}
mask = "mask"
outputs = ["tokens"]
buckets = [4, 16]
[[input]]
name = "ids"
datatype = "INT64"
dims = [-1]
[[output]]
name = "tokens"
datatype = "FP32"
dims = [-1]
[[output]]
name = "count"
datatype = "FP32"
dims = [1]
""")
    return folder


# A model with an optional input (Triton's ``optional``): y = 2x, plus the bias when a request sends one. The
# same source is the python backend's model.py and, scripted, the torchscript file.
OFFSET = """
from typing import Optional

import torch

class Offset(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.full((), 2.0))

    def forward(self, x, bias: Optional[torch.Tensor] = None):
        y = x * self.scale
        if bias is not None:
            y = y + bias
        return y

def build():
    return Offset()
"""
OFFSET_CONFIG = """
name = "{name}"
backend = "{backend}"
{factory}
max_batch_size = 8
[dynamic_batching]
max_queue_delay_us = {delay}
[[input]]
name = "x"
datatype = "FP32"
dims = [3]
[[input]]
name = "bias"
datatype = "FP32"
dims = [3]
optional = true
[[output]]
name = "y"
datatype = "FP32"
dims = [3]
"""


def write_offset_model(root: Path, name: str, backend: str = "python", delay_us: int = 0) -> Path:
    """Write ``name``: y = 2x (+ bias, an optional input), as a python model or as a TorchScript file."""
    import torch
    from safetensors.torch import save_file

    folder = root / name
    (folder / "1").mkdir(parents=True)
    (folder / "offset_model.py").write_text(OFFSET)
    factory = 'factory = "offset_model:build"' if backend == "python" else ""
    (folder / "config.toml").write_text(
        OFFSET_CONFIG.format(name=name, backend=backend, factory=factory, delay=delay_us)
    )
    if backend == "python":
        save_file({"scale": torch.full((), 2.0)}, str(folder / "1" / "model.safetensors"))
    else:
        import importlib.util
        import sys

        module_name = f"_offset_{name}_{id(folder)}"  # scripting reads the class's source from its module
        spec = importlib.util.spec_from_file_location(module_name, folder / "offset_model.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
            torch.jit.save(torch.jit.script(module.build()), str(folder / "1" / "model.pt"))
        finally:
            del sys.modules[module_name]
    return folder
