"""Talk to a running supervisord over its unix socket with supervisor's own XML-RPC transport, every call
bounded."""

from __future__ import annotations

import configparser
import http.client
import socket
import time
import xmlrpc.client
from pathlib import Path
from typing import Any, cast

from supervisor.xmlrpc import SupervisorTransport, UnixStreamHTTPConnection

RPC_TIMEOUT = 120.0  # the longest single call: stopProcess(wait=True) lasts up to a slot's stopwaitsecs

# supervisord process states (supervisor.states.ProcessStates)
RUNNING = "RUNNING"
STOPPED = "STOPPED"
FATAL = "FATAL"
EXITED = "EXITED"
BACKOFF = "BACKOFF"
STARTING = "STARTING"


class _TimedUnixConnection(UnixStreamHTTPConnection):  # type: ignore[misc]  # supervisor is untyped
    """supervisor's unix-socket connection, with the timeout set before connecting."""

    socketfile: str

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socketfile)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class TimedTransport(SupervisorTransport):  # type: ignore[misc]  # supervisor is untyped
    """supervisor's transport (basic auth, unix socket) with a timeout; a fresh connection per call."""

    def __init__(self, socket_path: str | Path, timeout: float, username: str | None, password: str | None):
        super().__init__(username, password, f"unix://{socket_path}")
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self._get_connection = self._open_connection

    def _open_connection(self) -> http.client.HTTPConnection:
        connection = _TimedUnixConnection("localhost", timeout=self.timeout)
        connection.socketfile = self.socket_path
        return connection

    def request(self, host: Any, handler: Any, request_body: Any, verbose: bool = False) -> Any:
        try:
            return super().request(host, handler, request_body, verbose)
        finally:
            self.close()  # no socket outlives its call, and a timed-out one is never reused


def read_client_section(conf_path: str | Path) -> tuple[Path, str | None, str | None]:
    """Return the socket, username and password that ``[supervisorctl]`` of ``conf_path`` names."""
    parser = configparser.RawConfigParser()
    if not parser.read(conf_path):
        raise FileNotFoundError(f"{conf_path}: missing; is this a torchgate run directory?")
    url = parser.get("supervisorctl", "serverurl", fallback="")
    if not url.startswith("unix://"):
        raise ValueError(f"{conf_path}: [supervisorctl] serverurl must be a unix:// socket, got {url!r}")
    username = parser.get("supervisorctl", "username", fallback=None)
    password = parser.get("supervisorctl", "password", fallback=None)
    return Path(url[len("unix://") :]), username, password


class Supervisor:
    """The few supervisord calls torchgate makes, by name, with bounded waits."""

    def __init__(
        self,
        socket_path: str | Path,
        timeout: float = RPC_TIMEOUT,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self._proxy = xmlrpc.client.ServerProxy(
            "http://localhost", transport=TimedTransport(socket_path, timeout, username, password)
        )

    @classmethod
    def from_conf(cls, conf_path: str | Path, timeout: float = RPC_TIMEOUT) -> Supervisor:
        """Connect as supervisorctl would with ``-c conf_path`` (the rendered credentials included)."""
        socket_path, username, password = read_client_section(conf_path)
        return cls(socket_path, timeout, username, password)

    @property
    def rpc(self) -> Any:
        """The ``supervisor`` XML-RPC namespace (startProcess, stopProcess, ...)."""
        return self._proxy.supervisor

    def is_up(self) -> bool:
        """Return True when supervisord answers and is running (not starting up or shutting down)."""
        try:
            return bool(cast(dict[str, Any], self.rpc.getState())["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            return False

    def answers(self) -> bool:
        """Return True when something serves XML-RPC on the socket, even if it refuses these credentials."""
        try:
            self.rpc.getState()
        except xmlrpc.client.ProtocolError:
            return True  # 401: a supervisord with other credentials
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            return False
        return True

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
        """Reload the configuration files; return the groups (added, changed, removed). Nothing starts or
        stops."""
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
