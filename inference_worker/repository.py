"""The model repository: ``<repo>/<model>/config.toml`` and ``<repo>/<model>/<version>/model.<ext>``.

A model folder may hold Triton's ``config.pbtxt`` instead of a config.toml: it is read as the config.toml it
stands for (:mod:`inference_worker.triton_config`), so every check below applies to it too.

Parsing needs no torch, so the gateway validates requests against the same signatures the workers load.
Every problem raises :class:`ConfigError` naming the file, the key and what was expected.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import stat
import tomllib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference_worker import text_format, triton_config
from inference_worker.config_errors import ConfigError as ConfigError  # raised here, defined apart
from inference_worker.config_errors import suggest as _suggest
from inference_worker.protocol import BYTES, DATATYPES, MAX_DIMS, MAX_NAME_LENGTH

BACKENDS = {"torchscript": "model.pt", "torch_export": "model.pt2", "python": None}
DEFAULT_MAX_QUEUE_SIZE = 1024
# Where a model may run, as Triton's instance_group kinds (the short forms are accepted too).
KINDS = {
    "KIND_AUTO": "AUTO",
    "KIND_GPU": "GPU",
    "KIND_CPU": "CPU",
    "AUTO": "AUTO",
    "GPU": "GPU",
    "CPU": "CPU",
}
CONFIG_TOML, CONFIG_PBTXT = "config.toml", "config.pbtxt"
CONFIG_FILES = (CONFIG_TOML, CONFIG_PBTXT)  # what makes a folder a model: one of these, never both
# What workers announce (ModelConfig.source) is the config text they read, and gateways read it again, maybe
# on a host without the folder (gateway/models.py): so the text says which file it is. A config.pbtxt's text
# is announced after a first line "#!torchgate config.pbtxt", a comment in both formats, so the text still
# parses as itself; a config.toml's text is announced as it is (as it always was), unless it begins with
# "#!torchgate " itself, when it gets the line "#!torchgate config.toml" first. So no text is ever read in
# the other format, whatever it holds, and a text announced by an earlier release reads as before.
ANNOUNCED = "#!torchgate "
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a model name is also part of a slot's name

# Every key a config.toml may hold, per table: anything else is an error that suggests the closest of these.
TOP_KEYS = (
    "name",
    "backend",
    "max_batch_size",
    "max_queue_size",
    "dynamic_batching",
    "input",
    "output",
    "factory",
    "weights",
    "instance_group",
    "handler",
    "padding",
    "version_policy",
    "response_cache",
)
BATCHING_KEYS = ("max_queue_delay_us", "preferred_batch_size", "priority_levels", "default_priority_level")
TENSOR_KEYS = ("name", "datatype", "dims", "format", "label_filename", "optional", "reshape")
MAX_LABELS_BYTES = 16 << 20  # a label file past this is refused (it is held by every gateway process)
MAX_LABELS = 1 << 20  # class indices a JSON label file may name
# A config.toml past this is refused: workers announce its text with each version they serve, and a message
# header past protocol.MAX_HEADER_BYTES is dropped (the worker, and every model it serves, would go unseen).
MAX_CONFIG_BYTES = 64 << 10
# Triton's ranges for its config's integers (model_config.proto): larger ones cannot travel on the wire
# (msgpack takes at most 64 bits: a worker announcing one failed, with every model it served) nor in gRPC.
INT32_MAX = (1 << 31) - 1
UINT32_MAX = (1 << 32) - 1
INT64_MAX = (1 << 63) - 1
PADDING_KEYS = ("inputs", "mask", "outputs", "buckets")
INSTANCE_GROUP_KEYS = ("kind", "count", "gpus")
TABLES = (
    "dynamic_batching",
    "input",
    "output",
    "instance_group",
    "padding",
    "version_policy",
    "response_cache",
)
RESPONSE_CACHE_KEYS = ("enable",)
VERSION_POLICY_KEYS = ("latest", "all", "specific")


def announce(filename: str, text: str) -> str:
    """Return the text workers announce for config file ``filename`` holding ``text`` (see ANNOUNCED)."""
    if filename == CONFIG_TOML and not text.startswith(ANNOUNCED):
        return text
    return f"{ANNOUNCED}{filename}\n{text}"


def announced(source: str) -> tuple[str, str]:
    """Return the config file name and text an announced ``source`` holds (see ANNOUNCED)."""
    if source.startswith(ANNOUNCED):
        first, _, text = source.partition("\n")
        filename = first.removeprefix(ANNOUNCED)
        if filename in CONFIG_FILES:
            return filename, text
    return CONFIG_TOML, source


def has_config(folder: Path) -> bool:
    """Return whether ``folder`` is a model's: it holds a config.toml or a config.pbtxt."""
    return any((folder / name).is_file() for name in CONFIG_FILES)


