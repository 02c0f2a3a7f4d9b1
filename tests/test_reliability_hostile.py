"""Hostile input against a real running gateway while other clients keep using it.

Schemathesis fuzzes every operation of the gateway's own OpenAPI document (valid and invalid data); then a
list of requests built to hurt (absurd shapes, nesting, lying sizes, truncated bodies, bad gzip, NaN, empty
tensors) each gets a precise answer. A background load runs throughout and must see no failure; no process may
die or restart; no answer may carry a traceback or a file path.
"""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from harness import DIGIT_ROW, HttpLoad, Stack, copy_digits, slow_body, write_slow_model

INFER = "/v2/models/digits/infer"
FUZZ_EXAMPLES = 8  # per operation and generation mode: about 250 requests

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("hostile")
    copy_digits(root / "repo")
    write_slow_model(root / "repo", seconds=0.01, max_batch_size=4, max_queue_size=64)
    with Stack.at(root, root / "repo") as stack:
        yield stack.start(("w0", "w1"), gateway_processes=2, gateway_threads=8)


@pytest.fixture
def load(stack: Stack) -> Iterator[HttpLoad]:
    """Two clients sending valid requests during the test; after it, the same processes answered them all."""
    pids = stack.pids()
    with HttpLoad(stack.url, threads=2) as running:
        running.wait_for_more(5)
        yield running
        running.wait_for_more(5)
    assert running.failures() == [], [o.describe() for o in running.failures()[:5]]
    assert stack.pids() == pids, "a process died or was restarted"


def assert_clean(status: int, text: str, what: str, echoes: tuple[str, ...] = ()) -> None:
    """A precise error: JSON {"error": ...}, and nothing about the server's insides (what the request itself
    said, ``echoes``, may be quoted back: a version named ".py" is not a leak)."""
    doc = json.loads(text)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], (what, text)
    own = text
    for echo in sorted(echoes, key=len, reverse=True):
        own = own.replace(echo, "") if echo else own
    for leak in ("Traceback", "/work", ".py", 'File "'):
        assert leak not in own, (what, status, text)


def test_fuzz_every_operation_from_the_openapi_document(stack: Stack, load: HttpLoad) -> None:
    document = requests.get(f"{stack.url}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    seen: dict[int, int] = {}
    problems: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 15
    session = requests.Session()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def probe(case: Any) -> None:
                response = case.call(base_url=stack.url, session=session, timeout=30)
                seen[response.status_code] = seen.get(response.status_code, 0) + 1
                if response.status_code >= 500:
                    problems.append(
                        f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}"
                    )
                elif response.status_code >= 400:
                    echoes = tuple(
                        str(value)
                        for params in (case.path_parameters, case.query)
                        for value in (params or {}).values()
                    )
                    what = f"{case.method} {case.formatted_path}"
                    assert_clean(response.status_code, response.text, what, echoes)

            try:
                probe()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
    session.close()
    assert problems == [], problems[:10]
    assert sum(seen.values()) >= 100 and any(400 <= s < 500 for s in seen), seen


def infer_doc(shape: list[int], data: Any = None, datatype: str = "FP32", **params: Any) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": "input", "datatype": datatype, "shape": shape}
    if data is not None:
        tensor["data"] = data
    if params:
        tensor["parameters"] = params
    return {"inputs": [tensor]}


