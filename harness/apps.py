"""The gateway's Flask app with no dispatcher behind it, for tests through Flask's test client."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from gateway import GatewayConfig, create_app
from harness.procs import DEFAULT_REPOSITORY


def gateway_app(tmp_path: Path, repository: Path = DEFAULT_REPOSITORY, **overrides: object) -> Flask:
    """Return an app whose dispatcher socket nobody listens on: what it answers, the gateway decided alone.

    Its status calls give up fast; close it with ``app.extensions["torchgate"].client.close()``.
    """
    settings: dict[str, object] = {
        "dispatcher": f"ipc://{tmp_path}/nobody-listens.sock",
        "model_repository": str(repository),
        "status_timeout": 0.2,
        "unresponsive_after": 0.3,
        "poll_interval": 0.1,
        **overrides,
    }
    return create_app(GatewayConfig(**settings))  # type: ignore[arg-type]
