"""The two shipped examples end to end, as a user runs them: all-MiniLM-L6-v2 embeddings from raw sentences
and the digits model from PNG/JPEG images, through tritonclient, TorchServe-style raw and multipart bodies,
and /predict; one stack (gateway, dispatcher, one worker) for the whole module.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from examples.fetch_minilm import fetch, package_folder
from examples.train_digits import held_out_split
from harness import ROOT, Stack, copy_digits, wait_for, write_masked_model

pytestmark = pytest.mark.processes

pytest.importorskip("tokenizers")
Image = pytest.importorskip("PIL.Image")

EXAMPLES = ROOT / "examples" / "repository"
SENTENCES = [
    "A man is eating food.",
    "The weather is lovely today, and I am going for a long walk in the park with my dog before lunch.",
    "hi",
    "Ünïcödé text, with accents – and a dash.",
    "Torchgate batches requests of different lengths by padding them to the longest of the batch.",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("examples")
    repository = root / "repo"
    copy_digits(repository)
    for name in ("minilm", "digits_image"):
        shutil.copytree(
            EXAMPLES / name, repository / name, symlinks=False, ignore=shutil.ignore_patterns("1")
        )
    fetch(repository / "minilm")
    config = write_masked_model(repository) / "config.toml"  # a window to batch in, however fast it computes
    config.write_text(config.read_text() + "\n[dynamic_batching]\nmax_queue_delay_us = 20000\n")
    write_sleepy_model(repository, root / "sleepy-build")
    (repository / "digits_image" / "1").mkdir()
    shutil.copyfile(
        repository / "digits" / "1" / "model.pt2", repository / "digits_image" / "1" / "model.pt2"
    )
    with Stack.at(root, repository) as stack:
        yield stack.start(gateway_threads=16)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(f"127.0.0.1:{stack.port}", concurrency=8, network_timeout=60)
    yield triton
    triton.close()


SLEEPY_HANDLER = """
import time

import torch

class Handler:
    def preprocess(self, inputs):
        words = [s.decode("utf-8").split() for s in inputs["text"].reshape(-1)]
        if words[0][0] == "sleep":  # as an image that takes seconds to decode
            time.sleep(float(words[0][1]))
        longest = max(len(ws) for ws in words)
        return {"ids": torch.tensor([[len(w) for w in ws] + [0] * (longest - len(ws)) for ws in words])}

    def inference(self, model, batch):
        tokens, count = model(batch["ids"], batch["mask"])
        return {"tokens": tokens, "count": count}

    def postprocess(self, outputs, inputs):
        return outputs
