"""BYTES tensors without processes: the element layout, JSON and binary requests, validation, /predict and
TorchServe bodies, and the wire."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from gateway import torchserve
from gateway.codec import Tensor, infer_response, parse_infer_request
from gateway.errors import InvalidArgument, PayloadTooLarge
from gateway.predict import output_values, predict_input
from gateway.validation import bytes_input, check_inputs, raw_input
from inference_worker import protocol, strings
from inference_worker.protocol import Kind, ProtocolError, TensorMeta
from inference_worker.repository import ConfigError, ModelConfig, load_model_config
from inference_worker.strings import StringLimits, StringsError

SMALL = StringLimits(max_elements=4, max_element_bytes=8)


def text_model(tmp_path: Path, max_batch_size: int = 8, extra: str = "") -> ModelConfig:
    folder = tmp_path / "text"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.safetensors").write_bytes(b"not loaded by the gateway")
    (folder / "config.toml").write_text(f"""
name = "text"
backend = "python"
factory = "model:build"
handler = "handler:Handler"
max_batch_size = {max_batch_size}
[[input]]
name = "text"
datatype = "BYTES"
dims = [1]
[[output]]
name = "label"
datatype = "BYTES"
dims = [1]
format = "json"
[[output]]
name = "score"
datatype = "FP32"
dims = [2]
{extra}
""")
    return load_model_config(folder)


def test_layout_is_tritonclients() -> None:
    elements = [b"", b"hello", "h\u00e9".encode(), bytes(range(256))]
    ours = strings.serialize(elements)
    assert ours == serialize_byte_tensor(np.array(elements, dtype=object)).item()
    assert strings.deserialize(ours, 4) == elements
    assert list(deserialize_bytes_tensor(ours)) == elements


@pytest.mark.parametrize(
    ("buf", "count", "message"),
    [
        (b"\x05\x00\x00\x00abc", 1, "element 0 says 5 bytes but only 3 remain"),
        (b"\x01\x00\x00\x00a\x00", 2, "ends after 1 of 2 elements"),
        (b"\x01\x00\x00\x00ab", 1, "1 bytes follow the 1 BYTES elements"),
        (struct.pack("<I", 9) + b"x" * 9, 1, "element 0 is 9 bytes, more than the limit of 8"),
        (b"", 5, "5 elements exceeds the limit of 4"),
    ],
)
def test_malformed_or_over_limit_layouts_say_what_is_wrong(buf: bytes, count: int, message: str) -> None:
    with pytest.raises(StringsError, match=message):
        strings.spans(buf, count, SMALL)


def test_json_and_binary_requests_carry_the_same_bytes(tmp_path: Path) -> None:
    model = text_model(tmp_path)
    doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [["a b"], ["\u00e9"]]}]}
    from_json = check_inputs(parse_infer_request(json.dumps(doc).encode(), None), model)[0]
    blob = strings.serialize([b"a b", "\u00e9".encode()])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [2, 1],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    from_binary = check_inputs(parse_infer_request(header + blob, str(len(header))), model)[0]
    assert bytes(from_json.data) == bytes(from_binary.data) == blob


@pytest.mark.parametrize(
    ("data", "shape", "message"),
    [
        (["a", 1], [2, 1], "BYTES data must be strings, got int"),
        (["a"], [2, 1], "data holds 1 strings, shape \\[2, 1\\] needs 2"),
        (["a"] * 5, [5, 1], "more than the limit of 4 elements"),
        (["123456789"], [1, 1], "element 0 is 9 bytes, more than the limit of 8"),
    ],
)
def test_bad_json_strings_are_400s(tmp_path: Path, data: object, shape: list[int], message: str) -> None:
    doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape, "data": data}]}
    with pytest.raises(InvalidArgument, match=message):
        parse_infer_request(json.dumps(doc).encode(), None, limits=SMALL)


def test_bad_binary_strings_are_400s(tmp_path: Path) -> None:
    model = text_model(tmp_path)
    blob = b"\x09\x00\x00\x00short"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [1, 1],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    request = parse_infer_request(header + blob, str(len(header)))
    with pytest.raises(InvalidArgument, match="input 'text': BYTES element 0 says 9 bytes but only 5 remain"):
        check_inputs(request, model)


def test_raw_predict_and_torchserve_bodies_become_one_element(tmp_path: Path) -> None:
    model = text_model(tmp_path)
    raw = raw_input(parse_infer_request(b"\xff\xd8 jpeg", "0"), model)
    assert raw.shape == (1, 1) and strings.deserialize(raw.data, 1) == [b"\xff\xd8 jpeg"]
    one, whole = predict_input("a sentence", model)
    assert one.shape == (1, 1) and not whole
    batch, whole = predict_input(["a", "b", "c"], model)
    assert batch.shape == (3, 1) and whole and strings.deserialize(batch.data, 3) == [b"a", b"b", b"c"]
    with pytest.raises(InvalidArgument, match="must be a string or a list of strings"):
        predict_input(3, model)
    with pytest.raises(InvalidArgument, match="no data"):
        bytes_input([], model)


def test_multipart_bodies_pick_the_part_torchserve_would() -> None:
    def multipart(*parts: tuple[str, bytes, bool]) -> tuple[bytes, str]:
        chunks = []
        for name, data, is_file in parts:
            filename = f'; filename="{name}.bin"' if is_file else ""
            chunks.append(
                f'--XyZ\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'.encode()
                + data
                + b"\r\n"
            )
        return b"".join(chunks) + b"--XyZ--\r\n", "multipart/form-data; boundary=XyZ"

    body, ctype = multipart(("data", b"\x89PNG\x00", True))
    assert torchserve.body_data(body, ctype, "image", 1 << 20) == (b"\x89PNG\x00", {})
    body, ctype = multipart(("other", b"x", False), ("image", b"\x00y", True))
    assert torchserve.body_data(body, ctype, "image", 1 << 20) == (b"\x00y", {"other": "x"})
    # curl -F file=@seven.png -F top_k=3: the only file is the data, the text fields its parameters
    body, ctype = multipart(("file", b"\x89PNG", True), ("top_k", b"3", False))
    assert torchserve.body_data(body, ctype, "image", 1 << 20) == (b"\x89PNG", {"top_k": "3"})
    body, ctype = multipart(("a", b"x", False), ("b", b"y", False))
    with pytest.raises(InvalidArgument, match="the multipart body has parts a, b"):
        torchserve.body_data(body, ctype, "image", 1 << 20)
    body, ctype = multipart(("data", b"x" * 5000, True))
    with pytest.raises(PayloadTooLarge):
        torchserve.body_data(body, ctype, "image", 1024)
    assert torchserve.body_data(b"plain", "image/jpeg", "image", 1024) == (b"plain", {})
    assert torchserve.body_data(b"plain", None, "image", 1024) == (b"plain", {})


def test_bytes_outputs_as_json_binary_and_values(tmp_path: Path) -> None:
    model = text_model(tmp_path)
    label = Tensor("label", "BYTES", (2, 1), strings.serialize([b'{"digit":7}', b'{"digit":1}']))
    score = Tensor("score", "FP32", (2, 2), np.arange(4, dtype="<f4").tobytes())
    doc = json.loads(infer_response("text", "1", None, [(label, False), (score, False)]).whole())
    assert doc["outputs"][0] == {
        "name": "label",
        "datatype": "BYTES",
        "shape": [2, 1],
        "data": ['{"digit":7}', '{"digit":1}'],
    }
    body = infer_response("text", "1", None, [(label, True)])
    header_length = int(body.headers["Inference-Header-Content-Length"])
    assert body.data[header_length:] == label.data
    values = output_values([label, score], model, whole=False)
    assert values["label"] == {"digit": 7} and values["score"].tolist() == [0.0, 1.0]
    assert output_values([label], model, whole=True)["label"] == [{"digit": 7}, {"digit": 1}]
    binary = Tensor("label", "BYTES", (1, 1), strings.serialize([b"\xff"]))
    with pytest.raises(InvalidArgument, match="not UTF-8.*binary_data true"):
        infer_response("text", "1", None, [(binary, False)])


def test_wire_carries_bytes_tensors_and_refuses_bad_ones() -> None:
    blob = strings.serialize([b"a", b"bc"])
    frames = protocol.encode(Kind.REQUEST, {"id": "1"}, [(TensorMeta("text", "BYTES", (2, 1)), blob)])
    ((meta, buf),) = protocol.decode(frames).tensors
    assert meta.datatype == "BYTES" and bytes(buf) == blob
    bad = protocol.encode(Kind.REQUEST, {"id": "1"}, [(TensorMeta("text", "BYTES", (3, 1)), blob)])
    with pytest.raises(ProtocolError, match="ends after 2 of 3 elements"):
        protocol.decode(bad)


def test_config_needs_a_handler_for_bytes_and_checks_padding(tmp_path: Path) -> None:
    model = text_model(
        tmp_path,
        extra='[padding]\ninputs = {input_ids = 0}\nmask = "attention_mask"\nbuckets = [8, 32]\n',
    )
    assert model.handler == "handler:Handler" and model.outputs[0].format == "json"
    assert model.padding is not None and model.padding.bucket(9) == 32 and model.padding.bucket(33) == 0
    folder = tmp_path / "text"
    config = (folder / "config.toml").read_text()
    (folder / "config.toml").write_text(config.replace('handler = "handler:Handler"\n', ""))
    with pytest.raises(ConfigError, match="'text' is BYTES.*name a 'handler'"):
        load_model_config(folder)
    (folder / "config.toml").write_text(config.replace("buckets = [8, 32]", "buckets = [32, 8]"))
    with pytest.raises(ConfigError, match="padding.buckets"):
        load_model_config(folder)


@pytest.mark.processes
def test_the_gateway_never_imports_a_handler_or_its_dependencies(tmp_path: Path) -> None:
    import shutil
    import sys

    from harness import ROOT, run

    for name in ("minilm", "digits_image"):
        shutil.copytree(
            ROOT / "examples" / "repository" / name, tmp_path / name, ignore=shutil.ignore_patterns("1")
        )
        (tmp_path / name / "1").mkdir()
    (tmp_path / "minilm" / "1" / "model.safetensors").write_bytes(b"not read by the gateway")
    (tmp_path / "digits_image" / "1" / "model.pt2").write_bytes(b"not read by the gateway")
    code = """
