"""Restart worker slots one at a time, each drained first and ready again before the next one goes."""

from __future__ import annotations

import logging
import xmlrpc.client
from collections.abc import Callable, Sequence

from deploy.dispatcher_status import WorkerStatus, wait_until_ready, worker_statuses
from deploy.settings import DeploySettings, is_worker_slot
from deploy.supervisor_rpc import BACKOFF, RUNNING, STARTING, Supervisor

UP_STATES = frozenset({RUNNING, STARTING, BACKOFF})

log = logging.getLogger("torchgate.deploy")


class RollingRestartError(RuntimeError):
    """A slot did not come back; the slots after it were left running."""


def slots_to_restart(sup: Supervisor, names: Sequence[str] = ()) -> list[str]:
    """Return the worker slots that run or are starting (or the named ones), in name order."""
    processes = sup.processes()
    if names:
        missing = [n for n in names if n not in processes]
        if missing:
            raise RollingRestartError(f"no such slot: {', '.join(missing)}")
        return list(names)
    return sorted(n for n, info in processes.items() if is_worker_slot(n) and info["statename"] in UP_STATES)


def other_ready(statuses: dict[str, WorkerStatus], name: str) -> list[str]:
    return sorted(w.name for w in statuses.values() if w.ready and w.name != name)


def rolling_restart(
    s: DeploySettings,
    sup: Supervisor,
    names: Sequence[str] = (),
    ready_timeout: float = 120.0,
    report: Callable[[str], None] = log.info,
) -> list[str]:
    """Stop, start and wait for readiness, one slot at a time; stop at the first slot that fails."""
    todo = slots_to_restart(sup, names)
    for name in todo:
        others = other_ready(worker_statuses(s.frontend_endpoint), name)
        if not others:
            report(
                f"{name}: no other ready worker; its models answer 503 until it is ready again "
                "(add a slot first, torchgate add-worker, to restart without failures)"
            )
        try:
            report(f"{name}: draining")
            if sup.info(name)["statename"] in UP_STATES:
                sup.stop(name)
            report(f"{name}: starting")
        except BaseException:  # interrupted (Ctrl-C, a closed terminal or pipe): never leave the slot stopped
            if sup.info(name)["statename"] not in UP_STATES:
                sup.start(name, wait=False)
            raise
        try:
            sup.start(name)
        except xmlrpc.client.Fault as fault:
            info = sup.info(name)
            raise RollingRestartError(
                f"{name} did not start again ({fault.faultString}, now {info['statename']}); "
                f"left the remaining slots as they were; see {info.get('stdout_logfile')}"
            ) from None
        pid = sup.info(name)["pid"]
        try:
            wait_until_ready(s.frontend_endpoint, name, ready_timeout, pid=pid)
        except TimeoutError as exc:
            raise RollingRestartError(f"{exc}; left the remaining slots as they were") from None
        report(f"{name}: ready (pid {pid})")
    return todo
