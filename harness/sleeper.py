"""A test model for the python backend: sleeps as many seconds as its largest input value, then doubles it.

Its warm-up (zeros) does not sleep, so a worker loads it at once; a request of 20.0 computes for 20 s.
"""

from __future__ import annotations

import time

import torch


class Sleeper(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(float(x.max()))
        return x * self.scale


def build() -> torch.nn.Module:
    return Sleeper()
