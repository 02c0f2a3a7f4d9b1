"""The digits_image example's handler without processes: its warm-up input, and large images shrunk as they
are decoded, one at a time."""

from __future__ import annotations

import importlib.util
import io
import tracemalloc
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from harness import ROOT

HANDLER = ROOT / "examples" / "repository" / "digits_image" / "handler.py"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_image_handler", HANDLER)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def handler(module: ModuleType) -> Any:
    instance = module.DigitsImageHandler()
    instance.setup(HANDLER.parent / "1", CPU)
    return instance


def images(*files: bytes) -> np.ndarray:
    array = np.empty((len(files), 1), dtype=object)
    for i, data in enumerate(files):
        array[i, 0] = data
    return array


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_the_handler_has_a_warm_up_input_its_preprocess_takes(module: ModuleType) -> None:
    h = handler(module)
    inputs = h.warmup_inputs()
    assert inputs["image"].shape == (1, 1)
    assert h.preprocess(inputs, {})["input"].shape == (1, 64)


def test_a_large_image_gives_what_the_same_digit_small_gives(module: ModuleType) -> None:
    rng = np.random.default_rng(1)
    digit = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    small = Image.fromarray(digit).resize((32, 32), Image.Resampling.NEAREST)
    large = Image.fromarray(digit).resize((2048, 2048), Image.Resampling.NEAREST)
    h = handler(module)
    both = h.preprocess({"image": images(png(small), png(large))}, {})["input"]
    torch.testing.assert_close(both[1], both[0], rtol=0, atol=16 / 255)  # within one grey level


def test_a_requests_images_are_not_all_held_full_size_at_once(module: ModuleType) -> None:
    """Four 4096x4096 images (the largest taken): as float32 that is 64 MiB each. Each is shrunk as it is
    decoded, so what numpy holds at once stays far below one of them (Pillow's own buffers are not traced)."""
    white = png(Image.new("L", (4096, 4096), 255))
    h = handler(module)
    tracemalloc.start()
    try:
        out = h.preprocess({"image": images(*[white] * 4)}, {})["input"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (4, 64) and float(out.abs().max()) == 0.0  # white paper, no ink
    assert peak < 16 << 20, f"numpy held {peak >> 20} MiB at once"
