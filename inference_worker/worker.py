"""The worker process: load the models once, warm up, announce READY, batch and compute until drained.

Life cycle: start -> load (a failure exits non-zero, never READY) -> warm up -> READY -> serve ->
first SIGTERM: DRAIN (the dispatcher stops sending work), finish what is queued, DISCONNECT, exit 0 ->
a second SIGTERM exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import torch
import zmq

from inference_worker import lifeline, logs, protocol, shm
from inference_worker.backends import LoadError
from inference_worker.batching import Batcher, Pending
from inference_worker.compute import BatchTimes, Executor, check_inputs, describe_failure
from inference_worker.errors import CodedError
from inference_worker.pipeline import Pipeline
from inference_worker.protocol import ErrorCode, Kind, ProtocolError
from inference_worker.repository import ConfigError
from inference_worker.residents import Residents
from inference_worker.security import SecurityError, is_network, secure_client
from inference_worker.tensors import from_torch, to_torch

log = logging.getLogger("torchgate.worker")


@dataclass(frozen=True)
class WorkerConfig:
    """How one worker runs. Defaults suit a CPU slot on a small host."""

    repository: Path
    dispatcher: str
    name: str = "worker"
    models: tuple[str, ...] = ()  # empty: every model in the repository
    device: str | None = None  # None: cuda:0 of CUDA_VISIBLE_DEVICES if CUDA is there, else the CPU
    threads: int | None = 1  # torch intra-op threads for CPU workers; None leaves torch's default
    capacity: int | None = None  # requests in flight the dispatcher may send; None: 2 x the largest batch
    heartbeat_interval: float = 0.5  # seconds between heartbeats
    heartbeat_liveness: int = 8  # missed intervals before the dispatcher is presumed gone
    drain_timeout: float = 30.0  # seconds to wait for the dispatcher's DRAIN acknowledgement
    curve_secret_key: Path | None = None  # this worker's CURVE secret key (required over TCP)
    curve_server_key: Path | None = None  # the dispatcher's CURVE public key (required over TCP)


def pick_device(explicit: str | None) -> torch.device:
    """Return the explicit device, else ``cuda:0`` (the GPU ``CUDA_VISIBLE_DEVICES`` selects), else the CPU."""
    if explicit:
        return torch.device(explicit)
    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class ModelStats:
    """Cumulative counters of one model version in this worker incarnation."""

    success: int = 0
    failure: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    inference_count: int = 0
    execution_count: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    request_ns: int = 0  # per request: its queue time plus its batch's compute time
    last_inference: int = 0  # unix milliseconds of the last successful batch
    batch_sizes: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    batch_compute_ns: dict[int, list[int]] = field(default_factory=dict)  # size -> [input, infer, output] ns

    def to_wire(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "failure": dict(self.failure),
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "queue_ns": self.queue_ns,
            "compute_input_ns": self.compute_input_ns,
            "compute_infer_ns": self.compute_infer_ns,
            "compute_output_ns": self.compute_output_ns,
            "request_ns": self.request_ns,
            "last_inference": self.last_inference,
            "batch_sizes": {str(size): count for size, count in self.batch_sizes.items()},
            "batch_compute_input_ns": {str(size): ns[0] for size, ns in self.batch_compute_ns.items()},
            "batch_compute_infer_ns": {str(size): ns[1] for size, ns in self.batch_compute_ns.items()},
            "batch_compute_output_ns": {str(size): ns[2] for size, ns in self.batch_compute_ns.items()},
        }


class Worker:
    """One worker: its loaded model versions, its socket to the dispatcher and its batch queues."""

    def __init__(self, config: WorkerConfig, context: zmq.Context | None = None) -> None:
        self.config = config
        self.context = context or zmq.Context.instance()
        self.incarnation = uuid.uuid4().hex[:12]
        self.device = pick_device(config.device)
        self.residents = Residents(config.repository, self.device, self.tag)
        self.executors: dict[tuple[str, str], Executor | Pipeline] = self.residents.executors
        self.batchers: dict[tuple[str, str], Batcher] = self.residents.batchers
        self.stats: dict[tuple[str, str], ModelStats] = defaultdict(ModelStats)
        self.segments = shm.Mappings()  # gateways' segments mapped here, dropped when their owner lets go
        self.socket: zmq.Socket | None = None
        self.stopping = 0  # SIGTERMs received
        self.drain_acked = False
        self.drain_started = 0.0
        self.last_seen = 0.0
        self.next_heartbeat = 0.0

    # -- life cycle ---------------------------------------------------------------------------------

    def load(self) -> None:
        """Load and warm up every model version; one that fails is logged and reported, the rest serve.

        Raise :class:`ConfigError` when the repository cannot be read, :class:`LoadError` when nothing loaded.
        """
        if self.device.type == "cpu" and self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.residents.load_all(list(self.config.models) or None)

    @property
    def tag(self) -> str:
        return f"worker[{self.config.name}]"

    @property
    def capacity(self) -> int:
        if self.config.capacity:
            return self.config.capacity
        return max([2 * e.config.max_batch_size for e in self.executors.values()] + [2])

    def connect(self) -> None:
        """(Re)connect to the dispatcher on a new socket and announce READY."""
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, f"{self.config.name}/{self.incarnation}".encode())
        self.socket.setsockopt(zmq.LINGER, 2000)
        if is_network(self.config.dispatcher):
            if not (self.config.curve_secret_key and self.config.curve_server_key):
                raise SecurityError("a TCP dispatcher needs --curve-secret-key and --curve-server-key")
            secure_client(self.socket, self.config.curve_secret_key, self.config.curve_server_key)
        self.socket.connect(self.config.dispatcher)
        self.announce()

    def announce(self) -> None:
        models = [e.config.signature(version) for (_, version), e in self.executors.items()]
        self._send(
            protocol.encode(
                Kind.READY,
                {
                    "worker": self.config.name,
                    "incarnation": self.incarnation,
                    "pid": os.getpid(),
                    "device": str(self.device),
                    "shm": self.config.dispatcher.startswith("ipc://") and shm.supported(),
                    "capacity": self.capacity,
                    "models": models,
                    "unavailable": self.residents.failures,
                    "assigned": list(self.config.models),
                },
            )
        )
        self.last_seen = time.monotonic()
        if self.executors:
            log.info("%s: READY (%s, capacity %d)", self.tag, self.device, self.capacity)
        else:
            log.info("%s: nothing loaded; telling the dispatcher what could not load", self.tag)

    def report_and_leave(self) -> None:
        """Tell the dispatcher what could not load (so readiness says why), then leave; nothing to serve."""
        if not self.residents.failures:
            return
        try:
            self.connect()
            self._send(protocol.encode(Kind.DISCONNECT, {"reason": "cannot load any model"}))
        except (SecurityError, zmq.ZMQError) as exc:
            log.warning("%s: could not report to the dispatcher: %s", self.tag, exc)
        finally:
            if self.socket is not None:
                self.socket.close(linger=1000)
                self.socket = None

    def request_stop(self, signum: int = signal.SIGTERM, frame: Any = None) -> None:
        """First call: drain. Second call: exit at once."""
        self.stopping += 1
        if self.stopping > 1:
            log.warning("%s: second stop signal, exiting now", self.tag)
            os._exit(1)

    def serve(self, max_iterations: int | None = None) -> int:
        """Run the loop until drained (returns 0) or for ``max_iterations`` rounds (tests)."""
        assert self.socket is not None, "connect() first"
        iterations = 0
        while max_iterations is None or iterations < max_iterations:
            iterations += 1
            now = time.monotonic()
            if self.stopping and not self.drain_started:
                self.drain_started = now
                self._send(protocol.encode(Kind.DRAIN))
                log.info("%s: draining", self.tag)
            dispatcher_gone = now - max(self.last_seen, self.drain_started) > self.liveness_seconds
            if (
                self.drain_started
                and not self._queued()
                and (
                    self.drain_acked
                    or dispatcher_gone
                    or now - self.drain_started > self.config.drain_timeout
                )
            ):
                self._send(protocol.encode(Kind.DISCONNECT, {"reason": "drained"}))
                log.info("%s: drained, exiting", self.tag)
                return 0
            if self.socket.poll(self._poll_timeout_ms(now), zmq.POLLIN):
                self._receive_all()
            self._run_due_batches(flush=bool(self.drain_started))
            self._keep_alive()
        return 0

    # -- the loop's parts -------------------------------------------------------------------------------

    def _poll_timeout_ms(self, now: float) -> int:
        wake = self.next_heartbeat
        wakeups = [b.next_wakeup_ns() for b in self.batchers.values()]
        due = [w for w in wakeups if w is not None]
        if due:
            wake = min(wake, now + (min(due) - time.monotonic_ns()) / 1e9)
        if self.drain_started:
            wake = min(wake, now + 0.05)
        # Rounded down: ZeroMQ polls in whole milliseconds, and a batch due in 0.4 ms must not wait 1 ms. The
        # last fraction of a millisecond is spent polling without waiting, only while a batch is filling.
        return max(0, int((wake - now) * 1000))

    def _receive_all(self) -> None:
        assert self.socket is not None
        for _ in range(10_000):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.last_seen = time.monotonic()
            try:
                self._handle(protocol.decode(frames))
            except ProtocolError as exc:
                log.warning("%s: dropped a malformed message: %s", self.tag, exc)

    def _handle(self, message: protocol.Message) -> None:
        if message.kind is Kind.REQUEST:
            self._enqueue(message)
        elif message.kind is Kind.DRAIN:
            self.drain_acked = True
        elif message.kind is Kind.CONTROL:
            self._control(str(message.get("action")), str(message.get("model")))
        elif message.kind is Kind.DISCONNECT:
            log.info(
                "%s: dispatcher does not know us (%s); announcing again", self.tag, message.get("reason")
            )
            if not self.drain_started:
                self.announce()
        elif message.kind is not Kind.HEARTBEAT:
            log.warning("%s: unexpected %s from the dispatcher", self.tag, message.kind)

    def _control(self, action: str, model: str) -> None:
        """Load (again) or unload one model on request: finish what is queued, act, announce, answer."""
        self._run_due_batches(flush=True)  # the dispatcher sends no new work meanwhile
        ok, error = self.residents.apply(action, model)
        self.announce()
        self._send(
            protocol.encode(Kind.CONTROL_REPLY, {"action": action, "model": model, "ok": ok, "error": error})
        )

    def _enqueue(self, message: protocol.Message) -> None:
        seq = protocol.require(message.fields, "seq", int)
        request_id = str(message.get("request_id", ""))
        key = (str(message.get("model")), str(message.get("version")))
        executor = self.executors.get(key)
        reply_area: shm.ReplyArea | None = None
        if message.get("shm") is not None:  # the inputs are in the gateway's segment: view them there
            try:
                message.tensors, reply_area = shm.request_tensors(message.get("shm"), self.segments)
            except shm.SegmentGone as exc:
                self._fail_seq(seq, ErrorCode.UNAVAILABLE, f"{shm.REFUSED}{exc}", request_id)
                return
            except ProtocolError as exc:
                self._fail_seq(
                    seq, ErrorCode.INVALID_ARGUMENT, f"malformed shared-memory reference: {exc}", request_id
                )
                return
        try:
            if executor is None:
                raise CodedError(
                    ErrorCode.NOT_FOUND, f"model {key[0]!r} version {key[1]!r} is not loaded here"
                )
            metas = [meta for meta, _ in message.tensors]
            samples = check_inputs(executor.config, metas)
            if isinstance(executor, Pipeline):  # a handler's preprocess, or padding: a 400 for this one alone
                prepared = executor.admit(message.tensors, samples)
            else:
                by_name = {meta.name: to_torch(meta, buf) for meta, buf in message.tensors}
        except CodedError as exc:
            code = ErrorCode(exc.code)
            if executor is not None:  # counted as Triton counts failed requests (a preprocess error, say)
                self.stats[key].failure[code.value] += 1
            self._fail_seq(seq, code, str(exc), request_id)
            return
        inputs: Any
        if isinstance(executor, Pipeline):
            inputs, batch_key = prepared, executor.batch_key(prepared)
        else:
            inputs = [by_name[spec.name] for spec in executor.config.inputs]
            batch_key = tuple((t.dtype, tuple(t.shape[1:])) for t in inputs)
        wanted = message.get("outputs") or []
        self.batchers[key].add(
            Pending(
                seq=seq,
                model=key,
                batch_key=batch_key,
                samples=samples,
                arrived_ns=time.monotonic_ns(),
                deadline=float(message.get("deadline") or float("inf")),
                payload=(inputs, wanted, reply_area),
                request_id=request_id,
            )
        )

    def _run_due_batches(self, flush: bool = False) -> None:
        for key, batcher in self.batchers.items():
            while True:
                for item in batcher.expire(time.time()):
                    self.stats[key].failure["deadline"] += 1
                    self._fail_seq(
                        item.seq,
                        ErrorCode.DEADLINE_EXCEEDED,
                        "deadline passed before compute",
                        item.request_id,
                    )
                batch = batcher.next_batch(time.monotonic_ns(), flush=flush)
                if batch is None:
                    break
                self._run_batch(key, batch)
                self._keep_alive()

    def _run_batch(self, key: tuple[str, str], batch: list[Pending], retry: bool = True) -> None:
        executor, stats = self.executors[key], self.stats[key]
        times = BatchTimes()
        start_ns = time.monotonic_ns()
        try:
            results: list[Any] = executor.run([item.payload[0] for item in batch], times)
        except Exception as exc:
            if retry and len(batch) > 1:
                log.warning(
                    "%s: batch of %d failed (%s); retrying one by one",
                    self.tag,
                    len(batch),
                    type(exc).__name__,
                )
                for item in batch:
                    self._run_batch(key, [item], retry=False)
                return
            code, text = describe_failure(exc)
            log.error("%s: request %s failed: %s", self.tag, batch[0].request_id or batch[0].seq, exc)
            if self.device.type == "cuda" and code is ErrorCode.RESOURCE_EXHAUSTED:
                torch.cuda.empty_cache()
            stats.failure[code.value] += 1
            self._fail_seq(batch[0].seq, code, text, batch[0].request_id)
            return
        samples = sum(item.samples for item in batch)
        stats.execution_count += 1
        stats.batch_sizes[samples] += 1
        per_size = stats.batch_compute_ns.setdefault(samples, [0, 0, 0])
        per_size[0] += times.input_ns
        per_size[1] += times.infer_ns
        per_size[2] += times.output_ns
        stats.last_inference = int(time.time() * 1000)
        compute_ns = times.input_ns + times.infer_ns + times.output_ns
        names = [spec.name for spec in executor.config.outputs]
        for item, outputs in zip(batch, results, strict=True):
            wanted = item.payload[1]
            if isinstance(executor, Pipeline):
                try:  # a handler's postprocess: a failure fails this request alone
                    tensors = executor.finish(outputs, item.payload[0], item.samples)
                except CodedError as exc:
                    code = ErrorCode(exc.code)
                    stats.failure[code.value] += 1
                    self._fail_seq(item.seq, code, str(exc), item.request_id)
                    continue
                tensors = [t for t in tensors if not wanted or t[0].name in wanted]
            else:
                tensors = [
                    from_torch(n, t) for n, t in zip(names, outputs, strict=True) if not wanted or n in wanted
                ]
            queue_ns = start_ns - item.arrived_ns
            stats.success += 1
            stats.inference_count += item.samples
            stats.queue_ns += queue_ns
            stats.compute_input_ns += (
                times.input_ns
            )  # as Triton: each request counts its batch's compute time
            stats.compute_infer_ns += times.infer_ns
            stats.compute_output_ns += times.output_ns
            stats.request_ns += queue_ns + compute_ns
            area: shm.ReplyArea | None = item.payload[2]
            try:
                placed = area.place(tensors) if area is not None else None
            except shm.SegmentGone:  # the gateway gave up on it already: the answer goes in frames
                placed = None
            self._send(
                protocol.encode(
                    Kind.REPLY,
                    {
                        "seq": item.seq,
                        "stats": {
                            "queue_ns": queue_ns,
                            "compute_input_ns": times.input_ns,
                            "compute_infer_ns": times.infer_ns,
                            "compute_output_ns": times.output_ns,
                            "batch_size": samples,
                        },
                        **({"shm_outputs": placed, "outputs": []} if placed is not None else {}),
                    },
                    tensors if placed is None else [],
                    tensor_key="outputs",
                ),
                copy=executor.cuda,
            )

    def _keep_alive(self) -> None:
        now = time.monotonic()
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.config.heartbeat_interval
            self.segments.sweep()
            stats = [{"model": m, "version": v, **s.to_wire()} for (m, v), s in self.stats.items()]
            fields: dict[str, Any] = {"incarnation": self.incarnation, "stats": stats}
            if self.device.type == "cuda":
                fields["device_memory"] = {
                    "used_bytes": torch.cuda.memory_allocated(self.device),
                    "reserved_bytes": torch.cuda.memory_reserved(self.device),
                }
            self._send(protocol.encode(Kind.HEARTBEAT, fields))
        silent = now - self.last_seen
        # Messages that arrived while a batch ran prove the dispatcher alive: read them before judging it silent.
        if (
            not self.drain_started
            and silent > self.liveness_seconds
            and not (self.socket is not None and self.socket.poll(0, zmq.POLLIN))
        ):
            log.warning("%s: no word from the dispatcher for %.1fs; reconnecting", self.tag, silent)
            self.connect()

    @property
    def liveness_seconds(self) -> float:
        """How long the dispatcher may stay silent before it is presumed gone."""
        return self.config.heartbeat_interval * self.config.heartbeat_liveness

    def _queued(self) -> int:
        return sum(len(b) for b in self.batchers.values())

    def _fail_seq(self, seq: int, code: ErrorCode, message: str, request_id: str = "") -> None:
        if code is not ErrorCode.DEADLINE_EXCEEDED:
            log.info("%s: request %s: %s %s", self.tag, request_id or seq, code.value, message)
        self._send(protocol.encode(Kind.ERROR, protocol.error_fields(code, message, seq=seq)))

    def _send(self, frames: list[Any], copy: bool = False) -> None:
        """Send without blocking; pyzmq copies frames under ``zmq.COPY_THRESHOLD`` (64 KiB) even without ``copy``."""
        assert self.socket is not None
        try:
            self.socket.send_multipart(frames, copy=copy, flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("%s: dispatcher not accepting messages; dropped one", self.tag)


def run_worker(config: WorkerConfig) -> int:
    """Load, connect and serve until drained; return the exit status."""
    worker = Worker(config)
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    try:
        worker.load()
    except (ConfigError, LoadError) as exc:
        log.error("%s: cannot load models: %s", worker.tag, exc)
        worker.report_and_leave()
        return 3
    except Exception as exc:
        log.exception("%s: cannot load models: %s", worker.tag, exc)
        return 3
    try:
        worker.connect()
    except SecurityError as exc:
        log.error("%s: %s", worker.tag, exc)
        return 2
    try:
        return worker.serve()
    finally:
        if worker.socket is not None:
            worker.socket.close(linger=2000)


@click.command("worker")
@click.option(
    "--model-repository",
    "repository",
    type=click.Path(path_type=Path),
    required=True,
    envvar="TORCHGATE_MODEL_REPOSITORY",
    help="Folder of <model>/config.toml and <model>/<version>/.",
)
@click.option("--dispatcher", required=True, envvar="TORCHGATE_BACKEND", help="Dispatcher backend endpoint.")
@click.option("--name", default="worker", help="Slot name, as supervisord knows it.")
@click.option("--model", "models", multiple=True, help="Serve only this model (repeatable).")
@click.option(
    "--device",
    default=None,
    help="cpu, cuda, cuda:N. Default: the GPU CUDA_VISIBLE_DEVICES selects, else CPU.",
)
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="torch threads for a CPU worker (0: torch's default).",
)
@click.option(
    "--capacity", type=int, default=None, help="Requests in flight; default 2 x the largest max_batch_size."
)
@click.option("--heartbeat-interval", type=float, default=0.5, show_default=True)
@click.option("--heartbeat-liveness", type=int, default=8, show_default=True)
@click.option(
    "--curve-secret-key", type=click.Path(path_type=Path), default=None, help="For a TCP dispatcher."
)
@click.option(
    "--curve-server-key", type=click.Path(path_type=Path), default=None, help="For a TCP dispatcher."
)
def worker_command(
    repository: Path,
    dispatcher: str,
    name: str,
    models: tuple[str, ...],
    device: str | None,
    threads: int,
    capacity: int | None,
    heartbeat_interval: float,
    heartbeat_liveness: int,
    curve_secret_key: Path | None,
    curve_server_key: Path | None,
) -> None:
    """Serve models from a repository to the dispatcher."""
    lifeline.die_with_supervisor()
    logs.configure()
    config = WorkerConfig(
        repository=repository,
        dispatcher=dispatcher,
        name=name,
        models=models,
        device=device,
        threads=threads or None,
        capacity=capacity,
        heartbeat_interval=heartbeat_interval,
        heartbeat_liveness=heartbeat_liveness,
        curve_secret_key=curve_secret_key,
        curve_server_key=curve_server_key,
    )
    sys.exit(run_worker(config))


if __name__ == "__main__":
    worker_command()
