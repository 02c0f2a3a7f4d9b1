"""Lay out a run directory: configuration, logs, and an owner-only directory for every socket.

Every part of the run directory must be this user's own: a directory another local user made first (or may
write into) could hold a planted ``conf.d/*.conf`` program or a symlink that makes us overwrite any file, and
supervisord would run what it finds there with our rights. Such a run directory is refused, not repaired.
Files are written under a fresh random name (``O_CREAT|O_EXCL|O_NOFOLLOW``) and renamed into place.
"""

from __future__ import annotations

import configparser
import json
import os
import secrets
import stat
from pathlib import Path

from deploy.settings import DeploySettings
from deploy.supervisor_conf import Credentials, render_supervisord_conf
from inference_worker import log_settings

PRIVATE = 0o700
# conf.d/ always holds this file, so supervisord's include glob matches something (else a WARN line at start).
CONF_D_README = "README.conf"
TRACE_SETTINGS = "settings.json"  # gateway/tracing.py reads it


class RunDirError(RuntimeError):
    """A run directory (or a part of it) that is not safely this user's own; the message says which and
    why."""


def check_owned(path: Path, what: str = "run directory") -> bool:
    """Refuse ``path`` unless it is missing or a real directory of this user that no one else may write.

    Return whether it exists.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise RunDirError(f"{what} {path} is not a directory (a symlink or a file): refusing to use it")
    if info.st_uid != os.geteuid():
        raise RunDirError(
            f"{what} {path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()}): refusing to "
            "use it (another user could plant programs or symlinks there); remove "
            "it or choose another --run-dir"
        )
    if info.st_mode & 0o022:
        raise RunDirError(
            f"{what} {path} is writable by others (mode {stat.S_IMODE(info.st_mode):o}): refusing to use it; "
            f"chmod go-w {path} after checking what it holds, or choose another --run-dir"
        )
    return True


def check_run_dir(s: DeploySettings) -> None:
    """Refuse a run directory, or any folder of it, that is not this user's own (see :func:`check_owned`)."""
    check_owned(s.run_dir)
    for folder in s.folders():
        check_owned(folder, f"run directory folder {folder.name}/ of")
    if s.conf_d.is_dir():
        for entry in s.conf_d.iterdir():
            if os.lstat(entry).st_uid != os.geteuid():
                raise RunDirError(f"{entry} belongs to another user: refusing to include it")


def prepare_run_dir(s: DeploySettings) -> None:
    """Create the run directory layout after checking what exists; the sockets directory is its owner's
    only."""
    check_run_dir(s)
    s.run_dir.mkdir(mode=PRIVATE, parents=True, exist_ok=True)
    for folder in s.folders():
        folder.mkdir(mode=PRIVATE, exist_ok=True)
    check_run_dir(s)  # again: nothing may have been swapped in between
    os.chmod(s.sockets_dir, PRIVATE)  # ours (checked): also when it existed with a looser mode
    readme = s.conf_d / CONF_D_README
    if not readme.exists():
        write_atomically(
            readme,
            "; Worker slots added live by `torchgate add-worker` are written "
            "beside this file, one per slot.\n",
        )


def control_credentials(s: DeploySettings) -> Credentials:
    """Return the control socket's credentials: those already rendered here (a running supervisord keeps
    them), else new."""
    parser = configparser.RawConfigParser()
    try:
        parser.read(s.conf_path)
        username = parser.get("unix_http_server", "username", fallback="")
        password = parser.get("unix_http_server", "password", fallback="")
    except configparser.Error:
        username = password = ""
    if username and password:
        return Credentials(username, password)
    return Credentials(f"torchgate-{secrets.token_hex(4)}", secrets.token_urlsafe(24))


def write_run_dir(s: DeploySettings) -> Path:
    """Write ``supervisord.conf`` and ``deploy.json`` into the run directory; return the configuration
    path."""
    prepare_run_dir(s)
    write_atomically(s.conf_path, render_supervisord_conf(s, control_credentials(s)))
    write_atomically(s.settings_path, s.to_json())
    log_settings.write(s.log_settings_path, log_settings.DEFAULTS)  # a start logs as the defaults say
    trace = s.trace_document()  # a start's trace settings: what a previous run changed is gone
    if trace is None:
        (s.trace_dir / TRACE_SETTINGS).unlink(missing_ok=True)
    else:
        write_atomically(s.trace_dir / TRACE_SETTINGS, json.dumps(trace))
    return s.conf_path


def clear_metrics(s: DeploySettings) -> None:
    """Empty the metrics folders: a run's counters start from zero, and its programs keep them across their
    restarts (TORCHGATE_METRICS_KEEP), so that no sum /metrics reports goes backwards while it runs."""
    for folder in (s.metrics_dir, s.grpc_metrics_dir):
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.is_file() or entry.is_symlink():
                    entry.unlink(missing_ok=True)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step, so supervisord never reads half a file (the temporary name matches no
    glob).

    The temporary file gets a random name and is created exclusively without following a symlink; the rename
    replaces whatever ``path`` was (a symlink included) without writing through it.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
