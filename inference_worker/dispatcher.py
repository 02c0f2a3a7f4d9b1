"""The dispatcher process: routes requests from any number of gateways to any number of workers.

Two ROUTER sockets: the frontend, where gateway threads connect, and the backend, where workers connect.
One single-threaded loop: receive, route (see :mod:`inference_worker.routing`), heartbeat, purge.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import msgpack
import zmq

from inference_worker import lifeline, logs, protocol, shm
from inference_worker.errors import CodedError
from inference_worker.model_control import ACTIONS, UNLOAD, ControlJob, ModelControl
from inference_worker.protocol import ErrorCode, Kind, ProtocolError
from inference_worker.routing import MAX_ATTEMPTS, Request, Router, WorkerState
from inference_worker.security import CurveServer, SecurityError, is_network
from inference_worker.stats import StatsBook

MAX_HELD = 4096  # requests held during the startup grace period, at most
OVERDUE_GRACE = 1.0  # seconds past its deadline a request may stay on a worker before the dispatcher drops it

log = logging.getLogger("torchgate.dispatcher")


@dataclass(frozen=True)
class DispatcherConfig:
    """Where the dispatcher listens and how it judges liveness."""

    frontend: str
    backend: str
    heartbeat_interval: float = 0.5  # seconds between heartbeats to workers
    heartbeat_liveness: int = 8  # missed intervals before a worker is taken out of rotation
    max_message_bytes: int = 1 << 31  # a peer that sends more is disconnected by libzmq
    startup_grace: float = 5.0  # seconds after start in which requests wait for workers to (re-)register
    curve_secret_key: Path | None = None  # required when an endpoint is TCP
    curve_authorized: Path | None = None  # folder of public keys allowed to connect over TCP
    stop_grace: float = (
        10.0  # seconds a stop waits for the requests in flight (supervisord's stopwaitsecs is more)
    )


def bind(socket: zmq.Socket, endpoint: str) -> None:
    """Bind, making an ipc socket's file reachable by its owner only."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # a stale socket file of a previous run
        old = os.umask(0o077)
        try:
            socket.bind(endpoint)
        finally:
            os.umask(old)
    else:
        socket.bind(endpoint)


