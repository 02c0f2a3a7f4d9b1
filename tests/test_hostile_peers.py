"""Hostile and broken peers: CURVE on TCP, hung workers, and no unpickling of anything received."""

from __future__ import annotations

import ast
import os
import pickle
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from harness import (
    DEFAULT_REPOSITORY,
    ROOT,
    Client,
    Processes,
    Stack,
    assert_all_match,
    commands,
    free_port,
    outputs,
    ready_workers,
    run,
    send_digits,
    slow_repository,
    wait_for,
)
from harness.commands import FAST_HEARTBEAT
from inference_worker import protocol
from inference_worker.security import create_keys


@pytest.mark.processes
def test_tcp_backend_admits_only_workers_with_authorized_keys(
    processes: Processes, zmq_context: zmq.Context, tmp_path: Path
) -> None:
    keys, authorized = tmp_path / "keys", tmp_path / "authorized"
    authorized.mkdir(mode=0o700)
    server_public, server_secret = create_keys(keys, "dispatcher")
    good_public, good_secret = create_keys(keys, "good-worker")
    _, evil_secret = create_keys(keys / "evil", "evil-worker")
    (authorized / good_public.name).write_bytes(good_public.read_bytes())
    frontend, backend = f"ipc://{tmp_path}/frontend.sock", f"tcp://127.0.0.1:{free_port()}"

    refused = processes.start("insecure", commands.dispatcher(frontend, backend))
    assert refused.wait(timeout=60) == 2 and "needs --curve-secret-key" in processes.log("insecure")
    # a worker without keys is refused as it starts, not after loading every model (torch not even imported)
    refused = processes.start("keyless", commands.worker(DEFAULT_REPOSITORY, backend, "keyless"))
    assert refused.wait(timeout=60) == 2, processes.log("keyless")
    assert "needs --curve-secret-key" in processes.log("keyless") and "digits" not in processes.log("keyless")

    curve = ("--curve-secret-key", str(server_secret), "--curve-authorized", str(authorized))
    processes.start("dispatcher", commands.dispatcher(frontend, backend, *curve, *FAST_HEARTBEAT))
    for name, secret in (("evil", evil_secret), ("good", good_secret)):
        keys_of = ("--curve-server-key", str(server_public), "--curve-secret-key", str(secret))
        processes.start(name, commands.worker(DEFAULT_REPOSITORY, backend, name, *keys_of, *FAST_HEARTBEAT))
    wait_for(lambda: "good" in ready_workers(frontend), timeout=120, what="the authorized worker")
    wait_for(lambda: "READY" in processes.log("evil"), timeout=60, what="the evil worker to try")

    # a plain socket without CURVE, pretending to be a worker, is not heard either
    plain = zmq_context.socket(zmq.DEALER)
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(backend)
    plain.send_multipart(protocol.Ready(worker="plain", incarnation="x", capacity=1, models=[]).frames())
    client = Client(zmq_context, frontend)
    try:
        for _ in range(20):  # every request is served by the only admitted worker
            reply = client.infer("digits", {"input": np.ones((1, 64), np.float32)})
            assert (
                isinstance(reply, protocol.Reply)
                and reply.worker == "good"
                and outputs(reply)["output"].shape == (1, 10)
            )
    finally:
        client.close()
        plain.close(linger=0)
    assert ready_workers(frontend) == {"good"}


@pytest.mark.processes
def test_a_hung_worker_leaves_rotation_and_its_requests_are_resent(
    processes: Processes, tmp_path: Path, digits_model: torch.nn.Module
) -> None:
    with Stack(processes, tmp_path / "run") as backend:
        backend.start_dispatcher()
        backend.start_worker("w0")
        hung = backend.start_worker("w1")
        started = threading.Event()

        def act() -> None:
            if started.wait(60):
                os.kill(hung.pid, signal.SIGSTOP)

        stopper = threading.Thread(target=act)
        stopper.start()
        try:
            pairs = send_digits(backend.context, backend.frontend, 400, threads=8, during=started)
            stopper.join(timeout=60)
            assert_all_match(pairs, digits_model)  # nothing lost: what w1 held was re-sent to w0
            assert backend.ready_workers() == {"w0"}
        finally:
            os.kill(hung.pid, signal.SIGCONT)
        wait_for(
            lambda: backend.ready_workers() == {"w0", "w1"},
            timeout=30,
            what="the woken worker to register again",
        )


UNPICKLERS = {
    ("pickle", "loads"),
    ("pickle", "load"),
    ("pickle", "Unpickler"),
    ("dill", "loads"),
    ("cloudpickle", "loads"),
    ("marshal", "loads"),
    ("shelve", "open"),
}


# Modules that import pickle only to make its loaders refuse (still checked for every call below).
PICKLE_REFUSERS = {"inference_worker/pt2_safety.py"}


