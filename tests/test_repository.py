"""Model repository parsing: what loads, and errors that name the file, the key and what was expected."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import DEFAULT_REPOSITORY
from inference_worker.protocol import MAX_HEADER_BYTES, Ready, decode
from inference_worker.repository import (
    INT32_MAX,
    INT64_MAX,
    MAX_CONFIG_BYTES,
    ConfigError,
    load_model_config,
    load_repository,
    scan_repository,
)

GOOD = """
name = "m"
backend = "torch_export"
max_batch_size = 8
[dynamic_batching]
max_queue_delay_us = 100
[[input]]
name = "input"
datatype = "FP32"
dims = [-1, 3]
[[output]]
name = "output"
datatype = "FP16"
dims = [2]
"""


def make(tmp_path: Path, config: str, versions: tuple[str, ...] = ("1",), file: str = "model.pt2") -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.toml").write_text(config)
    for version in versions:
        (folder / version).mkdir()
        (folder / version / file).write_bytes(b"x")
    return folder


def test_the_default_repository_serves_digits() -> None:
    digits = load_repository(DEFAULT_REPOSITORY)["digits"]
    assert digits.max_batch_size == 64 and digits.default_version == "1"
    assert digits.inputs[0].full_shape(digits.max_batch_size) == [-1, 64]


def test_highest_version_folder_is_the_default(tmp_path: Path) -> None:
    model = load_model_config(make(tmp_path, GOOD, versions=("1", "2", "10")))
    assert model.default_version == "10" and sorted(model.versions) == ["1", "10", "2"]
    assert model.signature("2")["inputs"] == [{"name": "input", "datatype": "FP32", "dims": [-1, 3]}]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c.replace('backend = "torch_export"', 'backend = "onnx"'),
            "key 'backend' is 'onnx', expected one of",
        ),
        (lambda c: c.replace('name = "m"', 'name = "x"'), "key 'name' is 'x', expected the folder name 'm'"),
        (lambda c: c.replace("max_batch_size = 8", "max_batch_size = -1"), "key 'max_batch_size' is -1"),
        (
            lambda c: c.replace('datatype = "FP32"', 'datatype = "FLOAT"'),
            "key 'input[0].datatype' is 'FLOAT'",
        ),
        (lambda c: c.replace("dims = [-1, 3]", "dims = [-2]"), "key 'input[0].dims'"),
        (
            lambda c: c.replace("max_queue_delay_us = 100", 'max_queue_delay_us = "soon"'),
            "'dynamic_batching.max_queue_delay_us'",
        ),
        (lambda c: c.split("[[output]]")[0], "key 'output' must be one or more"),
        (lambda c: c + "\n[[[", "not valid TOML"),
        (
            lambda c: c.replace('backend = "torch_export"', 'backend = "python"'),
            "key 'factory' must be 'module:function'",
        ),
    ],
)
def test_bad_configs_name_file_key_and_expectation(tmp_path: Path, edit, message: str) -> None:
    folder = make(tmp_path, edit(GOOD))
    with pytest.raises(ConfigError) as caught:
        load_model_config(folder)
    assert str(folder / "config.toml") in str(caught.value)
    assert message in str(caught.value)


def test_missing_model_file_names_it(tmp_path: Path) -> None:
    folder = make(tmp_path, GOOD, file="other.bin")
    with pytest.raises(ConfigError, match=r"1/model\.pt2: missing"):
        load_model_config(folder)


def test_missing_versions_and_configs_are_reported(tmp_path: Path) -> None:
    folder = make(tmp_path, GOOD, versions=())
    with pytest.raises(ConfigError, match="no version folders"):
        load_model_config(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no model folders"):
        load_repository(tmp_path / "empty")
    with pytest.raises(ConfigError, match="not a directory"):
        load_repository(tmp_path / "absent")


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c.replace("max_batch_size", "max_batch_sise"),
            "unknown key 'max_batch_sise' (did you mean max_batch_size?)",
        ),
        (
            lambda c: c.replace("max_batch_size = 8", "max_batch_size = 8\nmax_que_size = 4"),
            "unknown key 'max_que_size' (did you mean max_queue_size?)",
        ),
        (
            lambda c: c.replace("[dynamic_batching]", "[dynamic_batchng]"),
            "unknown table [dynamic_batchng] (did you mean [dynamic_batching]?)",
        ),
        (
            lambda c: c.replace("max_queue_delay_us", "max_queue_delay_microseconds"),
            "unknown key 'dynamic_batching.max_queue_delay_microseconds' (did you mean max_queue_delay_us?)",
        ),
        (
            lambda c: c.replace("dims = [2]", "dimz = [2]"),
            "unknown key 'output[0].dimz' (did you mean dims?)",
        ),
        (
            lambda c: c + '\n[[instance_grop]]\nkind = "KIND_CPU"\n',
            "unknown table [[instance_grop]] (did you mean [[instance_group]]?)",
        ),
        (
            lambda c: c.replace(
                "[dynamic_batching]", '[[instance_group]]\nkind = "KIND_GUP"\n[dynamic_batching]'
            ),
            "key 'instance_group[0].kind' is 'KIND_GUP', expected KIND_GPU, "
            "KIND_CPU or KIND_AUTO (did you mean KIND_GPU?)",
        ),
        (
            lambda c: c.replace("[dynamic_batching]", "[[instance_group]]\ncount = 0\n[dynamic_batching]"),
            "key 'instance_group[0].count' is 0",
        ),
        (
            lambda c: c.replace(
                "[dynamic_batching]", '[[instance_group]]\nkind = "KIND_CPU"\ngpus = [0]\n[dynamic_batching]'
            ),
            "key 'instance_group[0].gpus' is set but kind is 'KIND_CPU'",
        ),
        (
            lambda c: c.replace("[dynamic_batching]", "[dynamic_batching]\npriority_levels = 2"),
            "key 'dynamic_batching.default_priority_level' is 0, expected 1 to priority_levels (2)",
        ),
        (
            lambda c: c.replace("[dynamic_batching]", "[dynamic_batching]\ndefault_priority_level = 1"),
            "key 'dynamic_batching.default_priority_level' is 1, expected 0 when priority_levels is 0",
        ),
        (lambda c: c.replace('name = "m"', 'name = "m"\nfactory = "x:y"'), "key 'factory' is for the python"),
        (lambda c: c.replace('name = "m"', 'name = "m"\ncolour = 1'), "valid keys here: name, backend"),
    ],
)
def test_unknown_keys_and_tables_name_the_closest_valid_one(tmp_path: Path, edit, message: str) -> None:
    folder = make(tmp_path, edit(GOOD))
    with pytest.raises(ConfigError) as caught:
        load_model_config(folder)
    assert str(folder / "config.toml") in str(caught.value)
    assert message in str(caught.value)


def test_priority_levels_are_read_and_announced(tmp_path: Path) -> None:
    config = GOOD.replace(
        "[dynamic_batching]", "[dynamic_batching]\npriority_levels = 3\ndefault_priority_level = 2"
    )
    model = load_model_config(make(tmp_path, config))
    assert (model.priority_levels, model.default_priority_level) == (3, 2)
    signature = model.signature("1")
    assert (signature["priority_levels"], signature["default_priority_level"]) == (3, 2)
    (tmp_path / "plain").mkdir()
    assert load_model_config(make(tmp_path / "plain", GOOD)).priority_levels == 0


def test_instance_groups_are_read_with_triton_kinds(tmp_path: Path) -> None:
    config = GOOD.replace(
        "[dynamic_batching]",
        '[[instance_group]]\nkind = "KIND_GPU"\ncount = 2\ngpus = [1, 3]\n'
        '[[instance_group]]\nkind = "CPU"\n[dynamic_batching]',
    )
    model = load_model_config(make(tmp_path, config))
    assert [(g.kind, g.count, g.gpus) for g in model.instance_groups] == [("GPU", 2, (1, 3)), ("CPU", 1, ())]
    plain = tmp_path / "plain"
    plain.mkdir()
    assert load_model_config(make(plain, GOOD)).instance_groups == ()


def test_a_scan_keeps_good_models_and_names_each_bad_one(tmp_path: Path) -> None:
    make(tmp_path, GOOD)
    bad = tmp_path / "bad"
    (bad / "1").mkdir(parents=True)
    (bad / "config.toml").write_text(
        GOOD.replace('name = "m"', 'name = "bad"').replace("max_batch_size", "max_batch")
    )
    models, errors = scan_repository(tmp_path)
    assert set(models) == {"m"} and set(errors) == {"bad"}
    assert "did you mean max_batch_size?" in str(errors["bad"])
    with pytest.raises(ConfigError, match="unknown key 'max_batch'"):
        load_repository(tmp_path)
    with pytest.raises(
        ConfigError, match=r"no model 'mm' .*\(did you mean m\?\); the repository holds: bad, m"
    ):
        scan_repository(tmp_path, ["mm"])


def test_an_output_reads_its_labels_one_per_line(tmp_path: Path) -> None:
    config = GOOD + 'label_filename = "labels.txt"\n'  # the last table is the output's
    folder = make(tmp_path, config)
    (folder / "labels.txt").write_bytes("tench\r\ngoldfish ✓\n\nshark\n".encode())
    output = load_model_config(folder).outputs[0]
    assert output.label_filename == "labels.txt"
    assert output.labels == ("tench", "goldfish ✓", "", "shark")
    signature = load_model_config(folder).signature("1")
    assert "tench" not in str(signature) and "label" not in str(signature["outputs"])  # labels: off the wire
    assert signature["config"] == config  # the text workers announce: gateways read it (gateway/models.py)


@pytest.mark.parametrize(
    "filename, content, message",
    [
        ("labels.txt", None, "cannot read"),
        ("../labels.txt", b"a\n", "must be the name of a file beside config.toml"),
        ("labels.txt", b"\xff\xfe\n", "labels.txt: not UTF-8 text"),
    ],
)
def test_bad_label_files_are_named(
    tmp_path: Path, filename: str, content: bytes | None, message: str
) -> None:
    folder = make(tmp_path, GOOD + f'label_filename = "{filename}"\n')
    if content is not None:
        (folder / "labels.txt").write_bytes(content)
    with pytest.raises(ConfigError, match=f"output\\[0\\].label_filename.*{message}"):
        load_model_config(folder)


def test_only_an_output_has_labels(tmp_path: Path) -> None:
    config = GOOD.replace("dims = [-1, 3]", 'dims = [-1, 3]\nlabel_filename = "labels.txt"')
    folder = make(tmp_path, config)
    (folder / "labels.txt").write_text("a\n")
    with pytest.raises(ConfigError, match="input\\[0\\].label_filename': only an output has labels"):
        load_model_config(folder)


def test_torchserve_index_to_name_json_labels_too(tmp_path: Path) -> None:
    folder = make(tmp_path, GOOD + 'label_filename = "index_to_name.json"\n')
    (folder / "index_to_name.json").write_text(
        '{"0": ["n01440764", "tench"], "1": "goldfish", "3": ["shark"]}'
    )
    assert load_model_config(folder).outputs[0].labels == ("tench", "goldfish", "", "shark")
    for bad, message in (
        ("[1, 2]", "must map class indices to labels"),
        ('{"x": "a"}', "entry 'x' must map a class index below"),
        ('{"0": 5}', "entry '0' must map"),
        ('{"99999999": "a"}', "entry '99999999' must map"),
        ("{", "is not valid JSON"),
    ):
        (folder / "index_to_name.json").write_text(bad)
        with pytest.raises(ConfigError, match=message):
            load_model_config(folder)


def test_the_version_policy_picks_the_folders_served_as_tritons(tmp_path: Path) -> None:
    folder = make(tmp_path, GOOD, versions=("1", "2", "3", "10"))
    config = folder / "config.toml"
    assert sorted(load_model_config(folder).versions, key=int) == ["1", "2", "3", "10"]  # no table: all
    assert load_model_config(folder).version_policy == {"all": {}}
    config.write_text(GOOD + "[version_policy]\nlatest = 2\n")
    model = load_model_config(folder)
    assert sorted(model.versions, key=int) == ["3", "10"] and model.default_version == "10"
    assert model.version_policy == {"latest": {"num_versions": 2}}
    config.write_text(GOOD + "[version_policy]\nspecific = [2, 1]\n")
    model = load_model_config(folder)
    assert sorted(model.versions) == ["1", "2"] and model.version_policy == {"specific": {"versions": [1, 2]}}
    (folder / "3" / "model.pt2").unlink()  # a folder not served is not read
    assert load_model_config(folder).default_version == "2"


@pytest.mark.parametrize(
    "table, message",
    [
        ("latest = 0", "'version_policy.latest' is 0, expected a count of 1 or more"),
        (
            "specific = [4]",
            "'version_policy.specific' names version 4, which has no folder; the folders are 1, 2",
        ),
        ("specific = []", "must be a list of version numbers"),
        ("all = false", "'version_policy.all' must be true"),
        ("latest = 1\nall = true", "takes one of latest = N"),
        ("newest = 1", "unknown key 'version_policy.newest'"),
    ],
)
def test_a_bad_version_policy_is_named(tmp_path: Path, table: str, message: str) -> None:
    folder = make(tmp_path, GOOD + f"[version_policy]\n{table}\n", versions=("1", "2"))
    with pytest.raises(ConfigError, match=message):
        load_model_config(folder)


def test_only_folders_named_by_ascii_numbers_are_versions(tmp_path: Path) -> None:
    # "²" and "١٢" are digits to str.isdigit (int() refuses the first: the whole repository's scan, at start
    # and at every index, load and unknown model, raised ValueError); Triton skips them, as "0" and "abc"
    folder = make(tmp_path, GOOD, versions=("1", "²", "١٢", "0", "abc"))
    (folder / "7").write_text("a file, not a folder")
    models, errors = scan_repository(tmp_path)
    assert not errors and list(models["m"].versions) == ["1"]


def test_two_folders_of_one_version_are_refused(tmp_path: Path) -> None:
    folder = make(tmp_path, GOOD, versions=("01", "1"))  # which one served depended on the directory's order
    with pytest.raises(ConfigError, match="folders '01' and '1' are both version 1; keep one"):
        load_model_config(folder)
    (folder / "1" / "model.pt2").unlink()
    (folder / "1").rmdir()
    assert load_model_config(folder).versions == {"1": folder / "01"}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.replace("dims = [2]", f"dims = [{1 << 70}]"), "key 'output[0].dims'"),
        (lambda c: c.replace("dims = [-1, 3]", f"dims = [{1 << 63}]"), "key 'input[0].dims'"),
        (lambda c: c.replace("max_batch_size = 8", f"max_batch_size = {1 << 31}"), "from 0 to 2147483647"),
        (lambda c: c.replace("max_queue_delay_us = 100", f"max_queue_delay_us = {1 << 64}"), "delay_us"),
        (
            lambda c: c.replace("max_batch_size = 8", f"max_batch_size = 8\nmax_queue_size = {1 << 32}"),
            "4294967295",
        ),
        (lambda c: c + f"[[instance_group]]\ncount = {1 << 31}\n", "'instance_group[0].count'"),
        (lambda c: c + f"[[instance_group]]\ngpus = [{1 << 40}]\n", "'instance_group[0].gpus'"),
        (lambda c: c + f"[version_policy]\nlatest = {1 << 32}\n", "'version_policy.latest'"),
    ],
)
def test_integers_past_tritons_ranges_are_refused(tmp_path: Path, edit, message: str) -> None:
    # a worker announcing an output dim of 2**70 could not pack its READY (msgpack takes 64 bits): it died,
    # with every model it served, at each start
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_model_config(make(tmp_path, edit(GOOD)))


def test_a_config_at_tritons_limits_is_announced(tmp_path: Path) -> None:
    config = GOOD.replace("max_batch_size = 8", f"max_batch_size = {INT32_MAX}").replace(
        "dims = [2]", f"dims = [{INT64_MAX}]"
    )
    model = load_model_config(make(tmp_path, config.replace("= 100", f"= {INT64_MAX}")))
    ready = Ready("w", "i", 2 * model.max_batch_size, [model.signature("1")])
    message = decode(ready.frames())
    assert Ready.read(message).models[0]["outputs"][0]["dims"] == [INT64_MAX]


def test_versions_past_int64_and_configs_past_the_limit_are_refused(tmp_path: Path) -> None:
    folder = make(tmp_path, GOOD, versions=("1", str(1 << 63)))
    with pytest.raises(ConfigError, match="past the largest version"):
        load_model_config(folder)
    (folder / str(1 << 63) / "model.pt2").unlink()
    (folder / str(1 << 63)).rmdir()
    # a worker announces the config's text with each version: one past the header limit went unheard, and
    # the worker with it (every model it served)
    (folder / "config.toml").write_text(GOOD + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match=f"config.toml: larger than {MAX_CONFIG_BYTES} bytes"):
        load_model_config(folder)
    (folder / "config.toml").write_bytes(GOOD.encode() + b"# \xff\n")
    with pytest.raises(ConfigError, match="config.toml: not UTF-8 text"):
        load_model_config(folder)
    assert MAX_CONFIG_BYTES * 8 <= MAX_HEADER_BYTES  # eight versions of the largest config are heard


def test_a_label_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    # opening a FIFO waits for a writer: a label file that was one hung the gateway's re-scan under its
    # catalog lock, and with it every request of every model
    folder = make(tmp_path, GOOD + 'label_filename = "labels.txt"\n')
    os.mkfifo(folder / "labels.txt")
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(load_model_config, folder)
        try:
            with pytest.raises(ConfigError, match="labels.txt: cannot read: not a regular file"):
                future.result(timeout=10)
        finally:
            if not future.done():  # waiting for a writer (unfixed): be one, so the test ends
                with open(folder / "labels.txt", "wb"):
                    pass
