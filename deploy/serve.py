"""Run supervisord in the foreground for one run directory; announce the URL once the service is ready."""

from __future__ import annotations

import errno
import functools
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import zmq

from deploy.dispatcher_status import query_status
from deploy.rundir import check_run_dir, clear_metrics, write_run_dir
from deploy.settings import DeploySettings, is_worker_slot
from deploy.startup import GAVE_UP, assess, last_error
from deploy.supervisor_conf import GRPC_PROGRAM
from deploy.supervisor_rpc import FATAL, RUNNING, Supervisor, wait_for_supervisor
from inference_worker import lifeline, security
from inference_worker.protocol import ProtocolError, StatusReply
from inference_worker.repository import load_repository

SUPERVISOR_UP_TIMEOUT = 30.0
HEALTH_TIMEOUT = 2.0
TOKEN_VARIABLE = (
    "TORCHGATE_AUTH_TOKEN"  # the gateway's token when set (gateway.config), before its token file
)
PROGRESS_EVERY = 10.0  # seconds between "still loading" lines while slots load
SERVING, NOTHING_SERVES, GAVE_UP_WAITING = "serving", "nothing serves", "gave up waiting"


class ServeError(RuntimeError):
    """The service cannot start as asked; the message says why and what to do."""


def supervisord_command(s: DeploySettings) -> list[str]:
    return [s.python, "-m", "supervisor.supervisord", "-c", str(s.conf_path)]


def read_token(path: Path | None) -> str:
    """Return the bearer token the gateway asks for: ``TORCHGATE_AUTH_TOKEN`` when set (the gateway inherits
    it, and it wins there too), else the one in ``path`` (empty without one); an unreadable or empty file is
    an error."""
    if os.environ.get(TOKEN_VARIABLE):
        return os.environ[TOKEN_VARIABLE]
    if path is None:
        return ""
    try:
        return security.read_token(path)
    except security.SecurityError as exc:
        raise ServeError(str(exc)) from None


