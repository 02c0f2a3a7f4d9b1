"""Triton's ``config.pbtxt``, read as the ``config.toml`` it stands for (no I/O, no torch, no protobuf).

:func:`to_toml` turns Triton's ``ModelConfig`` (a PyTorch model's: platform ``pytorch_libtorch`` or backend
``pytorch``, a TorchScript ``model.pt``) into the very dict ``tomllib.loads`` gives for the
equivalent config.toml, so that every check of :func:`inference_worker.repository.load_model_config` applies.
What torchgate cannot honour is refused, naming the file, the line and what to do instead; what only tunes
Triton's own execution is accepted and ignored (see README.md, "A Triton model repository").

Every error is a :class:`ConfigError` that names the file and the line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference_worker.config_errors import ConfigError, suggest
from inference_worker.protocol import BYTES, DATATYPES
from inference_worker.text_format import Identifier, Message

__all__ = ["libtorch_positions", "to_toml"]


# -- Triton's ModelConfig -> config.toml ------------------------------------------------------------------

# Every field of Triton's ModelConfig (model_config.proto), refused or not: a name outside it is a typo.
MODEL_CONFIG_FIELDS = (
    "name",
    "platform",
    "backend",
    "runtime",
    "version_policy",
    "max_batch_size",
    "input",
    "output",
    "batch_input",
    "batch_output",
    "optimization",
    "dynamic_batching",
    "sequence_batching",
    "ensemble_scheduling",
    "instance_group",
    "default_model_filename",
    "cc_model_filenames",
    "metric_tags",
    "parameters",
    "model_warmup",
    "model_operations",
    "model_transaction_policy",
    "model_repository_agents",
    "response_cache",
    "model_metrics",
)
# Accepted and ignored: they tune Triton's own execution or reporting, which torchgate does its own way.
IGNORED_FIELDS = ("optimization", "model_warmup", "metric_tags", "model_metrics")
# Refused whenever given, with what to do instead.
REFUSED_FIELDS = {
    "sequence_batching": "torchgate has no sequence batcher for stateful models: send each request on its "
    "own, with any state in its inputs",
    "ensemble_scheduling": "torchgate serves no ensembles: call the models in turn from the client, or "
    "serve them as one TorchScript model",
    "batch_input": "torchgate builds no batch inputs (Triton's ragged batching): declare every input the "
    "model takes; a config.toml's [padding] batches variable-length requests",
    "batch_output": "torchgate builds no batch outputs (Triton's ragged batching): declare every output the "
    "model returns",
    "model_repository_agents": "torchgate runs no repository agents: prepare (decrypt, convert) the files "
    "before serving them",
    "cc_model_filenames": "torchgate loads model.pt from each version folder on every GPU: keep one file per "
    "version, named model.pt",
    "model_operations": "torchgate loads no custom operation libraries: serve the model with a config.toml "
    "and the python backend, whose factory may load them (torch.ops.load_library)",
}
# What the libtorch backend reads from ``parameters`` (pytorch_backend's src/model_state.cc, and
# ENABLE_NVFUSER of its earlier releases): accepted and ignored, as torchgate runs every model under
# torch.inference_mode with its own thread settings.
LIBTORCH_PARAMETERS = (
    "DISABLE_OPTIMIZED_EXECUTION",
    "INFERENCE_MODE",
    "DISABLE_CUDNN",
    "ENABLE_WEIGHT_SHARING",
    "ENABLE_CACHE_CLEANING",
    "ENABLE_JIT_EXECUTOR",
    "ENABLE_JIT_PROFILING",
    "ENABLE_TENSOR_FUSER",
    "ENABLE_NVFUSER",
    "INTRA_OP_THREAD_COUNT",
    "INTER_OP_THREAD_COUNT",
)
INPUT_FIELDS = (
    "name",
    "data_type",
    "format",
    "dims",
    "reshape",
    "is_shape_tensor",
    "allow_ragged_batch",
    "optional",
    "is_non_linear_format_io",
)
OUTPUT_FIELDS = (
    "name",
    "data_type",
    "dims",
    "reshape",
    "label_filename",
    "is_shape_tensor",
    "is_non_linear_format_io",
)
FORMATS = ("FORMAT_NONE", "FORMAT_NCHW", "FORMAT_NHWC")  # informational in Triton: ignored
# A tensor field that must stay off (false), and why torchgate cannot honour it.
TENSOR_FLAGS = {
    "is_shape_tensor": "shape tensors are TensorRT's: declare the tensor as a plain one",
    "allow_ragged_batch": "torchgate batches requests of the same shape only: drop it (a config.toml's "
    "[padding] batches variable-length requests)",
    "is_non_linear_format_io": "non-linear formats are TensorRT's: declare the tensor as a plain one",
}
DYNAMIC_BATCHING_FIELDS = (
    "preferred_batch_size",
    "max_queue_delay_microseconds",
    "preserve_ordering",
    "priority_levels",
    "default_priority_level",
    "default_queue_policy",
    "priority_queue_policy",
)
QUEUE_POLICY_FIELDS = (
    "timeout_action",
    "default_timeout_microseconds",
    "allow_timeout_override",
    "max_queue_size",
)
INSTANCE_GROUP_FIELDS = (
    "name",
    "kind",
    "count",
    "rate_limiter",
    "gpus",
    "secondary_devices",
    "profile",
    "passive",
    "host_policy",
)
KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")
VERSION_POLICIES = ("latest", "all", "specific")


def libtorch_positions(names: Sequence[str], arguments: Sequence[str] | None = None) -> list[int] | None:
    """Where Triton's libtorch backend puts each tensor of a config.pbtxt (``names``, in config order): the
    position of each input among ``forward``'s ``arguments`` when every name is one of them, else each
    name's index when every name is NAME__<index> (outputs: ``arguments`` None), else None: config order.
    pytorch_backend's src/pt/model_instance_state.cc, GetNamingConvention."""
    if arguments is not None and len(names) == len(arguments) and set(names) == set(arguments):
        return [list(arguments).index(name) for name in names]
    indices = [name.partition("__")[2] for name in names]  # NAME__<index>: digits after the first "__"
    if not names or not all(index.isascii() and index.isdigit() for index in indices):
        return None
    return [int(index) for index in indices]


