"""The OIP codec as plain functions: JSON and binary requests, encodings, and both response forms."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.codec import (
    LARGE_OUTPUTS,
    Tensor,
    decode_content,
    dumps_values,
    encode_body,
    header_length_value,
    infer_response,
    json_array,
    loads,
    parse_infer_request,
    response_encoding,
    tensor_array,
)
from gateway.errors import InvalidArgument, PayloadTooLarge
from gateway.framing import parse_head


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    text = json.dumps(header).encode()
    return text + b"".join(blobs), str(len(text))


def test_json_request_nested_and_flat_give_the_same_bytes() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    nested = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.tolist()}]})
    flat = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.ravel().tolist()}]}
    )
    a, b = parse_infer_request(nested.encode(), None), parse_infer_request(flat.encode(), None)
    assert bytes(a.inputs[0].data) == bytes(b.inputs[0].data) == x.tobytes()
    assert a.inputs[0].shape == (2, 3) and a.inputs[0].datatype == "FP32"


def test_request_fields_and_parameters() -> None:
    doc = {
        "id": "abc",
        "parameters": {"timeout": 1500, "priority": 2, "binary_data_output": True},
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [2], "data": [1, -2]}],
        "outputs": [
            {"name": "y", "parameters": {"binary_data": False}},
            {"name": "z", "parameters": {"classification": 3}},
        ],
    }
    request = parse_infer_request(json.dumps(doc).encode(), None, header_id="from-header")
    assert request.id == "abc" and request.timeout_us == 1500 and request.priority == 2
    assert request.binary_data_output is True
    assert [(o.name, o.binary, o.classification) for o in request.outputs] == [
        ("y", False, 0),
        ("z", None, 3),
    ]
    assert np.frombuffer(request.inputs[0].data, "<i4").tolist() == [1, -2]
    no_id = parse_infer_request(json.dumps({"inputs": doc["inputs"]}).encode(), None, header_id="from-header")
    assert no_id.id == "from-header"


def test_binary_inputs_are_sliced_in_order() -> None:
    a = np.arange(4, dtype=np.float16)
    b = np.array([True, False, True])
    header = {
        "inputs": [
            {"name": "a", "datatype": "FP16", "shape": [4], "parameters": {"binary_data_size": a.nbytes}},
            {"name": "j", "datatype": "INT64", "shape": [1], "data": [7]},
            {"name": "b", "datatype": "BOOL", "shape": [3], "parameters": {"binary_data_size": 3}},
        ]
    }
    body, length = binary_body(header, a.tobytes(), b.tobytes())
    request = parse_infer_request(body, length)
    by_name = {t.name: t for t in request.inputs}
    assert bytes(by_name["a"].data) == a.tobytes()
    assert bytes(by_name["b"].data) == b"\x01\x00\x01"
    assert np.frombuffer(by_name["j"].data, "<i8").tolist() == [7]


@pytest.mark.parametrize(
    "sizes, blob, message",
    [
        ([8], b"\x00" * 12, "add up to 8 bytes but 12"),
        ([16], b"\x00" * 8, "runs past the end"),
    ],
)
def test_binary_sizes_that_do_not_add_up(sizes: list[int], blob: bytes, message: str) -> None:
    header = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": s}}
            for s in sizes
        ]
    }
    body, length = binary_body(header, blob)
    with pytest.raises(InvalidArgument, match=message):
        parse_infer_request(body, length)


def test_binary_sizes_without_the_header_length() -> None:
    header = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]
    }
    with pytest.raises(InvalidArgument, match="send the Inference-Header-Content-Length header"):
        parse_infer_request(json.dumps(header).encode(), None)


@pytest.mark.parametrize("length", ["abc", "-1", "100000", "1_4", "+14", " 14", "١٤"])
def test_bad_header_length(length: str) -> None:
    with pytest.raises(InvalidArgument, match="Inference-Header-Content-Length"):
        parse_infer_request(b'{"inputs": []}', length)


def test_raw_binary_request_keeps_the_body() -> None:
    request = parse_infer_request(b"\x01\x02\x03\x04", "0")
    assert request.raw is not None and bytes(request.raw) == b"\x01\x02\x03\x04"
    assert request.binary_data_output is True and request.inputs == []


@pytest.mark.parametrize(
    "doc, message",
    [
        ([], "JSON object"),
        ({"inputs": []}, "'inputs' must be a list"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, "needs 'data'"),
        ({"inputs": [{"name": "x", "datatype": "STRING", "shape": [1], "data": [1]}]}, "datatype 'STRING'"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}, "non-negative"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [True], "data": [1]}]}, "non-negative"),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}]},
            "holds 2 elements, shape \\[3\\] needs 3",
        ),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1, 2], [3]]}]}, "ragged"),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}]},
            "must be numbers, got strings",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [True, False]}]},
            "must be numbers, got booleans",
        ),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [None]}]}, "non-numeric"),
        (
            {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2], "data": [1.5, 2]}]},
            "must be integers",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]},
            "out of the range of INT8",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [-1]}]},
            "out of the range of UINT8",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1e300]}]},
            "out of the range of FP32",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [3], "data": [-1e300, 0.5, float("inf")]}
                ]
            },
            "out of the range of FP32",
        ),
        ({"inputs": [{"name": "x", "datatype": "BOOL", "shape": [2], "data": [1, 0]}]}, "true/false"),
        (
            {"inputs": [{"name": "x", "datatype": "FP16", "shape": [1], "data": [1.0]}]},
            "FP16 data must be sent as binary",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "BF16", "shape": [1], "data": [1.0]}]},
            "BF16 data must be sent as binary",
        ),
        (
            {"id": 5, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]},
            "'id' must be a string",
        ),
        (
            {
                "parameters": {"timeout": -1},
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
            },
            "timeout",
        ),
        (
            {
                "parameters": {"binary_data_output": 1},
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
            },
            "binary_data_output",
        ),
        (
            {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                "outputs": [{"nom": "y"}],
            },
            "'name'",
        ),
        *(
            (
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                    "outputs": [{"name": "y", "parameters": {"classification": bad}}],
                },
                "'classification' must be a non-negative integer",
            )
            for bad in (-1, 2.5, "3", True, 1 << 64)
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [1],
                        "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4},
                        "data": [1],
                    }
                ]
            },
            "input 'x': set only one of 'data', 'binary_data_size' and 'shared_memory_region'",
        ),
        (
            {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                "outputs": [{"name": "y", "parameters": {"shared_memory_region": "r"}}],
            },
            "output 'y': shared memory needs both 'shared_memory_region' and 'shared_memory_byte_size'",
        ),
        (
            {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                "outputs": [
                    {
                        "name": "y",
                        "parameters": {
                            "shared_memory_region": "r",
                            "shared_memory_byte_size": 4,
                            "classification": 1,
                        },
                    }
                ],
            },
            "output 'y': an output in shared memory .'shared_memory_region'. cannot also be 'classification'",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [1],
                        "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": -4},
                    }
                ]
            },
            "input 'x': 'shared_memory_byte_size' must be a non-negative integer",
        ),
    ],
)
def test_bad_requests_are_invalid_arguments(doc: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_infer_request(json.dumps(doc).encode(), None)


def test_nan_and_infinity_are_accepted_for_floats_only() -> None:
    body = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [NaN, Infinity, -Infinity]}]}'
    )
    values = np.frombuffer(parse_infer_request(body, None).inputs[0].data, "<f4")
    assert np.isnan(values[0]) and values[1] == np.inf and values[2] == -np.inf
    mixed = body.replace(b"[3]", b"[4]").replace(b"NaN,", b"NaN, 3.4e38,")  # the largest FP32 is ~3.40282e38
    values = np.frombuffer(parse_infer_request(mixed, None).inputs[0].data, "<f4")
    assert values[1] == np.float32(3.4e38) and values[2] == np.inf
    with pytest.raises(InvalidArgument, match="must be integers"):
        parse_infer_request(body.replace(b"FP32", b"INT32"), None)


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1.5e309"])
def test_a_number_past_a_doubles_range_is_a_400_not_infinity(number: bytes) -> None:
    """Only the literal Infinity is infinite: 1e400 is a number no float holds, refused whatever the datatype
    (with or without a NaN in the document, which sends it to the slower parser)."""
    for data in (b"[" + number + b", 1, 2]", b"[NaN, " + number + b", 2]"):
        body = b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [3], "data": ' + data + b"}]}"
        with pytest.raises(InvalidArgument, match="beyond the range of a double"):
            parse_infer_request(body, None)


def test_deeply_nested_json_is_a_400_not_a_crash() -> None:
    deep = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": '
        + b"[" * 100_000
        + b"1"
        + b"]" * 100_000
        + b"}]}"
    )
    with pytest.raises(InvalidArgument, match="nested too deeply"):
        parse_infer_request(deep, None)
    medium = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1],
                    "data": json.loads("[" * 200 + "1" + "]" * 200),
                }
            ]
        }
    ).encode()
    with pytest.raises(InvalidArgument, match="ragged or nested too deeply"):
        parse_infer_request(medium, None)


def test_invalid_json_and_bytes() -> None:
    for body in (b"{", b"\xff\xfe", b"", b"[1, 2"):
        with pytest.raises(InvalidArgument):
            loads(body)


# -- content encodings ------------------------------------------------------------------------------


def test_gzip_and_both_deflates_decode() -> None:
    data = b'{"hello": "world"}' * 10
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = raw_deflate.compress(data) + raw_deflate.flush()
    assert decode_content(gzip.compress(data), "gzip", 1 << 20) == data
    assert decode_content(zlib.compress(data), "deflate", 1 << 20) == data
    assert decode_content(raw, "deflate", 1 << 20) == data
    assert decode_content(data, None, 1 << 20) == data
    assert decode_content(data, "identity", 1 << 20) == data


def test_a_gzip_body_of_several_members_decodes_whole_as_gzip_d_does() -> None:
    data = b'{"hello": "world"}' * 100
    members = gzip.compress(data[:700]) + gzip.compress(data[700:1000]) + gzip.compress(data[1000:])
    assert gzip.decompress(members) == data
    assert decode_content(members, "gzip", 1 << 20) == data
    with pytest.raises(PayloadTooLarge):  # the limit counts every member
        decode_content(members, "gzip", len(data) - 1)


def test_a_gzip_body_of_many_members_is_refused_before_it_costs_quadratic_time() -> None:
    sixteen = gzip.compress(b"[1") + gzip.compress(b"]") * 15
    assert decode_content(sixteen, "gzip", 1 << 20) == b"[1" + b"]" * 15
    with pytest.raises(InvalidArgument, match="more than 16 gzip members"):
        decode_content(gzip.compress(b"") * 100_000, "gzip", 1 << 20)  # each member copied the rest


def test_zip_bomb_is_refused_without_decoding_it_all() -> None:
    bomb = gzip.compress(b"\x00" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < 1 << 20
    with pytest.raises(PayloadTooLarge):
        decode_content(bomb, "gzip", 1 << 20)


@pytest.mark.parametrize(
    "body, encoding, message",
    [
        (b"not gzip at all", "gzip", "not valid gzip"),
        (gzip.compress(b"x" * 1000, mtime=0)[:-12], "gzip", "truncated"),  # mtime 0: one id in every worker
        (b"abc", "br", "unsupported Content-Encoding"),
        (gzip.compress(b"x" * 1000, mtime=0) + b"GARBAGE", "gzip", "not valid gzip"),  # junk after a member
        (zlib.compress(b"x" * 1000) + b"GARBAGE", "deflate", "7 bytes after its deflate data"),
    ],
)
def test_bad_encodings(body: bytes, encoding: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode_content(body, encoding, 1 << 20)


# -- responses --------------------------------------------------------------------------------------


def test_json_response() -> None:
    y = np.array([[0.5, -1.25]], dtype=np.float32)
    body = infer_response("m", "3", "req-1", [(Tensor("y", "FP32", (1, 2), y.tobytes()), False)])
    assert body.content_type == "application/json" and body.headers == {}
    doc = orjson.loads(body.whole())
    assert doc == {
        "model_name": "m",
        "model_version": "3",
        "id": "req-1",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [0.5, -1.25]}],
    }


def test_binary_response_is_sliced_by_binary_data_size() -> None:
    y = np.arange(3, dtype=np.float16)
    z = np.array([1, 2], dtype=np.int64)
    body = infer_response(
        "m",
        None,
        None,
        [(Tensor("y", "FP16", (3,), y.tobytes()), True), (Tensor("z", "INT64", (2,), z.tobytes()), False)],
    )
    assert body.content_type == "application/octet-stream"
    length = int(body.headers["Inference-Header-Content-Length"])
    header = orjson.loads(body.whole()[:length])
    assert "id" not in header and "model_version" not in header
    assert (
        header["outputs"][0]["parameters"] == {"binary_data_size": 6} and "data" not in header["outputs"][0]
    )
    assert header["outputs"][1]["data"] == [1, 2]
    assert np.array_equal(np.frombuffer(body.whole()[length:], np.float16), y)


def test_bf16_round_trip_through_bits() -> None:
    values = [1.0, -2.5, 3.140625, float("nan"), 65280.0]
    bits = json_array("x", "BF16", values)
    assert bits.dtype == np.dtype("<u2")
    back = tensor_array("BF16", bits.tobytes(), (5,))
    assert back[:3].tolist() == [1.0, -2.5, 3.140625] and np.isnan(back[3]) and back[4] == 65280.0
    # round to nearest even: 1 + 2**-8 lies halfway between two bf16 values and rounds down to 1.0
    assert tensor_array("BF16", json_array("x", "BF16", [1 + 2**-8]).tobytes(), (1,))[0] == 1.0
    assert struct.unpack("<H", json_array("x", "BF16", [1 + 3 * 2**-8]).tobytes())[0] == 0x3F82


@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=50))
def test_fp32_json_round_trip(values: list[float]) -> None:
    doc = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(values)], "data": values}]})
    data = parse_infer_request(doc.encode(), None).inputs[0].data
    assert np.array_equal(np.frombuffer(data, "<f4"), np.array(values, dtype=np.float32))
    out = json.loads(
        infer_response("m", None, None, [(Tensor("x", "FP32", (len(values),), data), False)]).whole()
    )
    assert np.array_equal(
        np.array(out["outputs"][0]["data"], dtype=np.float32), np.array(values, dtype=np.float32)
    )


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, None),
        ("", None),
        ("gzip, deflate", "gzip"),  # what requests sends by default
        ("deflate;q=1.0, gzip", "deflate"),
        ("GZIP", "gzip"),
        ("gzip;q=0, deflate", "deflate"),
        ("gzip; q=0.0", None),
        ("br, identity", None),
    ],
)
def test_the_response_encoding_is_the_first_one_asked_for(accept: str | None, chosen: str | None) -> None:
    assert response_encoding(accept) == chosen


def test_a_response_is_compressed_unless_it_carries_large_binary_outputs() -> None:
    y = np.arange(12, dtype=np.float32).reshape(3, 4)
    as_json = infer_response("m", None, None, [(Tensor("y", "FP32", y.shape, y.tobytes()), False)])
    zipped = encode_body(as_json, "gzip")
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.whole()) == as_json.whole()
    small = infer_response("m", None, None, [(Tensor("y", "FP32", y.shape, y.tobytes()), True)])
    deflated = encode_body(small, "deflate")
    assert zlib.decompress(deflated.whole()) == small.whole()
    # the header length still counts the uncompressed JSON header, as Triton sends it
    assert (
        deflated.headers["Inference-Header-Content-Length"]
        == small.headers["Inference-Header-Content-Length"]
    )
    big = np.zeros(LARGE_OUTPUTS, dtype=np.float32)
    large = infer_response("m", None, None, [(Tensor("y", "FP32", big.shape, big.tobytes()), True)])
    assert encode_body(large, "gzip") is large  # tensor bytes barely compress: sent as they are


def test_integer_data_mixing_int64_and_uint64_values_is_read_exactly() -> None:
    """numpy reads [0, 2**64 - 1] as float64 (an int64 and a uint64): the values are integers all the same,
    as Triton reads each JSON integer; floats and values out of range are still refused."""
    top = 2**64 - 1
    got = json_array("x", "UINT64", [[0, top], [2**53 + 1, 1]])
    assert got.dtype == np.uint64 and got.tolist() == [[0, top], [2**53 + 1, 1]]
    with pytest.raises(InvalidArgument, match="out of the range of INT64"):
        json_array("x", "INT64", [-1, 2**63])
    with pytest.raises(InvalidArgument, match="out of the range of UINT64"):
        json_array("x", "UINT64", [-1, 2**63])
    with pytest.raises(InvalidArgument, match="must be integers, got floating-point"):
        json_array("x", "UINT64", [1.5, 2])


def test_hostile_lengths_and_versions_are_refused_not_raised_past_ints_digit_limit() -> None:
    """Python's int() refuses 4300 digits and more (ValueError): each such value is a precise error."""
    body = b'{"inputs": []}'
    for value in ("1" + "0" * 4400, "\xb2"):  # "²" is a digit to str.isdigit, not to int()
        with pytest.raises(InvalidArgument, match="Inference-Header-Content-Length"):
            parse_infer_request(body, value)
    assert header_length_value("1" + "0" * 4400) is None and header_length_value("\xb2") is None
    assert header_length_value("0014") == 14 and header_length_value("") is None
    head = parse_head(b"POST / HTTP/1.1\r\nContent-Length: 1" + b"0" * 5000 + b"\r\n\r\n")
    assert head.content_length is not None and head.content_length > 1 << 62  # over any body limit


def test_non_finite_values_are_written_as_json_literals_for_predict() -> None:
    doc = {"output": np.array([np.nan, 2.0, np.inf, -np.inf], np.float32)}
    assert dumps_values(doc) == b'{"output":[NaN,2.0,Infinity,-Infinity]}'
    assert dumps_values({"output": [1.0, 2.5]}) == b'{"output":[1.0,2.5]}'