def health_ready(url: str, timeout: float = HEALTH_TIMEOUT, token: str = "") -> bool:
    """Return True when ``GET url/v2/health/ready`` answers 200."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(f"{url}/v2/health/ready", headers=headers), timeout=timeout
        ) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def health_live(url: str, timeout: float = HEALTH_TIMEOUT, token: str = "") -> bool:
    """Return True when the gateway answers ``GET url/v2/health/live`` with 200."""
    try:
        with urllib.request.urlopen(f"{url}/v2/health/live", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_in_use(host: str, port: int) -> bool:
    """Return True when something already listens on ``host:port`` (the gateway could not bind it); raise
    ServeError when the address itself cannot be bound here (a name that does not resolve, an address of
    another machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as gunicorn does: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host") from None
    return False


def prepare(s: DeploySettings) -> Path:
    """Check the model repository, the port and that nothing runs in the run directory; write the
    configuration."""
    check_run_dir(s)  # before anything is read from it (a planted socket, say)
    load_repository(s.model_repository, list(s.models) or None)  # raises ConfigError naming file and key
    read_token(s.auth_token_file)
    if Supervisor(s.supervisor_socket, timeout=5.0).answers():
        raise ServeError(
            f"supervisord already runs in {s.run_dir}: torchgate ctl --run-dir {s.run_dir} status"
        )
    if port_in_use(s.host, s.port):
        raise ServeError(
            f"{s.host}:{s.port} is already in use (another torchgate?); choose another with --port"
        )
    for port, option in (
        (s.grpc_port, "--grpc-port"),
        (s.management_port, "--management-port"),
        (s.metrics_port, "--metrics-port"),
    ):
        if port is not None and port_in_use(s.host, port):
            raise ServeError(
                f"{s.host}:{port} is already in use (another torchgate?); choose another with {option}"
            )
    s.drain_flag.unlink(missing_ok=True)  # a previous stop's flag: this start is ready again
    path = write_run_dir(s)
    clear_metrics(s)  # a new run: its counters start from zero
    for record in s.client_shm_dir.iterdir():  # a previous run's registrations: a new server knows none
        record.unlink()
    return path


def wait_until_serving(
    s: DeploySettings,
    proc: subprocess.Popen[bytes],
    timeout: float,
    stopping: Callable[[], bool],
    echo: Callable[[str], None],
) -> str:
    """Watch the host start; return SERVING, NOTHING_SERVES (every slot gave up), or GAVE_UP_WAITING.

    While slots load, say which every ``PROGRESS_EVERY`` seconds; report each slot supervisord gives up on
    with the reason from its log, and each model that cannot load with the reason its worker gave.
    """
    sup = Supervisor.from_conf(s.conf_path, timeout=5.0)
    started = time.monotonic()
    deadline = started + timeout
    try:
        wait_for_supervisor(sup, SUPERVISOR_UP_TIMEOUT, alive=lambda: proc.poll() is None and not stopping())
    except (RuntimeError, TimeoutError) as exc:
        if not stopping():
            echo(f"torchgate: {exc}")
        return GAVE_UP_WAITING
    reported: set[str] = set()
    token = read_token(s.auth_token_file)
    expected = list(s.models) or sorted(load_repository(s.model_repository))
    autostart = {slot.name for slot in s.slots() if slot.autostart}
    next_progress = started + PROGRESS_EVERY
    while proc.poll() is None and not stopping():
        processes = _processes(sup)
        if processes is None:  # supervisord did not answer this time (busy): judge nothing on this look
            if time.monotonic() >= deadline:
                echo(f"torchgate: supervisord does not answer after {timeout:.0f} s. Logs: {s.log_dir}")
                return GAVE_UP_WAITING
            time.sleep(0.25)
            continue
        try:
            status: StatusReply | None = query_status(s.frontend_endpoint, timeout=HEALTH_TIMEOUT)
        except (TimeoutError, ProtocolError, zmq.ZMQError):
            status = None
        progress = assess(
            processes, autostart | {n for n in processes if is_worker_slot(n)}, status, expected
        )
        for name in progress.failed:
            if name not in reported:
                reported.add(name)
                info = processes[name]
                why = last_error(Path(str(info.get("stdout_logfile") or s.log_dir / f"{name}.log")))
                how = (
                    "gave up after its retries"
                    if info["statename"] == FATAL
                    else f"exit status {info.get('exitstatus')}"
                )
                echo(
                    f"torchgate: {name} is {info['statename']} ({how}): {why or 'no error in its log'}; "
                    f"see {info.get('stdout_logfile')}"
                )
        if s.grpc_port is not None:
            _report_grpc(s, processes.get(GRPC_PROGRAM) or {}, reported, echo)
        for model, why in progress.unavailable.items():
            if status is not None and f"model:{model}" not in reported and model in _reported_models(status):
                reported.add(f"model:{model}")
                echo(f"torchgate: model {model} is UNAVAILABLE: {why}")
        if progress.nothing_serves and status is not None:
            echo(
                f"torchgate: no model can be served (every worker slot gave up); stopping. Logs: {s.log_dir}"
            )
            return NOTHING_SERVES
        if (
            progress.settled
            and progress.ready_models
            and _grpc_settled(s, processes)
            and health_live(s.url, token=token)
        ):
            if not health_ready(s.url, token=token):
                missing = ", ".join(sorted(progress.unavailable))
                echo(
                    "torchgate: not every model is ready (strict readiness: "
                    f"/v2/health/ready is 400): {missing}"
                )
            return SERVING
        now = time.monotonic()
        if now >= next_progress and progress.loading:
            next_progress = now + PROGRESS_EVERY
            echo(f"torchgate: still loading after {now - started:.0f}s: {', '.join(progress.loading)}")
        if now >= deadline:
            echo(
                f"torchgate: not ready after {timeout:.0f} s; still running. Logs: {s.log_dir}; "
                f"torchgate ctl --run-dir {s.run_dir} status"
            )
            return GAVE_UP_WAITING
        time.sleep(0.25)
    return GAVE_UP_WAITING


def _grpc_settled(s: DeploySettings, processes: dict[str, dict[str, Any]]) -> bool:
    """Whether the gRPC server (when there is one) is up, or has given up (reported on its own)."""
    if s.grpc_port is None:
        return True
    return str((processes.get(GRPC_PROGRAM) or {}).get("statename")) in (RUNNING, *GAVE_UP)


def _report_grpc(
    s: DeploySettings, info: dict[str, Any], reported: set[str], echo: Callable[[str], None]
) -> None:
    """Say once, with the reason from its log, that the gRPC server gave up (HTTP serves on)."""
    if GRPC_PROGRAM in reported or info.get("statename") not in GAVE_UP:
        return
    reported.add(GRPC_PROGRAM)
    log = Path(str(info.get("stdout_logfile") or s.log_dir / f"{GRPC_PROGRAM}.log"))
    echo(
        f"torchgate: grpc is {info['statename']}: {last_error(log) or 'no error in its log'}; "
        f"gRPC is not served (HTTP is); see {log}"
    )


def _processes(sup: Supervisor) -> dict[str, dict[str, Any]] | None:
    """Return supervisord's processes, or None when it did not answer: not an empty host, which would read
    as every slot stopped (and so as nothing that can serve)."""
    try:
        return sup.processes()
    except (OSError, xmlrpc.client.Error, http.client.HTTPException):
        return None


def _reported_models(status: StatusReply) -> set[str]:
    """Return the models some worker reported it cannot load."""
    return {str(e.get("model")) for e in status.unavailable if isinstance(e, dict)}


def mark_draining(s: DeploySettings) -> float:
    """Turn readiness to 503 (the gateway checks this flag); return when draining began, keeping an earlier
    start."""
    try:
        fd = os.open(s.drain_flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except FileExistsError:
        pass  # `torchgate drain` (a preStop hook, say) began earlier: its grace counts
    try:
        return s.drain_flag.stat().st_mtime
    except OSError:
        return time.time()


class StopPlan:
    """When to stop supervisord: at once (SIGINT, SIGHUP, a second signal) or after the unready grace
    (SIGTERM)."""

    def __init__(self, s: DeploySettings, unready_grace: float) -> None:
        self.s = s
        self.unready_grace = unready_grace
        self.requested = False
        self.stop_at: float | None = None  # wall-clock time (the drain flag's mtime is one)

    def on_signal(self, signum: int) -> None:
        began = mark_draining(self.s)
        if signum == signal.SIGTERM and not self.requested:
            self.stop_at = began + self.unready_grace
        else:
            self.stop_at = time.time()
        self.requested = True

    def due(self) -> bool:
        return self.stop_at is not None and time.time() >= self.stop_at


def stop_supervisord(s: DeploySettings, proc: subprocess.Popen[bytes]) -> None:
    """Ask supervisord to stop every program, each drained (over XML-RPC: no WARN line); SIGTERM if it does
    not answer."""
    try:
        Supervisor.from_conf(s.conf_path, timeout=5.0).shutdown()
    except (OSError, ValueError, xmlrpc.client.Error, http.client.HTTPException):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)


def wait_step(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait up to ``timeout`` for supervisord's exit status; as PID 1 (a container) also reap orphaned
    processes."""
    if os.getpid() != 1:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    time.sleep(timeout)
    code = proc.poll()
    while code is None:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid == proc.pid:
            proc.returncode = code = os.waitstatus_to_exitcode(status)
    return code


def supervisord_ended(s: DeploySettings, code: int) -> str:
    """Say why supervisord ended when nobody asked it to stop: its programs end with it (lifeline)."""
    if code < 0:
        how = f"was killed by {signal.Signals(-code).name if -code in signal.valid_signals() else -code}"
    else:
        how = f"exited with status {code}"
    return f"torchgate: supervisord {how}; every process it ran stops with it. Logs: {s.log_dir}"


def serve(
    s: DeploySettings, ready_timeout: float, echo: Callable[[str], None], unready_grace: float = 0.0
) -> int:
    """Render, start supervisord (its own session, so a terminal's Ctrl-C reaches only us) and wait for it.

    SIGTERM turns readiness to 503 at once and keeps serving ``unready_grace`` seconds (load balancers and
    Kubernetes endpoints stop sending meanwhile), then stops supervisord: the gateway finishes its requests
    and every worker drains. SIGINT (Ctrl-C), SIGHUP or a second signal skip the grace.
    """
    conf = prepare(s)
    # Should `torchgate serve` itself be killed (SIGKILL, say), supervisord gets SIGTERM and stops every
    # program.
    proc = subprocess.Popen(
        supervisord_command(s),
        start_new_session=True,
        preexec_fn=functools.partial(lifeline.die_with_parent, signal.SIGTERM),
    )
    plan = StopPlan(s, unready_grace)

    def forward(signum: int, frame: FrameType | None) -> None:
        plan.on_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        outcome = wait_until_serving(s, proc, ready_timeout, lambda: plan.requested, echo)
        if outcome == SERVING:
            processes = Supervisor.from_conf(conf, timeout=5.0).processes()
            slots = [n for n in processes if is_worker_slot(n)]
            stopped = sum((processes[n] or {}).get("statename") == "STOPPED" for n in slots)  # spares
            running = len(slots) - stopped  # RUNNING, or STARTING within --worker-startsecs
            spare = f", {len(slots) - running} not started" if running < len(slots) else ""
            grpc_up = (processes.get(GRPC_PROGRAM) or {}).get("statename") == RUNNING
            extra = [f"gRPC {s.grpc_address}"] if grpc_up else []
            extra += [f"{what} port {port}" for what, port in s.torchserve_ports]
            echo(
                f"torchgate: serving {s.url}{''.join(f' and {e}' for e in extra)} "
                f"({running} worker slot{'s' if running != 1 else ''} running{spare}). "
                f"Operate: torchgate ctl --run-dir {s.run_dir} status; "
                "stop: Ctrl-C, or torchgate ctl shutdown"
            )
        elif outcome == NOTHING_SERVES:
            stop_supervisord(s, proc)
            while wait_step(proc, 0.1) is None:
                pass
            return 1
        stopping = False
        while True:
            code = wait_step(proc, 0.1)
            if code is not None:
                if code != 0:
                    echo(supervisord_ended(s, code))
                return 128 - code if code < 0 else code  # a shell's status for "killed by a signal"
            if plan.due() and not stopping:
                stopping = True
                stop_supervisord(s, proc)
    finally:
        if proc.poll() is None:  # only when wait() itself was interrupted by an exception
            proc.terminate()
            try:
                proc.wait(timeout=max(s.worker_stopwaitsecs, s.gateway_stopwaitsecs) + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.stdout.flush()
