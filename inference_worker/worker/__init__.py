"""The worker process: a session to the dispatcher (:mod:`.session`) apart from the application that loads,
batches and computes (:mod:`.app`, on the thread of :mod:`.compute_thread`), tied together in :mod:`.loop`.

``python -m inference_worker.worker`` runs it (the click command lives in :mod:`inference_worker.cli`).
"""

from __future__ import annotations

from inference_worker.worker.config import WorkerConfig, pick_device
from inference_worker.worker.loop import Worker, run_worker

__all__ = ["Worker", "WorkerConfig", "pick_device", "run_worker"]
