"""Images of handwritten digits in, the digit out, for the `digits` model (8x8 grey levels 0..16).

preprocess decodes each image (PNG, JPEG, anything Pillow reads; on a GPU worker with torchvision, JPEGs are
decoded on the GPU), makes it grey, shrinks it to 8x8 by averaging, and scales it to the 0..16 the model was
trained on; light-background images (dark ink on paper) are inverted. postprocess turns logits into
probabilities and a JSON answer per image, with the ``top_k`` digits when the request's parameters ask.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 4096 * 4096  # a decompression bomb is refused before it is decoded
SIDE = 64  # a large image is shrunk (averaging) to about this many pixels a side as it is decoded
JPEG = b"\xff\xd8\xff"


class DigitsImageHandler:
    def setup(self, model_dir: Path, device: torch.device) -> None:
        self.device = device
        self.decode_jpeg = None
        if device.type == "cuda":
            try:
                from torchvision.io import decode_jpeg
            except ImportError:
                pass
            else:
                self.decode_jpeg = decode_jpeg

    def preprocess(self, inputs: dict[str, Any], parameters: dict[str, Any]) -> dict[str, torch.Tensor]:
        top_k(parameters)  # a bad one fails here, as the client's 400, before any compute
        # each image is shrunk as soon as it is decoded: a request's images are never all full size at once
        return {
            "input": torch.stack([self.digit(self.grey(bytes(data))) for data in inputs["image"].reshape(-1)])
        }

    def warmup_inputs(self) -> dict[str, Any]:
        """One 8x8 PNG: the worker runs it through every hook before it says READY."""
        buffer = io.BytesIO()
        Image.new("L", (8, 8)).save(buffer, format="PNG")
        image = np.empty((1, 1), dtype=object)
        image[0, 0] = buffer.getvalue()
        return {"image": image}

    def grey(self, data: bytes) -> torch.Tensor:
        """Return the image as a float tensor of grey levels 0..255, [height, width]."""
        if self.decode_jpeg is not None and data.startswith(JPEG):
            from torchvision.io import ImageReadMode

            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return self.decode_jpeg(raw, mode=ImageReadMode.GRAY, device=self.device)[0].float()
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ValueError(
                f"not an image Pillow can read ({len(data)} bytes; send a PNG or a JPEG)"
            ) from None
        with image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"image of {image.width}x{image.height} pixels is too large")
            image.draft("L", (SIDE, SIDE))  # a JPEG decodes at 1/2 to 1/8 scale when that still covers SIDE
            grey = image.convert("L")
        factor = min(grey.width, grey.height) // SIDE
        if factor > 1:  # box averages: what the 8x8 averaging keeps, in a 1/factor^2 of the memory
            grey = grey.reduce(factor)
        return torch.from_numpy(np.asarray(grey, dtype=np.float32).copy())

    @staticmethod
    def digit(grey: torch.Tensor) -> torch.Tensor:
        """Shrink to 8x8 by averaging, ink bright, levels 0..16, flattened to the model's 64 inputs."""
        small = torch.nn.functional.adaptive_avg_pool2d(grey[None, None], (8, 8))[0, 0]
        border = torch.cat([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        if border.mean() > 127:  # dark ink on a light background
            small = 255 - small
        return (small * (16 / 255)).reshape(64).cpu()

    def inference(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"output": model(batch["input"])}

    def postprocess(
        self, outputs: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor], parameters: dict[str, Any]
    ) -> dict[str, Any]:
        probabilities = torch.softmax(outputs["output"], dim=1)
        best = probabilities.max(dim=1)
        predictions: list[dict[str, Any]] = [
            {"digit": int(d), "probability": round(float(p), 4)}
            for d, p in zip(best.indices, best.values, strict=True)
        ]
        k = top_k(parameters)
        if k > 1:  # ?top_k=3 (TorchServe's query string) or "parameters": {"top_k": 3}
            top = probabilities.topk(k, dim=1)
            for prediction, values, digits in zip(predictions, top.values, top.indices, strict=True):
                prediction["top"] = [
                    {"digit": int(d), "probability": round(float(p), 4)}
                    for d, p in zip(digits, values, strict=True)
                ]
        return {"prediction": predictions, "probabilities": probabilities}


def top_k(parameters: dict[str, Any]) -> int:
    """The request's ``top_k`` (1 to 10; a query string's is text), 1 when it has none."""
    raw = parameters.get("top_k", 1)
    try:
        k = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"parameter top_k must be a whole number from 1 to 10, got {raw!r}") from None
    if not 1 <= k <= 10 or isinstance(raw, bool | float):
        raise ValueError(f"parameter top_k must be a whole number from 1 to 10, got {raw!r}")
    return k
