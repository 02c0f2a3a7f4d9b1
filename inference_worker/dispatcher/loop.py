"""The dispatcher process's loop: one thread polls both sockets, routes, heartbeats and purges."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import zmq

from inference_worker import protocol
from inference_worker.dispatcher.config import DispatcherConfig
from inference_worker.dispatcher.requests import Requests
from inference_worker.dispatcher.sockets import POLLIN, Endpoints, receive
from inference_worker.dispatcher.workers import WorkerSessions
from inference_worker.protocol import ErrorCode, Link, ProtocolError, relay
from inference_worker.routing import Router
from inference_worker.security import SecurityError

SWEEP_INTERVAL = 0.01  # seconds between sweeps of expired requests and silent workers
MAX_RECEIVE = 1000  # messages read from one socket in one go

log = logging.getLogger("torchgate.dispatcher")


class Dispatcher:
    """Routes requests from any number of gateways to any number of workers."""

    def __init__(self, config: DispatcherConfig, context: zmq.Context[Any] | None = None) -> None:
        self.config = config
        self.endpoints = Endpoints(config, context or zmq.Context.instance())
        self.router = Router()
        self.requests = Requests(config, self.router, self.endpoints)
        self.workers = WorkerSessions(config, self.router, self.endpoints, self.requests)
        self.stopping = False
        self.stop_requested: float | None = None  # monotonic time of the first stop signal
        self.next_heartbeat = 0.0
        self.next_sweep = 0.0

    def close(self) -> None:
        self.endpoints.close(500 if self.stop_requested is not None else 0)  # drain acknowledgements go out

    def request_stop(self) -> None:
        """First stop signal: answer the requests in flight, then stop; a second one stops at once.

        ``supervisorctl restart all`` signals every program at once, the dispatcher first. Stopping at once
        dropped the gateway's requests in flight; the dispatcher keeps routing (to workers that are draining
        too: their drain is acknowledged only when it stops) until no request is queued or in flight, at most
        ``stop_grace`` seconds. And while a gateway is still connected it keeps routing for ``stop_linger``
        seconds at least: a stopping gateway still answers, for up to 2 s (gunicorn's stop), a request that
        comes on a kept-alive connection, and sent it to a dispatcher already gone (a 503 after 5 s:
        docs/reliability.md, "Restarts under load"). Once the gateways have gone (``torchgate serve`` stops
        them first), nothing more can come.
        """
        if self.stop_requested is not None:
            self.stopping = True
            return
        self.stop_requested = time.monotonic()
        self.workers.stopping = True
        gateways = self.endpoints.gateways.known  # a handler reads no socket: the loop may be reading it
        log.info(
            "dispatcher: stopping once %d requests queued or in flight are answered (%s gateway connections: "
            "at least %gs while any is connected; at most %gs)",
            len(self.router.requests),
            "unknown" if gateways is None else gateways,
            self.config.stop_linger,
            self.config.stop_grace,
        )

    def _maybe_stop(self, now: float) -> None:
        assert self.stop_requested is not None
        idle = not self.router.requests and not self.requests.held
        waited = now - self.stop_requested
        lingering = waited < self.config.stop_linger and self.endpoints.gateways.count() != 0
        if waited < self.config.stop_grace and (not idle or lingering):
            return
        if not idle:
            log.warning("dispatcher: stopping with %d requests unanswered", len(self.router.requests))
        self.workers.acknowledge_deferred_drains()
        self.stopping = True

    def serve(self, max_iterations: int | None = None) -> None:
        """Run the loop until stopped (or for ``max_iterations`` rounds).

        Each round reads both sockets until they are empty and polls only when a round read nothing: under
        load most rounds find messages waiting, and a poll costs more than asking a socket for ``EVENTS``.
        """
        frontend, backend = self.endpoints.frontend, self.endpoints.backend
        items = [(frontend, POLLIN), (backend, POLLIN)]
        iterations = 0
        received = 0
        log.info("dispatcher: frontend %s, backend %s", self.config.frontend, self.config.backend)
        while not self.stopping and (max_iterations is None or iterations < max_iterations):
            iterations += 1
            if not received:
                timeout = max(0.0, min(self.next_heartbeat, self.next_sweep) - time.monotonic())
                zmq.zmq_poll(items, int(timeout * 1000) + 1)
            received = self._drain(backend, Link.WORKER_TO_DISPATCHER, self.workers.on_worker_message)
            received += self._drain(frontend, Link.GATEWAY_TO_DISPATCHER, self._on_gateway_message)
            if received:
                self.requests.dispatch()
            now = time.monotonic()
            if now >= self.next_heartbeat:
                self.next_heartbeat = now + self.config.heartbeat_interval
                self.workers.send_heartbeats()
            if now >= self.next_sweep:
                self.next_sweep = now + SWEEP_INTERVAL
                self.workers.purge(now)
                self.endpoints.gateways.count()  # its monitor's events read as they come (a bounded queue)
                self.requests.sweep()
                self.requests.dispatch()  # credit freed by a purge, requests released after the grace
            self.requests.step_control()
            if self.stop_requested is not None:
                self._maybe_stop(now)

    def _on_gateway_message(self, gateway: bytes, message: Any) -> None:
        self.requests.on_gateway_message(gateway, message, self.workers.stats)

    def _drain(self, socket: zmq.Socket[Any], link: Link, handle: Callable[[bytes, Any], None]) -> int:
        """Handle the messages waiting on ``socket`` (at most ``MAX_RECEIVE``); return how many."""
        count = 0
        while count < MAX_RECEIVE:
            frames = receive(socket)
            if frames is None:
                break
            count += 1
            identity, body = frames[0].bytes, frames[1:]
            try:
                handle(identity, relay.receive(body, link))
            except ProtocolError as exc:
                log.warning("dispatcher: dropped a malformed message from %r: %s", identity, exc)
                request_id = protocol.header_id(body) if link is Link.GATEWAY_TO_DISPATCHER else None
                if request_id is not None:  # answer the gateway if its request id can be read
                    self.requests.fail(
                        identity, request_id, ErrorCode.INVALID_ARGUMENT, f"malformed request: {exc}"
                    )
        return count


def run_dispatcher(config: DispatcherConfig) -> int:
    """Bind, serve until SIGTERM or SIGINT; return the exit status."""
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
        for endpoint in (config.frontend, config.backend):  # libzmq leaves a closed ipc socket's file
            if endpoint.startswith("ipc://"):
                with contextlib.suppress(OSError):
                    os.unlink(endpoint[len("ipc://") :])
    return 0
