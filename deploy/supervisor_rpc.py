"""Talk to a running supervisord over its unix socket (XML-RPC), with a timeout on every call."""

from __future__ import annotations

import http.client
import socket
import time
import xmlrpc.client
from pathlib import Path
from typing import Any, cast

RPC_TIMEOUT = 120.0  # the longest single call: stopProcess(wait=True) lasts up to a slot's stopwaitsecs

# supervisord process states (supervisor.states.ProcessStates)
RUNNING = "RUNNING"
STOPPED = "STOPPED"
FATAL = "FATAL"
EXITED = "EXITED"
BACKOFF = "BACKOFF"
STARTING = "STARTING"
STOPPING = "STOPPING"
DOWN_STATES = frozenset({STOPPED, FATAL, EXITED})


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class UnixTransport(xmlrpc.client.Transport):
    """An XML-RPC transport over a unix socket; a fresh connection per call, each bounded by ``timeout``."""

    def __init__(self, path: str | Path, timeout: float = RPC_TIMEOUT) -> None:
        super().__init__()
        self.path = str(path)
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        self.close()
        connection = _UnixHTTPConnection(self.path, self.timeout)
        self._connection = (host, connection)
        return connection

    def single_request(self, host: Any, handler: Any, request_body: Any, verbose: bool = False) -> Any:
        try:
            return super().single_request(host, handler, request_body, verbose)
        finally:
            self.close()  # no socket outlives its call


class Supervisor:
    """The few supervisord calls torchgate makes, by name, with bounded waits."""

    def __init__(self, socket_path: str | Path, timeout: float = RPC_TIMEOUT) -> None:
        self.socket_path = Path(socket_path)
        self._proxy = xmlrpc.client.ServerProxy(
            "http://localhost", transport=UnixTransport(socket_path, timeout)
        )

    @property
    def rpc(self) -> Any:
        """The ``supervisor`` XML-RPC namespace (startProcess, stopProcess, ...)."""
        return self._proxy.supervisor

    def is_up(self) -> bool:
        """Return True when supervisord answers and is running (not starting up or shutting down)."""
        try:
            return cast(dict[str, Any], self.rpc.getState())["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            return False

    def processes(self) -> dict[str, dict[str, Any]]:
        """Return ``getAllProcessInfo`` keyed by process name."""
        return {info["name"]: info for info in self.rpc.getAllProcessInfo()}

    def info(self, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.rpc.getProcessInfo(name))

    def start(self, name: str, wait: bool = True) -> None:
        """Start one process; with ``wait``, return once it is RUNNING (it stayed up ``startsecs``)."""
        self.rpc.startProcess(name, wait)

    def stop(self, name: str, wait: bool = True) -> None:
        """Stop one process (TERM, then KILL after its ``stopwaitsecs``)."""
        self.rpc.stopProcess(name, wait)

    def reread(self) -> tuple[list[str], list[str], list[str]]:
        """Reload the configuration files; return the groups (added, changed, removed). Nothing starts or stops."""
        added, changed, removed = self.rpc.reloadConfig()[0]
        return list(added), list(changed), list(removed)

    def add_group(self, name: str) -> None:
        """Activate one group found by :meth:`reread`; autostart programs start on supervisord's next tick."""
        self.rpc.addProcessGroup(name)

    def remove_group(self, name: str) -> None:
        self.rpc.removeProcessGroup(name)

    def shutdown(self) -> None:
        self.rpc.shutdown()

    def wait_for_state(
        self, name: str, states: frozenset[str] | set[str], timeout: float, interval: float = 0.1
    ) -> dict[str, Any]:
        """Poll until ``name`` is in one of ``states``; raise TimeoutError with its last state otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.info(name)
            if info["statename"] in states:
                return info
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{name} is {info['statename']} after {timeout:.0f} s, expected one of {sorted(states)}"
                )
            time.sleep(interval)


def wait_for_supervisor(sup: Supervisor, timeout: float, alive: Any = None) -> None:
    """Poll until supervisord answers; ``alive()`` returning False (its process died) stops the wait."""
    deadline = time.monotonic() + timeout
    while not sup.is_up():
        if alive is not None and not alive():
            raise RuntimeError("supervisord exited before it answered on its socket")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"supervisord did not answer on {sup.socket_path} within {timeout:.0f} s")
        time.sleep(0.1)