"""


def write_sleepy_model(repository: Path, scratch: Path) -> None:
    """``sleepy``: the masked model behind a handler whose preprocess sleeps as long as its text says."""
    built = write_masked_model(scratch, handler='handler = "sleepy_handler:Handler"')
    folder = shutil.copytree(built, repository / "sleepy")
    (folder / "sleepy_handler.py").write_text(SLEEPY_HANDLER)
    config = (folder / "config.toml").read_text().replace('name = "masked"', 'name = "sleepy"')
    config = config.replace(
        'name = "ids"\ndatatype = "INT64"\ndims = [-1]', 'name = "text"\ndatatype = "BYTES"\ndims = [1]'
    )
    (folder / "config.toml").write_text(config)


def embed(client: httpclient.InferenceServerClient, sentences: list[str], binary: bool = True) -> np.ndarray:
    text = httpclient.InferInput("text", [len(sentences), 1], "BYTES")
    text.set_data_from_numpy(np.array([[s.encode()] for s in sentences], dtype=object), binary_data=binary)
    result = client.infer("minilm", [text])
    return result.as_numpy("embedding")


def embed_http(stack: Stack, sentence: str) -> np.ndarray:
    """One sentence as plain OIP JSON (a requests call: safe from threads, unlike tritonclient's gevent
    client)."""
    body: dict[str, Any] = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [sentence]}]
    }
    response = requests.post(f"{stack.url}/v2/models/minilm/infer", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return np.array(response.json()["outputs"][0]["data"], dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_minilm_embeddings_equal_sentence_transformers(
    stack: Stack, client: httpclient.InferenceServerClient
) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(package_folder()), device="cpu").encode(SENTENCES)
    binary = embed(client, SENTENCES)
    assert binary.shape == (5, 384) and cosine(binary, reference).min() >= 0.9999
    as_json = embed(client, SENTENCES[:2], binary=False)
    assert cosine(as_json, reference[:2]).min() >= 0.9999
    one = requests.post(f"{stack.url}/predict", json={"model": "minilm", "input": SENTENCES[1]}, timeout=60)
    assert one.status_code == 200, one.text
    assert cosine(np.array(one.json()["output"]), reference[1]) >= 0.9999
    long_text = SENTENCES[0] + " " + "x" * 70_000  # 70 KB in one word: cheap to tokenize ([UNK])
    long_vector = embed(client, [long_text])
    assert long_vector.shape == (1, 384) and abs(float(np.linalg.norm(long_vector)) - 1) < 1e-4
    raw = requests.post(f"{stack.url}/predictions/minilm", data=SENTENCES[3].encode(), timeout=60)
    assert raw.status_code == 200, raw.text
    assert cosine(np.array(raw.json()), reference[3]) >= 0.9999
    # Triton's generate extension: the text by its input's name, the embedding by its output's
    generated = requests.post(
        f"{stack.url}/v2/models/minilm/generate", json={"text": SENTENCES[4]}, timeout=60
    )
    assert generated.status_code == 200, generated.text
    answer = generated.json()
    assert answer["model_name"] == "minilm" and answer["model_version"] == "1"
    assert cosine(np.array(answer["embedding"]), reference[4]) >= 0.9999
    streamed = requests.post(
        f"{stack.url}/v2/models/minilm/generate_stream",
        json={"parameters": {"text": SENTENCES[4]}},
        timeout=60,
    )
    assert streamed.status_code == 200 and streamed.headers["Content-Type"].startswith("text/event-stream")
    assert streamed.text.startswith("data: ") and streamed.text.endswith("\n\n")
    assert json.loads(streamed.text[len("data: ") :])["embedding"] == answer["embedding"]


def test_minilm_batches_requests_of_different_lengths(
    stack: Stack, client: httpclient.InferenceServerClient
) -> None:
    alone = {s: embed(client, [s])[0] for s in SENTENCES}
    before = batch_counts(stack, "minilm")
    with ThreadPoolExecutor(8) as pool:
        jobs = [(s, pool.submit(embed_http, stack, s)) for s in SENTENCES * 8]
        together = [(s, job.result(timeout=180)) for s, job in jobs]
    for sentence, vector in together:  # padding to another request's length changes nothing
        assert cosine(vector, alone[sentence]) >= 0.9999, sentence
    assert batched_since(stack, "minilm", before)


def batch_counts(stack: Stack, model: str) -> dict[int, int]:
    stats = requests.get(f"{stack.url}/v2/models/{model}/stats", timeout=30).json()["model_stats"][0]
    return {entry["batch_size"]: entry["compute_infer"]["count"] for entry in stats["batch_stats"]}


def batched_since(stack: Stack, model: str, before: dict[int, int]) -> dict[int, int]:
    """Wait until the stats count a batch of several requests run since ``before`` (workers send their
    counters with their heartbeats, a moment after the answers); return the counts."""

    def grown() -> dict[int, int] | None:
        after = batch_counts(stack, model)
        return after if any(size > 1 and after[size] > before.get(size, 0) for size in after) else None

    return wait_for(grown, timeout=30, interval=0.1, what=f"a batch of several {model} requests counted")


def test_a_bad_request_fails_alone_with_a_precise_400(
    stack: Stack, client: httpclient.InferenceServerClient
) -> None:
    header = json.dumps(
        {
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": 6}}
            ]
        }
    ).encode()
    with ThreadPoolExecutor(4) as pool:
        good = [pool.submit(embed_http, stack, s) for s in SENTENCES]
        bad = requests.post(
            f"{stack.url}/v2/models/minilm/infer",
            data=header + b"\x02\x00\x00\x00\xff\xfe",
            headers={"Inference-Header-Content-Length": str(len(header))},
            timeout=60,
        )
        assert all(job.result(timeout=180).shape == (384,) for job in good)
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("preprocessing failed: UnicodeDecodeError")
    short = requests.post(
        f"{stack.url}/v2/models/minilm/infer",
        data=header + b"\x09\x00\x00\x00ab",
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=60,
    )
    assert (
        short.status_code == 400 and "BYTES element 0 says 9 bytes but only 2 remain" in short.json()["error"]
    )
    with pytest.raises(InferenceServerException, match="datatype FP32, expected BYTES"):
        wrong = httpclient.InferInput("text", [1, 1], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
        client.infer("minilm", [wrong])


def render(rows: np.ndarray, fmt: str, scale: int = 4, ink_on_paper: bool = False) -> list[bytes]:
    """Render scikit-learn's 8x8 digits (0..16) as grey images, upscaled ``scale`` times."""
    images = []
    for row in rows:
        grey = np.round(row.reshape(8, 8) * 255 / 16).astype(np.uint8)
        if ink_on_paper:
            grey = 255 - grey
        image = Image.fromarray(grey).resize((8 * scale, 8 * scale), Image.NEAREST)
        out = io.BytesIO()
        image.save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        images.append(out.getvalue())
    return images


