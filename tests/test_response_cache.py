"""Triton's response cache (gateway/response_cache.py): the keys and the bounded LRU alone, the model's
``[response_cache]`` table, then `torchgate serve --cache-config` answering repeated requests without a
worker, over HTTP and gRPC, counted as Triton counts them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from gateway.codec import Tensor
from gateway.response_cache import ENTRY_OVERHEAD, ResponseCache
from harness import Stack, copy_digits, wait_for
from inference_worker.repository import ConfigError, load_model_config

TIMEOUT = 30.0


def _tensor(data: bytes | memoryview, name: str = "x", shape: tuple[int, ...] = (1, 4)) -> Tensor:
    return Tensor(name, "FP32", shape, data)


def test_a_key_is_the_model_version_inputs_and_parameters() -> None:
    x = _tensor(b"\0" * 16)
    key = ResponseCache.key("m", "1", [x], {})
    held = memoryview(bytearray(16))
    assert key == ResponseCache.key("m", "1", [_tensor(held)], {})  # the bytes, whatever holds them
    others = [
        ResponseCache.key("m", "2", [x], {}),
        ResponseCache.key("n", "1", [x], {}),
        ResponseCache.key("m", "1", [_tensor(b"\1" + b"\0" * 15)], {}),
        ResponseCache.key("m", "1", [_tensor(b"\0" * 16, shape=(2, 2))], {}),
        ResponseCache.key("m", "1", [_tensor(b"\0" * 16, name="y")], {}),
        ResponseCache.key("m", "1", [x], {"lang": "en"}),
        ResponseCache.key("m", "1", [_tensor(b"\0" * 8), _tensor(b"\0" * 8)], {}),
    ]
    assert len({key, *others}) == len(others) + 1


def test_the_least_recently_used_answers_go_first() -> None:
    cache = ResponseCache(3 * (ENTRY_OVERHEAD + 100))
    for key in (b"a", b"b", b"c"):
        assert cache.put(key, [_tensor(key * 100)])
    assert cache.get(b"a") is not None  # now the most recently used
    assert cache.put(b"d", [_tensor(b"d" * 100)])
    assert cache.get(b"b") is None and len(cache) == 3  # b was the least recently used
    kept = cache.get(b"a")
    assert kept is not None and bytes(kept[0].data) == b"a" * 100
    assert not cache.put(b"huge", [_tensor(b"\0" * cache.capacity)])  # larger than the whole cache
    assert cache.put(b"a", [_tensor(b"z" * 50)])  # replaced, its old size given back
    assert cache.used == 3 * ENTRY_OVERHEAD + 250
    source = bytearray(b"s" * 100)
    cache.put(b"s", [_tensor(memoryview(source))])
    source[:] = b"t" * 100  # the cache holds a copy: what the caller's buffer holds later changes nothing
    again = cache.get(b"s")
    assert again is not None and bytes(again[0].data) == b"s" * 100


def test_the_response_cache_table_is_checked(tmp_path: Path) -> None:
    copy_digits(tmp_path)
    config = tmp_path / "digits" / "config.toml"
    text = config.read_text()
    assert not load_model_config(tmp_path / "digits").response_cache
    config.write_text(text + "\n[response_cache]\nenable = true\n")
    assert load_model_config(tmp_path / "digits").response_cache
    for bad, words in (
        (text + '\n[response_cache]\nenable = "yes"\n', "must be true or false"),
        (text + "\n[response_cache]\nenabled = true\n", "response_cache.enabled"),
        ("response_cache = true\n" + text, "must be a table"),  # a top-level key goes before the tables
    ):
        config.write_text(bad)
        with pytest.raises(ConfigError, match=words):
            load_model_config(tmp_path / "digits")


# -- under `torchgate serve --cache-config` ------------------------------------------------------------------


@pytest.fixture
def served(extensions_server: tuple[Stack, int]) -> tuple[Stack, int]:
    return extensions_server  # digits_cached: digits with [response_cache] enable = true


def _stats(url: str) -> dict[str, int]:
    doc = requests.get(f"{url}/v2/models/digits_cached/stats", timeout=TIMEOUT).json()["model_stats"][0]
    inference = doc["inference_stats"]
    return {
        "executions": doc["execution_count"],
        "hits": inference["cache_hit"]["count"],
        "misses": inference["cache_miss"]["count"],
        "success": inference["success"]["count"],
    }


def _digits(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, (1, 64)).astype(np.float32)


@pytest.mark.processes
def test_a_repeated_request_is_answered_from_the_cache(served: tuple[Stack, int]) -> None:
    stack, grpc_port = served
    url = stack.url.removeprefix("http://")
    config = requests.get(f"{stack.url}/v2/models/digits_cached/config", timeout=TIMEOUT).json()
    assert config["response_cache"] == {"enable": True}
    x = _digits(1)
    with httpclient.InferenceServerClient(url, network_timeout=TIMEOUT) as client:
        inp = httpclient.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(x)
        before = _stats(stack.url)
        first = client.infer("digits_cached", [inp]).as_numpy("output")
        second = client.infer("digits_cached", [inp]).as_numpy("output")  # the same inputs: no worker
        top = client.infer(
            "digits_cached", [inp], outputs=[httpclient.InferRequestedOutput("output", class_count=2)]
        )
        assert np.array_equal(first, second)
        best = int(np.argmax(first))
        assert top.as_numpy("output")[0][0].decode().split(":")[1] == str(best)
        inp.set_data_from_numpy(_digits(2))
        client.infer("digits_cached", [inp])  # other inputs: computed
    now = _stats(stack.url)  # the gateway's own counts are there at once
    assert now["hits"] == before["hits"] + 2 and now["misses"] == before["misses"] + 2

    # the workers' counts come with their heartbeats: once they show the two misses, they show all there is
    def workers_counted() -> dict[str, int] | None:
        stats = _stats(stack.url)
        return stats if stats["executions"] >= before["executions"] + 2 else None

    settled = wait_for(workers_counted, timeout=TIMEOUT, what="the worker's statistics")
    assert settled["executions"] == before["executions"] + 2  # the hits never reached a worker
    assert settled["success"] == before["success"] + 4  # as Triton counts: hits are successes too
    after_hits = settled
    # /predict and gRPC go through the same cache: the gRPC server keeps its own share
    answer = requests.post(
        f"{stack.url}/predict", json={"model": "digits_cached", "input": x.tolist()}, timeout=TIMEOUT
    ).json()
    assert np.allclose(answer["output"], first, atol=1e-6)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        for _ in range(2):
            g = grpcclient.InferInput("input", [1, 64], "FP32")
            g.set_data_from_numpy(x)
            assert np.array_equal(
                grpc.infer("digits_cached", [g], client_timeout=TIMEOUT).as_numpy("output"), first
            )
    finally:
        grpc.close()
    final = _stats(stack.url)
    assert final["hits"] == after_hits["hits"] + 2  # /predict's and the second gRPC call
    # new files on disk, not loaded: the workers still run what they loaded, so its answers still count (a
    # load of new files changes the key: tests/test_model_reload.py)
    model_file = stack.repository / "digits_cached" / "1" / "model.pt2"
    os.utime(model_file, ns=(time.time_ns(), time.time_ns()))
    requests.post(
        f"{stack.url}/predict", json={"model": "digits_cached", "input": x.tolist()}, timeout=TIMEOUT
    ).raise_for_status()
    assert _stats(stack.url)["misses"] == final["misses"]
    metrics = requests.get(f"{stack.url}/metrics", timeout=TIMEOUT).text
    assert 'nv_cache_num_hits_per_model{model="digits_cached",version="1"}' in metrics
    log = (stack.settings.log_dir / "gateway.log").read_text()
    assert "worker=cache" in log  # the access line says who answered