def test_no_code_path_can_unpickle() -> None:
    """Statically: no pickle-family loads, every torch.load has weights_only=True, no msgpack ext hooks."""
    problems = []
    for path in [
        *ROOT.glob("gateway/**/*.py"),
        *ROOT.glob("inference_worker/**/*.py"),
        *ROOT.glob("deploy/**/*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + (
                    [node.module] if isinstance(node, ast.ImportFrom) else []
                )
                if path.relative_to(ROOT).as_posix() not in PICKLE_REFUSERS and any(
                    n
                    and n.split(".")[0]
                    in ("pickle", "dill", "cloudpickle", "marshal", "shelve", "msgpack_numpy")
                    for n in names
                ):
                    problems.append(f"{path}:{node.lineno}: imports {names}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
                if (owner, node.func.attr) in UNPICKLERS:
                    problems.append(f"{path}:{node.lineno}: {owner}.{node.func.attr}")
                keywords = {k.arg: k.value for k in node.keywords}
                if owner == "torch" and node.func.attr == "load":
                    flag = keywords.get("weights_only")
                    if not (isinstance(flag, ast.Constant) and flag.value is True):
                        problems.append(f"{path}:{node.lineno}: torch.load without weights_only=True")
                if node.func.attr in ("unpackb", "Unpacker") and (
                    "ext_hook" in keywords or "object_hook" in keywords
                ):
                    problems.append(f"{path}:{node.lineno}: msgpack hook")
                if node.func.attr == "load" and owner in ("np", "numpy") and "allow_pickle" in keywords:
                    problems.append(f"{path}:{node.lineno}: numpy allow_pickle")
    assert problems == []


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/torchgate-pwned",))


def test_a_pickled_weights_file_is_refused_and_never_executed(tmp_path: Path) -> None:
    from inference_worker.backends import LoadError, load_model
    from inference_worker.repository import load_repository

    repo = slow_repository(tmp_path / "repo")
    config = (
        (repo / "slow" / "config.toml")
        .read_text()
        .replace('factory = "slow_model:build"', 'factory = "slow_model:build"\nweights = "model.pt"')
    )
    (repo / "slow" / "config.toml").write_text(config)
    marker = Path("/tmp/torchgate-pwned")
    marker.unlink(missing_ok=True)
    (repo / "slow" / "1" / "model.pt").write_bytes(pickle.dumps({"scale": _Payload()}))
    model = load_repository(repo)["slow"]
    with pytest.raises(LoadError, match="model.pt"):
        load_model(model, "1", torch.device("cpu"))
    assert not marker.exists()


@pytest.mark.processes
def test_torchgate_keys_writes_owner_only_secret_keys(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "deploy.cli", "keys", str(tmp_path / "k"), "a", "b"], timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("a", "b"):
        assert (tmp_path / "k" / f"{name}.key").is_file()
        assert (tmp_path / "k" / f"{name}.key_secret").stat().st_mode & 0o077 == 0


class _Touch:
    """Unpickling this creates ``path`` (a stand-in for any code an archive could run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _plant_pt2(source: Path, target: Path, payload: bytes, entry: str) -> None:
    """Copy a .pt2 archive; mark layers.0.bias pickled (entry "weight") or swap its sample inputs
    ("sample")."""
    import json
    import zipfile

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if entry == "weight" and info.filename.endswith("data/weights/model_weights_config.json"):
                config = json.loads(data)
                config["config"]["layers.0.bias"]["use_pickle"] = True
                data = json.dumps(config).encode()
            elif entry == "weight" and info.filename.endswith(
                "data/weights/" + "weight_1"
            ):  # layers.0.bias's payload
                data = payload
            elif entry == "sample" and info.filename.endswith("data/sample_inputs/model.pt"):
                data = payload  # fails weights_only: torch used to load it again without
            dst.writestr(info, data)


@pytest.mark.processes
@pytest.mark.parametrize("entry", ["weight", "sample"])
def test_a_planted_torch_export_archive_is_refused_and_never_unpickled(
    processes: Processes, tmp_path: Path, entry: str
) -> None:
    """A .pt2 whose weight is marked use_pickle, or whose sample inputs need pickle: the worker refuses it."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_REPOSITORY / "digits", repo / "digits")
    ran = tmp_path / "payload-ran"
    archive = repo / "digits" / "1" / "model.pt2"
    _plant_pt2(DEFAULT_REPOSITORY / "digits" / "1" / "model.pt2", archive, pickle.dumps(_Touch(ran)), entry)
    worker = processes.start("w0", commands.worker(repo, f"ipc://{tmp_path}/backend.sock", "w0"))
    assert worker.wait(timeout=120) == 3, processes.log("w0")[-2000:]
    assert not ran.exists(), "the archive's payload ran"
    assert "unpickl" in processes.log("w0"), processes.log("w0")[-2000:]