class Dispatcher:
    """The routing loop and its two sockets."""

    def __init__(self, config: DispatcherConfig, context: zmq.Context | None = None) -> None:
        self.config = config
        self.context = context or zmq.Context.instance()
        self.router = Router()
        self.control = ModelControl()
        self.stats = StatsBook()
        self.counters: dict[str, int] = {"requests": 0, "rejected": 0, "expired": 0, "resent": 0, "lost": 0}
        self.next_seq = 1
        self.stopping = False
        self.stop_requested: float | None = None  # monotonic time of the first stop signal
        self.deferred_drains: list[bytes] = []  # workers that asked to drain while we were stopping
        self.curve: CurveServer | None = None
        if is_network(config.frontend) or is_network(config.backend):
            if not (config.curve_secret_key and config.curve_authorized):
                raise SecurityError(
                    "a TCP endpoint needs --curve-secret-key and --curve-authorized (see `torchgate keys`)"
                )
            self.curve = CurveServer(self.context, config.curve_secret_key, config.curve_authorized)
        self.frontend = self._socket(config.frontend)
        self.backend = self._socket(config.backend)
        self.next_heartbeat = 0.0
        self.next_sweep = 0.0
        self.started = time.monotonic()
        self.held: list[
            tuple[bytes, protocol.Message]
        ] = []  # requests that arrived before any worker registered

    def _socket(self, endpoint: str) -> zmq.Socket:
        socket = self.context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        socket.setsockopt(zmq.SNDHWM, 100_000)
        socket.setsockopt(zmq.RCVHWM, 100_000)
        if self.curve is not None and is_network(endpoint):
            self.curve.secure(socket)
        bind(socket, endpoint)
        return socket

    @property
    def liveness(self) -> float:
        return self.config.heartbeat_interval * self.config.heartbeat_liveness

    def close(self) -> None:
        linger = 500 if self.stop_requested is not None else 0  # the drain acknowledgements of a stop go out
        self.frontend.close(linger=0)
        self.backend.close(linger=linger)
        if self.curve is not None:
            self.curve.stop()

    def serve(self, max_iterations: int | None = None) -> None:
        """Run the loop until stopped (or for ``max_iterations`` rounds)."""
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        iterations = 0
        log.info("dispatcher: frontend %s, backend %s", self.config.frontend, self.config.backend)
        while not self.stopping and (max_iterations is None or iterations < max_iterations):
            iterations += 1
            timeout = max(0.0, min(self.next_heartbeat, self.next_sweep) - time.monotonic())
            events = dict(poller.poll(int(timeout * 1000) + 1))
            if self.backend in events:
                self._drain(self.backend, self.on_worker_message)
            if self.frontend in events:
                self._drain(self.frontend, self.on_gateway_message)
            self.dispatch()
            self.step_control()
            now = time.monotonic()
            if now >= self.next_heartbeat:
                self.send_heartbeats(now)
            if now >= self.next_sweep:
                self.sweep(now)
            if self.stop_requested is not None:
                self._maybe_stop(now)

    def request_stop(self) -> None:
        """First stop signal: answer the requests in flight, then stop; a second one stops at once.

        ``supervisorctl restart all`` signals every program at once, the dispatcher first. Stopping at once
        dropped the gateway's requests in flight; now the dispatcher keeps routing (to workers that are
        draining too: their drain is acknowledged only when it stops) until no request is queued or in flight,
        at most ``stop_grace`` seconds.
        """
        if self.stop_requested is not None:
            self.stopping = True
            return
        self.stop_requested = time.monotonic()
        log.info(
            "dispatcher: stopping once %d requests queued or in flight are answered (at most %gs)",
            len(self.router.requests),
            self.config.stop_grace,
        )

    def _maybe_stop(self, now: float) -> None:
        assert self.stop_requested is not None
        idle = not self.router.requests and not self.held
        if not idle and now - self.stop_requested < self.config.stop_grace:
            return
        if not idle:
            log.warning("dispatcher: stopping with %d requests unanswered", len(self.router.requests))
        for identity in self.deferred_drains:
            self._to_worker(identity, protocol.encode(Kind.DRAIN))
        self.stopping = True

    def _drain(self, socket: zmq.Socket, handle: Any) -> None:
        for _ in range(1000):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, body = frames[0].bytes, frames[1:]
            try:
                handle(identity, protocol.decode(body))
            except ProtocolError as exc:
                log.warning("dispatcher: dropped a malformed message from %r: %s", identity, exc)
                self._answer_malformed(socket, identity, body, exc)

    def _answer_malformed(
        self, socket: zmq.Socket, identity: bytes, body: list[Any], exc: ProtocolError
    ) -> None:
        if socket is not self.frontend or not body:
            return
        try:  # answer the gateway if its request id can be read
            header = msgpack.unpackb(body[0].bytes, raw=False)
            request_id = header.get("id") if isinstance(header, dict) else None
        except Exception:
            return
        if isinstance(request_id, str):
            self._to_gateway(
                identity,
                protocol.encode(
                    Kind.ERROR,
                    protocol.error_fields(
                        ErrorCode.INVALID_ARGUMENT, f"malformed request: {exc}", id=request_id
                    ),
                ),
            )

    # -- gateways ---------------------------------------------------------------------------------------

    def on_gateway_message(self, gateway: bytes, message: protocol.Message) -> None:
        if message.kind is Kind.REQUEST:
            self.accept(gateway, message)
        elif message.kind is Kind.QUERY:
            request_id = protocol.require(message.fields, "id", str)
            known = (gateway, request_id) in self.router.requests or any(
                g == gateway and m.get("id") == request_id for g, m in self.held
            )
            self._to_gateway(gateway, protocol.encode(Kind.QUERY_REPLY, {"id": request_id, "known": known}))
        elif message.kind is Kind.STATUS:
            self._to_gateway(
                gateway, protocol.encode(Kind.STATUS_REPLY, {"id": message.get("id"), **self.status()})
            )
        elif message.kind is Kind.CONTROL:
            self.accept_control(gateway, message)
        else:
            raise ProtocolError(f"unexpected {message.kind} from a gateway")

    # -- model control ----------------------------------------------------------------------------------

    def accept_control(self, gateway: bytes, message: protocol.Message) -> None:
        call_id = protocol.require(message.fields, "id", str)
        action = protocol.require(message.fields, "action", str)
        model = protocol.require(message.fields, "model", str)
        if action not in ACTIONS:
            raise ProtocolError(f"CONTROL: unknown action {action!r}")
        log.info("dispatcher: %s of model %s asked for", action, model)
        if not self.control.submit(ControlJob(call_id, gateway, action, model)):
            self._to_gateway(
                gateway,
                protocol.encode(
                    Kind.CONTROL_REPLY,
                    {"id": call_id, "ok": False, "error": "too many load and unload calls wait already"},
                ),
            )
        self.step_control()

    def step_control(self) -> None:
        """Start the next slot of the running load or unload, or answer the gateway once it is over."""
        while (step := self.control.next_step(self.router.workers, time.monotonic())) is not None:
            job = step.job
            if step.worker is not None:
                worker = self.router.workers[step.worker]
                worker.controlling = True  # no new work until it has loaded and announced itself again
                log.info("dispatcher: %s %s on %s", job.action, job.model, worker.name)
                self._to_worker(
                    step.worker, protocol.encode(Kind.CONTROL, {"action": job.action, "model": job.model})
                )
                continue
            if job.error:
                log.warning("dispatcher: %s of %s failed: %s", job.action, job.model, job.error)
            else:
                log.info(
                    "dispatcher: %s of %s done on %s", job.action, job.model, ", ".join(job.done) or "no slot"
                )
            self._to_gateway(
                job.gateway,
                protocol.encode(
                    Kind.CONTROL_REPLY,
                    {"id": job.id, "ok": not job.error, "error": job.error, "workers": job.done},
                ),
            )

    def accept(self, gateway: bytes, message: protocol.Message, held: bool = False) -> None:
        fields = message.fields
        request_id = protocol.require(fields, "id", str)
        model = protocol.require(fields, "model", str)
        deadline = fields.get("deadline")
        if not isinstance(deadline, int | float) or isinstance(deadline, bool):
            deadline = time.time() + 30.0
        version = fields.get("version")
        if not held:
            self.counters["requests"] += 1
        try:
            try:
                resolved = self.router.resolve_version(model, version if isinstance(version, str) else None)
            except CodedError:
                if self.in_startup_grace() and len(self.held) < MAX_HELD:
                    self.held.append((gateway, message))  # workers re-register within a heartbeat or two
                    return
                raise
            forward = {k: v for k, v in fields.items() if k not in ("v", "kind", "inputs", "seq")}
            request = Request(
                seq=self.next_seq,
                gateway=gateway,
                id=request_id,
                model=model,
                version=resolved,
                deadline=float(deadline),
                fields=forward,
                frames=[buf for _, buf in message.tensors],
                request_id=str(fields.get("request_id", "")),
            )
            request.fields["inputs"] = [meta.to_wire() for meta, _ in message.tensors]
            self.next_seq += 1
            self.router.enqueue(request)
            self.dispatch()  # so the queue holds only what no worker has credit for
        except CodedError as exc:
            self.counters["rejected"] += 1
            self._fail_gateway(gateway, request_id, ErrorCode(exc.code), str(exc))

    def in_startup_grace(self) -> bool:
        return time.monotonic() - self.started < self.config.startup_grace

    def release_held(self) -> None:
        """Route (or, after the grace period, refuse) requests held while workers were registering."""
        held, self.held = self.held, []
        for gateway, message in held:
            self.accept(gateway, message, held=True)

    def dispatch(self) -> None:
        """Send every queued request a worker has credit for."""
        now = time.time()
        for request, worker in list(self.router.assignments()):
            if request.deadline <= now:
                self.router.complete(worker.identity, request.seq)
                self.counters["expired"] += 1
                self._fail_gateway(
                    request.gateway, request.id, ErrorCode.DEADLINE_EXCEEDED, "deadline passed in queue"
                )
                continue
            header = {
                "v": protocol.VERSION,
                "kind": Kind.REQUEST.value,
                **request.fields,
                "seq": request.seq,
                "version": request.version,
            }
            frames = request.frames
            if "shm" in header and not worker.shared_memory:  # a worker on another host gets frames
                try:
                    header, frames = inline_segment(header)
                except (shm.SegmentGone, ProtocolError) as exc:
                    self.router.complete(worker.identity, request.seq)
                    self._fail_gateway(
                        request.gateway, request.id, ErrorCode.UNAVAILABLE, f"{shm.REFUSED}{exc}"
                    )
                    continue
            try:
                self.backend.send_multipart([worker.identity, msgpack.packb(header), *frames], copy=False)
            except zmq.ZMQError as exc:  # the worker's connection is gone: re-route its work
                log.warning("dispatcher: worker %s unreachable (%s)", worker.name, exc)
                self.lose_worker(worker.identity, "unreachable")

    # -- workers ----------------------------------------------------------------------------------------

    def on_worker_message(self, identity: bytes, message: protocol.Message) -> None:
        worker = self.router.workers.get(identity)
        if message.kind is Kind.READY:
            self.register(identity, message)
            return
        if worker is None:
            if message.kind is not Kind.DISCONNECT:
                self._to_worker(identity, protocol.encode(Kind.DISCONNECT, {"reason": "unknown worker"}))
            return
        worker.expires = time.monotonic() + self.liveness
        if message.kind is Kind.REPLY or message.kind is Kind.ERROR:
            self.on_result(identity, message)
        elif message.kind is Kind.HEARTBEAT:
            stats = message.get("stats")
            if isinstance(stats, list):
                self.stats.report(worker.name, worker.incarnation, stats)
            memory = message.get("device_memory")
            worker.device_memory = memory if isinstance(memory, dict) else None
        elif message.kind is Kind.DRAIN and self.stop_requested is not None:
            # Stopping too: keep the worker routing until our requests are answered; acknowledged then.
            log.info("dispatcher: worker %s asked to drain; kept until the dispatcher stops", worker.name)
            self.deferred_drains.append(identity)
        elif message.kind is Kind.DRAIN:
            worker.draining = True
            log.info("dispatcher: worker %s draining (%d in flight)", worker.name, len(worker.in_flight))
            self._to_worker(identity, protocol.encode(Kind.DRAIN))
        elif message.kind is Kind.DISCONNECT:
            log.info("dispatcher: worker %s left (%s)", worker.name, message.get("reason"))
            self.lose_worker(identity, "disconnected")
        elif message.kind is Kind.CONTROL_REPLY:
            worker.controlling = False
            self.control.on_reply(identity, message.get("ok") is True, str(message.get("error") or ""))
            self.step_control()

    def register(self, identity: bytes, message: protocol.Message) -> None:
        fields = message.fields
        signatures: dict[tuple[str, str], dict[str, Any]] = {}
        for sig in protocol.require(fields, "models", list):
            if (
                not isinstance(sig, dict)
                or not isinstance(sig.get("name"), str)
                or not isinstance(sig.get("version"), str)
            ):
                raise ProtocolError("READY: every model needs a name and a version")
            signatures[(sig["name"], sig["version"])] = sig
        capacity = protocol.require(fields, "capacity", int)
        name = protocol.require(fields, "worker", str)
        signatures, stale = self.control.note_ready(name, fields.get("unavailable") or [], signatures)
        for model in stale:  # unloaded on request while this slot was away: it stays unloaded
            self._to_worker(identity, protocol.encode(Kind.CONTROL, {"action": UNLOAD, "model": model}))
        assigned = fields.get("assigned") or []
        worker = WorkerState(
            identity=identity,
            name=name,
            incarnation=protocol.require(fields, "incarnation", str),
            capacity=max(1, capacity),
            signatures=signatures,
            expires=time.monotonic() + self.liveness,
            device=str(fields.get("device", "")),
            pid=int(fields.get("pid") or 0),
            shared_memory=fields.get("shm") is True,
            assigned=tuple(str(m) for m in assigned if isinstance(m, str)),
        )
        known = self.router.workers.get(identity)
        if known is None or known.incarnation != worker.incarnation:
            log.info(
                "dispatcher: worker %s ready on %s (pid %d) with %s",
                worker.name,
                worker.device,
                worker.pid,
                ", ".join(f"{m}/{v}" for m, v in signatures),
            )
        self.requeue(self.router.register(worker), "replaced")
        if self.held:
            self.release_held()

    def on_result(self, identity: bytes, message: protocol.Message) -> None:
        seq = protocol.require(message.fields, "seq", int)
        self.router.workers[identity].overdue = False  # it answers again: back in rotation
        request = self.router.complete(identity, seq)
        if request is None:
            return  # late answer to a request that was re-sent, expired or belongs to an earlier dispatcher
        worker = self.router.workers[identity]
        if message.kind is Kind.ERROR:
            fields = {
                "id": request.id,
                "code": message.get("code", ErrorCode.INTERNAL.value),
                "message": str(message.get("message", "worker error")),
                "worker": worker.name,
            }
            self._to_gateway(request.gateway, protocol.encode(Kind.ERROR, fields))
            return
        header = {
            "v": protocol.VERSION,
            "kind": Kind.REPLY.value,
            "id": request.id,
            "model": request.model,
            "version": request.version,
            "worker": worker.name,
            "outputs": message.get("outputs"),
            "stats": message.get("stats"),
        }
        if message.get("shm_outputs") is not None:  # the outputs are in the gateway's segment
            header["shm_outputs"] = message.get("shm_outputs")
        self._to_gateway(request.gateway, [msgpack.packb(header), *(buf for _, buf in message.tensors)])

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
            self._fail_gateway(
                request.gateway, request.id, ErrorCode.UNAVAILABLE, f"worker {why} while computing"
            )

    def send_heartbeats(self, now: float) -> None:
        self.next_heartbeat = now + self.config.heartbeat_interval
        for identity in list(self.router.workers):
            self._to_worker(identity, protocol.encode(Kind.HEARTBEAT))

    def sweep(self, now: float) -> None:
        """Take silent workers out of rotation and fail requests that can no longer be served in time."""
        self.next_sweep = now + 0.01
        if self.held and not self.in_startup_grace():
            self.release_held()
        for worker in self.router.expired_workers(now):
            log.warning("dispatcher: worker %s silent for %.1fs; out of rotation", worker.name, self.liveness)
            self.lose_worker(worker.identity, "silent")
        for request in self.router.overdue(time.time(), OVERDUE_GRACE):
            holder = self.router.workers.get(request.worker or b"")
            log.warning(
                "dispatcher: worker %s still computing request %s past its deadline; no new work for it until it "
                "answers",
                holder.name if holder else "?",
                request.request_id or request.id,
            )
            self.counters["expired"] += 1
            self._fail_gateway(
                request.gateway, request.id, ErrorCode.DEADLINE_EXCEEDED, "deadline passed while computing"
            )
        for request in self.router.expired_requests(time.time()):
            self.counters["expired"] += 1
            self._fail_gateway(
                request.gateway, request.id, ErrorCode.DEADLINE_EXCEEDED, "deadline passed in queue"
            )
        for request in self.router.unservable():
            self._fail_gateway(
                request.gateway,
                request.id,
                ErrorCode.UNAVAILABLE,
                f"no ready worker serves model {request.model!r} version {request.version!r}",
            )

    def status(self) -> dict[str, Any]:
        status = self.router.status()
        status["unavailable"] = self.control.unavailable()
        status["unloaded"] = sorted(self.control.unloaded)
        status["stats"] = self.stats.to_wire()
        status["dispatcher"] = {**self.counters, "pending": self.router.pending(), "pid": os.getpid()}
        return status

    # -- sending ----------------------------------------------------------------------------------------

    def _fail_gateway(self, gateway: bytes, request_id: str, code: ErrorCode, message: str) -> None:
        self._to_gateway(
            gateway, protocol.encode(Kind.ERROR, protocol.error_fields(code, message, id=request_id))
        )

    def _to_gateway(self, gateway: bytes, frames: list[Any]) -> None:
        try:
            self.frontend.send_multipart([gateway, *frames], copy=False)
        except zmq.ZMQError as exc:
            log.info("dispatcher: gateway gone, answer dropped (%s)", exc)

    def _to_worker(self, identity: bytes, frames: list[Any]) -> None:
        try:
            self.backend.send_multipart([identity, *frames], copy=False)
        except zmq.ZMQError:
            if identity in self.router.workers:
                self.lose_worker(identity, "unreachable")


