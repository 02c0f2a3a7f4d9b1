"""A test model for the python backend: doubles its input after sleeping, so queues can fill."""

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
        time.sleep(self.seconds)
        return x * self.scale


def build() -> torch.nn.Module:
    return SlowDouble()
