"""The systems under test, each started as real processes on a free port and killed as a tree afterwards."""

from __future__ import annotations

from benchmarks.systems.base import StartContext, System
from benchmarks.systems.flask_systems import EmptyFlask, SeedApp
from benchmarks.systems.litserve_system import LitServeSystem
from benchmarks.systems.torchgate_system import Torchgate
from benchmarks.systems.torchserve_system import TorchServeSystem

ALL_SYSTEMS: dict[str, type[System]] = {
    "torchgate": Torchgate,
    "seed": SeedApp,
    "torchserve": TorchServeSystem,
    "litserve": LitServeSystem,
    "empty_flask": EmptyFlask,
}

__all__ = ["ALL_SYSTEMS", "StartContext", "System"]
