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
        time.sleep(self.seconds)
        return x * self.scale


def build() -> torch.nn.Module:
    return SlowDouble()
