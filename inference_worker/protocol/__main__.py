"""Print the message table of docs/architecture.md: ``python -m inference_worker.protocol``."""

from __future__ import annotations

from inference_worker.protocol.kinds import message_table

print(message_table(), end="")
