"""The HTTP gateway: the seed's /predict and the Open Inference Protocol over the dispatcher (no torch)."""

from __future__ import annotations

from gateway.app import create_app
from gateway.config import GatewayConfig

__all__ = ["GatewayConfig", "create_app"]
