"""CURVE encryption and authentication for TCP endpoints (workers on other hosts).

ipc endpoints are protected by the file system (a run directory only the owner can enter); a TCP endpoint
is reachable by anyone on the network, so it requires CURVE: the dispatcher holds a secret key and accepts
only peers whose public keys lie in its authorized folder. Keys are ZeroMQ certificate files
(``zmq.auth.create_certificates``): ``NAME.key`` (public) and ``NAME.key_secret`` (secret).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class SecurityError(RuntimeError):
    """An endpoint that would be reachable without authentication, or keys that cannot be read."""


def read_token(path: Path) -> str:
    """Return the bearer token in the file ``path``; SecurityError if it cannot be read or holds none.

    An empty file is an error: it must not quietly turn authentication off. The gateway and ``torchgate
    serve`` both read the token here.
    """
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityError(f"{path}: cannot read the auth token: {exc}") from None
    if not token:
        raise SecurityError(f"{path}: the auth token file is empty (it holds no token)")
    return token


def is_network(endpoint: str) -> bool:
    return not (endpoint.startswith("ipc://") or endpoint.startswith("inproc://"))


def bind(socket: zmq.Socket[Any], endpoint: str) -> None:
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


def create_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """Write a key pair ``folder/name.key`` and ``folder/name.key_secret`` (secret readable by the owner
    only)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public_key, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{path}: cannot read CURVE key: {exc}") from None
    if secret and not secret_key:
        raise SecurityError(f"{path}: not a secret key file (expected NAME.key_secret)")
    return public_key, secret_key


class CurveServer:
    """Make server sockets require CURVE, admitting only the public keys found in ``authorized``."""

    def __init__(self, context: zmq.Context[Any], secret_key_file: Path, authorized: Path) -> None:
        if not authorized.is_dir():
            raise SecurityError(f"{authorized}: authorized keys folder missing")
        self.public, self.secret = _load(secret_key_file, secret=True)
        self.authenticator = ThreadAuthenticator(context)
        self.authenticator.start()
        self.authenticator.configure_curve(domain="*", location=str(authorized))

    def secure(self, socket: zmq.Socket[Any]) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def stop(self) -> None:
        self.authenticator.stop()


def secure_client(socket: zmq.Socket[Any], secret_key_file: Path, server_key_file: Path) -> None:
    """Make a client socket talk CURVE to a server whose public key is in ``server_key_file``."""
    public, secret = _load(secret_key_file, secret=True)
    server_public, _ = _load(server_key_file, secret=False)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public
