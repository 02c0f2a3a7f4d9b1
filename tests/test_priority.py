"""Triton's priority levels (the schedule_policy extension), as real processes: a dispatcher, one CPU worker
and a gunicorn gateway; tritonclient sets ``priority`` as its users do.

`sleeper` (sleeps as many seconds as its input, then doubles it) with ``max_batch_size = 1``, two priority
levels and the lower one the default. The worker takes three requests at once (``--capacity 3``): one computes
and two wait in its batch queue; two more wait in the dispatcher's queue. The direct lane is off, so every
request passes the dispatcher's queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from functools import partial

import numpy as np
import pytest
import tritonclient.http as httpclient

from harness import Stack, short_dir, wait_for, write_sleeper_model

pytestmark = pytest.mark.processes

TIMEOUT = 30.0
FIRST = 6.0  # seconds the first request computes: the others queue meanwhile (4 sends, on a busy box)
EACH = 0.75  # seconds each of the others computes: far apart enough to tell their order by their answers
MODEL = "sleeper"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with short_dir() as root:
        repository = root / "repo"
        config = write_sleeper_model(repository, MODEL) / "config.toml"
        text = config.read_text().replace("max_batch_size = 4", "max_batch_size = 1")
        levels = "max_queue_delay_us = 0\npriority_levels = 2\ndefault_priority_level = 2"
        config.write_text(text.replace("max_queue_delay_us = 0", levels))
        with Stack.at(root, repository) as stack:
            stack.start_dispatcher()
            stack.start_worker("w0", "--capacity", "3")
            stack.start_gateway(1, 8, {"TORCHGATE_DIRECT": "0"})
            stack.wait_ready(120)
            yield stack


def computing(stack: Stack) -> bool:
    return any((w.get("computing") or {}).get("model") == MODEL for w in stack.status().workers)


def test_higher_priority_requests_overtake_queued_lower_ones(stack: Stack) -> None:
    done: list[tuple[float, str]] = []
    threads: list[threading.Thread] = []

    def send(name: str, seconds: float, priority: int) -> None:
        def run() -> None:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{stack.port}", network_timeout=TIMEOUT * 2)
            x = httpclient.InferInput("x", [1, 1], "FP32")
            x.set_data_from_numpy(np.array([[seconds]], dtype=np.float32))
            result = client.infer(MODEL, [x], request_id=name, priority=priority)
            assert result.as_numpy("y").tolist() == [[2 * seconds]]
            done.append((time.monotonic(), name))
            client.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)

    config = httpclient.InferenceServerClient(f"127.0.0.1:{stack.port}").get_model_config(MODEL)
    assert config["dynamic_batching"]["priority_levels"] == 2
    assert config["dynamic_batching"]["default_priority_level"] == 2
    pending = stack.status().dispatcher["pending"]
    send("first", FIRST, 0)
    wait_for(lambda: computing(stack), timeout=TIMEOUT, what="the worker to compute the first request")
    # Each sent once the one before is where it should be, so that their arrival order is known.
    for name, priority, on_worker in (("low-1", 2, 1), ("high-1", 1, 2), ("low-2", 0, 2), ("high-2", 1, 2)):
        send(name, EACH, priority)
        at_dispatcher = pending + len(threads)
        wait_for(
            partial(lambda n: stack.status().dispatcher["pending"] == n, at_dispatcher),
            timeout=TIMEOUT,
            what=f"{name} at the dispatcher",
        )
        queued = len(threads) - 1 - on_worker
        assert stack.status().models[MODEL]["1"]["queued"] == queued, name
    for thread in threads:
        thread.join(TIMEOUT * 2)
    # first in first out, these would be: first, low-1, high-1, low-2, high-2
    assert [name for _, name in sorted(done)] == ["first", "high-1", "high-2", "low-1", "low-2"]


def test_server_metadata_names_the_schedule_policy_extension(stack: Stack) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{stack.port}")
    assert "schedule_policy" in client.get_server_metadata()["extensions"]
    client.close()
