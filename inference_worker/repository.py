"""The model repository: ``<repo>/<model>/config.toml`` and ``<repo>/<model>/<version>/model.<ext>``.

Parsing needs no torch, so the gateway validates requests against the same signatures the workers load.
Every problem raises :class:`ConfigError` naming the file, the key and what was expected.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference_worker.protocol import DATATYPE_SIZES, MAX_DIMS, MAX_NAME_LENGTH

BACKENDS = {"torchscript": "model.pt", "torch_export": "model.pt2", "python": None}
DEFAULT_MAX_QUEUE_SIZE = 1024


class ConfigError(ValueError):
    """A model repository entry that cannot be served."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model, as its config declares it (dims exclude the batch dim)."""

    name: str
    datatype: str
    dims: tuple[int, ...]

    def full_shape(self, max_batch_size: int) -> list[int]:
        """Return the shape clients see: ``[-1] + dims`` for batching models, else ``dims``."""
        return ([-1] if max_batch_size > 0 else []) + list(self.dims)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "dims": list(self.dims)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TensorSpec:
        return cls(raw["name"], raw["datatype"], tuple(raw["dims"]))


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A model's configuration and the versions found on disk (version -> folder)."""

    name: str
    backend: str
    max_batch_size: int
    max_queue_delay_us: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    path: Path
    versions: dict[str, Path] = field(default_factory=dict)
    factory: str | None = None
    weights: str | None = None
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    preferred_batch_sizes: tuple[int, ...] = ()

    @property
    def default_version(self) -> str:
        return max(self.versions, key=int)

    @property
    def platform(self) -> str:
        return {
            "torchscript": "pytorch_libtorch",
            "torch_export": "pytorch_export",
            "python": "pytorch_python",
        }[self.backend]

    def model_file(self, version: str) -> Path:
        """Return the file to load for ``version``."""
        folder = self.versions[version]
        return folder / (BACKENDS[self.backend] or self.weights or "model.safetensors")

    def signature(self, version: str) -> dict[str, Any]:
        """Return what a worker announces for one loaded version of this model."""
        return {
            "name": self.name,
            "version": version,
            "platform": self.platform,
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_us": self.max_queue_delay_us,
            "max_queue_size": self.max_queue_size,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


def load_repository(root: str | Path, only: list[str] | None = None) -> dict[str, ModelConfig]:
    """Read every model folder under ``root`` (or just those named in ``only``)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: model repository is not a directory")
    names = only or sorted(p.name for p in root.iterdir() if (p / "config.toml").is_file())
    if not names:
        raise ConfigError(f"{root}: no model folders with a config.toml")
    models = {}
    for name in names:
        model = load_model_config(root / name)
        models[model.name] = model
    return models


def load_model_config(folder: Path) -> ModelConfig:
    """Read and check ``folder/config.toml`` and the version folders beside it."""
    path = folder / "config.toml"
    if not path.is_file():
        raise ConfigError(f"{path}: missing (every model folder needs a config.toml)")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    get = _Getter(path, raw)
    name = get.text("name")
    if name != folder.name:
        raise ConfigError(f"{path}: key 'name' is {name!r}, expected the folder name {folder.name!r}")
    backend = get.text("backend")
    if backend not in BACKENDS:
        raise ConfigError(f"{path}: key 'backend' is {backend!r}, expected one of {sorted(BACKENDS)}")
    max_batch_size = get.integer("max_batch_size", 0)
    batching = raw.get("dynamic_batching", {})
    if not isinstance(batching, dict):
        raise ConfigError(f"{path}: key 'dynamic_batching' must be a table")
    delay = _Getter(path, batching, "dynamic_batching.").integer("max_queue_delay_us", 0)
    preferred = batching.get("preferred_batch_size", [])
    if not isinstance(preferred, list) or not all(
        type(p) is int and 0 < p <= max(max_batch_size, 1) for p in preferred
    ):
        raise ConfigError(
            f"{path}: key 'dynamic_batching.preferred_batch_size' is {preferred!r}, "
            f"expected a list of sizes from 1 to max_batch_size"
        )
    queue_size = get.integer("max_queue_size", DEFAULT_MAX_QUEUE_SIZE)
    if queue_size < 1:
        raise ConfigError(f"{path}: key 'max_queue_size' is {queue_size}, expected at least 1")
    inputs = _tensor_specs(path, raw, "input")
    outputs = _tensor_specs(path, raw, "output")
    factory = raw.get("factory")
    weights = raw.get("weights")
    if backend == "python":
        if not isinstance(factory, str) or ":" not in factory:
            raise ConfigError(f"{path}: key 'factory' must be 'module:function' for the python backend")
        if weights is not None and not isinstance(weights, str):
            raise ConfigError(f"{path}: key 'weights' must be a file name")
    versions = {p.name: p for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0}
    versions = {str(int(v)): p for v, p in versions.items()}
    if not versions:
        raise ConfigError(
            f"{folder}: no version folders (expected {folder}/1/{BACKENDS[backend] or weights or 'model.safetensors'})"
        )
    model = ModelConfig(
        name=name,
        backend=backend,
        max_batch_size=max_batch_size,
        max_queue_delay_us=delay,
        inputs=inputs,
        outputs=outputs,
        path=folder,
        versions=versions,
        factory=factory,
        weights=weights,
        max_queue_size=queue_size,
        preferred_batch_sizes=tuple(preferred),
    )
    for version in versions:
        file = model.model_file(version)
        if not file.is_file():
            raise ConfigError(f"{file}: missing (backend {backend!r} loads this file for version {version})")
    return model


def _tensor_specs(path: Path, raw: dict[str, Any], key: str) -> tuple[TensorSpec, ...]:
    entries = raw.get(key)
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: key '{key}' must be one or more [[{key}]] tables")
    specs, seen = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: {key}[{i}] must be a table")
        get = _Getter(path, entry, f"{key}[{i}].")
        name = get.text("name")
        if len(name) > MAX_NAME_LENGTH or name in seen:
            raise ConfigError(f"{path}: key '{key}[{i}].name' is {name!r}, expected a unique short name")
        seen.add(name)
        datatype = get.text("datatype")
        if datatype not in DATATYPE_SIZES:
            raise ConfigError(
                f"{path}: key '{key}[{i}].datatype' is {datatype!r}, expected one of {sorted(DATATYPE_SIZES)}"
            )
        dims = entry.get("dims")
        if (
            not isinstance(dims, list)
            or len(dims) > MAX_DIMS - 1
            or not all(type(d) is int and (d == -1 or d >= 0) for d in dims)
        ):
            raise ConfigError(
                f"{path}: key '{key}[{i}].dims' is {dims!r}, expected a list of sizes (-1 for variable)"
            )
        specs.append(TensorSpec(name, datatype, tuple(dims)))
    return tuple(specs)


class _Getter:
    """Typed access to one TOML table, with errors that name the file and the key."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str = "") -> None:
        self.path, self.table, self.prefix = path, table, prefix

    def text(self, key: str) -> str:
        value = self.table.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"{self.path}: key '{self.prefix}{key}' is {value!r}, expected a non-empty string"
            )
        return value

    def integer(self, key: str, default: int) -> int:
        value = self.table.get(key, default)
        if type(value) is not int or value < 0:
            raise ConfigError(
                f"{self.path}: key '{self.prefix}{key}' is {value!r}, expected a non-negative integer"
            )
        return value