def to_toml(config: Message, path: str | Path, folder: str) -> dict[str, Any]:
    """Return what ``tomllib.loads`` gives for the config.toml equivalent to Triton's ModelConfig
    ``config`` (read from ``path``, in the model folder named ``folder``: the model's name when the config
    gives none)."""
    return _Translation(str(path)).model(config, folder)


def _show(value: Any) -> str:
    if isinstance(value, Identifier):
        return str(value)
    if isinstance(value, Message):
        return "{ ... }"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class _Translation:
    """Typed reads of a parsed ModelConfig whose errors name the file, the line and the field."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, message: Message, field: str, what: str, index: int | None = None) -> ConfigError:
        line = message.at.get(field, message.line)
        if index is not None and index < len(message.lines.get(field, ())):
            line = message.lines[field][index]
        return ConfigError(f"{self.path}:{line}: {what}")

    def check_fields(self, message: Message, valid: tuple[str, ...], prefix: str, what: str) -> None:
        for field in message:
            if field not in valid:
                hint = suggest(field, list(valid), "field")
                raise self.fail(
                    message,
                    field,
                    f"unknown field '{prefix}{field}' ({what} has no such field)"
                    + (hint or ("; its fields are: " + ", ".join(valid) if valid else "; it takes none")),
                )

    def one(self, message: Message, field: str, prefix: str) -> Any:
        """Return the one value of a singular field, or None when it is not given."""
        values = message.get(field)
        if values is None:
            return None
        if len(values) != 1:
            raise self.fail(
                message, field, f"field '{prefix}{field}' is given {len(values)} times; it takes one value", 1
            )
        return values[0]

    def string(self, message: Message, field: str, prefix: str) -> str | None:
        value = self.one(message, field, prefix)
        if value is not None and (not isinstance(value, str) or isinstance(value, Identifier)):
            raise self.fail(
                message, field, f"field '{prefix}{field}' is {_show(value)}, expected a quoted string"
            )
        return value

    def integer(self, message: Message, field: str, prefix: str) -> int | None:
        value = self.one(message, field, prefix)
        if value is not None and type(value) is not int:
            raise self.fail(message, field, f"field '{prefix}{field}' is {_show(value)}, expected an integer")
        return value

    def boolean(self, message: Message, field: str, prefix: str) -> bool | None:
        value = self.one(message, field, prefix)
        if value is None or isinstance(value, bool):
            return value
        if value in ("t", "f") and isinstance(value, Identifier) or type(value) is int and value in (0, 1):
            return value in ("t", 1)
        raise self.fail(message, field, f"field '{prefix}{field}' is {_show(value)}, expected true or false")

    def enum(self, message: Message, field: str, prefix: str, names: tuple[str, ...]) -> str | None:
        value = self.one(message, field, prefix)
        if value is not None and not (isinstance(value, Identifier) and value in names):
            raise self.fail(
                message,
                field,
                f"field '{prefix}{field}' is {_show(value)}, expected one of {', '.join(names)}"
                + suggest(str(value), list(names), "field"),
            )
        return None if value is None else str(value)

    def message(self, message: Message, field: str, prefix: str) -> Message | None:
        value = self.one(message, field, prefix)
        if value is not None and not isinstance(value, Message):
            raise self.fail(message, field, f"field '{prefix}{field}' is {_show(value)}, expected {{ ... }}")
        return value

    def messages(self, message: Message, field: str, prefix: str) -> list[Message]:
        values = message.get(field, [])
        for i, value in enumerate(values):
            if not isinstance(value, Message):
                raise self.fail(
                    message, field, f"field '{prefix}{field}' holds {_show(value)}, expected {{ ... }}", i
                )
        return values

    def integers(self, message: Message, field: str, prefix: str) -> list[int] | None:
        values = message.get(field)
        if values is None:
            return None
        for i, value in enumerate(values):
            if type(value) is not int:
                raise self.fail(
                    message, field, f"field '{prefix}{field}' holds {_show(value)}, expected integers", i
                )
        return list(values)

    # -- the model ---------------------------------------------------------------------------------------

    def model(self, config: Message, folder: str) -> dict[str, Any]:
        for field in config:
            if field not in MODEL_CONFIG_FIELDS:
                hint = suggest(field, list(MODEL_CONFIG_FIELDS), "field")
                raise self.fail(
                    config, field, f"unknown field '{field}': Triton's ModelConfig has no such field" + hint
                )
        for field, why in REFUSED_FIELDS.items():
            if field in config:
                raise self.fail(config, field, f"field '{field}' is not supported: {why}")
        self.refuse_other_runtimes(config)
        raw: dict[str, Any] = {"name": self.string(config, "name", "") or folder, "backend": "torchscript"}
        max_batch_size = self.integer(config, "max_batch_size", "")
        if max_batch_size is not None:
            raw["max_batch_size"] = max_batch_size
        for key, fields in (("input", INPUT_FIELDS), ("output", OUTPUT_FIELDS)):
            entries = self.messages(config, key, "")
            if not entries:
                raise self.fail(
                    config, key, f"no '{key}': declare each of the model's {key}s, {key} [ {{ name: ... }} ]"
                )
            raw[key] = [self.tensor(entry, key, i, fields) for i, entry in enumerate(entries)]
            self.check_positions(config, key, raw[key])
        batching = self.message(config, "dynamic_batching", "")
        if batching is not None:
            raw["dynamic_batching"], queue_size = self.dynamic_batching(batching)
            if queue_size:  # 0 is Triton's unlimited: torchgate's default bound stays
                raw["max_queue_size"] = queue_size
        groups = self.messages(config, "instance_group", "")
        if groups:
            raw["instance_group"] = [self.instance_group(group, i) for i, group in enumerate(groups)]
        policy = self.message(config, "version_policy", "")
        # Triton serves the latest version alone when the config names no policy (a config.toml: every one)
        raw["version_policy"] = {"latest": 1} if policy is None else self.version_policy(policy)
        cache = self.message(config, "response_cache", "")
        if cache is not None:
            self.check_fields(cache, ("enable",), "response_cache.", "ModelResponseCache")
            raw["response_cache"] = {"enable": bool(self.boolean(cache, "enable", "response_cache."))}
        for i, entry in enumerate(self.messages(config, "parameters", "")):
            self.parameter(config, entry, i)
        return raw

    def refuse_other_runtimes(self, config: Message) -> None:
        """Refuse all but a TorchScript model: platform pytorch_libtorch, backend pytorch, file model.pt."""
        how = 'serve a TorchScript model (platform: "pytorch_libtorch" or backend: "pytorch", 1/model.pt)'
        for field, wanted in (("platform", "pytorch_libtorch"), ("backend", "pytorch")):
            value = self.string(config, field, "")
            if value not in (None, "", wanted):
                python = (
                    "; a Python model that builds a torch.nn.Module is served from a config.toml with "
                    "torchgate's own python backend (README: Serving your own model)"
                    if value == "python"
                    else ""
                )
                raise self.fail(
                    config,
                    field,
                    f"torchgate serves PyTorch models; {field} {value!r} is not one: {how}, "
                    "saved with torch.jit.trace or torch.jit.script and torch.jit.save" + python,
                )
        runtime = self.string(config, "runtime", "")
        if runtime:
            raise self.fail(
                config,
                field="runtime",
                what=f"field 'runtime' is {runtime!r}: torchgate runs TorchScript models only; drop it and "
                f"{how}, or serve Python code with a config.toml and the python backend",
            )
        filename = self.string(config, "default_model_filename", "")
        if filename not in (None, "", "model.pt"):
            raise self.fail(
                config,
                "default_model_filename",
                f"field 'default_model_filename' is {filename!r}: torchgate loads model.pt from each version "
                f"folder; rename {filename} to model.pt and drop default_model_filename",
            )
        policy = self.message(config, "model_transaction_policy", "")
        if policy is not None:
            self.check_fields(policy, ("decoupled",), "model_transaction_policy.", "ModelTransactionPolicy")
            if self.boolean(policy, "decoupled", "model_transaction_policy."):
                raise self.fail(
                    policy,
                    "decoupled",
                    "field 'model_transaction_policy.decoupled' is true: torchgate answers each request with "
                    "one response; decoupled models (several responses, or none) are not supported",
                )

    def tensor(self, entry: Message, key: str, i: int, fields: tuple[str, ...]) -> dict[str, Any]:
        prefix = f"{key}[{i}]."
        what = "ModelInput" if key == "input" else "ModelOutput"
        self.check_fields(entry, fields, prefix, what)
        for flag, why in TENSOR_FLAGS.items():
            if self.boolean(entry, flag, prefix):
                raise self.fail(entry, flag, f"field '{prefix}{flag}' is not supported: {why}")
        spec: dict[str, Any] = {}
        name = self.string(entry, "name", prefix)
        if name is not None:
            spec["name"] = name
        reshape = self.message(entry, "reshape", prefix)
        if reshape is not None:  # the shape the model takes or returns: repository.py checks it against dims
            self.check_fields(reshape, ("shape",), f"{prefix}reshape.", "ModelTensorReshape")
            spec["reshape"] = self.integers(reshape, "shape", f"{prefix}reshape.") or []
        datatype = self.enum(entry, "data_type", prefix, DATA_TYPES)
        if datatype is None:
            raise self.fail(entry, "data_type", f"{key}[{i}] has no data_type (TYPE_FP32, TYPE_INT64, ...)")
        if datatype == "TYPE_STRING":
            raise self.fail(
                entry,
                "data_type",
                f"field '{prefix}data_type' is TYPE_STRING: a TorchScript model takes and returns tensors, "
                "not strings; serve it with a config.toml whose handler turns strings into tensors and back",
            )
        spec["datatype"] = datatype.removeprefix("TYPE_")
        dims = self.integers(entry, "dims", prefix)
        if dims is not None:
            spec["dims"] = dims
        self.enum(entry, "format", prefix, FORMATS)  # informational in Triton: checked, then ignored
        optional = self.boolean(entry, "optional", prefix)
        if optional is not None:
            spec["optional"] = optional
        label_filename = self.string(entry, "label_filename", prefix)
        if label_filename:
            spec["label_filename"] = label_filename
        return spec

    def check_positions(self, config: Message, key: str, specs: list[dict[str, Any]]) -> None:
        """With the libtorch backend's NAME__<index> names throughout, the indices must number the tensors
        0 to n-1, in any order: torchgate passes NAME__i as forward's argument i (and takes output NAME__i
        from the i-th value forward returns), as Triton does, whatever the order of the config."""
        names = [spec.get("name", "") for spec in specs]
        positions = libtorch_positions(names)
        if positions is None or sorted(positions) == list(range(len(names))):
            return
        for i, (name, position) in enumerate(zip(names, positions, strict=True)):
            if position >= len(names) or positions.count(position) > 1:
                entry = config[key][i]
                raise ConfigError(
                    f"{self.path}:{entry.line}: {key}[{i}] is {name!r}: with Triton's libtorch names "
                    f"NAME__<index>, the index is the {key}'s position in forward's "
                    f"{'arguments' if key == 'input' else 'results'}, so the {len(names)} {key}s are "
                    f"numbered __0 to __{len(names) - 1}, each once"
                )

    def dynamic_batching(self, batching: Message) -> tuple[dict[str, Any], int]:
        """Return the [dynamic_batching] table and the queue bound of the default queue policy (0: none)."""
        prefix = "dynamic_batching."
        self.check_fields(batching, DYNAMIC_BATCHING_FIELDS, prefix, "ModelDynamicBatching")
        if "priority_queue_policy" in batching:
            raise self.fail(
                batching,
                "priority_queue_policy",
                f"field '{prefix}priority_queue_policy' is not supported: every priority level shares the "
                "default queue policy",
            )
        table: dict[str, Any] = {}
        preferred = self.integers(batching, "preferred_batch_size", prefix)
        if preferred is not None:
            table["preferred_batch_size"] = preferred
        for field, key in (
            ("max_queue_delay_microseconds", "max_queue_delay_us"),
            ("priority_levels", "priority_levels"),
            ("default_priority_level", "default_priority_level"),
        ):
            value = self.integer(batching, field, prefix)
            if value is not None and value < 0:
                raise self.fail(batching, field, f"field '{prefix}{field}' is {value}, expected 0 or more")
            if value is not None:
                table[key] = value
        self.boolean(batching, "preserve_ordering", prefix)  # torchgate answers each request on its own
        policy = self.message(batching, "default_queue_policy", prefix)
        return table, 0 if policy is None else self.queue_policy(policy)

    def queue_policy(self, policy: Message) -> int:
        """Return the queue bound of ``default_queue_policy``; refuse what differs from torchgate's queue: a
        request waits until its own deadline (``parameters.timeout``), then is rejected."""
        prefix = "dynamic_batching.default_queue_policy."
        self.check_fields(policy, QUEUE_POLICY_FIELDS, prefix, "ModelQueuePolicy")
        why = "torchgate's queue keeps a request until its own timeout, then rejects it"
        if self.enum(policy, "timeout_action", prefix, ("REJECT", "DELAY")) == "DELAY":
            raise self.fail(policy, "timeout_action", f"field '{prefix}timeout_action' DELAY: {why}")
        if self.integer(policy, "default_timeout_microseconds", prefix):
            raise self.fail(
                policy,
                "default_timeout_microseconds",
                f"field '{prefix}default_timeout_microseconds' is not supported: {why} (a client sets it, "
                "or torchgate serve --request-timeout)",
            )
        if self.boolean(policy, "allow_timeout_override", prefix) is False:
            raise self.fail(
                policy, "allow_timeout_override", f"field '{prefix}allow_timeout_override': {why}"
            )
        size = self.integer(policy, "max_queue_size", prefix) or 0
        if size < 0:
            raise self.fail(
                policy, "max_queue_size", f"field '{prefix}max_queue_size' is {size}, expected 0 or more"
            )
        return size

    def instance_group(self, group: Message, i: int) -> dict[str, Any]:
        prefix = f"instance_group[{i}]."
        self.check_fields(group, INSTANCE_GROUP_FIELDS, prefix, "ModelInstanceGroup")
        if self.one(group, "kind", prefix) == "KIND_MODEL":
            raise self.fail(
                group,
                "kind",
                f"field '{prefix}kind' is KIND_MODEL (the model places itself on devices), which torchgate "
                "does not support: use KIND_GPU (with gpus) or KIND_CPU",
            )
        if "secondary_devices" in group:
            raise self.fail(group, "secondary_devices", f"field '{prefix}secondary_devices' is not supported")
        if self.boolean(group, "passive", prefix):
            raise self.fail(
                group, "passive", f"field '{prefix}passive' is not supported: every instance serves requests"
            )
        entry: dict[str, Any] = {}
        kind = self.enum(group, "kind", prefix, KINDS)
        if kind is not None:
            entry["kind"] = kind
        count = self.integer(group, "count", prefix)
        if count is not None:
            entry["count"] = count
        gpus = self.integers(group, "gpus", prefix)
        if gpus is not None:
            entry["gpus"] = gpus
        return entry  # name, rate_limiter, host_policy, profile: Triton's own scheduling, ignored

    def version_policy(self, policy: Message) -> dict[str, Any]:
        prefix = "version_policy."
        self.check_fields(policy, VERSION_POLICIES, prefix, "ModelVersionPolicy")
        if len(policy) != 1:
            raise ConfigError(
                f"{self.path}:{policy.line}: version_policy takes one of latest {{ num_versions: N }}, "
                "all { } or specific { versions: [...] }"
            )
        kind = next(iter(policy))
        body = self.message(policy, kind, prefix)
        assert body is not None
        if kind == "all":
            self.check_fields(body, (), f"{prefix}all.", "ModelVersionPolicy.All")
            return {"all": True}
        if kind == "latest":
            self.check_fields(body, ("num_versions",), f"{prefix}latest.", "ModelVersionPolicy.Latest")
            count = self.integer(body, "num_versions", f"{prefix}latest.")
            if not count or count < 1:
                raise self.fail(
                    body, "num_versions", f"{prefix}latest needs num_versions of 1 or more, not {count or 0}"
                )
            return {"latest": count}
        self.check_fields(body, ("versions",), f"{prefix}specific.", "ModelVersionPolicy.Specific")
        return {"specific": self.integers(body, "versions", f"{prefix}specific.") or []}

    def parameter(self, config: Message, entry: Message, i: int) -> None:
        prefix = f"parameters[{i}]."
        self.check_fields(entry, ("key", "value"), prefix, "a parameters entry")
        key = self.string(entry, "key", prefix)
        if key is None:
            raise self.fail(config, "parameters", f"parameters[{i}] has no key", i)
        value = self.message(entry, "value", prefix)
        if value is not None:
            self.check_fields(value, ("string_value",), f"{prefix}value.", "ModelParameter")
            self.string(value, "string_value", f"{prefix}value.")
        # A parameter the backend does not read is ignored, as Triton's libtorch backend ignores it (a model's
        # own notes, say); one close to a name it reads is a typo, which would silently change nothing.
        hint = suggest(key, list(LIBTORCH_PARAMETERS), "parameter")
        if key not in LIBTORCH_PARAMETERS and hint:
            raise self.fail(
                config,
                "parameters",
                f"parameter {key!r} is not one of the libtorch backend's ({', '.join(LIBTORCH_PARAMETERS)}), "
                "which torchgate accepts and ignores" + hint,
                i,
            )


# Triton's data types: TYPE_X is the protocol's X, TYPE_STRING its BYTES.
DATA_TYPES = tuple(sorted(f"TYPE_{datatype}" for datatype in DATATYPES if datatype != BYTES)) + (
    "TYPE_STRING",
)