def fits(shape: Sequence[int], dims: Sequence[int]) -> bool:
    """Return whether ``shape`` matches ``dims``, where -1 matches any size."""
    return len(shape) == len(dims) and all(d == -1 or s == d for s, d in zip(shape, dims, strict=True))


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model, as its config declares it (dims exclude the batch dim)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    format: str = ""  # "json": each BYTES element is a JSON document (what a handler's postprocess returned)
    label_filename: str = ""  # an output's class labels, one per line, beside config.toml
    labels: tuple[str, ...] = field(default=(), repr=False)  # that file's lines
    optional: bool = False  # an input a request may leave out (Triton's ``optional``): the model gets None
    # Triton's ``reshape``: the shape the model takes (an input) or returns (an output) for ``dims``' elements
    reshape: tuple[int, ...] | None = None

    def full_shape(self, max_batch_size: int) -> list[int]:
        """Return the shape clients see: ``[-1] + dims`` for batching models, else ``dims``."""
        return ([-1] if max_batch_size > 0 else []) + list(self.dims)

    def mismatch(self, datatype: str, shape: Sequence[int], max_batch_size: int) -> str | None:
        """Say why an input of ``datatype`` and ``shape`` does not fit this spec; None when it fits.

        The one shape check: the gateway refuses a request with it, and a worker checks what reaches it.
        """
        if datatype != self.datatype:
            return f"input {self.name!r}: datatype {datatype}, expected {self.datatype}"
        full = self.full_shape(max_batch_size)
        if not fits(shape, full):
            return f"input {self.name!r}: shape {list(shape)} does not fit {full} (-1: any size)"
        if max_batch_size > 0 and shape[0] > max_batch_size:
            return (
                f"input {self.name!r}: batch size {shape[0]} exceeds the model's "
                f"max_batch_size {max_batch_size}"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "dims": list(self.dims)}
        if self.optional:
            entry["optional"] = True
        return entry


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    """Where a model runs and how many processes serve it, as one of Triton's ``instance_group`` entries.

    ``kind`` is GPU, CPU or AUTO (a GPU when the host has one, else the CPU); ``count`` is the number of
    worker
    processes on each listed GPU (every GPU of the host when ``gpus`` is empty), or on the CPU.
    """

    kind: str = "AUTO"
    count: int = 1
    gpus: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": f"KIND_{self.kind}", "count": self.count, "gpus": list(self.gpus)}


