"""The dispatcher's application: accept requests (and model control) from gateways, route, answer.

The routing choice and the queues are :class:`inference_worker.routing.Router`'s and the control policy is
:class:`inference_worker.model_control.ModelControl`'s (no I/O); this module does the sending, the startup
grace (requests held while workers re-register), the re-sending of orphaned requests and the STATUS answer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

from inference_worker import protocol, shm
from inference_worker.dispatcher.config import DispatcherConfig
from inference_worker.dispatcher.sockets import Endpoints
from inference_worker.errors import CodedError
from inference_worker.model_control import ACTIONS, ControlJob, ModelControl
from inference_worker.protocol import ErrorCode, ProtocolError
from inference_worker.protocol.relay import RelayedReply, RelayedRequest
from inference_worker.routing import MAX_ATTEMPTS, Request, Router
from inference_worker.stats import StatsBook

MAX_HELD = 4096  # requests held during the startup grace period, at most
DEFAULT_TIMEOUT = 30.0  # seconds a request without a deadline may take
OVERDUE_GRACE = 1.0  # seconds past its deadline a request may stay on a worker before the dispatcher drops it

log = logging.getLogger("torchgate.dispatcher")


class Requests:
    """Every request between its arrival from a gateway and its answer, and the loads and unloads asked
    for."""

    def __init__(self, config: DispatcherConfig, router: Router, endpoints: Endpoints) -> None:
        self.config = config
        self.router = router
        self.endpoints = endpoints
        self.control = ModelControl()
        self.counters: dict[str, int] = {
            "requests": 0,
            "rejected": 0,
            "expired": 0,
            "resent": 0,
            "lost": 0,
            "cancelled": 0,  # withdrawn from this queue (a worker counts those it withdraws)
        }
        # The workers' keys of this dispatcher's requests start from the clock, in microseconds: a restarted
        # dispatcher's never meet the keys of the one before it (it would have had to give out more than one
        # a microsecond). A worker computing a request of the one before answers it under its old key once
        # it has registered again; a key given out again (each counting from 1) took that answer for the new
        # request's, which got another request's outputs.
        self.next_seq = time.time_ns() // 1000
        self.started = time.monotonic()
        self.held: list[tuple[bytes, RelayedRequest]] = []  # arrived before any worker registered

    # -- from gateways ----------------------------------------------------------------------------------

    def on_gateway_message(self, gateway: bytes, message: Any, stats: StatsBook) -> None:
        if isinstance(message, RelayedRequest):
            self.accept(gateway, message)
        elif isinstance(message, protocol.Query):
            known = (gateway, message.id) in self.router.requests or any(
                g == gateway and m.id == message.id for g, m in self.held
            )
            self.endpoints.to_gateway(gateway, protocol.QueryReply(message.id, known).frames())
        elif isinstance(message, protocol.Status):
            self.endpoints.to_gateway(gateway, self.status(message.id, stats).frames())
        elif isinstance(message, protocol.Control):
            self.accept_control(gateway, message)
        elif isinstance(message, protocol.Cancel):
            self.cancel(gateway, message.id)

    def accept(self, gateway: bytes, message: RelayedRequest, held: bool = False) -> None:
        deadline = message.deadline if message.deadline is not None else time.time() + DEFAULT_TIMEOUT
        if not held:
            self.counters["requests"] += 1
        try:
            try:
                resolved = self.router.resolve_version(message.model, message.version)
            except CodedError:
                if self.in_startup_grace() and len(self.held) < MAX_HELD:
                    self.held.append((gateway, message))  # workers re-register within a heartbeat or two
                    return
                raise
            request = Request(
                seq=self.next_seq,
                gateway=gateway,
                id=message.id,
                model=message.model,
                version=resolved,
                deadline=deadline,
                message=message,
                level=self.router.level(message.model, resolved, message.priority),
            )
            self.next_seq += 1
            self.router.enqueue(request)
            self.dispatch()  # so the queue holds only what no worker has credit for
        except CodedError as exc:
            self.counters["rejected"] += 1
            self.fail(gateway, message.id, exc.code, str(exc))

    def cancel(self, gateway: bytes, request_id: str) -> None:
        """Withdraw a request whose client went away: from this queue (or the startup grace's hold) at once;
        on a worker, by passing the CANCEL on (a worker drops it if it has not started it, and answers). The
        gateway has stopped waiting: nothing is answered to it."""
        key = (gateway, request_id)
        withdrawn = self.router.withdraw(key)
        held = [i for i, (g, m) in enumerate(self.held) if g == gateway and m.id == request_id]
        if withdrawn is not None or held:
            for index in reversed(held):
                del self.held[index]
            self.counters["cancelled"] += 1
            return
        request = self.router.requests.get(key)
        if request is not None and request.worker is not None:
            if not self.endpoints.to_worker(request.worker, protocol.WorkerCancel(request.seq).frames()):
                self.lose_worker(request.worker, "unreachable")

    def in_startup_grace(self) -> bool:
        return time.monotonic() - self.started < self.config.startup_grace

    def release_held(self) -> None:
        """Route (or, after the grace period, refuse) requests held while workers were registering."""
        held, self.held = self.held, []
        for gateway, message in held:
            self.accept(gateway, message, held=True)

    # -- model control ----------------------------------------------------------------------------------

    def accept_control(self, gateway: bytes, message: protocol.Control) -> None:
        if message.action not in ACTIONS:
            raise ProtocolError(f"CONTROL: unknown action {message.action!r}")
        log.info("dispatcher: %s of model %s asked for", message.action, message.model)
        if not self.control.submit(ControlJob(message.id, gateway, message.action, message.model)):
            refused = protocol.ControlReply(message.id, False, "too many load and unload calls wait already")
            self.endpoints.to_gateway(gateway, refused.frames())
        self.step_control()

    def step_control(self) -> None:
        """Start the next slot of the running load or unload, or answer the gateway once it is over."""
        while (step := self.control.next_step(self.router.workers, time.monotonic())) is not None:
            job = step.job
            if step.worker is not None:
                worker = self.router.workers[step.worker]
                worker.controlling = True  # no new work until it has loaded and announced itself again
                log.info("dispatcher: %s %s on %s", job.action, job.model, worker.name)
                self.endpoints.to_worker(step.worker, protocol.WorkerControl(job.action, job.model).frames())
                continue
            if job.error:
                log.warning("dispatcher: %s of %s failed: %s", job.action, job.model, job.error)
            else:
                done = ", ".join(job.done) or "no slot"
                log.info("dispatcher: %s of %s done on %s", job.action, job.model, done)
            reply = protocol.ControlReply(job.id, not job.error, job.error or None, list(job.done))
            self.endpoints.to_gateway(job.gateway, reply.frames())

    # -- to workers -------------------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Send every queued request a worker has credit for."""
        now = time.time()
        for request, worker in list(self.router.assignments()):
            if request.deadline <= now:
                self.router.complete(worker.identity, request.seq)
                self.counters["expired"] += 1
                self.fail(
                    request.gateway, request.id, ErrorCode.DEADLINE_EXCEEDED, "deadline passed in queue"
                )
                continue
            if request.message.shm and not worker.shared_memory:  # a worker on another host gets frames
                try:
                    forwarded = inline_segment(
                        request.message.forwarded(request.seq, request.version, request.deadline)
                    )
                except (shm.SegmentGone, ProtocolError) as exc:
                    self.router.complete(worker.identity, request.seq)
                    self.fail(request.gateway, request.id, ErrorCode.UNAVAILABLE, f"{shm.REFUSED}{exc}")
                    continue
                frames = forwarded.frames()
            else:
                frames = request.message.frames(request.seq, request.version, request.deadline)
            if not self.endpoints.to_worker(worker.identity, frames):
                self.lose_worker(worker.identity, "unreachable")

    def on_result(self, identity: bytes, message: RelayedReply | protocol.WorkerError) -> None:
        """Pass a worker's answer on to the gateway that asked."""
        worker = self.router.workers[identity]
        worker.overdue = False  # it answers again: back in rotation
        request = self.router.complete(identity, message.seq)
        if request is None:
            return  # late answer to a request that was re-sent, expired or belongs to an earlier dispatcher
        if isinstance(message, protocol.WorkerError):
            answer = protocol.Error(request.id, message.code, message.message, worker=worker.name)
            self.endpoints.to_gateway(request.gateway, answer.frames())
            return
        # the header gets the request's fields; the outputs (or their place in the gateway's segment) go on
        frames = message.frames(request.id, request.model, request.version, worker.name)
        self.endpoints.to_gateway(request.gateway, frames)

    def lose_worker(self, identity: bytes, why: str) -> None:
        self.control.on_lost(identity)
        self.requeue(self.router.remove(identity), why)

    def requeue(self, orphans: list[Request], why: str) -> None:
        """Re-send each orphaned request once; fail those already re-sent."""
        for request in orphans:
            if request.attempts < MAX_ATTEMPTS:
                try:
                    request.version = self.router.resolve_version(request.model, request.version)
                    self.router.enqueue(request, front=True)
                    self.counters["resent"] += 1
                    continue
                except CodedError:
                    pass
            self.router.forget(request)
            self.counters["lost"] += 1
            self.fail(request.gateway, request.id, ErrorCode.UNAVAILABLE, f"worker {why} while computing")

    def sweep(self) -> None:
        """Fail requests that can no longer be served in time, or by anyone."""
        if self.held and not self.in_startup_grace():
            self.release_held()
        for request in self.router.overdue(time.time(), OVERDUE_GRACE):
            holder = self.router.workers.get(request.worker or b"")
            log.warning(
                "dispatcher: worker %s still computing request %s past its deadline; "
                "no new work for it until it "
                "answers",
                holder.name if holder else "?",
                request.request_id or request.id,
            )
            self.counters["expired"] += 1
            self.fail(
                request.gateway, request.id, ErrorCode.DEADLINE_EXCEEDED, "deadline passed while computing"
            )
        for request in self.router.expired_requests(time.time()):
            self.counters["expired"] += 1
            self.fail(request.gateway, request.id, ErrorCode.DEADLINE_EXCEEDED, "deadline passed in queue")
        for request in self.router.unservable():
            self.fail(
                request.gateway,
                request.id,
                ErrorCode.UNAVAILABLE,
                f"no ready worker serves model {request.model!r} version {request.version!r}",
            )

    # -- answers ----------------------------------------------------------------------------------------

    def status(self, call_id: str, stats: StatsBook) -> protocol.StatusReply:
        models, workers = self.router.status()
        counters = {**self.counters, "pending": self.router.pending(), "pid": os.getpid()}
        return protocol.StatusReply(
            call_id,
            models,
            workers,
            stats.to_wire(),
            counters,
            self.control.unavailable(),
            sorted(self.control.unloaded),
        )

    def fail(self, gateway: bytes, request_id: str, code: ErrorCode | str, message: str) -> None:
        self.endpoints.to_gateway(gateway, protocol.Error(request_id, ErrorCode(code), message).frames())


def inline_segment(request: protocol.ForwardedRequest) -> protocol.ForwardedRequest:
    """Turn a REQUEST whose tensors are in a gateway's segment into one that carries them in frames."""
    tensors, _ = shm.request_tensors(request.shm)
    inputs = [(meta, bytes(buf)) for meta, buf in tensors]
    return dataclasses.replace(request, inputs=inputs, shm=None)
