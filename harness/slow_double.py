"""A test model for the python backend: doubles its input after sleeping, so queues can fill.

Negative input raises ValueError, a value above 1e30 allocates 1 PiB, 7777 raises an error that names this
file and carries a traceback-looking text.
"""

from __future__ import annotations

import time

import torch


class SlowDouble(torch.nn.Module):
    def __init__(self, seconds: float = 0.2) -> None:
        super().__init__()
        self.seconds = seconds
        self.scale = torch.nn.Parameter(torch.tensor(2.0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise ValueError("negative input")  # lets a test make one request of a batch fail
        if bool((x > 1e30).any()):
            torch.empty(1 << 50, dtype=torch.uint8)  # a real allocation failure: 1 PiB
        if bool((x == 7777).any()):  # an error whose text names this file and looks like a traceback
            raise RuntimeError(
                f"broken at {__file__}\nTraceback (most recent call last):\n  File {__file__!r}"
            )
        time.sleep(self.seconds)
        return x * self.scale


def build() -> torch.nn.Module:
    return SlowDouble()
