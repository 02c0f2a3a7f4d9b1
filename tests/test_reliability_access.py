"""Access: `torchgate serve --auth-token-file` under supervisord; loopback by default; owner-only sockets.

Every endpoint but liveness needs the bearer token; a wrong or missing one is a 401 with ``{"error": ...}``
and
``WWW-Authenticate: Bearer``. The gateway listens on 127.0.0.1 unless told otherwise, and every ipc socket
lies in
a directory only its owner can enter.
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from deploy.settings import DeploySettings
from deploy.supervisor_conf import gateway_command, gateway_environment
from gateway.config import GatewayConfig
from harness import DIGIT_BODY, Stack, free_port, run, short_dir
from harness.commands import torchgate

pytestmark = pytest.mark.processes

TOKEN = "correct-horse-battery-staple"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ENDPOINTS = [
    ("GET", "/v2/health/ready"),
    ("GET", "/v2"),
    ("GET", "/v2/models/digits"),
    ("GET", "/v2/models/digits/ready"),
    ("GET", "/v2/models/digits/config"),
    ("GET", "/v2/models/digits/stats"),
    ("GET", "/v2/models/stats"),
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/models/digits/infer"),
    ("POST", "/v2/models/digits/generate"),
    ("POST", "/v2/models/digits/generate_stream"),
    ("POST", "/predict"),
    ("POST", "/predictions/digits"),
    ("POST", "/invocations"),
    ("POST", "/models/digits/invoke"),
    ("GET", "/ping"),
    ("GET", "/models"),
    ("GET", "/models/digits"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/digits"),
    ("POST", "/v1/models/digits:predict"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/v2/models/nope"),
]


@pytest.fixture(scope="module")
def deployment() -> Iterator[Stack]:
    with short_dir() as base:
        token_file = base / "token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        options = ("--gpus", "none", "--cpu-workers", "1", "--worker-threads", "1", "--worker-startsecs", "2")
        with Stack.at(base).serve(*options, "--auth-token-file", str(token_file)) as d:
            d.wait_supervisor()
            # `serve` itself must pass the token to see readiness, or it would never say it serves.
            d.wait_serving(timeout=120)
            yield d


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_every_endpoint_but_liveness_needs_the_token(deployment: Stack, method: str, path: str) -> None:
    url = deployment.url + path
    body = DIGIT_BODY if path.endswith("infer") else None
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        response = requests.request(method, url, json=body, headers=headers, timeout=30)
        assert response.status_code == 401, (path, headers, response.status_code)
        assert response.headers.get("WWW-Authenticate") == "Bearer"
        assert isinstance(response.json()["error"], str)
    good = requests.request(method, url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert good.status_code != 401, (path, good.text[:200])
    if path == "/v2/models/digits/infer":
        assert good.status_code == 200, good.text


def test_the_bearer_scheme_is_matched_in_any_case(deployment: Stack) -> None:
    """RFC 7235: the auth-scheme is case-insensitive; the token itself is not."""
    url = f"{deployment.url}/v2/models/digits/infer"
    for scheme in ("bearer", "BEARER", "bEaReR"):
        response = requests.post(
            url, json=DIGIT_BODY, headers={"Authorization": f"{scheme} {TOKEN}"}, timeout=30
        )
        assert response.status_code == 200, (scheme, response.text[:200])
    response = requests.post(
        url, json=DIGIT_BODY, headers={"Authorization": f"bearer {TOKEN.upper()}"}, timeout=30
    )
    assert response.status_code == 401


def test_liveness_needs_no_token(deployment: Stack) -> None:
    assert requests.get(f"{deployment.url}/v2/health/live", timeout=30).status_code == 200


def test_the_token_is_not_in_the_rendered_configuration(deployment: Stack) -> None:
    for path in (deployment.run_dir / "supervisord.conf", deployment.run_dir / "deploy.json"):
        assert TOKEN not in path.read_text()
    assert "TORCHGATE_AUTH_TOKEN_FILE" in (deployment.run_dir / "supervisord.conf").read_text()


def test_the_gateway_listens_on_loopback_only_by_default(deployment: Stack) -> None:
    gateway = psutil.Process(deployment.pids()["gateway"])
    listening = [c.laddr for c in gateway.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    rendered = gateway_command(DeploySettings(run_dir=deployment.run_dir, cpu_workers=1))
    assert rendered[rendered.index("--bind") + 1] == "127.0.0.1:8000"


def test_sockets_live_in_an_owner_only_directory(deployment: Stack) -> None:
    sockets = deployment.run_dir / "sockets"
    assert stat.S_IMODE(os.stat(sockets).st_mode) == 0o700
    found = {p.name for p in sockets.iterdir() if stat.S_ISSOCK(os.stat(p).st_mode)}
    assert {"frontend.sock", "backend.sock", "supervisor.sock"} <= found, found
    for name in found:  # and each socket is its owner's alone, whatever the directory
        assert stat.S_IMODE(os.stat(sockets / name).st_mode) & 0o077 == 0, name
    assert stat.S_IMODE(os.stat(deployment.run_dir).st_mode) & 0o077 == 0


def test_a_token_given_as_torchgate_auth_token_reaches_serve_and_probe() -> None:
    """The token in the environment, not in a file: the gateway asks for it, `serve` passes it to see
    readiness (else it would never say it serves), and so does `torchgate probe` run where it is set."""
    options = ("--gpus", "none", "--cpu-workers", "1", "--worker-threads", "1", "--worker-startsecs", "2")
    with short_dir() as base, Stack.at(base).serve(*options, env={"TORCHGATE_AUTH_TOKEN": TOKEN}) as d:
        d.wait_serving(timeout=120)
        assert "not every model is ready" not in d.log()  # what it said when it asked without the token
        assert requests.get(d.url + "/v2/health/ready", timeout=10).status_code == 401
        assert requests.get(d.url + "/v2/health/ready", headers=BEARER, timeout=10).status_code == 200
        probe = ("probe", "--run-dir", str(d.run_dir))
        with_token = run(torchgate(*probe), env={**os.environ, "TORCHGATE_AUTH_TOKEN": TOKEN}, timeout=60)
        assert with_token.returncode == 0, with_token.stderr
        without = run(torchgate(*probe), env={k: v for k, v in os.environ.items() if "AUTH_TOKEN" not in k})
        assert without.returncode == 1 and "401" in without.stderr


def test_an_empty_token_file_is_refused_not_ignored(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="holds no token"):
        GatewayConfig.from_env({"TORCHGATE_AUTH_TOKEN_FILE": str(empty)})
    serve = ("serve", "--run-dir", str(tmp_path / "run"), "--gpus", "none", "--auth-token-file", str(empty))
    done = run(torchgate(*serve), timeout=60)
    assert done.returncode != 0 and "empty" in done.stderr, done.stderr
    s = DeploySettings(run_dir=tmp_path / "run2", cpu_workers=1, auth_token_file=empty)
    assert gateway_environment(s)["TORCHGATE_AUTH_TOKEN_FILE"] == str(empty)
    assert DeploySettings.from_json(s.to_json()) == s


@pytest.mark.parametrize("planted_by", ["another user", "anyone (mode 777)"])
def test_a_run_directory_planted_by_someone_else_is_refused(tmp_path: Path, planted_by: str) -> None:
    """A conf.d/ with a program in it and a symlink where the configuration is written: serve must refuse."""
    run_dir = tmp_path / "run"
    conf_d = run_dir / "conf.d"
    conf_d.mkdir(parents=True)
    ran = tmp_path / "planted-program-ran"
    (conf_d / "evil.conf").write_text(
        f"[program:evil]\ncommand=/bin/sh -c 'touch {ran}; sleep 60'\nstartsecs=0\nautorestart=false\n"
    )
    target = tmp_path / "precious"
    target.write_text("precious\n")
    for name in (".supervisord.conf.tmp", "supervisord.conf"):
        (run_dir / name).symlink_to(target)
    if planted_by == "another user":
        if os.geteuid() != 0:
            pytest.skip("making a directory owned by another user needs root")
        nobody = pwd.getpwnam("nobody").pw_uid
        for path in (run_dir, conf_d, conf_d / "evil.conf"):
            os.chown(path, nobody, -1)
    else:
        os.chmod(conf_d, 0o777)
    proc = subprocess.Popen(
        torchgate("serve", "--run-dir", str(run_dir), "--gpus", "none", "--port", str(free_port())),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        output = b""
        pytest.fail("torchgate serve started in a planted run directory")
    finally:
        if proc.poll() is None:  # supervisord runs in a session of its own: kill the whole tree
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    text = output.decode(errors="replace")
    assert proc.returncode != 0, text
    assert "refusing" in text and str(run_dir) in text, text
    assert not ran.exists(), "the planted program ran"
    assert target.read_text() == "precious\n", "a planted symlink was written through"
