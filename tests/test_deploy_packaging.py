"""Packaging: torch as a supported range in the worker extra, a torch-free core, SPDX metadata, the control
socket.

The wheel is built with ``python -m build`` as a user would; the rendered supervisord configuration is parsed
by supervisord's own option parsers.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from supervisor.options import ClientOptions, ServerOptions

from deploy.rundir import write_run_dir
from deploy.settings import DeploySettings
from deploy.supervisor_conf import Credentials, render_supervisord_conf
from deploy.supervisor_rpc import read_client_section
from harness import ROOT, run
from harness.wheel import InstalledWheel

pytestmark = pytest.mark.xdist_group("wheel")  # one wheel build per session, never two at once in one tree
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_torch_is_a_range_in_the_worker_extra_only() -> None:
    project = PYPROJECT["project"]
    core = {Requirement(r).name for r in project["dependencies"]}
    assert "torch" not in core and "safetensors" not in core  # a gateway-only host installs no torch
    worker = {Requirement(r).name: Requirement(r) for r in project["optional-dependencies"]["worker"]}
    torch = worker["torch"]
    assert not any(spec.operator == "==" for spec in torch.specifier), torch
    assert torch.specifier.contains("2.12.0") and torch.specifier.contains("2.13.0")
    assert not torch.specifier.contains("3.0.0")


def test_license_is_an_spdx_expression_with_its_file() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text()


@pytest.mark.processes
def test_wheel_metadata(installed_wheel: InstalledWheel) -> None:
    meta = installed_wheel.metadata()
    assert "License-Expression: Apache-2.0" in meta
    torch_lines = [line for line in meta.splitlines() if re.match(r"Requires-Dist: torch[<>=!~; ]", line)]
    assert torch_lines and all('extra == "worker"' in line for line in torch_lines), torch_lines
    names = installed_wheel.names()
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "deploy/model_repository/digits/1/model.pt2" in names
    assert "deploy/model_repository/digits/config.toml" in names


@pytest.mark.processes
def test_gateway_and_dispatcher_import_without_torch(tmp_path: Path) -> None:
    """What a gateway-only host runs: the CLI, the gateway app and the dispatcher, with torch made
    unimportable."""
    code = (
        "import sys\nsys.modules['torch'] = None\n"
        "import deploy.cli, deploy.serve, gateway.app, gateway.wsgi, inference_worker.dispatcher\n"
        "print('ok')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "TORCHGATE_MODEL_REPOSITORY": str(ROOT / "deploy" / "model_repository")}
    done = run([sys.executable, "-c", code], timeout=60, cwd=tmp_path, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_control_socket_asks_for_generated_credentials(tmp_path: Path) -> None:
    s = DeploySettings(run_dir=tmp_path / "run", cpu_workers=1)
    path = write_run_dir(s)
    server = ServerOptions()
    server.realize(args=["-c", str(path)])
    config = server.server_configs[0]
    assert config["username"] and config["password"] and len(config["password"]) >= 24
    client = ClientOptions()
    client.realize(args=["-c", str(path)])  # what `torchgate ctl` and supervisorctl read
    assert (client.username, client.password) == (config["username"], config["password"])
    assert read_client_section(path) == (s.supervisor_socket, config["username"], config["password"])
    assert path.stat().st_mode & 0o077 == 0  # the password is readable by its owner only
    # Rendering again (a running supervisord keeps what it read) keeps the credentials.
    write_run_dir(s)
    assert read_client_section(path)[1:] == (config["username"], config["password"])
    # Another run directory gets others.
    other = write_run_dir(DeploySettings(run_dir=tmp_path / "other", cpu_workers=1))
    assert read_client_section(other)[2] != config["password"]


def test_root_is_told_to_stay_root_and_the_include_always_matches(tmp_path: Path) -> None:
    s = DeploySettings(run_dir=tmp_path / "run", cpu_workers=1)
    creds = Credentials("u", "p")
    assert "\nuser=root\n" in render_supervisord_conf(s, creds, as_root=True)
    assert "\nuser=" not in render_supervisord_conf(s, creds, as_root=False)
    write_run_dir(s)
    assert list(s.conf_d.glob("*.conf"))  # else supervisord warns "No file matches via include"
