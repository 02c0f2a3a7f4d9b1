"""Add and remove worker slots while everything else keeps running.

A new slot is a new file ``conf.d/<slot>.conf`` holding one ``[program:...]`` (its own group). Then
``reloadConfig`` (supervisorctl ``reread``) and ``addProcessGroup`` for that one group only: unlike
``supervisorctl update``, no other added, changed or removed group is acted on, so nothing else restarts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

from deploy.dispatcher_status import wait_until_ready
from deploy.rundir import prepare_run_dir, write_atomically
from deploy.settings import DeploySettings, Slot, cpu_slot_name, gpu_slot_name
from deploy.supervisor_conf import render_worker
from deploy.supervisor_rpc import FATAL, RUNNING, Supervisor

log = logging.getLogger("torchgate.deploy")

_SLOT_RE = re.compile(r"^worker-(?:gpu(\d+)-|cpu-)(\d+)$")


class ScalingError(RuntimeError):
    """A slot could not be added or removed; the message says what was left as it was."""


def next_slot(s: DeploySettings, gpu: int | None, existing: Iterable[str]) -> Slot:
    """Return the first unused slot name on ``gpu`` (None: the CPU), with the rendered slots' threads."""
    taken = set(existing)
    k = 0
    while (name := cpu_slot_name(k) if gpu is None else gpu_slot_name(gpu, k)) in taken:
        k += 1
    return Slot(name, gpu, s.threads_for(gpu), autostart=True)


def added_slot_path(s: DeploySettings, name: str) -> Path:
    if not _SLOT_RE.match(name):
        raise ScalingError(f"{name!r} is not a worker slot name (worker-cpu-<k> or worker-gpu<n>-<k>)")
    return s.conf_d / f"{name}.conf"


def known_names(s: DeploySettings, sup: Supervisor) -> set[str]:
    """Every program name in use: running in supervisord, rendered, or waiting in conf.d."""
    names = set(sup.processes())
    names.update(slot.name for slot in s.slots())
    if s.conf_d.is_dir():
        names.update(p.stem for p in s.conf_d.glob("*.conf"))
    return names


def add_worker(
    s: DeploySettings,
    sup: Supervisor,
    gpu: int | None = None,
    start: bool = True,
    ready_timeout: float = 120.0,
) -> Slot:
    """Write a new slot into ``conf.d`` and activate just that group; wait until the dispatcher has it
    ready."""
    slot = next_slot(s, gpu, known_names(s, sup))
    if not start:
        slot = Slot(slot.name, slot.gpu, slot.threads, autostart=False)
    prepare_run_dir(s)
    path = added_slot_path(s, slot.name)
    header = f"; Added by `torchgate add-worker`; remove with `torchgate remove-worker {slot.name}`.\n"
    write_atomically(path, header + render_worker(s, slot))
    try:
        added, changed, removed = sup.reread()
    except Exception:
        path.unlink(missing_ok=True)
        raise
    if slot.name not in added:
        path.unlink(missing_ok=True)
        raise ScalingError(
            f"supervisord did not see {path} as a new group (added: {added}); removed the file"
        )
    others = sorted(set(added) - {slot.name}) + sorted(changed) + sorted(removed)
    if others:
        log.warning("configuration changes left untouched (apply them yourself if meant): %s", others)
    sup.add_group(slot.name)
    log.info("added %s (%s)", slot.name, path)
    if start:
        wait_started(s, sup, slot.name)
        pid = sup.info(slot.name)["pid"]
        wait_until_ready(s.frontend_endpoint, slot.name, ready_timeout, pid=pid)
    return slot


def wait_started(s: DeploySettings, sup: Supervisor, name: str) -> None:
    """Wait until a starting slot is RUNNING; raise ScalingError if it went FATAL."""
    retries = s.worker_startretries + 1
    bound = (
        retries * s.worker_startsecs + retries * (retries + 1) / 2 + 30
    )  # supervisord backs off 1, 2, 3... s
    info = sup.wait_for_state(name, {RUNNING, FATAL}, timeout=bound)
    if info["statename"] == FATAL:
        raise ScalingError(
            f"{name} went FATAL after {s.worker_startretries} retries: see {info.get('stdout_logfile')}"
        )


def remove_worker(s: DeploySettings, sup: Supervisor, name: str) -> None:
    """Stop (drain) a slot added by :func:`add_worker`, deactivate its group and delete its file."""
    path = added_slot_path(s, name)
    if not path.is_file():
        raise ScalingError(
            f"{name} was not added with add-worker ({path} missing); "
            f"stop a rendered slot with: supervisorctl -c {s.conf_path} stop {name}"
        )
    processes = sup.processes()
    if name in processes:
        if processes[name]["statename"] in (RUNNING, "STARTING", "BACKOFF"):
            sup.stop(name)
        sup.remove_group(name)
    path.unlink()
    sup.reread()  # so that supervisorctl no longer lists it as available
    log.info("removed %s", name)