@dataclass(frozen=True, slots=True)
class Padding:
    """Variable-length batching: requests whose padded tensors differ in dim 1 are padded to the longest.

    ``inputs`` maps each padded model input to its pad value; the worker builds ``mask`` (1 over a request's
    own positions, 0 over padding) when named, and cuts each of ``outputs`` back to the request's length along
    dim 1. With ``buckets``, a request of length L waits with those of the smallest bucket >= L (lengths past
    the last bucket batch together), so short requests do not pay for a long one's padding.
    """

    inputs: dict[str, float]
    mask: str | None = None
    outputs: tuple[str, ...] = ()
    buckets: tuple[int, ...] = ()

    def bucket(self, length: int) -> int:
        """Return the bucket a request of ``length`` batches in (0: past the last bucket, or no buckets)."""
        for edge in self.buckets:
            if length <= edge:
                return edge
        return 0


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
    # Triton's priority levels (schedule_policy extension): 1 is the highest; 0 levels: one queue, in order
    priority_levels: int = 0
    default_priority_level: int = 0
    instance_groups: tuple[InstanceGroup, ...] = ()  # empty: served by the host's default slots

    handler: str | None = None  # "module:Class" beside config.toml: pre- and post-processing in the worker
    padding: Padding | None = None
    # Which version folders are served, as Triton's version_policy (JSON form); ``versions`` holds only those.
    version_policy: dict[str, Any] = field(default_factory=lambda: {"all": {}})
    # Triton's response_cache: the gateway answers a request with the same inputs as an earlier one from its
    # cache (gateway/response_cache.py), when the server has one (--cache-config)
    response_cache: bool = False
    # the config text this was read from, as announce() tags it: workers announce it, so gateways check
    # requests against the config the workers loaded (gateway/models.py)
    source: str = field(default="", repr=False, compare=False)

    @property
    def config_path(self) -> Path:
        """The file this config was read from: config.toml, or Triton's config.pbtxt."""
        return self.path / announced(self.source)[0]

    @property
    def has_optional_inputs(self) -> bool:
        return any(spec.optional for spec in self.inputs)

    @property
    def sole_input(self) -> TensorSpec | None:
        """Return the input a one-input request fills (``/predict``, ``/predictions``, a raw body): the
        model's only input, or its only required one when the others are optional; None when it has none."""
        required = [spec for spec in self.inputs if not spec.optional]
        if len(self.inputs) == 1:
            return self.inputs[0]
        return required[0] if len(required) == 1 else None

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
            "priority_levels": self.priority_levels,
            "default_priority_level": self.default_priority_level,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "config": self.source,
        }


def load_repository(root: str | Path, only: list[str] | None = None) -> dict[str, ModelConfig]:
    """Read every model folder under ``root`` (or just those named in ``only``); raise on the first bad
    one."""
    models, errors = scan_repository(root, only)
    if errors:
        raise next(iter(errors.values()))
    return models