import sys
from gateway import GatewayConfig, create_app
app = create_app(GatewayConfig.from_env({
    "TORCHGATE_DISPATCHER": "ipc:///nonexistent/x.sock",
    "TORCHGATE_MODEL_REPOSITORY": sys.argv[1],
    "TORCHGATE_STATUS_TIMEOUT": "0.1",
    "TORCHGATE_UNRESPONSIVE_AFTER": "0.2",
}))
client = app.test_client()
assert client.get("/v2/models/minilm").get_json()["inputs"][0]["datatype"] == "BYTES"
assert client.put("/predictions/digits_image", data=b"png").status_code == 503
assert client.post("/predict", json={"model": "minilm", "input": "a sentence"}).status_code == 503
heavy = ("torch", "tokenizers", "PIL", "handler", "model", "sentence_transformers", "transformers")
print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
"""
    result = run([sys.executable, "-c", code, str(tmp_path)], timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_bytes_tensors_stay_out_of_shared_memory() -> None:
    from inference_worker import shm

    text, numbers = TensorMeta("text", "BYTES", (2, 1)), TensorMeta("x", "FP32", (2, 4))
    assert shm.placeable([numbers]) and not shm.placeable([numbers, text])
    with pytest.raises(ProtocolError, match="BYTES tensors travel in frames"):
        shm.placed_tensors([{**text.to_wire(), "offset": shm.HEADER}], 1 << 20)
