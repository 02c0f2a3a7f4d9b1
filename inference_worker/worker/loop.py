"""The worker process's loop: its session, its application and its compute thread, tied together.

Life cycle: start -> load (a failure exits non-zero, never READY) -> warm up -> READY -> serve ->
first SIGTERM: DRAIN (the dispatcher stops sending work), finish what is queued, DISCONNECT, exit 0 ->
a second SIGTERM exits at once.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import zmq

from inference_worker import direct_lane, protocol, shm
from inference_worker.backends import LoadError
from inference_worker.protocol import ErrorCode
from inference_worker.repository import ConfigError
from inference_worker.security import SecurityError
from inference_worker.worker.app import Application, Batch, Launch, Outcome, Result
from inference_worker.worker.compute_thread import ComputeThread
from inference_worker.worker.config import WorkerConfig
from inference_worker.worker.direct import DirectLane
from inference_worker.worker.session import Session

log = logging.getLogger("torchgate.worker")

DRAIN_POLL = 0.05  # seconds between checks while draining


class Worker:
    """One worker: a :class:`Session` to the dispatcher and an :class:`Application` computing on its own
    thread."""

    def __init__(self, config: WorkerConfig, context: zmq.Context[Any] | None = None) -> None:
        self.config = config
        self.incarnation = uuid.uuid4().hex[:12]
        self.app = Application(config)
        self.context = context or zmq.Context.instance()
        self.lane: DirectLane | None = None  # requests from gateways on this host, past the dispatcher
        self.session = Session(
            config,
            self.context,
            f"{config.name}/{self.incarnation}",
            self._ready,
            self._heartbeat,
        )
        self.compute: ComputeThread[Launch, Outcome] | None = None
        self.admitter: ThreadPoolExecutor | None = None  # runs handlers' preprocess (Worker._admit_alive)
        self.controls: list[protocol.WorkerControl] = []  # loads and unloads waiting for the queues to empty
        self.stopping = 0  # stop signals received
        self.batches = 0  # batches started

    @property
    def tag(self) -> str:
        return f"worker[{self.config.name}]"

    def load(self) -> None:
        """Load and warm up every model version; raise on the first that fails."""
        self.app.load()

    def connect(self) -> None:
        """Start the compute thread, open the direct lane, connect to the dispatcher and announce READY."""
        if self.compute is None:
            self.compute = ComputeThread(
                self.app.launch, self.app.finish, overlap=self.app.depth > 1, setup=self.app.setup_thread
            )
        if self.admitter is None:
            self.admitter = ThreadPoolExecutor(1, "torchgate-preprocess", initializer=self.app.setup_thread)
            self.app.admit_hook = self._admit_alive
        if self.lane is None and direct_lane.enabled(self.config.dispatcher):
            endpoint = direct_lane.endpoint_for(self.config.dispatcher, self.config.name, os.getpid())
            if endpoint is not None:
                try:
                    self.lane = DirectLane(endpoint, self.config.name)
                except OSError as exc:
                    log.warning("%s: no direct lane at %s: %s", self.tag, endpoint, exc)
        self.session.connect()

    def _admit_alive(self, admit: Callable[[], Any]) -> Any:
        """Run a handler's preprocess on a thread of its own while this one keeps the heartbeats going: an
        image that takes seconds to decode must not make the dispatcher presume this worker dead."""
        assert self.admitter is not None
        future = self.admitter.submit(admit)
        while True:
            try:
                return future.result(timeout=self.config.heartbeat_interval / 2)
            except FutureTimeout:
                self.session.keep_alive(time.monotonic())

    def report_and_leave(self) -> None:
        """Tell the dispatcher what could not load (so readiness says why), then leave; nothing to serve."""
        if not self.app.residents.failures:
            return
        try:
            self.session.connect()
            self.session.leave("cannot load any model")
        except (SecurityError, zmq.ZMQError) as exc:
            log.warning("%s: could not report to the dispatcher: %s", self.tag, exc)
        finally:
            self.session.close(linger=1000)

    def request_stop(self, signum: int = signal.SIGTERM, frame: Any = None) -> None:
        """First call: drain. Second call: exit at once."""
        self.stopping += 1
        if self.stopping > 1:
            log.warning("%s: second stop signal, exiting now", self.tag)
            os._exit(1)

    def close(self) -> None:
        if self.compute is not None:
            self.compute.close()
            self.compute = None
        if self.admitter is not None:
            self.admitter.shutdown(wait=False)
            self.admitter = None
        if self.lane is not None:
            taken, declined = self.lane.taken, self.lane.declined
            log.info("%s: direct lane: %d requests taken, %d declined", self.tag, taken, declined)
            self.lane.close()
            self.lane = None
        self.session.close()

    # -- the loop ---------------------------------------------------------------------------------------

    def serve(self, max_iterations: int | None = None) -> int:
        """Run until drained (returns 0) or for ``max_iterations`` rounds (tests)."""
        assert self.compute is not None and self.session.socket is not None, "connect() first"
        compute, session = self.compute, self.session
        poller, polled = zmq.Poller(), None  # the compute threads' wake-up, and the socket when there is room
        busy = zmq.Poller()  # the wake-up alone
        poller.register(compute.wake_fd, zmq.POLLIN)
        busy.register(compute.wake_fd, zmq.POLLIN)
        lane = self.lane.fileno() if self.lane is not None else None
        if lane is not None:
            poller.register(lane, zmq.POLLIN)
        iterations = 0
        while max_iterations is None or iterations < max_iterations:
            iterations += 1
            now = time.monotonic()
            if self.stopping:
                session.start_drain(now)
            if session.drain_started and self._idle() and session.may_leave(now):
                session.leave()
                return 0
            if session.socket is not polled:  # a reconnect made a new socket
                if polled is not None:
                    poller.unregister(polled)
                polled = session.socket
                poller.register(polled, zmq.POLLIN)
            # With the compute threads full, requests wait in ZeroMQ's queue and are read in one go when a
            # batch is done (the next batch takes them all): reading each as it came cost the computing thread
            # the GIL. A waiting message still proves the dispatcher alive (Session.keep_alive).
            # Draining, every message is read: the drain's acknowledgement (or silence) decides when to leave.
            full = compute.pending >= self.app.depth and not session.drain_started
            events = dict((busy if full else poller).poll(self._poll_timeout_ms(now)))
            if full and events:  # a batch is done: what came meanwhile is read before the next is chosen
                events.setdefault(polled, zmq.POLLIN)  # (a higher priority level goes first, say)
                if lane is not None:
                    events.setdefault(lane, zmq.POLLIN)
            if polled in events:
                for message in session.receive():
                    if isinstance(message, protocol.WorkerControl):
                        self.controls.append(message)  # the dispatcher sends no new work meanwhile
                    elif isinstance(message, protocol.WorkerCancel):
                        if (error := self.app.cancel(message.seq)) is not None:
                            session.send(error.frames())
                    elif (error := self.app.enqueue(message)) is not None:
                        session.send(error.frames())
            if lane is not None and lane in events:
                self._take_direct()
            if compute.pending and (finished := compute.collect()):
                self._answer(finished)
                session.hasten_heartbeat(time.monotonic())  # the counters follow the answers closely
            self._start_batch(flush=bool(session.drain_started or self.controls))
            if self.controls and self._idle():
                self._control()
            session.keep_alive(time.monotonic())
        return 0

    def _take_direct(self) -> None:
        """Queue the direct requests this worker would run in its next batch; decline the others; withdraw
        those cancelled."""
        assert self.lane is not None
        for connection, request in self.lane.receive():
            if isinstance(request, protocol.Cancel):
                seq = self.lane.seq_of(connection, request.id)
                if seq is not None and (error := self.app.cancel(seq)) is not None:
                    self._send_result(error)
                continue
            why = self._declines(request)
            if why is not None:
                self.lane.decline(connection, request, why)
            elif (error := self.app.enqueue(self.lane.take(connection, request))) is not None:
                self._send_result(error)

    def _declines(self, request: protocol.Request) -> str | None:
        """Return why this worker does not take ``request`` directly, or None when it does: not once it may
        leave (its drain acknowledged, say), nor while loading, and only what its next batch would take (more
        waits in the dispatcher's queue, where any worker with room gets it).

        Draining, it takes direct requests as long as the dispatcher would still send it work: a stopping
        dispatcher (``restart all``) acknowledges drains only when it stops, and a request sent to this lane
        while this worker was busy, declined then, could reach that dispatcher after it stopped.
        """
        session = self.session
        if self.stopping > 1 or (session.drain_started and session.may_leave(time.monotonic())):
            return "draining"
        if self.controls:
            return "loading or unloading a model"
        key = (request.model, request.version or "")
        executor = self.app.executors.get(key)
        if executor is None:
            return f"model {key[0]!r} version {key[1]!r} is not loaded here"
        if len(self.app.batchers[key]) >= max(1, executor.config.max_batch_size):
            return "busy"
        return None

    def _send_result(self, message: Result, copy: bool = False) -> None:
        """Send one request's answer the way the request came: to the dispatcher, or down the direct lane
        (whose socket copies what it sends: ``copy`` is for ZeroMQ's zero-copy frames)."""
        if self.lane is not None and self.lane.owns(message.seq):
            self.lane.answer(message)
        else:
            self.session.send(message.frames(), copy=copy)

    def _idle(self) -> bool:
        return not self.app.queued() and not (self.compute and self.compute.pending)

    def _control(self) -> None:
        """Load or unload on request, once what was queued has run; announce again, then answer."""
        for control in self.controls:
            reply = self._act_alive(control)
            self.session.announce()
            self.session.send(reply.frames())
        self.controls.clear()

    def _act_alive(self, control: protocol.WorkerControl) -> protocol.WorkerControlReply:
        """Act on ``control`` on a thread of its own while this one keeps the session's heartbeats going: a
        model that takes longer to load than the heartbeat expiry must not make the dispatcher presume this
        worker dead.
        """
        done: list[protocol.WorkerControlReply | BaseException] = []

        def act() -> None:
            try:
                done.append(self.app.control(control.action, control.model))
            except BaseException as exc:  # answered below, never left hanging
                done.append(exc)

        helper = threading.Thread(target=act, name="torchgate-control", daemon=True)
        helper.start()
        while helper.is_alive():
            helper.join(timeout=self.config.heartbeat_interval / 2)
            self.session.keep_alive(time.monotonic())
        outcome = done[0]
        if isinstance(outcome, BaseException):
            log.error("%s: %s of %s failed: %r", self.tag, control.action, control.model, outcome)
            return protocol.WorkerControlReply(
                control.action, control.model, False, f"{type(outcome).__name__}: {outcome}"
            )
        return outcome

    def _poll_timeout_ms(self, now: float) -> int:
        timer = self.session.next_heartbeat
        if self.session.drain_started or self.controls:
            timer = min(timer, now + DRAIN_POLL)
        batch_due = None
        if self.compute is not None and self.compute.pending < self.app.depth:
            due = self.app.next_wakeup_ns()
            if due is not None:
                batch_due = now + (due - time.monotonic_ns()) / 1e9
        return wait_ms(now, timer, batch_due)

    def _start_batch(self, flush: bool) -> None:
        """Start the next due batch when the compute threads have room; deadlines are checked before, and
        again when it is launched (a batch may wait for the one computing)."""
        assert self.compute is not None
        if self.compute.pending >= self.app.depth:
            return
        for error in self.app.expire(time.time()):
            self._send_result(error)
        batch = self.app.next_batch(self.batches + 1, time.monotonic_ns(), flush=flush)
        if batch is None:
            return
        self.batches += 1
        if self.app.inline(batch):  # the same launch and finish, on this thread: no hand-offs
            self._answer([(batch, self.app.finish(batch, self.app.launch(batch)))])
            self.session.hasten_heartbeat(time.monotonic())
        else:
            self.compute.submit(batch)

    def _answer(self, finished: list[tuple[Batch, Outcome | BaseException]]) -> None:
        for batch, result in finished:
            if isinstance(result, BaseException):
                text = f"worker error: {type(result).__name__}"
                for item in batch.items:
                    self._send_result(self.app.fail(item.seq, ErrorCode.INTERNAL, text, item.request_id))
                continue
            for message, copy in self.app.answer(batch, result):
                self._send_result(message, copy)

    # -- what the session announces -----------------------------------------------------------------------

    def _ready(self) -> protocol.Ready:
        return protocol.Ready(
            worker=self.config.name,
            incarnation=self.incarnation,
            capacity=self.app.capacity,
            models=self.app.signatures(),
            pid=os.getpid(),
            device=str(self.app.device),
            shm=self.config.dispatcher.startswith("ipc://") and shm.supported(),
            unavailable=self.app.residents.failures,
            assigned=list(self.config.models),
            direct=self.lane.endpoint if self.lane is not None else None,
        )

    def _heartbeat(self) -> protocol.Heartbeat:
        """Return this worker's heartbeat: its counters, device memory, and the batch computing now (if any).

        ``computing`` is what lets the dispatcher tell a worker busy with a long batch from a dead one.
        """
        self.app.segments.sweep()  # mappings of segments their gateway let go
        computing = self.compute.current if self.compute is not None else None
        direct = len(self.lane.callers) if self.lane is not None else 0
        return protocol.Heartbeat(
            self.incarnation,
            self.app.stats_wire(),
            self.app.device_memory(),
            computing,
            direct,
            self.app.resident_bytes(),
        )


def wait_ms(now: float, timer: float, batch_due: float | None = None) -> int:
    """Return how long the loop may wait for a message, in ZeroMQ's whole milliseconds: until ``timer`` (the
    next heartbeat, a drain's next check) is due, rounded up, or until ``batch_due``, rounded down.

    A batch due in 0.4 ms must not wait 1 ms: the last fraction of a millisecond is spent polling without
    waiting, only while a batch is filling. A timer may be a fraction late instead: rounded down, the loop
    spun through the last fraction of a millisecond before every heartbeat (a dozen turns each, 20
    heartbeats a second while answers hasten them).
    """
    timeout = math.ceil(round(max(0.0, timer - now) * 1000, 3))  # to the microsecond first: float noise
    if batch_due is not None:
        timeout = min(timeout, max(0, int((batch_due - now) * 1000)))
    return timeout


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
        worker.close()
        return 2
    try:
        return worker.serve()
    finally:
        worker.close()
