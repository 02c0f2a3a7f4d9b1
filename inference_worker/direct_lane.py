"""Where a worker's direct lane is, and whether it is on: shared by the worker and the gateway (no torch).

A worker on the dispatcher's host binds its direct lane beside the dispatcher's ipc socket
(:mod:`inference_worker.worker.direct`); gateways on that host send requests there while they have no other
in flight (:mod:`gateway.direct`). ``TORCHGATE_DIRECT=0`` turns it off: every request goes through the
dispatcher.
"""

from __future__ import annotations

import glob
import os
import re

DIRECT_ENV = "TORCHGATE_DIRECT"
SCHEME = "unix://"
MAX_SOCKET_PATH = 100  # a unix socket's path must fit in sockaddr_un (108 bytes)


def enabled(dispatcher: str) -> bool:
    """Whether a process talking to the dispatcher at ``dispatcher`` uses direct lanes: on one host only."""
    return dispatcher.startswith("ipc://") and os.environ.get(DIRECT_ENV, "1") != "0"


def endpoint_for(dispatcher: str, name: str, pid: int) -> str | None:
    """Return where a worker named ``name`` takes direct requests, ``unix://<path>``: a unix stream socket
    beside the dispatcher's ipc socket; None for a dispatcher on another host (tcp), or a path too long for a
    unix socket."""
    if not dispatcher.startswith("ipc://"):
        return None
    folder = os.path.dirname(dispatcher[len("ipc://") :])
    path = os.path.join(folder, f"direct-{_safe(name)}-{pid}.sock")
    return f"{SCHEME}{path}" if len(path) <= MAX_SOCKET_PATH else None


def path_of(endpoint: str) -> str:
    """Return the socket's path in a ``unix://`` endpoint; raise ValueError for anything else."""
    if not endpoint.startswith(SCHEME) or len(endpoint) == len(SCHEME):
        raise ValueError(f"not a direct lane endpoint: {endpoint!r}")
    return endpoint[len(SCHEME) :]


def remove_stale(endpoint: str, name: str) -> None:
    """Remove the socket files that earlier processes of slot ``name`` left (killed before they could)."""
    folder = os.path.dirname(path_of(endpoint))
    for path in glob.glob(os.path.join(glob.escape(folder), f"direct-{glob.escape(_safe(name))}-*.sock")):
        pid = path.rsplit("-", 1)[-1].removesuffix(".sock")
        if pid.isdigit() and not _alive(int(pid)):
            try:
                os.unlink(path)
            except OSError:
                pass


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
