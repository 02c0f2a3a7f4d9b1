"""Triton's config.pbtxt: the text format reader, its translation to the config.toml it stands for, what is
refused and why, and one TorchScript model served from a config.pbtxt end to end."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import triton
from gateway.models import ModelCatalog
from harness import Stack, commands, free_port, run, short_dir
from inference_worker.protocol import BYTES, DATATYPES, StatusReply
from inference_worker.repository import (
    ConfigError,
    load_model_config,
    scan_repository,
)
from inference_worker.text_format import Identifier, parse
from inference_worker.triton_config import libtorch_positions, to_toml

TIMEOUT = 60.0

# The brief's resnet: what a Triton user migrating has, comments and all.
RESNET = """
name: "resnet"
platform: "pytorch_libtorch"      # or: backend: "pytorch"
max_batch_size: 8
input [ { name: "INPUT__0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 224, 224 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 1000 ] label_filename: "labels.txt" } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
instance_group [ { count: 2 kind: KIND_GPU } ]
version_policy: { latest: { num_versions: 1 } }
parameters: { key: "INFERENCE_MODE" value: { string_value: "true" } }
"""
RESNET_TOML = {
    "name": "resnet",
    "backend": "torchscript",
    "max_batch_size": 8,
    "input": [{"name": "INPUT__0", "datatype": "FP32", "dims": [3, 224, 224]}],
    "output": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [1000], "label_filename": "labels.txt"}],
    "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_us": 100},
    "instance_group": [{"count": 2, "kind": "KIND_GPU"}],
    "version_policy": {"latest": 1},
}

# A minimal model, edited by the tests below.
SMALL = """
max_batch_size: 4
input { name: "x" data_type: TYPE_FP32 dims: [ 3 ] }
output { name: "y" data_type: TYPE_FP32 dims: [ 1 ] }
"""


def translate(text: str, folder: str = "m") -> dict[str, Any]:
    return to_toml(parse(text, "m/config.pbtxt"), "m/config.pbtxt", folder)


def refusal(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        translate(text)
    return str(caught.value)


def make(root: Path, config: str, name: str = "m", versions: tuple[str, ...] = ("1",)) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config)
    for version in versions:
        (folder / version).mkdir()
        (folder / version / "model.pt").write_bytes(b"x")
    return folder


# -- the text format ----------------------------------------------------------------------------------


def test_the_text_format_reads_every_form_a_config_is_written_in() -> None:
    text = """
    # a comment, and one after a value
    a: 1  # one
    b: -2; c: 1.5e3, d: -.5 e: 0x1F f: 017
    s: "tab\\tquote\\" \\x41\\101\\u00e9" t: 'single \\'quoted\\'' u: "ab" "cd"
    yes: true no: False kind: TYPE_FP32
    m { n: 1 } m: { n: 2 } m < n: 3 >
    list: [ 1, 2 ] list [ 3 ] list: 4
    msgs [ { n: 1 }, { n: 2 } ]
    empty: [ ]
    nested { inner { deep: "x" } }
    """
    message = parse(text)
    assert message == {
        "a": [1],
        "b": [-2],
        "c": [1500.0],
        "d": [-0.5],
        "e": [31],
        "f": [15],
        "s": ['tab\tquote" AAé'],
        "t": ["single 'quoted'"],
        "u": ["abcd"],
        "yes": [True],
        "no": [False],
        "kind": ["TYPE_FP32"],
        "m": [{"n": [1]}, {"n": [2]}, {"n": [3]}],
        "list": [1, 2, 3, 4],
        "msgs": [{"n": [1]}, {"n": [2]}],
        "empty": [],
        "nested": [{"inner": [{"deep": ["x"]}]}],
    }
    assert isinstance(message["kind"][0], Identifier) and not isinstance(message["s"][0], Identifier)
    assert message.lines["list"] == [8, 8, 8, 8]  # where each value is, for errors
    assert message["m"][1].line == 7


def test_odd_spacing_and_no_spacing_read_the_same() -> None:
    spaced = parse('input\n[\n  {\n    name :\n"x"\n  }\n]\n')
    tight = parse('input[{name:"x"}]')
    assert spaced == tight == {"input": [{"name": ["x"]}]}


@pytest.mark.parametrize(
    "text, message",
    [
        ('\n\nname "x"', ":3: expected ':' or '{' after field name 'name', found the string \"x\""),
        ("a: 1\n\ninput {\n  name: 1\n", ":4: expected '}' to close 'input' (opened at line 3)"),
        ("dims: [ 1 2 ]", ":1: expected ',' or ']' in the list of 'dims', found '2'"),
        ('\nname: "abc\n', ":2: a string that does not end on its line"),
        ("a: 1\nb: @", ":2: unexpected character '@'"),
        ('a: "\\q"', ":1: unknown escape '\\q'"),
        ("a: }", ":1: expected a value"),
        ("a: - x", ":1: expected a number after '-'"),
        ("{ a: 1 }", ":1: expected a field name, found '{'"),
        ("a { b: 1 } }", ":1: expected a field name, found '}'"),
        # what int() and the parser's recursion refused with a ValueError or RecursionError, not a ConfigError
        ("\ndims: [ " + "9" * 5000 + " ]", ":2: a number of 5000 characters: too large for a config"),
        ("a: 0" + "7" * 5000, ":1: a number of 5001 characters"),
        ("a { " * 33 + "}" * 33, ":1: messages nested more than 32 deep"),
    ],
)
def test_text_format_errors_name_the_file_and_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text, "repo/m/config.pbtxt")
    assert str(caught.value).startswith("repo/m/config.pbtxt:")
    assert message in str(caught.value)


# -- the translation ----------------------------------------------------------------------------------


def test_the_brief_resnet_is_the_config_toml_it_stands_for() -> None:
    assert translate(RESNET, "resnet") == RESNET_TOML


def test_the_name_is_the_folder_name_when_not_given_and_backend_pytorch_is_torchscript() -> None:
    raw = translate('backend: "pytorch"\n' + SMALL, "folder")
    assert raw["name"] == "folder" and raw["backend"] == "torchscript"
    assert raw["version_policy"] == {"latest": 1}  # Triton's default, not a config.toml's (every version)
    assert translate(SMALL)["backend"] == "torchscript"  # neither: Triton picks PyTorch for model.pt
    assert translate(
        'platform: "pytorch_libtorch" backend: "pytorch" default_model_filename: "model.pt"' + SMALL
    )


@pytest.mark.parametrize(
    "line, message",
    [
        (
            'platform: "onnxruntime_onnx"',
            "torchgate serves PyTorch models; platform 'onnxruntime_onnx' is not one: serve a TorchScript",
        ),
        ('backend: "onnxruntime"', "torchgate serves PyTorch models; backend 'onnxruntime' is not one"),
        ('platform: "tensorrt_plan"', "platform 'tensorrt_plan' is not one"),
        (
            'backend: "python"',
            "torch.jit.save; a Python model that builds a torch.nn.Module is served from a config.toml",
        ),
        (
            'default_model_filename: "resnet.pt"',
            "torchgate loads model.pt from each version folder; rename resnet.pt to model.pt",
        ),
        ('runtime: "model.py"', "field 'runtime' is 'model.py': torchgate runs TorchScript models only"),
    ],
)
def test_other_platforms_backends_and_files_are_refused(line: str, message: str) -> None:
    assert message in refusal(line + "\n" + SMALL)
    assert refusal(line + "\n" + SMALL).startswith("m/config.pbtxt:1: ")


@pytest.mark.parametrize("datatype", sorted(DATATYPES - {BYTES}))
def test_every_data_type_is_the_protocol_datatype(datatype: str) -> None:
    raw = translate(SMALL.replace("TYPE_FP32", f"TYPE_{datatype}", 1))
    assert raw["input"][0]["datatype"] == datatype


@pytest.mark.parametrize(
    "data_type, message",
    [
        ("TYPE_STRING", "is TYPE_STRING: a TorchScript model takes and returns tensors, not strings"),
        ("TYPE_INVALID", "field 'input[0].data_type' is TYPE_INVALID, expected one of TYPE_BF16"),
        ("TYPE_FP23", "(did you mean TYPE_FP32?)"),
        ('"TYPE_FP32"', "field 'input[0].data_type' is 'TYPE_FP32', expected one of"),
    ],
)
def test_bad_data_types_are_named(data_type: str, message: str) -> None:
    assert message in refusal(SMALL.replace("TYPE_FP32", data_type, 1))


def test_tensor_fields_map_and_formats_are_ignored() -> None:
    config = SMALL.replace("dims: [ 3 ] }", "dims: [ -1, 3 ] format: FORMAT_NHWC optional: true }")
    config = config.replace("dims: [ 1 ] }", 'dims: [ 1 ] label_filename: "l.txt" is_shape_tensor: false }')
    raw = translate(config)
    assert raw["input"] == [{"name": "x", "datatype": "FP32", "dims": [-1, 3], "optional": True}]
    assert raw["output"] == [{"name": "y", "datatype": "FP32", "dims": [1], "label_filename": "l.txt"}]
    assert "expected one of FORMAT_NONE, FORMAT_NCHW, FORMAT_NHWC" in refusal(
        SMALL.replace("dims: [ 3 ]", "format: FORMAT_NCHW4 dims: [ 3 ]")
    )


@pytest.mark.parametrize(
    "field, message",
    [
        ("reshape: { shape: [ 3 ] size: 1 }", "unknown field 'input[0].reshape.size'"),
        ("is_shape_tensor: true", "field 'input[0].is_shape_tensor' is not supported: shape tensors are"),
        ("allow_ragged_batch: true", "field 'input[0].allow_ragged_batch' is not supported"),
        ("is_non_linear_format_io: true", "field 'input[0].is_non_linear_format_io' is not supported"),
        ('label_filename: "l.txt"', "unknown field 'input[0].label_filename' (ModelInput has no such field)"),
        ("dimz: [ 3 ]", "unknown field 'input[0].dimz' (ModelInput has no such field) (did you mean dims?)"),
    ],
)
def test_tensor_fields_torchgate_cannot_honour_are_refused(field: str, message: str) -> None:
    text = refusal(SMALL.replace("dims: [ 3 ] }", f"dims: [ 3 ]\n {field} }}"))
    assert message in text and text.startswith("m/config.pbtxt:4: ")


def test_libtorch_indexed_names_may_come_in_any_order_but_must_number_the_tensors() -> None:
    two = """
    input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3 ] },
            { name: "INPUT__1" data_type: TYPE_FP32 dims: [ 3 ] } ]
    output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
    """
    assert [t["name"] for t in translate(two)["input"]] == ["INPUT__0", "INPUT__1"]
    swapped = (
        two.replace("INPUT__0", "INPUT__X").replace("INPUT__1", "INPUT__0").replace("INPUT__X", "INPUT__1")
    )
    # Triton's libtorch backend places NAME__i at position i whatever the config's order (its qa's
    # libtorch_unordered_index); the config keeps its order, the runner places them (test below)
    assert [t["name"] for t in translate(swapped)["input"]] == ["INPUT__1", "INPUT__0"]
    message = refusal(two.replace("INPUT__0", "INPUT__2"))
    assert "input[0] is 'INPUT__2'" in message and "numbered __0 to __1, each once" in message
    assert "numbered __0 to __1, each once" in refusal(two.replace("INPUT__0", "INPUT__1"))
    assert "numbered __0 to __0, each once" in refusal(two.replace("OUTPUT__0", "OUTPUT__1"))
    assert translate(two.replace("INPUT__1", "bias"))  # not every name indexed: declaration order, as always
    assert translate(two.replace("INPUT__1", "IN__PUT__1"))  # not NAME__<index> by Triton's rule: the same


@pytest.mark.parametrize(
    ("names", "arguments", "positions"),
    [
        (["INPUT__0", "INPUT__1"], None, [0, 1]),
        (["OUT__1", "OUT__0"], None, [1, 0]),
        (["INPUT1", "INPUT0"], ["INPUT0", "INPUT1"], [1, 0]),  # forward's argument names, before indices
        (["b__0", "a__1"], ["a__1", "b__0"], [1, 0]),
        (["INPUTA", "INPUT__1"], ["INPUT0", "INPUT1"], None),  # neither throughout: the config's order
        (["INPUT0", "INPUTB"], ["INPUT0", "INPUT1"], None),
        (["a__b__1", "c__0"], None, None),  # the text after the first "__" is not all digits
        (["x__²"], None, None),
    ],
)
def test_libtorch_positions_follow_triton_s_naming_conventions(
    names: list[str], arguments: list[str] | None, positions: list[int] | None
) -> None:
    assert libtorch_positions(names, arguments) == positions


# Triton's qa L0_libtorch_io_names, libtorch_unordered_index: the inputs listed in the other order than
# forward(INPUT0, INPUT1) takes them (Triton passes each by its argument name), the outputs NAME__<index>
UNORDERED = """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] },
        { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT__1" data_type: TYPE_FP32 dims: [ 4 ] },
         { name: "OUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def test_inputs_and_outputs_go_where_triton_s_libtorch_backend_puts_them(tmp_path: Path) -> None:
    import torch

    from inference_worker.backends import load_model

    class AddSub(torch.nn.Module):
        def forward(self, INPUT0: torch.Tensor, INPUT1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return INPUT0 - INPUT1, INPUT0 + INPUT1

    folder = make(tmp_path, UNORDERED, "unordered")
    sample = (torch.rand(2, 4), torch.rand(2, 4))
    torch.jit.save(torch.jit.trace(AddSub(), sample), str(folder / "1" / "model.pt"))
    run = load_model(load_model_config(folder), "1", torch.device("cpu"))
    zero, one = torch.arange(8.0).reshape(2, 4), torch.full((2, 4), -1.0)
    out1, out0 = run([one, zero])  # config order: INPUT1, INPUT0 in; OUT__1, OUT__0 out
    torch.testing.assert_close(out0, zero - one)
    torch.testing.assert_close(out1, zero + one)
    (folder / "config.pbtxt").write_text(UNORDERED.replace("INPUT1", "X").replace("INPUT0", "Y"))
    out1, out0 = load_model(load_model_config(folder), "1", torch.device("cpu"))([one, zero])
    torch.testing.assert_close(out0, one - zero)  # names forward does not take: the config's order


# NVIDIA's Quick_Deploy PyTorch tutorial (triton-inference-server/tutorials): ResNet-50, unbatched
QUICK_DEPLOY = """
name: "resnet50"
platform: "pytorch_libtorch"
max_batch_size : 0
input [
  {
    name: "input__0"
    data_type: TYPE_FP32
    dims: [ 3, 4, 4 ]
    reshape { shape: [ 1, 3, 4, 4 ] }
  }
]
output [
  {
    name: "output__0"
    data_type: TYPE_FP32
    dims: [ 1, 10 ,1, 1]
    reshape { shape: [ 1, 10 ] }
  }
]
"""


def test_reshape_gives_the_model_its_own_shape_and_clients_the_dims(tmp_path: Path) -> None:
    """Triton's reshape, as its Quick_Deploy PyTorch tutorial uses it (224x224 and 1000 classes made small):
    clients send and get ``dims``, the model takes and returns ``reshape``. It was refused."""
    import torch

    from inference_worker.backends import load_model

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.shape == (1, 3, 4, 4)
            return x.flatten(1)[:, :10] * 2

    folder = make(tmp_path, QUICK_DEPLOY, "resnet50")
    torch.jit.save(torch.jit.script(Net()), str(folder / "1" / "model.pt"))
    model = load_model_config(folder)
    assert [s.reshape for s in (*model.inputs, *model.outputs)] == [(1, 3, 4, 4), (1, 10)]
    x = torch.arange(48.0).reshape(3, 4, 4)
    (y,) = load_model(model, "1", torch.device("cpu"))([x])
    torch.testing.assert_close(y, (x.flatten()[:10] * 2).reshape(1, 10, 1, 1))
    config = triton.model_config(model)
    assert config["input"][0]["reshape"] == {"shape": [1, 3, 4, 4]} and config["input"][0]["dims"] == [
        3,
        4,
        4,
    ]
    assert config["output"][0]["reshape"] == {"shape": [1, 10]}
    # the same elements, or no reshape
    with pytest.raises(
        ConfigError, match=r"reshape' is \[1, 3, 4, 5\]: it must hold as many elements as dims"
    ):
        load_model_config(
            make(tmp_path / "more", QUICK_DEPLOY.replace("1, 3, 4, 4", "1, 3, 4, 5"), "resnet50")
        )


def test_dynamic_batching_maps_to_its_table_and_the_queue_bound() -> None:
    batching = """
    dynamic_batching {
      preferred_batch_size: [ 2, 4 ]
      max_queue_delay_microseconds: 500
      preserve_ordering: true
      priority_levels: 2
      default_priority_level: 1
      default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 0
                             allow_timeout_override: true max_queue_size: 16 }
    }
    """
    raw = translate(SMALL + batching)
    assert raw["dynamic_batching"] == {
        "preferred_batch_size": [2, 4],
        "max_queue_delay_us": 500,
        "priority_levels": 2,
        "default_priority_level": 1,
    }
    assert raw["max_queue_size"] == 16
    unlimited = translate(SMALL + "dynamic_batching { default_queue_policy { max_queue_size: 0 } }")
    assert "max_queue_size" not in unlimited and unlimited["dynamic_batching"] == {}


@pytest.mark.parametrize(
    "batching, message",
    [
        ("default_queue_policy { timeout_action: DELAY }", "timeout_action' DELAY: torchgate's queue keeps"),
        ("default_queue_policy { default_timeout_microseconds: 5 }", "default_timeout_microseconds' is not"),
        ("default_queue_policy { allow_timeout_override: false }", "allow_timeout_override'"),
        ("priority_queue_policy { key: 1 value: { max_queue_size: 4 } }", "priority_queue_policy' is not"),
        ("max_queue_delay_microseconds: -1", "max_queue_delay_microseconds' is -1, expected 0 or more"),
        ("max_queue_delay_microseconds: 1.5", "max_queue_delay_microseconds' is 1.5, expected an integer"),
        ("max_queue_delay: 5", "unknown field 'dynamic_batching.max_queue_delay'"),
    ],
)
def test_dynamic_batching_refusals_name_the_field(batching: str, message: str) -> None:
    text = refusal(SMALL + f"\ndynamic_batching {{\n {batching} }}")
    assert message in text and text.startswith("m/config.pbtxt:")


def test_instance_groups_versions_cache_and_ignored_fields() -> None:
    config = (
        SMALL
        + """
    instance_group [ { name: "g" kind: KIND_CPU count: 2 },
                     { kind: KIND_GPU gpus: [ 0, 1 ] host_policy: "a" } ]
    version_policy: { specific: { versions: [ 1, 3 ] } }
    response_cache { enable: true }
    parameters [ { key: "DISABLE_CUDNN" value: { string_value: "true" } },
                 { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "2" } },
                 { key: "model_name" value: { string_value: "llama" } } ]
    optimization { cuda { graphs: true } }
    model_warmup [ { name: "zeros" batch_size: 1
                     inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } } ]
    metric_tags { key: "team" value: "vision" }
    model_transaction_policy { decoupled: false }
    """
    )
    raw = translate(config)
    assert raw["instance_group"] == [{"kind": "KIND_CPU", "count": 2}, {"kind": "KIND_GPU", "gpus": [0, 1]}]
    assert raw["version_policy"] == {"specific": [1, 3]}
    assert raw["response_cache"] == {"enable": True}
    assert set(raw) == {"name", "backend", "max_batch_size", "input", "output", "instance_group"} | {
        "version_policy",
        "response_cache",
    }
    assert translate(SMALL + "version_policy { all { } }")["version_policy"] == {"all": True}


@pytest.mark.parametrize(
    "config, message",
    [
        ("instance_group [ { kind: KIND_MODEL } ]", "is KIND_MODEL (the model places itself on devices)"),
        ("instance_group [ { kind: KIND_TPU } ]", "expected one of KIND_AUTO, KIND_GPU, KIND_CPU"),
        ("instance_group [ { passive: true } ]", "field 'instance_group[0].passive' is not supported"),
        ("version_policy { latest { } all { } }", "version_policy takes one of latest"),
        ("version_policy { latest { num_versions: 0 } }", "needs num_versions of 1 or more"),
        ("version_policy { newest { } }", "unknown field 'version_policy.newest'"),
        ("response_cache { enabled: true }", "(did you mean enable?)"),
        (
            'parameters { key: "INFERENCE_MOD" value: { string_value: "true" } }',
            "parameter 'INFERENCE_MOD' is not one of the libtorch backend's (DISABLE_OPTIMIZED_EXECUTION",
        ),
        ('parameters { key: "INFERENCE_MOD" }', "(did you mean INFERENCE_MODE?)"),
        ("model_transaction_policy { decoupled: true }", "decoupled models (several responses, or none)"),
        ("max_batch_sise: 4", "unknown field 'max_batch_sise': Triton's ModelConfig has no such field"),
        ("max_batch_size: 2", "field 'max_batch_size' is given 2 times; it takes one value"),
        ("name: TYPE", "field 'name' is TYPE, expected a quoted string"),
    ],
)
def test_refusals_name_the_line_and_what_to_do(config: str, message: str) -> None:
    text = refusal(SMALL + "\n\n" + config)
    assert message in text
    assert text.startswith("m/config.pbtxt:7: ") or text.startswith("m/config.pbtxt:2: ")  # the field's line


@pytest.mark.parametrize(
    "field, message",
    [
        ("sequence_batching { max_sequence_idle_microseconds: 5 }", "no sequence batcher"),
        ('ensemble_scheduling { step [ { model_name: "a" } ] }', "torchgate serves no ensembles"),
        ("batch_input [ { kind: BATCH_ELEMENT_COUNT } ]", "builds no batch inputs"),
        ("batch_output [ { kind: BATCH_SCATTER_WITH_INPUT_SHAPE } ]", "builds no batch outputs"),
        ('model_repository_agents { agents [ { name: "checksum" } ] }', "runs no repository agents"),
        ('cc_model_filenames { key: "7.5" value: "m75.pt" }', "keep one file per version, named model.pt"),
        ('model_operations { op_library_filename: "libops.so" }', "torch.ops.load_library"),
    ],
)
def test_fields_torchgate_does_not_serve_are_refused(field: str, message: str) -> None:
    text = refusal(SMALL + field)
    assert f"field '{field.split()[0]}' is not supported: " in text and message in text


# -- in the repository ------------------------------------------------------------------------------------

# A libtorch model as Triton's model configuration guide shows one: repeated fields, comments, a label file.
TRITON_DOCS = """
# resnet50, exported with torch.jit.trace
name: "resnet50_libtorch"
platform: "pytorch_libtorch"
max_batch_size: 128
input {
  name: "INPUT__0"
  data_type: TYPE_FP32
  format: FORMAT_NCHW
  dims: [ 3, 224, 224 ]
}
output {
  name: "OUTPUT__0"
  data_type: TYPE_FP32
  dims: [ 1000 ]
  label_filename: "resnet50_labels.txt"
}
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
dynamic_batching {
  preferred_batch_size: [ 32, 64 ]
  max_queue_delay_microseconds: 100
}
parameters: {
  key: "DISABLE_OPTIMIZED_EXECUTION"
  value: { string_value: "true" }
}
parameters: {
  key: "ENABLE_NVFUSER"
  value: { string_value: "false" }
}
"""
TRITON_DOCS_TOML = """
name = "resnet50_libtorch"
backend = "torchscript"
max_batch_size = 128
[[input]]
name = "INPUT__0"
datatype = "FP32"
dims = [3, 224, 224]
[[output]]
name = "OUTPUT__0"
datatype = "FP32"
dims = [1000]
label_filename = "resnet50_labels.txt"
[[instance_group]]
count = 2
kind = "KIND_CPU"
[dynamic_batching]
preferred_batch_size = [32, 64]
max_queue_delay_us = 100
[version_policy]
latest = 1  # Triton's default
"""


def test_a_triton_docs_config_reads_as_its_config_toml(tmp_path: Path) -> None:
    folder = make(tmp_path / "pbtxt", TRITON_DOCS, "resnet50_libtorch", versions=("1", "2"))
    (folder / "resnet50_labels.txt").write_text("tench\ngoldfish\n")
    twin = tmp_path / "toml" / "resnet50_libtorch"
    twin.mkdir(parents=True)
    (twin / "config.toml").write_text(TRITON_DOCS_TOML)
    (twin / "resnet50_labels.txt").write_text("tench\ngoldfish\n")
    for version in ("1", "2"):
        (twin / version).mkdir()
        (twin / version / "model.pt").write_bytes(b"x")
    model, same = load_model_config(folder), load_model_config(twin)
    assert model.outputs[0].labels == ("tench", "goldfish")
    assert list(model.versions) == ["2"]  # no version_policy: Triton serves the latest version alone
    assert model.config_path == folder / "config.pbtxt" and same.config_path == twin / "config.toml"
    assert dataclasses.replace(same, path=folder, versions=model.versions) == model  # but for the folder
    assert triton.model_config(model) == triton.model_config(same)


def test_the_announced_text_carries_its_format(tmp_path: Path) -> None:
    folder = make(tmp_path, SMALL)
    model = load_model_config(folder)
    assert model.source == "#!torchgate config.pbtxt\n" + SMALL
    assert model.signature("1")["config"] == model.source  # what workers announce
    # a gateway reads it again, the folder's file gone (another host) or edited since: what was announced
    (folder / "config.pbtxt").unlink()
    (folder / "config.toml").write_text('name = "m"\n')
    again = load_model_config(folder, text=model.source, served={"1"})
    assert again == model and again.config_path == folder / "config.pbtxt"
    # a config.toml that begins as an announced text does is announced tagged, and reads back as TOML
    toml = '#!torchgate config.pbtxt\nname = "t"\nbackend = "torchscript"\n'
    toml += '[[input]]\nname = "x"\ndatatype = "FP32"\ndims = [1]\n'
    toml += '[[output]]\nname = "y"\ndatatype = "FP32"\ndims = [1]\n'
    twin = tmp_path / "t"
    (twin / "1").mkdir(parents=True)
    (twin / "1" / "model.pt").write_bytes(b"x")
    (twin / "config.toml").write_text(toml)
    read = load_model_config(twin)
    assert read.source == "#!torchgate config.toml\n" + toml and read.config_path == twin / "config.toml"
    assert load_model_config(twin, text=read.source, served={"1"}) == read


def test_a_gateway_follows_the_config_pbtxt_its_workers_announce(tmp_path: Path) -> None:
    folder = make(tmp_path, SMALL)
    announced = load_model_config(folder).source
    now: list[StatusReply] = []

    def serve(text: str | None) -> None:
        served = {"m": {"1": {"ready": 1, "signature": {"config": text}}}} if text else {}
        now.append(StatusReply("s", models=served))

    serve(announced)
    catalog = ModelCatalog(tmp_path, rescan_interval=0, served=lambda max_age: now[-1])
    assert catalog.get("m")[0].config_path == folder / "config.pbtxt"
    serve(announced.replace("max_batch_size: 4", "max_batch_size: 2"))  # the workers loaded an edit
    assert catalog.get("m")[0].max_batch_size == 2
    serve(None)  # unloaded, its folder (a config.pbtxt) still there: still a model of the repository
    assert not catalog.follow() and "m" in catalog.models
    serve(announced)
    assert catalog.follow()
    (folder / "config.pbtxt").unlink()
    serve(None)  # unloaded, its config gone: gone from every front
    assert catalog.follow() and "m" not in catalog.models


def test_the_repository_finds_pbtxt_folders_and_refuses_both_files(tmp_path: Path) -> None:
    make(tmp_path, SMALL, "m")
    make(tmp_path, SMALL, "both")
    (tmp_path / "both" / "config.toml").write_text('name = "both"\n')
    models, errors = scan_repository(tmp_path)
    assert set(models) == {"m"} and models["m"].config_path.name == "config.pbtxt"
    assert "holds both config.toml and config.pbtxt; keep one" in str(errors["both"])
    with pytest.raises(ConfigError, match=r"no model 'n' \(no .*n/config.toml or config.pbtxt\)"):
        scan_repository(tmp_path, ["n"])


def test_checks_of_the_config_toml_name_the_config_pbtxt(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"m/config.pbtxt: key 'max_batch_size' is -1"):
        load_model_config(make(tmp_path / "a", SMALL.replace("max_batch_size: 4", "max_batch_size: -1")))
    with pytest.raises(ConfigError, match=r"m/config.pbtxt: key 'name' is 'x', expected the folder name 'm'"):
        load_model_config(make(tmp_path / "b", 'name: "x"\n' + SMALL))
    with pytest.raises(ConfigError, match=r"m/config.pbtxt:2: expected"):
        load_model_config(make(tmp_path / "c", "\ninput {"))


# -- end to end ---------------------------------------------------------------------------------------

PAIR_PBTXT = """
# two inputs by Triton's libtorch names: forward(INPUT__0, INPUT__1) -> OUTPUT__0
name: "pair"
platform: "pytorch_libtorch"
max_batch_size: 8
input [
  { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "INPUT__1", data_type: TYPE_FP32, dims: [ 4 ] }
]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 2 ] } ]
dynamic_batching { max_queue_delay_microseconds: 1000 }
version_policy: { latest: { num_versions: 1 } }
parameters: { key: "INFERENCE_MODE" value: { string_value: "true" } }
model_warmup [ { name: "w" batch_size: 1 } ]
"""


def _ports() -> tuple[int, int]:
    """The HTTP and gRPC ports: TORCHGATE_TEST_PORT and the next when set (a machine that reserves a range),
    else free ones."""
    given = int(os.environ.get("TORCHGATE_TEST_PORT") or 0)
    return (given, given + 1) if given else (free_port(), free_port())


@pytest.fixture
def pair_repository() -> Iterator[tuple[Path, Any]]:
    import torch

    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.linear(a) * 2 - self.linear(b)

    torch.manual_seed(0)
    with short_dir() as base:
        folder = base / "repo" / "pair"
        (folder / "1").mkdir(parents=True)
        traced = torch.jit.trace(Pair().eval(), (torch.rand(2, 4), torch.rand(2, 4)))
        torch.jit.save(traced, str(folder / "1" / "model.pt"))
        (folder / "config.pbtxt").write_text(PAIR_PBTXT)
        yield base, torch.jit.load(str(folder / "1" / "model.pt"))


@pytest.mark.processes
def test_a_torchscript_model_described_by_config_pbtxt_serves_as_in_triton(
    pair_repository: tuple[Path, Any],
) -> None:
    import numpy as np
    import torch
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    base, model = pair_repository
    repository = base / "repo"
    checked = run(commands.torchgate("check", "--model-repository", str(repository)), timeout=TIMEOUT * 3)
    assert checked.returncode == 0 and "OK    pair version 1" in checked.stdout, (
        checked.stdout + checked.stderr
    )
    port, grpc_port = _ports()
    stack = Stack.at(base, repository, port=port)
    options = ["--gpus", "none", "--cpu-workers", "1", "--worker-threads", "1", "--worker-startsecs", "2"]
    options += ["--gateway-processes", "1", "--gateway-threads", "4", "--model-repository", str(repository)]
    options += ["--grpc-port", str(grpc_port)]
    with stack.serve(*options) as served:
        served.wait_serving(timeout=120)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{served.port}", network_timeout=TIMEOUT)
        try:
            metadata = client.get_model_metadata("pair")
            assert metadata["platform"] == "pytorch_libtorch"
            assert [(t["name"], t["shape"]) for t in metadata["inputs"]] == [
                ("INPUT__0", [-1, 4]),
                ("INPUT__1", [-1, 4]),
            ]
            config = client.get_model_config("pair")
            assert config["max_batch_size"] == 8 and config["input"][1]["data_type"] == "TYPE_FP32"
            a = np.random.default_rng(1).random((3, 4), dtype=np.float32)
            b = np.random.default_rng(2).random((3, 4), dtype=np.float32)
            inputs = [
                httpclient.InferInput("INPUT__0", [3, 4], "FP32"),
                httpclient.InferInput("INPUT__1", [3, 4], "FP32"),
            ]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            answer = client.infer("pair", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT__0")])
            with torch.inference_mode():
                expected = model(torch.from_numpy(a), torch.from_numpy(b)).numpy()
            assert answer.as_numpy("OUTPUT__0").shape == (3, 2)
            np.testing.assert_allclose(answer.as_numpy("OUTPUT__0"), expected, rtol=1e-5, atol=1e-6)
        finally:
            client.close()
        over_grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            inputs = [
                grpcclient.InferInput("INPUT__0", [3, 4], "FP32"),
                grpcclient.InferInput("INPUT__1", [3, 4], "FP32"),
            ]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            answer = over_grpc.infer("pair", inputs, client_timeout=TIMEOUT)
            np.testing.assert_allclose(answer.as_numpy("OUTPUT__0"), expected, rtol=1e-5, atol=1e-6)
            assert over_grpc.get_model_config("pair", client_timeout=TIMEOUT).config.max_batch_size == 8
        finally:
            over_grpc.close()