def raw_post(stack: Stack, head: bytes, body: bytes) -> tuple[int, str]:
    """Send bytes on a socket as they are (a lying Content-Length, a body cut short), half-close, read the
    answer."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as conn:
        conn.sendall(head + body)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks).decode(errors="replace")
    status = int(answer.split(" ", 2)[1]) if answer.startswith("HTTP/") else 0
    return status, answer.split("\r\n\r\n", 1)[-1]


HOSTILE: list[tuple[str, dict[str, Any], int, str]] = [
    # what, requests.post keyword arguments, status, a word the error must contain
    ("absurd shape, JSON data", {"json": infer_doc([2147483647, 2147483647], [1.0])}, 400, "shape"),
    (
        "absurd shape, binary data",
        {
            "data": json.dumps(infer_doc([2147483647, 2147483647], binary_data_size=16)).encode()
            + b"\0" * 16,
            "headers": {
                "Inference-Header-Content-Length": str(
                    len(json.dumps(infer_doc([2147483647, 2147483647], binary_data_size=16)))
                )
            },
        },
        400,
        "shape",
    ),
    ("huge dims count", {"json": infer_doc([1] * 100, [1.0])}, 400, "shape"),
    ("negative dim", {"json": infer_doc([-1, 64], DIGIT_ROW)}, 400, "shape"),
    ("deeply nested JSON", {"data": b"[" * 200_000 + b"]" * 200_000}, 400, "JSON"),
    (
        "deeply nested data",
        {"json": infer_doc([1, 64], json.loads("[" * 500 + "1" + "]" * 500))},
        400,
        "input",
    ),
    (
        "binary_data_size past the end",
        {
            "data": json.dumps(infer_doc([1, 64], binary_data_size=256)).encode() + b"\0" * 10,
            "headers": {
                "Inference-Header-Content-Length": str(
                    len(json.dumps(infer_doc([1, 64], binary_data_size=256)))
                )
            },
        },
        400,
        "binary_data_size",
    ),
    (
        "binary_data_size short of the body",
        {
            "data": json.dumps(infer_doc([1, 64], binary_data_size=256)).encode() + b"\0" * 300,
            "headers": {
                "Inference-Header-Content-Length": str(
                    len(json.dumps(infer_doc([1, 64], binary_data_size=256)))
                )
            },
        },
        400,
        "binary",
    ),
    (
        "binary_data_size that does not match the shape",
        {
            "data": json.dumps(infer_doc([1, 64], binary_data_size=8)).encode() + b"\0" * 8,
            "headers": {
                "Inference-Header-Content-Length": str(
                    len(json.dumps(infer_doc([1, 64], binary_data_size=8)))
                )
            },
        },
        400,
        "bytes",
    ),
    (
        "header length beyond the body",
        {"data": b"{}", "headers": {"Inference-Header-Content-Length": "99999"}},
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "header length not a number",
        {"data": b"{}", "headers": {"Inference-Header-Content-Length": "1e3"}},
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "raw body not whole samples",
        {"data": b"\0" * 13, "headers": {"Inference-Header-Content-Length": "0"}},
        400,
        "samples",
    ),
    ("truncated JSON", {"data": json.dumps(infer_doc([1, 64], DIGIT_ROW)).encode()[:50]}, 400, "JSON"),
    (
        "invalid gzip",
        {"data": b"\x1f\x8b\x08\x00garbage", "headers": {"Content-Encoding": "gzip"}},
        400,
        "gzip",
    ),
    (
        "truncated gzip",
        {
            "data": gzip.compress(json.dumps(infer_doc([1, 64], DIGIT_ROW)).encode())[:30],
            "headers": {"Content-Encoding": "gzip"},
        },
        400,
        "gzip",
    ),
    ("unknown encoding", {"data": b"{}", "headers": {"Content-Encoding": "br"}}, 400, "Content-Encoding"),
    ("empty tensor", {"json": infer_doc([0, 64], [])}, 400, "no elements"),
    ("empty inputs", {"json": {"inputs": []}}, 400, "inputs"),
    ("strings for FP32", {"json": infer_doc([1, 64], ["x"] * 64)}, 400, "numbers"),
    ("ragged data", {"json": infer_doc([2, 64], [DIGIT_ROW, DIGIT_ROW[:3]])}, 400, "ragged"),
    ("value beyond FP32", {"data": json.dumps(infer_doc([1, 64], [1e300] * 64)).encode()}, 400, "range"),
    ("unknown datatype", {"json": infer_doc([1, 64], DIGIT_ROW, datatype="FP128")}, 400, "datatype"),
    ("wrong datatype", {"json": infer_doc([1, 64], [1] * 64, datatype="INT64")}, 400, "datatype"),
    ("a JSON number as the body", {"data": b"42"}, 400, "object"),
    ("binary junk", {"data": bytes(range(256)) * 10}, 400, "JSON"),
]


@pytest.mark.parametrize("what, kwargs, status, word", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_requests_get_a_precise_4xx(
    stack: Stack, load: HttpLoad, what: str, kwargs: dict[str, Any], status: int, word: str
) -> None:
    response = requests.post(stack.url + INFER, timeout=30, **kwargs)
    assert response.status_code == status, (what, response.status_code, response.text[:300])
    assert_clean(response.status_code, response.text, what)
    assert word.lower() in response.json()["error"].lower(), (what, response.text[:300])


def test_nan_and_infinities_are_valid_fp32(stack: Stack, load: HttpLoad) -> None:
    row = DIGIT_ROW[:61] + [float("nan"), float("inf"), float("-inf")]
    response = requests.post(stack.url + INFER, data=json.dumps(infer_doc([1, 64], row)), timeout=30)
    assert response.status_code == 200, response.text
    out = json.loads(response.text)["outputs"][0]  # Python's parser reads NaN and Infinity back
    assert out["shape"] == [1, 10] and len(out["data"]) == 10


def test_bodies_cut_short_or_lying_about_their_length(stack: Stack, load: HttpLoad) -> None:
    body = json.dumps(infer_doc([1, 64], DIGIT_ROW)).encode()
    head = (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    status, text = raw_post(stack, head, body[: len(body) // 2])  # half the promised body, then EOF
    assert status == 400, text
    assert_clean(status, text, "body cut short")
    status, text = raw_post(
        stack, head.replace(f"Content-Length: {len(body)}".encode(), b"Content-Length: -5"), body
    )
    assert status == 400, text


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    blob=st.binary(max_size=512),
    header_length=st.one_of(st.none(), st.integers(-5, 600).map(str)),
    encoding=st.sampled_from([None, "gzip", "deflate", "identity"]),
)
def test_random_bytes_never_5xx(
    stack: Stack, load: HttpLoad, blob: bytes, header_length: str | None, encoding: str | None
) -> None:
    headers = {
        k: v
        for k, v in (("Inference-Header-Content-Length", header_length), ("Content-Encoding", encoding))
        if v is not None
    }
    response = requests.post(stack.url + INFER, data=blob, headers=headers, timeout=30)
    assert response.status_code < 500, (blob[:80], headers, response.text[:300])
    if response.status_code != 200:
        assert_clean(response.status_code, response.text, "random bytes")


def test_worker_and_gateway_failures_leak_no_traceback_or_path(stack: Stack, load: HttpLoad) -> None:
    slow = stack.url + "/v2/models/slow/infer"
    answers = {
        "model raises": requests.post(slow, json=slow_body(value=-1.0), timeout=30),
        "model names its file in a traceback": requests.post(slow, json=slow_body(value=7777.0), timeout=30),
        "model runs out of memory": requests.post(slow, json=slow_body(value=1e31), timeout=30),
        "unknown model": requests.post(stack.url + "/v2/models/nope/infer", json=slow_body(), timeout=30),
        "unknown endpoint": requests.get(stack.url + "/v2/secret", timeout=30),
        "wrong method": requests.delete(stack.url + INFER, timeout=30),
        "repository index with junk": requests.post(
            stack.url + "/v2/repository/index", data=b"[1]", timeout=30
        ),
    }
    for what, response in answers.items():
        assert response.status_code >= 400, what
        assert_clean(response.status_code, response.text, what)
    assert answers["model raises"].status_code == 500 and "negative input" in answers["model raises"].text
    assert answers["model names its file in a traceback"].status_code == 500
    assert answers["model runs out of memory"].status_code == 500
    assert "out of memory" in answers["model runs out of memory"].text
    # The worker survived all three and still computes.
    assert requests.post(slow, json=slow_body(), timeout=30).status_code == 200