def scan_repository(
    root: str | Path, only: list[str] | None = None
) -> tuple[dict[str, ModelConfig], dict[str, ConfigError]]:
    """Read every model folder under ``root`` (or those in ``only``): the good models, and an error per bad
    one.

    A repository that is not a folder, holds no model, or lacks a model named in ``only`` raises at once.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: model repository is not a directory")
    present = sorted(p.name for p in root.iterdir() if has_config(p))
    for name in only or ():
        if name not in present:
            raise ConfigError(
                f"{root}: no model {name!r} (no {root / name / CONFIG_TOML} or {CONFIG_PBTXT})"
                + _suggest(name, present, "model")
                + (f"; the repository holds: {', '.join(present)}" if present else "")
            )
    names = list(dict.fromkeys(only)) if only else present
    if not names:
        raise ConfigError(f"{root}: no model folders with a config.toml (or Triton's config.pbtxt)")
    models: dict[str, ModelConfig] = {}
    errors: dict[str, ConfigError] = {}
    for name in names:
        try:
            models[name] = load_model_config(root / name)
        except ConfigError as exc:
            errors[name] = exc
    return models, errors


def load_model_config(
    folder: Path, text: str | None = None, served: Collection[str] | None = None
) -> ModelConfig:
    """Read and check ``folder/config.toml`` (or Triton's ``folder/config.pbtxt``) and the version folders
    beside it; or, for a gateway, what workers loaded: ``text``, the config they announced (what the file held
    when they read it, tagged with its name by :func:`announce`), and the versions they ``served`` (or failed
    to load), whatever the folder holds now."""
    if text is None:
        found = [name for name in CONFIG_FILES if (folder / name).is_file()]
        if not found:
            raise ConfigError(
                f"{folder / CONFIG_TOML}: missing (every model folder needs a config.toml, or Triton's "
                f"{CONFIG_PBTXT})"
            )
        if len(found) > 1:
            raise ConfigError(
                f"{folder}: holds both {CONFIG_TOML} and {CONFIG_PBTXT}; keep one (torchgate reads either)"
            )
        path = folder / found[0]
        text = announce(path.name, _read_text(path, MAX_CONFIG_BYTES, str(path)))
    filename, body = announced(text)
    path = folder / filename
    if filename == CONFIG_PBTXT:
        raw = triton_config.to_toml(text_format.parse(body, path), path, folder.name)
    else:
        try:
            raw = tomllib.loads(body)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    _check_keys(path, raw, TOP_KEYS, "", tables=TABLES)
    get = _Getter(path, raw)
    name = get.text("name")
    if name != folder.name:
        raise ConfigError(f"{path}: key 'name' is {name!r}, expected the folder name {folder.name!r}")
    if not MODEL_NAME.match(name):
        raise ConfigError(
            f"{path}: key 'name' is {name!r}: use letters, digits, '_', '.' and '-' (at most 64 characters)"
        )
    backend = get.text("backend")
    if backend not in BACKENDS:
        raise ConfigError(f"{path}: key 'backend' is {backend!r}, expected one of {sorted(BACKENDS)}")
    max_batch_size = get.integer("max_batch_size", 0, INT32_MAX)
    batching = raw.get("dynamic_batching", {})
    if not isinstance(batching, dict):
        raise ConfigError(f"{path}: key 'dynamic_batching' must be a table")
    _check_keys(path, batching, BATCHING_KEYS, "dynamic_batching.")
    delay = _Getter(path, batching, "dynamic_batching.").integer("max_queue_delay_us", 0)
    preferred = batching.get("preferred_batch_size", [])
    if not isinstance(preferred, list) or not all(
        type(p) is int and 0 < p <= max(max_batch_size, 1) for p in preferred
    ):
        raise ConfigError(
            f"{path}: key 'dynamic_batching.preferred_batch_size' is {preferred!r}, "
            f"expected a list of sizes from 1 to max_batch_size"
        )
    levels = _Getter(path, batching, "dynamic_batching.").integer("priority_levels", 0)
    default_level = _Getter(path, batching, "dynamic_batching.").integer("default_priority_level", 0)
    if levels and not 1 <= default_level <= levels or not levels and default_level:
        raise ConfigError(
            f"{path}: key 'dynamic_batching.default_priority_level' is {default_level}, expected "
            + (f"1 to priority_levels ({levels})" if levels else "0 when priority_levels is 0")
        )
    queue_size = get.integer("max_queue_size", DEFAULT_MAX_QUEUE_SIZE, UINT32_MAX)
    if queue_size < 1:
        raise ConfigError(f"{path}: key 'max_queue_size' is {queue_size}, expected at least 1")
    factory = raw.get("factory")
    weights = raw.get("weights")
    handler = raw.get("handler")
    inputs = _tensor_specs(path, raw, "input", handler)
    outputs = _tensor_specs(path, raw, "output", handler)
    if handler is not None and (not isinstance(handler, str) or ":" not in handler):
        raise ConfigError(f"{path}: key 'handler' must be 'module:Class' (a module beside config.toml)")
    if handler is None:
        for spec in (*inputs, *outputs):
            if spec.datatype == BYTES:
                raise ConfigError(
                    f"{path}: tensor {spec.name!r} is BYTES, which a model cannot take or return itself: "
                    "name a 'handler' that turns strings into tensors and back"
                )
    padding = _padding(path, raw, inputs if handler is None else None, max_batch_size)
    if backend == "python":
        if not isinstance(factory, str) or ":" not in factory:
            raise ConfigError(f"{path}: key 'factory' must be 'module:function' for the python backend")
        if weights is not None and (not isinstance(weights, str) or not weights or "/" in weights):
            raise ConfigError(f"{path}: key 'weights' must be a file name")
    else:
        for key in ("factory", "weights"):
            if key in raw:
                raise ConfigError(
                    f"{path}: key '{key}' is for the python backend only (backend is {backend!r})"
                )
    groups = _instance_groups(path, raw)
    if served is not None:
        versions = {v: folder / v for v in sorted(served, key=int)}
    else:
        versions = _version_folders(folder)
    if not versions:
        raise ConfigError(
            f"{folder}: no version folders (expected "
            f"{folder}/1/{BACKENDS[backend] or weights or 'model.safetensors'})"
        )
    policy, kept = _version_policy(path, raw, versions)
    versions = versions if served is not None else kept
    cache = raw.get("response_cache", {})
    if not isinstance(cache, dict):
        raise ConfigError(f"{path}: key 'response_cache' must be a table: [response_cache] enable = true")
    _check_keys(path, cache, RESPONSE_CACHE_KEYS, "response_cache.")
    if not isinstance(cache.get("enable", False), bool):
        raise ConfigError(f"{path}: key 'response_cache.enable' must be true or false")
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
        priority_levels=levels,
        default_priority_level=default_level,
        instance_groups=groups,
        handler=handler,
        padding=padding,
        version_policy=policy,
        response_cache=cache.get("enable", False),
        source=text,
    )
    for version in versions if served is None else ():
        file = model.model_file(version)
        if not file.is_file():
            raise ConfigError(f"{file}: missing (backend {backend!r} loads this file for version {version})")
    return model


def _read_text(file: Path, limit: int, where: str) -> str:
    """Return the UTF-8 text of ``file`` (a config, a label file), refusing one that cannot be read, is no
    regular file, is larger than ``limit`` bytes or is not UTF-8, with ``where`` first in the message."""
    try:
        data = _read_regular_file(file, limit + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{where}: larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text: {exc}") from None


def _read_regular_file(path: Path, limit: int) -> bytes:
    """Return at most ``limit`` bytes of ``path``; raise OSError if it is not a regular file. Opened without
    blocking: a FIFO's open waits for a writer, and a repository read waiting forever held the gateway's
    catalog lock, so every request of every model waited with it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return f.read(limit)


def _version_folders(folder: Path) -> dict[str, Path]:
    """Return version -> folder for each folder beside config.toml named by a positive number in ASCII
    digits ("01" is version 1; "0", "abc" or "²" name no version, as Triton skips them); two folders of one
    version, or a version past Triton's int64, are an error."""
    versions: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not (p.name.isascii() and p.name.isdigit() and int(p.name) > 0 and p.is_dir()):
            continue
        if int(p.name) > INT64_MAX:
            raise ConfigError(f"{p}: version {p.name} is past the largest version, {INT64_MAX}")
        version = str(int(p.name))
        if version in versions:
            raise ConfigError(
                f"{folder}: folders {versions[version].name!r} and {p.name!r} are both version {version}; "
                "keep one"
            )
        versions[version] = p
    return versions


def _version_policy(
    path: Path, raw: dict[str, Any], versions: dict[str, Path]
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Return the ``[version_policy]`` (Triton's JSON form) and the version folders it serves: ``latest = N``
    (the N highest), ``specific = [1, 3]``, or ``all = true`` (also when there is no table)."""
    table = raw.get("version_policy", {"all": True})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: key 'version_policy' must be a table")
    _check_keys(path, table, VERSION_POLICY_KEYS, "version_policy.")
    if len(table) != 1:
        raise ConfigError(
            f"{path}: [version_policy] takes one of latest = N, specific = [versions] or all = true"
        )
    ((kind, value),) = table.items()
    if kind == "all":
        if value is not True:
            raise ConfigError(f"{path}: key 'version_policy.all' must be true")
        return {"all": {}}, versions
    if kind == "latest":
        if type(value) is not int or not 1 <= value <= UINT32_MAX:
            raise ConfigError(
                f"{path}: key 'version_policy.latest' is {value!r}, expected a count of 1 or more "
                f"(at most {UINT32_MAX})"
            )
        chosen = sorted(versions, key=int)[-value:]
        return {"latest": {"num_versions": value}}, {v: versions[v] for v in chosen}
    if not isinstance(value, list) or not value or not all(type(v) is int and v > 0 for v in value):
        raise ConfigError(f"{path}: key 'version_policy.specific' must be a list of version numbers")
    missing = [v for v in value if str(v) not in versions]
    if missing:
        raise ConfigError(
            f"{path}: key 'version_policy.specific' names version {missing[0]}, which has no folder; "
            f"the folders are {', '.join(sorted(versions, key=int))}"
        )
    chosen = sorted({str(v) for v in value}, key=int)
    return {"specific": {"versions": [int(v) for v in chosen]}}, {v: versions[v] for v in chosen}


def _tensor_specs(path: Path, raw: dict[str, Any], key: str, handler: Any) -> tuple[TensorSpec, ...]:
    entries = raw.get(key)
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: key '{key}' must be one or more [[{key}]] tables")
    specs, seen = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: {key}[{i}] must be a table")
        _check_keys(path, entry, TENSOR_KEYS, f"{key}[{i}].")
        get = _Getter(path, entry, f"{key}[{i}].")
        name = get.text("name")
        if len(name) > MAX_NAME_LENGTH or name in seen:
            raise ConfigError(f"{path}: key '{key}[{i}].name' is {name!r}, expected a unique short name")
        seen.add(name)
        datatype = get.text("datatype")
        if datatype not in DATATYPES:
            raise ConfigError(
                f"{path}: key '{key}[{i}].datatype' is {datatype!r}, expected one of {sorted(DATATYPES)}"
            )
        fmt = entry.get("format", "")
        if fmt not in ("", "json") or (fmt and (key != "output" or datatype != BYTES)):
            raise ConfigError(
                f"{path}: key '{key}[{i}].format' is {fmt!r}; only a BYTES output may say format = \"json\""
            )
        dims = entry.get("dims")
        if (
            not isinstance(dims, list)
            or len(dims) > MAX_DIMS - 1
            or not all(type(d) is int and (d == -1 or 0 <= d <= INT64_MAX) for d in dims)
        ):
            raise ConfigError(
                f"{path}: key '{key}[{i}].dims' is {dims!r}, expected a list of sizes (-1 for variable)"
            )
        label_file = entry.get("label_filename", "")
        if label_file and key != "output":
            raise ConfigError(f"{path}: key '{key}[{i}].label_filename': only an output has labels")
        labels = _labels(path, f"{key}[{i}].label_filename", label_file) if label_file else ()
        optional = entry.get("optional", False)
        if not isinstance(optional, bool):
            raise ConfigError(f"{path}: key '{key}[{i}].optional' is {optional!r}, expected true or false")
        if optional and key != "input":
            raise ConfigError(f"{path}: key '{key}[{i}].optional': only an input may say optional = true")
        reshape = _reshape(path, f"{key}[{i}].", entry.get("reshape"), dims, handler)
        specs.append(TensorSpec(name, datatype, tuple(dims), fmt, label_file, labels, optional, reshape))
    return tuple(specs)


def _reshape(path: Path, prefix: str, reshape: Any, dims: list[int], handler: Any) -> tuple[int, ...] | None:
    """Check a tensor's ``reshape`` (Triton's): the model's shape for the same elements as fixed ``dims``."""
    if reshape is None:
        return None
    if (
        not isinstance(reshape, list)
        or len(reshape) > MAX_DIMS - 1
        or not all(type(d) is int and 1 <= d <= INT64_MAX for d in reshape)
    ):
        raise ConfigError(f"{path}: key '{prefix}reshape' is {reshape!r}, expected a list of sizes (none -1)")
    if -1 in dims or math.prod(reshape) != math.prod(dims):
        raise ConfigError(
            f"{path}: key '{prefix}reshape' is {reshape}: it must hold as many elements as dims {dims} "
            "(fixed sizes, no -1)"
        )
    if handler is not None:
        raise ConfigError(f"{path}: key '{prefix}reshape': a model with a handler reshapes in its handler")
    return tuple(reshape)


def _labels(path: Path, key: str, filename: Any) -> tuple[str, ...]:
    """Read an output's label file beside ``path`` (config.toml): line ``i`` labels class index ``i`` (as
    Triton's), or a ``.json`` file as TorchServe's ``index_to_name.json``."""
    if not isinstance(filename, str) or "/" in filename or filename in (".", ".."):
        raise ConfigError(f"{path}: key '{key}' must be the name of a file beside {path.name}")
    file = path.parent / filename
    text = _read_text(file, MAX_LABELS_BYTES, f"{path}: key '{key}': {file}")
    if filename.endswith(".json"):
        return _json_labels(f"{path}: key '{key}': {file}", text)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the file's last newline ends a line; it does not begin one
    return tuple(line.removesuffix("\r") for line in lines)


def _json_labels(where: str, text: str) -> tuple[str, ...]:
    """Read TorchServe's ``index_to_name.json``: ``{"0": "tench"}`` or ``{"0": ["n01440764", "tench"]}``
    (the last string is the label); an index it leaves out has no label."""
    try:
        mapping = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f'{where} must map class indices to labels: {{"0": "label", ...}}')
    labels: dict[int, str] = {}
    for index, value in mapping.items():
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = value[-1]
        if not (index.isascii() and index.isdigit() and int(index) < MAX_LABELS) or not isinstance(
            value, str
        ):
            raise ConfigError(
                f"{where}: entry {index!r} must map a class index below {MAX_LABELS} to a label "
                'or a list of strings ending with the label ("0": ["n01440764", "tench"])'
            )
        labels[int(index)] = value
    return tuple(labels.get(i, "") for i in range(max(labels, default=-1) + 1))


def _instance_groups(path: Path, raw: dict[str, Any]) -> tuple[InstanceGroup, ...]:
    entries = raw.get("instance_group", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: key 'instance_group' must be one or more [[instance_group]] tables")
    groups = []
    for i, entry in enumerate(entries):
        prefix = f"instance_group[{i}]."
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: instance_group[{i}] must be a table")
        _check_keys(path, entry, INSTANCE_GROUP_KEYS, prefix)
        kind = entry.get("kind", "KIND_AUTO")
        if kind not in KINDS:
            raise ConfigError(
                f"{path}: key '{prefix}kind' is {kind!r}, expected KIND_GPU, KIND_CPU or KIND_AUTO"
                + _suggest(str(kind), [k for k in KINDS if k.startswith("KIND_")], "")
            )
        count = entry.get("count", 1)
        if type(count) is not int or not 1 <= count <= INT32_MAX:
            raise ConfigError(
                f"{path}: key '{prefix}count' is {count!r}, expected an integer from 1 to {INT32_MAX}"
            )
        gpus = entry.get("gpus", [])
        if not isinstance(gpus, list) or not all(type(g) is int and 0 <= g <= INT32_MAX for g in gpus):
            raise ConfigError(f"{path}: key '{prefix}gpus' is {gpus!r}, expected a list of GPU indices")
        if len(set(gpus)) != len(gpus):
            raise ConfigError(f"{path}: key '{prefix}gpus' lists a GPU twice: {gpus!r}")
        if gpus and KINDS[kind] == "CPU":
            raise ConfigError(f"{path}: key '{prefix}gpus' is set but kind is {kind!r}; use KIND_GPU")
        groups.append(InstanceGroup(KINDS[kind], count, tuple(gpus)))
    return tuple(groups)


def _check_keys(
    path: Path, table: dict[str, Any], valid: tuple[str, ...], prefix: str, tables: tuple[str, ...] = ()
) -> None:
    """Refuse any key ``valid`` does not list, naming it and the closest valid key."""
    for key, value in table.items():
        if key in valid:
            continue
        is_table = isinstance(value, dict) or (
            isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
        )
        if is_table and tables:
            array = not isinstance(value, dict)
            hint = _suggest(key, list(tables), "array" if array else "table")
            where = f"[[{prefix}{key}]]" if array else f"[{prefix}{key}]"
            raise ConfigError(f"{path}: unknown table {where}{hint or '; tables are: ' + ', '.join(tables)}")
        hint = _suggest(key, list(valid), "key")
        raise ConfigError(
            f"{path}: unknown key '{prefix}{key}'{hint or '; valid keys here: ' + ', '.join(valid)}"
        )


def _padding(
    path: Path, raw: dict[str, Any], inputs: tuple[TensorSpec, ...] | None, max_batch_size: int
) -> Padding | None:
    """Read ``[padding]``; ``inputs`` (None for a model with a handler) are the tensors it may pad."""
    table = raw.get("padding")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: key 'padding' must be a table")
    _check_keys(path, table, PADDING_KEYS, "padding.")
    if max_batch_size == 0:
        raise ConfigError(f"{path}: key 'padding' needs max_batch_size > 0 (it pads requests into a batch)")
    pads = table.get("inputs")
    if (
        not isinstance(pads, dict)
        or not pads
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in pads.values())
    ):
        raise ConfigError(
            f"{path}: key 'padding.inputs' must map each padded input to its pad "
            f"value, e.g. {{input_ids = 0}}"
        )
    if inputs is not None:
        specs = {spec.name: spec for spec in inputs}
        for name in pads:
            spec = specs.get(name)
            if spec is None or not spec.dims or spec.dims[0] != -1:
                raise ConfigError(
                    f"{path}: key 'padding.inputs' names {name!r}, which is not an input "
                    "whose first dim is -1"
                )
            if spec.optional:
                raise ConfigError(
                    f"{path}: key 'padding.inputs' names {name!r}, an optional input: a padded input "
                    "sets each request's length, so every request must send it"
                )
    mask = table.get("mask")
    if mask is not None and (not isinstance(mask, str) or not mask or mask in pads):
        raise ConfigError(f"{path}: key 'padding.mask' must name the model's mask input (not a padded one)")
    if mask is not None and inputs is not None and mask in {spec.name for spec in inputs}:
        raise ConfigError(
            f"{path}: key 'padding.mask' is {mask!r}, an input clients send; the worker builds the mask"
        )
    outputs = table.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise ConfigError(f"{path}: key 'padding.outputs' must be a list of output names")
    buckets = table.get("buckets", [])
    if (
        not isinstance(buckets, list)
        or not all(type(b) is int and b > 0 for b in buckets)
        or buckets != sorted(set(buckets))
    ):
        raise ConfigError(f"{path}: key 'padding.buckets' must be increasing positive lengths")
    return Padding(
        inputs={str(k): v for k, v in pads.items()},
        mask=mask,
        outputs=tuple(outputs),
        buckets=tuple(buckets),
    )


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

    def integer(self, key: str, default: int, maximum: int = INT64_MAX) -> int:
        value = self.table.get(key, default)
        if type(value) is not int or not 0 <= value <= maximum:
            raise ConfigError(
                f"{self.path}: key '{self.prefix}{key}' is {value!r}, expected an integer from 0 to {maximum}"
            )
        return value


def files_stamp(model: ModelConfig, version: str) -> str:
    """Return what tells the files a version is loaded from from earlier ones: a digest of the name, size and
    mtime of every file in the model's folder but the other versions' (its config.toml, its code beside it,
    the version's weights); "" when they cannot be read. Workers announce it for each version they load, and
    gateways key the response cache on it: a version loaded again from new files, code alone included, is
    never answered with the old one's answers."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        _stamp_folder(digest, str(model.path), model.versions[version].name)
    except (OSError, KeyError):
        return ""
    return digest.hexdigest()


def _stamp_folder(digest: Any, folder: str, version: str | None) -> None:
    """Add every file under ``folder`` to ``digest``; at the top (``version`` given), of the numbered
    folders only ``version``'s."""
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if entry.is_dir():
            numbered = entry.name.isascii() and entry.name.isdigit()
            if entry.name != "__pycache__" and (version is None or not numbered or entry.name == version):
                _stamp_folder(digest, entry.path, None)
        else:
            stat = entry.stat()
            digest.update(f"{entry.path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