def inline_segment(header: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """Turn a REQUEST whose tensors are in a gateway's segment into one that carries them in frames."""
    tensors, _ = shm.request_tensors(header["shm"])
    inlined = {k: v for k, v in header.items() if k != "shm"}
    inlined["inputs"] = [meta.to_wire() for meta, _ in tensors]
    return inlined, [bytes(buf) for _, buf in tensors]


def run_dispatcher(config: DispatcherConfig) -> int:
    try:
        dispatcher = Dispatcher(config)
    except (SecurityError, zmq.ZMQError) as exc:
        log.error("dispatcher: cannot start: %s", exc)
        return 2

    def stop(signum: int, frame: Any) -> None:
        dispatcher.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        dispatcher.serve()
    finally:
        dispatcher.close()
    return 0


@click.command("dispatcher")
@click.option(
    "--frontend", required=True, envvar="TORCHGATE_DISPATCHER", help="Endpoint gateways connect to."
)
@click.option("--backend", required=True, envvar="TORCHGATE_BACKEND", help="Endpoint workers connect to.")
@click.option("--heartbeat-interval", type=float, default=0.5, show_default=True)
@click.option("--heartbeat-liveness", type=int, default=8, show_default=True)
@click.option(
    "--startup-grace",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds after start in which requests wait for workers to register instead of a 503.",
)
@click.option(
    "--stop-grace",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds a stop signal waits for the requests in flight to be answered (a second signal: at once).",
)
@click.option(
    "--curve-secret-key",
    type=click.Path(path_type=Path),
    default=None,
    help="The dispatcher's CURVE secret key file (required for TCP endpoints).",
)
@click.option(
    "--curve-authorized",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of public keys of peers allowed over TCP.",
)
def dispatcher_command(
    frontend: str,
    backend: str,
    heartbeat_interval: float,
    heartbeat_liveness: int,
    startup_grace: float,
    stop_grace: float,
    curve_secret_key: Path | None,
    curve_authorized: Path | None,
) -> None:
    """Route requests between gateways and workers."""
    lifeline.die_with_supervisor()
    logs.configure()
    sys.exit(
        run_dispatcher(
            DispatcherConfig(
                frontend,
                backend,
                heartbeat_interval,
                heartbeat_liveness,
                startup_grace=startup_grace,
                stop_grace=stop_grace,
                curve_secret_key=curve_secret_key,
                curve_authorized=curve_authorized,
            )
        )
    )


if __name__ == "__main__":
    dispatcher_command()
