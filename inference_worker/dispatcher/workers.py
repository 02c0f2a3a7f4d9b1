"""The dispatcher's half of each worker session (as MDP's broker side): READY, heartbeats, drain, purge.

A worker registers with READY; every message from it proves it alive for ``liveness`` seconds; a silent one
leaves rotation and its in-flight requests go back to :class:`Requests` to be re-sent. Heartbeats carry the
worker's counters (kept in a :class:`StatsBook`), its device memory and what it is computing
(``WorkerState.computing``), which a rule telling a slow worker from a dead one can build on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from inference_worker import protocol
from inference_worker.dispatcher.config import DispatcherConfig
from inference_worker.dispatcher.requests import Requests
from inference_worker.dispatcher.sockets import Endpoints
from inference_worker.model_control import UNLOAD
from inference_worker.protocol.relay import RelayedReply
from inference_worker.routing import Router, WorkerState
from inference_worker.stats import StatsBook

log = logging.getLogger("torchgate.dispatcher")


class WorkerSessions:
    """Every worker the dispatcher knows, as sessions: registration, liveness and leaving."""

    def __init__(
        self, config: DispatcherConfig, router: Router, endpoints: Endpoints, requests: Requests
    ) -> None:
        self.config = config
        self.router = router
        self.endpoints = endpoints
        self.requests = requests
        self.stats = StatsBook(config.stats_file)
        self.stopping = False  # the dispatcher is stopping: drains are acknowledged only when it stops
        self.deferred_drains: list[
            bytes
        ] = []  # workers that asked to drain while the dispatcher was stopping

    def on_worker_message(self, identity: bytes, message: Any) -> None:
        worker = self.router.workers.get(identity)
        if isinstance(message, protocol.Ready):
            self.register(identity, message)
            return
        if worker is None:
            if not isinstance(message, protocol.Disconnect):
                self.send(identity, protocol.Disconnect("unknown worker").frames())
            return
        worker.expires = time.monotonic() + self.config.liveness
        if isinstance(message, RelayedReply | protocol.WorkerError):
            self.requests.on_result(identity, message)
        elif isinstance(message, protocol.Heartbeat):
            if message.stats is not None:
                self.stats.report(worker.name, worker.incarnation, message.stats)
            worker.device_memory = message.device_memory
            worker.computing = message.computing
            worker.direct_requests = message.direct_requests
            worker.rss_bytes = message.rss_bytes
        elif isinstance(message, protocol.Drain) and self.stopping:
            # Stopping too: keep the worker routing until our requests are answered; acknowledged then.
            log.info("dispatcher: worker %s asked to drain; kept until the dispatcher stops", worker.name)
            self.deferred_drains.append(identity)
        elif isinstance(message, protocol.Drain):
            worker.draining = True
            log.info("dispatcher: worker %s draining (%d in flight)", worker.name, len(worker.in_flight))
            self.send(identity, protocol.Drain().frames())
        elif isinstance(message, protocol.Disconnect):
            log.info("dispatcher: worker %s left (%s)", worker.name, message.reason)
            self.requests.lose_worker(identity, "disconnected")
        elif isinstance(message, protocol.WorkerControlReply):
            worker.controlling = False
            self.requests.control.on_reply(identity, message.ok, message.error)
            self.requests.step_control()

    def register(self, identity: bytes, message: protocol.Ready) -> None:
        signatures, stale = self.requests.control.note_ready(
            message.worker, message.unavailable, message.signatures()
        )
        for model in stale:  # unloaded on request while this slot was away: it stays unloaded
            self.send(identity, protocol.WorkerControl(UNLOAD, model).frames())
        worker = WorkerState(
            identity=identity,
            name=message.worker,
            incarnation=message.incarnation,
            capacity=max(1, message.capacity),
            signatures=signatures,
            expires=time.monotonic() + self.config.liveness,
            device=message.device,
            pid=message.pid,
            shared_memory=message.shm,
            assigned=tuple(message.assigned),
            direct=message.direct,
            since=time.time(),
        )
        known = self.router.workers.get(identity)
        if known is not None and known.incarnation == worker.incarnation:
            # READY again (after a model load): the same process
            worker.since, worker.rss_bytes = known.since, known.rss_bytes
        else:
            log.info(
                "dispatcher: worker %s ready on %s (pid %d) with %s",
                worker.name,
                worker.device,
                worker.pid,
                ", ".join(f"{m}/{v}" for m, v in signatures),
            )
        for model, version, other in self.router.disagreeing(worker):
            log.warning(
                "dispatcher: worker %s serves %s version %s with another config or files than worker %s "
                "(edited and not loaded, or a load that failed on some slots): load the model again",
                worker.name,
                model,
                version,
                other,
            )
        self.requests.requeue(self.router.register(worker), "replaced")
        if self.requests.held:
            self.requests.release_held()

    def acknowledge_deferred_drains(self) -> None:
        for identity in self.deferred_drains:
            self.send(identity, protocol.Drain().frames())

    def send_heartbeats(self) -> None:
        for identity in list(self.router.workers):
            self.send(identity, protocol.Heartbeat().frames())

    def purge(self, now: float) -> None:
        """Take silent workers out of rotation; their requests are re-sent."""
        for worker in self.router.expired_workers(now):
            log.warning(
                "dispatcher: worker %s silent for %.1fs; out of rotation", worker.name, self.config.liveness
            )
            self.requests.lose_worker(worker.identity, "silent")

    def send(self, identity: bytes, frames: list[Any]) -> None:
        if not self.endpoints.to_worker(identity, frames) and identity in self.router.workers:
            self.requests.lose_worker(identity, "unreachable")
