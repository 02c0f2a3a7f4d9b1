"""Lay out a run directory: configuration, logs, and an owner-only directory for every socket."""

from __future__ import annotations

import configparser
import os
import secrets
from pathlib import Path

from deploy.settings import DeploySettings
from deploy.supervisor_conf import Credentials, render_supervisord_conf

PRIVATE = 0o700
# conf.d/ always holds this file, so supervisord's include glob matches something (else a WARN line at start).
CONF_D_README = "README.conf"


def prepare_run_dir(s: DeploySettings) -> None:
    """Create the run directory layout; the sockets directory is entered by its owner only."""
    s.run_dir.mkdir(mode=PRIVATE, parents=True, exist_ok=True)
    for folder in (s.log_dir, s.conf_d, s.sockets_dir, s.metrics_dir):
        folder.mkdir(mode=PRIVATE, exist_ok=True)
    os.chmod(s.sockets_dir, PRIVATE)  # also when it existed with a looser mode
    readme = s.conf_d / CONF_D_README
    if not readme.exists():
        write_atomically(
            readme,
            "; Worker slots added live by `torchgate add-worker` are written beside this file, one per slot.\n",
        )


def control_credentials(s: DeploySettings) -> Credentials:
    """Return the control socket's credentials: those already rendered here (a running supervisord keeps them), else new."""
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
    """Write ``supervisord.conf`` and ``deploy.json`` into the run directory; return the configuration path."""
    prepare_run_dir(s)
    write_atomically(s.conf_path, render_supervisord_conf(s, control_credentials(s)))
    write_atomically(s.settings_path, s.to_json())
    return s.conf_path


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step, so supervisord never reads half a file (the temporary name matches no glob)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