def classify_images(client: httpclient.InferenceServerClient, images: list[bytes]) -> np.ndarray:
    digits = []
    for start in range(0, len(images), 64):
        chunk = images[start : start + 64]
        image = httpclient.InferInput("image", [len(chunk), 1], "BYTES")
        image.set_data_from_numpy(np.array([[b] for b in chunk], dtype=object))
        result = client.infer("digits_image", [image])
        digits += [json.loads(p)["digit"] for p in result.as_numpy("prediction").reshape(-1)]
    return np.array(digits)


def classify_tensors(client: httpclient.InferenceServerClient, rows: np.ndarray) -> np.ndarray:
    digits = []
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64].astype(np.float32)
        tensor = httpclient.InferInput("input", list(chunk.shape), "FP32")
        tensor.set_data_from_numpy(chunk)
        digits += list(client.infer("digits", [tensor]).as_numpy("output").argmax(axis=1))
    return np.array(digits)


def test_digits_from_images_are_as_accurate_as_from_tensors(
    stack: Stack, client: httpclient.InferenceServerClient
) -> None:
    _, x_test, _, y_test = held_out_split()
    # The images hold 8-bit grey levels: the tensor path gets the same levels, scaled back to 0..16.
    levels = (np.round(x_test * 255 / 16) * (16 / 255)).astype(np.float32)
    from_tensors = classify_tensors(client, levels)
    from_png = classify_images(client, render(x_test, "PNG"))
    assert (from_png == from_tensors).all()
    assert (from_png == y_test).mean() == (from_tensors == y_test).mean() > 0.9
    from_jpeg = classify_images(client, render(x_test, "JPEG", ink_on_paper=True))
    assert (from_jpeg == y_test).mean() >= (from_tensors == y_test).mean() - 0.01


def test_digits_torchserve_style_bodies(stack: Stack) -> None:
    _, x_test, _, y_test = held_out_split()
    png, jpeg = render(x_test[:1], "PNG")[0], render(x_test[:1], "JPEG", scale=8)[0]
    url = f"{stack.url}/predictions/digits_image"
    raw = requests.put(url, data=png, timeout=60)  # curl -T digit.png
    assert raw.status_code == 200, raw.text
    answer: dict[str, Any] = raw.json()
    assert answer["prediction"]["digit"] == y_test[0] and len(answer["probabilities"]) == 10
    form = requests.post(url, files={"data": ("digit.jpg", jpeg, "image/jpeg")}, timeout=60)  # curl -F data=@
    assert form.status_code == 200 and form.json()["prediction"]["digit"] == y_test[0], form.text
    versioned = requests.post(f"{url}/1", data=png, timeout=60)
    assert versioned.json()["prediction"] == answer["prediction"]
    broken = requests.put(url, data=b"\x89PNG\r\n\x1a\n but not really", timeout=60)
    assert broken.status_code == 400
    assert broken.json()["error"].startswith("preprocessing failed: ValueError: not an image Pillow can read")
    # A photo-sized file (past the 64 KiB at which numeric tensors move to shared memory) travels in frames.
    grey = np.kron(np.round(x_test[0].reshape(8, 8) * 255 / 16), np.ones((48, 48)))
    noisy = np.clip(grey + np.random.default_rng(0).integers(-6, 7, grey.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(noisy).save(out, format="PNG")
    assert len(out.getvalue()) > 64 * 1024
    large = requests.put(url, data=out.getvalue(), timeout=60)
    assert large.status_code == 200 and large.json()["prediction"]["digit"] == y_test[0], large.text
    tensor_model = requests.post(f"{stack.url}/predictions/digits", json=x_test[0].tolist(), timeout=60)
    assert tensor_model.status_code == 200 and int(np.argmax(tensor_model.json())) == y_test[0]
    # TorchServe's (and SageMaker's) other doors to the same inference, and its health check.
    invoked = requests.post(f"{stack.url}/models/digits_image/invoke", data=png, timeout=60)
    assert invoked.status_code == 200 and invoked.json()["prediction"] == answer["prediction"], invoked.text
    invocations = requests.post(f"{stack.url}/invocations?model_name=digits_image", data=png, timeout=60)
    assert invocations.status_code == 200 and invocations.json()["prediction"] == answer["prediction"]
    unnamed = requests.post(f"{stack.url}/invocations", data=png, timeout=60)
    assert unnamed.status_code == 400 and "parameter model_name is required" in unnamed.json()["error"]
    ping = requests.get(f"{stack.url}/ping", timeout=60)
    assert ping.status_code == 200 and ping.json() == {"status": "Healthy"}
    # KServe's v1 protocol, files as {"b64": ...} instances (what TorchServe's KServe wrapper took)
    v1 = requests.post(
        f"{stack.url}/v1/models/digits_image:predict",
        json={
            "instances": [{"b64": base64.b64encode(png).decode()}, {"b64": base64.b64encode(jpeg).decode()}]
        },
        timeout=60,
    )
    assert v1.status_code == 200, v1.text
    assert [p["prediction"]["digit"] for p in v1.json()["predictions"]] == [y_test[0]] * 2


def test_request_parameters_reach_the_handler(stack: Stack) -> None:
    _, x_test, _, y_test = held_out_split()
    png = render(x_test[:1], "PNG")[0]
    url = f"{stack.url}/predictions/digits_image"
    top = requests.put(f"{url}?top_k=3", data=png, timeout=60)  # TorchServe's query string
    assert top.status_code == 200, top.text
    prediction = top.json()["prediction"]
    assert [t["digit"] for t in prediction["top"]][0] == prediction["digit"] == y_test[0]
    assert (
        len(prediction["top"]) == 3
        and "top" not in requests.put(url, data=png, timeout=60).json()["prediction"]
    )
    form = requests.post(url, files={"file": ("seven.png", png)}, data={"top_k": "2"}, timeout=60)  # curl -F
    assert form.status_code == 200 and len(form.json()["prediction"]["top"]) == 2, form.text
    bad = requests.put(f"{url}?top_k=eleven", data=png, timeout=60)  # the handler's preprocess refuses it
    assert bad.status_code == 400 and "parameter top_k must be a whole number" in bad.json()["error"]
    # The Open Inference Protocol's request parameters, as tritonclient sends them
    image = httpclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[png]], dtype=object))
    triton = httpclient.InferenceServerClient(f"127.0.0.1:{stack.port}", network_timeout=60)
    try:
        result = triton.infer("digits_image", [image], parameters={"top_k": 2})
        oip = json.loads(result.as_numpy("prediction")[0, 0])
        assert oip["digit"] == y_test[0] and [t["digit"] for t in oip["top"]] == [
            t["digit"] for t in prediction["top"][:2]
        ]
        with pytest.raises(InferenceServerException, match="must be a string, a number or a boolean"):
            triton.infer("digits_image", [image], parameters={"top_k": [1, 2]})
    finally:
        triton.close()


