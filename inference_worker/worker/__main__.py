"""``python -m inference_worker.worker``: the worker command."""

from __future__ import annotations

from inference_worker.cli import worker_command

worker_command()
