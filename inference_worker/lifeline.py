"""Die with supervisord: a process it started is killed when supervisord itself dies, kill -9 included.

Without this, a killed supervisord leaves its gateway, dispatcher and workers running unsupervised: the port
stays taken (a new ``torchgate serve`` cannot start) and a load balancer keeps sending to a host nobody
restarts.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_supervisor(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` when our parent (supervisord) dies; return whether it was set."""
    if os.environ.get("SUPERVISOR_ENABLED") != "1":
        return False
    return die_with_parent(sig)


def die_with_parent(sig: int) -> bool:
    """Ask the kernel to send ``sig`` when our parent dies (Linux only); return whether it was set."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
    return True