def test_a_plain_model_batches_padded_requests_with_the_workers_mask(stack: Stack) -> None:
    """``masked`` takes INT64 ids [n, L] with -1 for L; answers ids x mask per token and the tokens it saw."""

    def send(length: int) -> tuple[int, dict[str, Any]]:
        ids = list(range(1, length + 1))
        body: dict[str, Any] = {
            "inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, length], "data": ids}]
        }
        answer = requests.post(f"{stack.url}/v2/models/masked/infer", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        return length, {o["name"]: o for o in answer.json()["outputs"]}

    before = batch_counts(stack, "masked")
    with ThreadPoolExecutor(8) as pool:
        answers = [job.result(timeout=180) for job in [pool.submit(send, n) for n in [2, 3, 4, 1] * 10]]
    for length, outputs in answers:  # cut back to its own length: no padding shows
        assert outputs["tokens"]["shape"] == [1, length]
        assert outputs["tokens"]["data"] == [float(i) for i in range(1, length + 1)]
        assert outputs["count"]["data"] == [float(length)]
    assert batched_since(stack, "masked", before)


def test_a_preprocess_longer_than_the_liveness_keeps_its_worker_in_rotation(stack: Stack) -> None:
    """A handler's preprocess that takes seconds (a large image to decode) runs beside the worker's
    heartbeats: the dispatcher once took the worker for dead after 1 s (the harness's liveness) and answered
    503, to this request and to every other model's."""
    body: dict[str, Any] = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["sleep 3"]}]
    }
    logged = len(stack.log("dispatcher"))  # what this test makes it say (the module's earlier load aside)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(requests.post, f"{stack.url}/v2/models/sleepy/infer", json=body, timeout=120)
        digits: dict[str, Any] = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]
        }
        other = requests.post(f"{stack.url}/v2/models/digits/infer", json=digits, timeout=120)
        answer = slow.result(timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [5.0, 1.0]  # the word lengths, unpadded
    assert other.status_code == 200, other.text
    assert "out of rotation" not in stack.log("dispatcher")[logged:]


def test_minilm_refuses_a_sentence_longer_than_it_tokenizes(stack: Stack) -> None:
    """The model reads 256 tokens; the tokenizer holds a whole sentence before it truncates (16 MiB of text:
    2.2 GB): past 1 MiB, the handler's 400."""
    body: dict[str, Any] = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["word " * 250_000]}]
    }
    response = requests.post(f"{stack.url}/v2/models/minilm/infer", json=body, timeout=120)
    assert response.status_code == 400, response.text
    assert "sentence 0 is 1250000 bytes, more than the 1048576 allowed" in response.json()["error"]
