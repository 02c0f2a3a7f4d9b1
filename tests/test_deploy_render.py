"""The rendered supervisord configuration, checked by parsing it with supervisord's own option parser."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from supervisor.datatypes import RestartUnconditionally, RestartWhenExitUnexpected
from supervisor.options import ServerOptions

from deploy.cli import cache_size
from deploy.gpus import Gpu, parse_gpu_spec, parse_nvidia_smi, resolve_gpus
from deploy.rundir import write_run_dir
from deploy.scaling import added_slot_path, next_slot
from deploy.settings import (
    DeploySettings,
    available_cores,
    default_cpu_workers,
    default_gateway_processes,
    default_worker_threads,
)
from deploy.supervisor_conf import render_worker
from harness import DEFAULT_REPOSITORY, ROOT, run


def realize(settings: DeploySettings) -> ServerOptions:
    """Write the run directory and parse it the way supervisord does at start-up."""
    path = write_run_dir(settings)
    options = ServerOptions()
    options.realize(args=["-c", str(path)])
    return options


def programs(options: ServerOptions) -> dict[str, Any]:
    return {p.name: p for group in options.process_group_configs for p in group.process_configs}


def test_eight_gpu_host_pins_one_slot_per_device(tmp_path: Path) -> None:
    s = DeploySettings(run_dir=tmp_path / "run", gpus=tuple(range(8)), worker_threads=4)
    procs = programs(realize(s))
    workers = {name: p for name, p in procs.items() if name.startswith("worker-")}
    assert sorted(workers) == [f"worker-gpu{n}-0" for n in range(8)]
    for n in range(8):
        p = workers[f"worker-gpu{n}-0"]
        assert p.environment["CUDA_VISIBLE_DEVICES"] == str(n)
        assert p.environment["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        # A GPU worker's OpenMP pool is small: the GPU computes, and spinning threads took the gateways'
        # cores.
        assert p.environment["OMP_NUM_THREADS"] == p.environment["MKL_NUM_THREADS"] == "2"
        assert "--device cuda" in p.command and "--threads 2" in p.command
        assert f"--name worker-gpu{n}-0" in p.command
        assert p.autostart
    # Nothing else may see a GPU: a CUDA context in the gateway or dispatcher would waste device memory.
    assert procs["gateway"].environment["CUDA_VISIBLE_DEVICES"] == ""
    assert procs["dispatcher"].environment["CUDA_VISIBLE_DEVICES"] == ""


def test_workers_per_gpu_and_spares_on_a_subset_of_gpus(tmp_path: Path) -> None:
    s = DeploySettings(run_dir=tmp_path / "run", gpus=(1, 3), workers_per_gpu=2, spare_slots=1)
    procs = programs(realize(s))
    workers = {name: p for name, p in procs.items() if name.startswith("worker-")}
    assert sorted(workers) == [
        "worker-gpu1-0",
        "worker-gpu1-1",
        "worker-gpu1-2",
        "worker-gpu3-0",
        "worker-gpu3-1",
        "worker-gpu3-2",
    ]
    assert {n for n, p in workers.items() if not p.autostart} == {"worker-gpu1-2", "worker-gpu3-2"}
    assert {
        p.environment["CUDA_VISIBLE_DEVICES"] for n, p in workers.items() if n.startswith("worker-gpu3")
    } == {"3"}


def test_laptop_defaults_render_cpu_slots_and_a_stopped_spare(tmp_path: Path) -> None:
    s = DeploySettings(run_dir=tmp_path / "run", cpu_workers=2, spare_slots=1)
    procs = programs(realize(s))
    assert set(procs) == {"dispatcher", "gateway", "worker-cpu-0", "worker-cpu-1", "worker-cpu-2"}
    assert [procs[f"worker-cpu-{k}"].autostart for k in range(3)] == [True, True, False]
    for k in range(3):
        env = procs[f"worker-cpu-{k}"].environment
        assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "1"
        assert "--device cpu" in procs[f"worker-cpu-{k}"].command


def test_torchserve_ports_and_client_shared_memory_reach_the_gateway(tmp_path: Path) -> None:
    off = programs(realize(DeploySettings(run_dir=tmp_path / "off", cpu_workers=1)))["gateway"]
    assert shlex.split(off.command).count("--bind") == 1
    assert not {"TORCHGATE_MANAGEMENT_PORT", "TORCHGATE_METRICS_PORT", "TORCHGATE_CLIENT_SHM_DIR"} & set(
        off.environment
    )
    s = DeploySettings(
        run_dir=tmp_path / "run",
        cpu_workers=1,
        port=8080,
        management_port=8081,
        metrics_port=8082,
        grpc_port=8001,
        allow_client_shm=True,
    )
    procs = programs(realize(s))
    command = shlex.split(procs["gateway"].command)
    assert [command[i + 1] for i, word in enumerate(command) if word == "--bind"] == [
        "127.0.0.1:8080",
        "127.0.0.1:8081",
        "127.0.0.1:8082",
    ]
    env = procs["gateway"].environment
    assert env["TORCHGATE_MANAGEMENT_PORT"] == "8081" and env["TORCHGATE_METRICS_PORT"] == "8082"
    # every gateway process and the gRPC server share one folder of registrations
    assert env["TORCHGATE_CLIENT_SHM_DIR"] == procs["grpc"].environment["TORCHGATE_CLIENT_SHM_DIR"]
    assert env["TORCHGATE_CLIENT_SHM_DIR"] == str(s.run_dir / "client-shm")
    with pytest.raises(ValueError, match="ports must all differ: HTTP 8080, gRPC 8001, management 8080"):
        DeploySettings(
            run_dir=tmp_path / "clash", cpu_workers=1, port=8080, grpc_port=8001, management_port=8080
        )


def test_every_start_writes_the_trace_and_log_settings_every_process_follows(tmp_path: Path) -> None:
    config = ("triton,file=trace.json", "rate=1", "level=TIMESTAMPS", "triton,log-frequency=10")
    s = DeploySettings(run_dir=tmp_path / "run", cpu_workers=1, grpc_port=8001, trace_config=config)
    procs = programs(realize(s))
    for name in ("gateway", "grpc"):  # one folder of trace settings for every gateway process
        assert procs[name].environment["TORCHGATE_TRACE_DIR"] == str(s.trace_dir)
    for name, proc in procs.items():  # the log settings: every process, the workers and dispatcher too
        assert proc.environment["TORCHGATE_LOG_SETTINGS"] == str(s.log_settings_path), name
    trace = json.loads((s.trace_dir / "settings.json").read_text())
    assert trace["trace_file"] == str(Path("trace.json").absolute())
    assert trace["global"] == {
        "trace_level": ["TIMESTAMPS"],
        "trace_rate": 1,
        "trace_count": -1,
        "log_frequency": 10,
    }
    s.log_settings_path.write_text('{"log_info": false}')  # changed while serving; the next start forgets it
    programs(realize(DeploySettings(run_dir=tmp_path / "run", cpu_workers=1)))
    assert json.loads(s.log_settings_path.read_text())["log_info"] is True
    assert not (s.trace_dir / "settings.json").exists()  # started without a trace file: nothing traced
    for bad, words in (
        (("rate=1",), "needs the trace file"),
        (("triton,file=t.json", "level=TENSORS"), "TENSORS is not supported"),
        (("opentelemetry,url=x",), "OpenTelemetry"),
    ):
        with pytest.raises(ValueError, match=words):
            DeploySettings(run_dir=tmp_path / "bad", cpu_workers=1, trace_config=bad)


def test_the_response_cache_is_shared_out_among_the_processes_that_answer(tmp_path: Path) -> None:
    s = DeploySettings(
        run_dir=tmp_path / "run",
        cpu_workers=1,
        gateway_processes=3,
        grpc_port=8001,
        response_cache_bytes=4000,
    )
    procs = programs(realize(s))
    assert procs["gateway"].environment["TORCHGATE_RESPONSE_CACHE_BYTES"] == "1000"  # 3 gateways and gRPC
    assert procs["grpc"].environment["TORCHGATE_RESPONSE_CACHE_BYTES"] == "1000"
    off = programs(realize(DeploySettings(run_dir=tmp_path / "off", cpu_workers=1)))
    assert "TORCHGATE_RESPONSE_CACHE_BYTES" not in off["gateway"].environment
    assert cache_size(("local,size=1048576",)) == 1 << 20
    for bad in ("redis,host=localhost", "local,size=lots", "local,size=0", "local"):
        with pytest.raises(click.BadParameter, match="--cache-config|local,size"):
            cache_size((bad,))


def test_grpc_is_a_program_of_its_own_only_when_asked_for(tmp_path: Path) -> None:
    off = programs(realize(DeploySettings(run_dir=tmp_path / "off", cpu_workers=1)))
    assert "grpc" not in off and "TORCHGATE_GRPC_METRICS_DIR" not in off["gateway"].environment
    s = DeploySettings(run_dir=tmp_path / "run", cpu_workers=1, grpc_port=8001, gateway_threads=6)
    procs = programs(realize(s))
    grpc, gateway = procs["grpc"], procs["gateway"]
    assert shlex.split(grpc.command)[1:] == [
        "-m",
        "gateway.grpc_server",
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
        "--threads",
        "6",
        "--grace-seconds",
        str(s.gateway_graceful_seconds),
    ]
    # the same settings as the HTTP gateway, but not gunicorn's shared metrics folder, which gunicorn empties
    # Each keeps its metrics in a folder of its own (gunicorn empties the gateway's when it starts); the
    # gateway's /metrics sums in the gRPC server's.
    assert gateway.environment["TORCHGATE_GRPC_METRICS_DIR"] == str(s.run_dir / "metrics-grpc")
    assert grpc.environment == {
        **{k: v for k, v in gateway.environment.items() if k != "TORCHGATE_GRPC_METRICS_DIR"},
        "PROMETHEUS_MULTIPROC_DIR": str(s.run_dir / "metrics-grpc"),
    }
    assert grpc.autorestart is RestartUnconditionally and grpc.stopsignal == 15
    assert grpc.stopwaitsecs > s.gateway_graceful_seconds
    assert s.grpc_address == "127.0.0.1:8001"
    assert DeploySettings(run_dir=tmp_path / "v6", cpu_workers=1, host="::1", grpc_port=9).grpc_address == (
        "[::1]:9"
    )


def test_every_program_is_its_own_group_so_update_restarts_nothing_else(tmp_path: Path) -> None:
    options = realize(DeploySettings(run_dir=tmp_path / "run", cpu_workers=2))
    for group in options.process_group_configs:
        assert [p.name for p in group.process_configs] == [group.name]
    assert "[group:" not in (tmp_path / "run" / "supervisord.conf").read_text()


def test_process_settings_are_robust(tmp_path: Path) -> None:
    s = DeploySettings(
        run_dir=tmp_path / "run",
        cpu_workers=1,
        drain_seconds=45,
        worker_startsecs=7,
        worker_startretries=2,
        log_maxbytes=1234,
        log_backups=3,
    )
    procs = programs(realize(s))
    worker = procs["worker-cpu-0"]
    assert worker.stopwaitsecs > 45 and worker.startsecs == 7 and worker.startretries == 2
    assert procs["gateway"].stopwaitsecs > s.gateway_graceful_seconds
    assert f"--graceful-timeout {s.gateway_graceful_seconds}" in procs["gateway"].command
    assert "--daemon" not in procs["gateway"].command
    assert procs["gateway"].autorestart is RestartUnconditionally
    assert procs["dispatcher"].autorestart is RestartUnconditionally
    # A worker that cannot load its models (exit 3) stays down instead of looping; a crash is restarted; 0
    # (drained after a stop request) is expected, so a clean stop logs no WARN.
    assert worker.autorestart is RestartWhenExitUnexpected and sorted(worker.exitcodes) == [0, 2, 3]
    for name, p in procs.items():
        assert p.stopasgroup and p.killasgroup, name
        assert p.redirect_stderr, name
        assert p.stdout_logfile == str(s.log_dir / f"{name}.log")
        assert (p.stdout_logfile_maxbytes, p.stdout_logfile_backups) == (1234, 3)
        assert p.stopsignal == 15  # TERM: workers drain, gunicorn finishes requests


def test_sockets_are_ipc_in_an_owner_only_directory(tmp_path: Path) -> None:
    s = DeploySettings(run_dir=tmp_path / "run", cpu_workers=1)
    options = realize(s)
    procs = programs(options)
    sockets = s.run_dir / "sockets"
    assert stat.S_IMODE(os.stat(sockets).st_mode) == 0o700
    assert (
        f"--frontend ipc://{sockets}/frontend.sock --backend ipc://{sockets}/backend.sock"
        in procs["dispatcher"].command
    )
    assert f"--dispatcher ipc://{sockets}/backend.sock" in procs["worker-cpu-0"].command
    assert procs["gateway"].environment["TORCHGATE_DISPATCHER"] == f"ipc://{sockets}/frontend.sock"
    assert procs["gateway"].environment["PROMETHEUS_MULTIPROC_DIR"] == str(s.run_dir / "metrics")
    assert "tcp://" not in (s.run_dir / "supervisord.conf").read_text()
    server = options.server_configs[0]
    assert server["file"] == str(sockets / "supervisor.sock") and server["chmod"] == 0o700
    assert options.nodaemon and options.umask == 0o077


def test_supervisorctl_finds_the_server_from_the_rendered_file(tmp_path: Path) -> None:
    from supervisor.options import ClientOptions

    s = DeploySettings(run_dir=tmp_path / "run", cpu_workers=1)
    path = write_run_dir(s)
    client = ClientOptions()
    client.realize(args=["-c", str(path)])
    assert client.serverurl == f"unix://{s.supervisor_socket}"


def test_spaces_in_paths_survive_supervisord_parsing(tmp_path: Path) -> None:
    run_dir = tmp_path / "my run"
    s = DeploySettings(run_dir=run_dir, cpu_workers=1)
    procs = programs(realize(s))
    assert procs["worker-cpu-0"].directory == str(run_dir)
    assert procs["worker-cpu-0"].stdout_logfile == str(run_dir / "logs" / "worker-cpu-0.log")
    argv = shlex.split(procs["worker-cpu-0"].command)
    assert argv[argv.index("--dispatcher") + 1] == f"ipc://{run_dir}/sockets/backend.sock"


def test_added_slot_file_is_included_as_a_new_group(tmp_path: Path) -> None:
    s = DeploySettings(run_dir=tmp_path / "run", cpu_workers=2, spare_slots=1)
    write_run_dir(s)
    slot = next_slot(s, None, [x.name for x in s.slots()])
    assert slot.name == "worker-cpu-3"
    gpu_slot = next_slot(s, 5, ["worker-gpu5-0"])
    assert gpu_slot.name == "worker-gpu5-1" and gpu_slot.gpu == 5
    added_slot_path(s, slot.name).write_text(render_worker(s, slot))
    options = ServerOptions()
    options.realize(args=["-c", str(s.conf_path)])
    groups = [g.name for g in options.process_group_configs]
    assert "worker-cpu-3" in groups and groups.count("worker-cpu-3") == 1


def test_settings_round_trip_through_the_run_directory(tmp_path: Path) -> None:
    s = DeploySettings(run_dir=tmp_path / "run", gpus=(0, 2), cpu_workers=1, models=("digits",), port=9000)
    write_run_dir(s)
    assert DeploySettings.load(s.run_dir) == s
    raw = json.loads(s.settings_path.read_text())
    raw["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        DeploySettings.from_json(json.dumps(raw))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cpu_workers": 0}, "no worker slots"),
        ({"gpus": (1, 1)}, "distinct"),
        ({"port": 70000}, "port"),
        ({"gateway_threads": 0}, "gateway_threads"),
        ({"run_dir": Path("/tmp") / ("x" * 120)}, "socket path"),
        ({"models": ("a,b",)}, "commas"),
        ({"run_dir": Path("/tmp/100%")}, "'%'"),
        ({"grpc_port": 8000}, "gRPC port must differ"),
        ({"grpc_port": 0}, "grpc_port must be 1 to 65535"),
        ({"grpc_port": 70000}, "grpc_port must be 1 to 65535"),
    ],
)
def test_impossible_settings_are_refused(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeploySettings(**{"run_dir": tmp_path / "run", "cpu_workers": 1, **changes})


def test_nvidia_smi_output_and_gpu_specs_parse() -> None:
    text = "0, GPU-aaaa\n1, GPU-bbbb\n\n7, GPU-cccc\n"
    assert parse_nvidia_smi(text) == [Gpu(0, "GPU-aaaa"), Gpu(1, "GPU-bbbb"), Gpu(7, "GPU-cccc")]
    with pytest.raises(ValueError):
        parse_nvidia_smi("No devices were found")
    assert parse_gpu_spec("0,1,3") == (0, 1, 3)
    assert parse_gpu_spec(" none ") == () and parse_gpu_spec("") == ()
    assert parse_gpu_spec("all") is None and parse_gpu_spec(None) is None
    for bad in ("0,x", "-1", "1,1"):
        with pytest.raises(ValueError):
            parse_gpu_spec(bad)
    assert resolve_gpus("2,5") == (2, 5)  # an explicit list is used as given, on any machine


def test_default_worker_threads_share_the_cores() -> None:
    assert default_worker_threads(2, 2) == 1
    assert default_worker_threads(1, 1) == 1
    assert default_worker_threads(17, 4) == 4
    assert default_worker_threads(None, 0) == 1


def test_default_sizes_follow_the_cores() -> None:
    # one gateway process per core (a process is bound by its GIL at about one), at most 8
    assert [default_gateway_processes(n) for n in (None, 1, 2, 4, 16, 64)] == [1, 1, 2, 4, 8, 8]
    # two CPU workers (one restarts while the other serves), one on two cores or fewer
    assert [default_cpu_workers(n) for n in (None, 1, 2, 3, 16)] == [1, 1, 1, 2, 2]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\nfrom deploy.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
        "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH')\nsys.exit(code)\n"
    )
    return run([sys.executable, "-c", code, *args], timeout=60, cwd=cwd)


@pytest.mark.processes
def test_render_command_writes_the_run_directory_without_importing_torch(tmp_path: Path) -> None:
    done = run_cli("render", "--run-dir", "run", "--gpus", "0,1,2,3,4,5,6,7", "--port", "8123", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("NO_TORCH")
    conf = (tmp_path / "run" / "supervisord.conf").read_text()
    assert conf.count("[program:worker-gpu") == 8 and "--bind 127.0.0.1:8123" in conf
    assert "worker-gpu7-0: GPU 7" in done.stdout


@pytest.mark.processes
def test_render_command_without_gpus_uses_the_cpu(tmp_path: Path) -> None:
    done = run_cli("render", "--run-dir", "run", "--gpus", "none", "--spare-slots", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    s = DeploySettings.load(tmp_path / "run")
    cores = available_cores()  # the sizes follow this machine's cores
    workers = default_cpu_workers(cores)
    assert [slot.name for slot in s.slots()] == [f"worker-cpu-{k}" for k in range(workers + 1)]
    assert [slot.autostart for slot in s.slots()] == [True] * workers + [False]
    assert s.gateway_processes == default_gateway_processes(cores)
    assert s.model_repository == ROOT / "deploy" / "model_repository"


@pytest.mark.processes
def test_render_command_refuses_bad_options_with_a_message(tmp_path: Path) -> None:
    done = run_cli("render", "--run-dir", "run", "--gpus", "0,zero", cwd=tmp_path)
    assert done.returncode == 2 and "--gpus" in done.stderr and "'zero' is not a GPU index" in done.stderr
    done = run_cli("render", "--run-dir", "run", "--gpus", "none", "--cpu-workers", "0", cwd=tmp_path)
    assert done.returncode == 2 and "no worker slots" in done.stderr
    assert not (tmp_path / "run" / "supervisord.conf").exists()


@pytest.mark.processes
def test_serve_refuses_a_gpu_this_host_lacks_before_starting_anything(tmp_path: Path) -> None:
    """``render`` may write a configuration for another host; ``serve`` runs here, so a GPU nvidia-smi does
    not list is refused at once, as ``add-worker --gpu`` does (a worker pinned to it fails every start)."""
    done = run_cli("serve", "--run-dir", "run", "--gpus", "0,99", "--port", "1", cwd=tmp_path)
    assert done.returncode == 2 and "--gpus" in done.stderr, done.stderr
    assert re.search(r"this host has no GPU (0, )?99 \(nvidia-smi and NVML list ", done.stderr), done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.processes
def test_every_option_comes_from_its_variable_the_repeated_model_too(tmp_path: Path) -> None:
    """TORCHGATE_RENDER_<OPTION>, as the README says of every option: --model's was TORCHGATE_RENDER_MODELS
    (after its parameter), so TORCHGATE_SERVE_MODEL=digits was ignored and every model served."""
    repository = tmp_path / "repo"
    for name in ("digits", "other", "third"):
        shutil.copytree(DEFAULT_REPOSITORY / "digits", repository / name)
        config = repository / name / "config.toml"
        config.write_text(config.read_text().replace('name = "digits"', f'name = "{name}"'))
    env = {
        **os.environ,
        "TORCHGATE_RENDER_MODEL_REPOSITORY": str(repository),
        "TORCHGATE_RENDER_MODEL": "digits third",
        "TORCHGATE_RENDER_GPUS": "none",
        "TORCHGATE_RENDER_PORT": "8124",
    }
    done = run(
        [sys.executable, "-m", "deploy.cli", "render", "--run-dir", "run"], timeout=60, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    s = DeploySettings.load(tmp_path / "run")
    assert list(s.models) == ["digits", "third"] and s.port == 8124


@pytest.mark.processes
def test_worker_help_is_forwarded_to_the_worker_command(tmp_path: Path) -> None:
    done = run_cli("worker", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Usage: torchgate worker" in done.stdout and "--model-repository" in done.stdout


@pytest.mark.processes
def test_serve_refuses_a_port_in_use_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli("serve", "--run-dir", "run", "--gpus", "none", "--port", str(port), cwd=tmp_path)
    assert done.returncode == 1 and f"127.0.0.1:{port} is already in use" in done.stderr
    assert not (tmp_path / "run" / "supervisord.pid").exists()


def test_an_address_that_cannot_be_bound_is_named_not_called_in_use() -> None:
    from deploy.serve import ServeError, port_in_use

    for host, why in (("a b", "check --host"), ("192.0.2.1", "Cannot assign requested address")):
        with pytest.raises(ServeError, match=why):  # was "already in use (another torchgate?)"
            port_in_use(host, 8000)


@pytest.mark.processes
def test_serve_refuses_a_broken_model_repository_with_its_file_and_key(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    (repository / "digits" / "1").mkdir(parents=True)
    (repository / "digits" / "config.toml").write_text('name = "digits"\nbackend = "onnx"\n')
    done = run_cli(
        "serve", "--run-dir", "run", "--gpus", "none", "--model-repository", str(repository), cwd=tmp_path
    )
    assert done.returncode == 1
    assert "config.toml" in done.stderr and "'backend'" in done.stderr
    assert not (tmp_path / "run" / "supervisord.pid").exists()


def test_the_gateway_is_told_which_models_the_workers_load(tmp_path: Path) -> None:
    from deploy.supervisor_conf import gateway_environment

    assert "TORCHGATE_MODELS" not in gateway_environment(DeploySettings(run_dir=tmp_path, cpu_workers=1))
    served = DeploySettings(run_dir=tmp_path, cpu_workers=1, models=("digits",))
    assert gateway_environment(served)["TORCHGATE_MODELS"] == "digits"


def placed_repository(root: Path, group: str) -> Path:
    """A repository of the shipped `digits` and a copy `big` with the given [[instance_group]] tables."""
    import shutil

    shutil.copytree(ROOT / "deploy" / "model_repository" / "digits", root / "digits")
    shutil.copytree(ROOT / "deploy" / "model_repository" / "digits", root / "big")
    config = (root / "big" / "config.toml").read_text().replace('name = "digits"', 'name = "big"')
    (root / "big" / "config.toml").write_text(
        config.replace("[dynamic_batching]", group + "\n[dynamic_batching]")
    )
    return root


@pytest.mark.processes
def test_a_model_with_an_instance_group_gets_slots_of_its_own(tmp_path: Path) -> None:
    repo = placed_repository(
        tmp_path / "repo", '[[instance_group]]\nkind = "KIND_GPU"\ncount = 2\ngpus = [1]'
    )
    done = run_cli(
        "render", "--run-dir", "run", "--gpus", "0,1", "--model-repository", str(repo), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    procs = programs(parsed(tmp_path / "run"))
    workers = {name: p for name, p in procs.items() if name.startswith("worker-")}
    assert sorted(workers) == ["worker-big-gpu1-0", "worker-big-gpu1-1", "worker-gpu0-0", "worker-gpu1-0"]
    assert workers["worker-big-gpu1-1"].environment["CUDA_VISIBLE_DEVICES"] == "1"
    assert workers["worker-big-gpu1-0"].command.endswith("--model big")
    assert workers["worker-gpu0-0"].command.endswith("--model digits")  # the default slots: the rest
    assert "worker-big-gpu1-0: GPU 1, " in done.stdout and "serves big" in done.stdout
    assert (
        DeploySettings.load(tmp_path / "run").placements == DeploySettings.load(tmp_path / "run").placements
    )


@pytest.mark.processes
def test_cpu_instance_groups_on_a_host_without_gpus(tmp_path: Path) -> None:
    repo = placed_repository(tmp_path / "repo", '[[instance_group]]\nkind = "KIND_AUTO"')
    options = ("--gpus", "none", "--cpu-workers", "2", "--model-repository", str(repo))
    done = run_cli("render", "--run-dir", "run", *options, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    s = DeploySettings.load(tmp_path / "run")
    assert [(x.name, x.gpu, x.models) for x in s.slots()] == [
        ("worker-cpu-0", None, ()),
        ("worker-cpu-1", None, ()),
        ("worker-big-cpu-0", None, ("big",)),
    ]
    assert s.slot_models == ("digits",)


@pytest.mark.parametrize(
    "args, group, message",
    [
        (("--model", "nosuch"), "", "no model 'nosuch'"),
        (("--gpus", "none"), '[[instance_group]]\nkind = "KIND_GPU"', "instance_group[0] asks for KIND_GPU"),
        (
            ("--gpus", "0"),
            '[[instance_group]]\nkind = "KIND_GPU"\ngpus = [3]',
            "instance_group[0].gpus lists [3]",
        ),
        ((), "[[instance_grup]]", "unknown table [[instance_grup]] (did you mean [[instance_group]]?)"),
    ],
)
@pytest.mark.processes
def test_render_validates_the_repository(
    tmp_path: Path, args: tuple[str, ...], group: str, message: str
) -> None:
    repo = placed_repository(tmp_path / "repo", group)
    done = run_cli("render", "--run-dir", "run", "--model-repository", str(repo), *args, cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    assert message in done.stderr
    assert not (tmp_path / "run" / "supervisord.conf").exists()


def parsed(run_dir: Path) -> ServerOptions:
    """Parse a rendered run directory the way supervisord does at start-up."""
    options = ServerOptions()
    options.realize(args=["-c", str(run_dir / "supervisord.conf")])
    return options
