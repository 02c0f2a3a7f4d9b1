"""The pipelined executor: a batch launched while the previous one computes, staged inputs, outputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from harness import DEFAULT_REPOSITORY
from inference_worker.backends import load_model
from inference_worker.batching import Pending
from inference_worker.compute import BatchTimes, Executor
from inference_worker.repository import load_repository
from inference_worker.worker.app import Application, Batch
from inference_worker.worker.config import WorkerConfig


def executor(device: str) -> Executor:
    config = load_repository(DEFAULT_REPOSITORY, ["digits"])["digits"]
    target = torch.device(device)
    return Executor(config, "1", load_model(config, "1", target), target)


def requests(seed: int, sizes: list[int]) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randint(0, 17, (n, 64), generator=generator).float()] for n in sizes]


def check_back_to_back(ex: Executor, reference: Executor) -> None:
    first, second = requests(1, [1, 3, 2]), requests(2, [4, 1])
    staged_first = [ex.stage(r) for r in first]
    staged_second = [ex.stage(r) for r in second]
    times_a, times_b = BatchTimes(), BatchTimes()
    a = ex.launch(staged_first, times_a)
    b = ex.launch(staged_second, times_b)  # queued while the first may still compute
    out_a, out_b = ex.finish(a, times_a), ex.finish(b, times_b)
    for got, batch in ((out_a, first), (out_b, second)):
        assert len(got) == len(batch)
        for outputs, inputs in zip(got, batch, strict=True):
            (want,) = reference.run([inputs], BatchTimes())[0]
            assert outputs[0].shape == (inputs[0].shape[0], 10)
            torch.testing.assert_close(outputs[0].cpu(), want, rtol=1e-4, atol=1e-4)
    assert times_a.infer_ns > 0 and times_b.infer_ns > 0


def test_batches_launched_back_to_back_on_the_cpu_answer_each_request() -> None:
    ex = executor("cpu")
    inputs = requests(3, [2])[0]
    assert ex.stage(inputs)[0] is inputs[0]  # on the CPU a request's frame is used as it is: no copy
    check_back_to_back(ex, executor("cpu"))


def test_an_empty_batch_gives_empty_outputs() -> None:
    ex = executor("cpu")
    times = BatchTimes()
    (outputs,) = ex.finish(ex.launch([[torch.empty(0, 64)]], times), times)
    assert outputs[0].shape == (0, 10)


def test_a_batch_of_one_request_answers_with_the_whole_outputs_and_still_checks_their_batch() -> None:
    ex, reference = executor("cpu"), executor("cpu")
    (inputs,) = requests(5, [3])
    times = BatchTimes()
    (outputs,) = ex.finish(ex.launch([inputs], times), times)
    torch.testing.assert_close(outputs[0], reference.run([inputs], BatchTimes())[0][0])
    wrong = Executor(ex.config, "1", lambda batch: [torch.zeros(2, 10)], torch.device("cpu"))
    with pytest.raises(RuntimeError, match="expected batch 3 first"):
        wrong.run([inputs], BatchTimes())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_launched_back_to_back_on_the_gpu_match_the_cpu() -> None:
    ex = executor("cuda:0")
    staged = ex.stage(requests(4, [2])[0])
    assert staged[0].is_pinned()  # staged as the request arrived, so its batch's copy to the GPU is a DMA
    check_back_to_back(ex, executor("cpu"))


def test_a_cpu_batch_runs_inline_only_when_measured_and_short_beside_the_heartbeat(tmp_path: Path) -> None:
    app = Application(WorkerConfig(tmp_path, "ipc://unused", device="cpu", heartbeat_interval=0.5))
    key = ("m", "1")

    def batch(samples: int) -> Batch:
        return Batch(1, key, [Pending(i, key, (), 1, 0, math.inf) for i in range(samples)])

    assert not app.inline(batch(1))  # not measured yet: the compute thread, so heartbeats flow
    app.sample_ns[key] = 1_000_000  # 1 ms a sample; a fifth of the 0.5 s interval is 100 ms
    assert app.inline(batch(32)) and app.inline(batch(99))
    assert not app.inline(batch(100))
