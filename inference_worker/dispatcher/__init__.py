"""The dispatcher process: the worker sessions (:mod:`.workers`) apart from the requests it routes
(:mod:`.requests`), over two ROUTER sockets (:mod:`.sockets`), tied together in :mod:`.loop`.

``python -m inference_worker.dispatcher`` runs it (the click command lives in :mod:`inference_worker.cli`).
"""

from __future__ import annotations

from inference_worker.dispatcher.config import DispatcherConfig
from inference_worker.dispatcher.loop import Dispatcher, run_dispatcher
from inference_worker.dispatcher.requests import inline_segment

__all__ = ["Dispatcher", "DispatcherConfig", "inline_segment", "run_dispatcher"]
