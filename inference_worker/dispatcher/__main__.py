"""``python -m inference_worker.dispatcher``: the dispatcher command."""

from __future__ import annotations

from inference_worker.cli import dispatcher_command

dispatcher_command()
