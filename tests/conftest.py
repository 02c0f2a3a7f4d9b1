"""Wires the harness to pytest: the ``processes`` marker, fixtures that clean up. Exports no helpers."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from hypothesis import settings

from harness import DEFAULT_REPOSITORY, Processes, Stack, copy_digits, free_port, short_dir
from harness.procs import allow_processes
from harness.wheel import InstalledWheel, build_and_install

# Property tests check results, never speed: a loaded two-core machine must not fail them on a deadline.
settings.register_profile("torchgate", deadline=None)
settings.load_profile("torchgate")
_MADE_BASETEMP = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)  # before pytest's own, which reads --basetemp
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "xdist_group(name): tests that run one after another in one xdist worker, whatever their files",
    )
    # A run directory under tmp_path holds unix sockets, whose paths must stay under 100 bytes; pytest's own
    # folders (/tmp/pytest-of-USER/pytest-N/popen-gwN/...) grow with N and the user's name. A folder of this
    # run's own, unless one is given; xdist's workers get one inside it (popen-gwN).
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="tgt-")
        config.stash[_MADE_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    made = config.stash.get(_MADE_BASETEMP, None)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``make test`` runs two xdist workers with ``--dist loadgroup``: a file's tests stay together (its
    module-scoped deployment starts once) unless a test names a group of its own, such as the tests that look
    at everything in /dev/shm, which must not see another test's regions come and go. Runs before xdist's own
    hook, which reads the groups."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Only a test marked ``processes`` may start one (``make unit`` runs the others, quickly)."""
    allow_processes(item.get_closest_marker("processes") is not None)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    allow_processes(True)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.kill_all()


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context: zmq.Context = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


@pytest.fixture(scope="module")
def digits_model() -> object:
    """The default model, loaded in the test process to compute reference answers."""
    import torch

    return torch.export.load(str(DEFAULT_REPOSITORY / "digits" / "1" / "model.pt2")).module()


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    """torchgate's wheel, built as a user would and installed into a folder of its own, once per session."""
    return build_and_install(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def extensions_server() -> Iterator[tuple[Stack, int]]:
    """One `torchgate serve` (and its gRPC port) for the tests of Triton's logging extension, response cache
    and perf_analyzer: one gateway process, client shared memory allowed, a response cache; ``digits``, and
    ``digits_cached``, the same model with ``[response_cache] enable = true``."""
    with short_dir() as base:
        grpc_port = free_port()
        repository = base / "repo"
        copy_digits(repository)
        copy_digits(base / "copy")
        (base / "copy" / "digits").rename(repository / "digits_cached")
        config = repository / "digits_cached" / "config.toml"
        text = config.read_text().replace('name = "digits"', 'name = "digits_cached"')
        config.write_text(text + "\n[response_cache]\nenable = true\n")
        stack = Stack.at(base, repository)
        options = ["--gpus", "none", "--cpu-workers", "1", "--worker-threads", "1", "--worker-startsecs", "2"]
        options += ["--gateway-processes", "1", "--gateway-threads", "4", "--grpc-port", str(grpc_port)]
        options += ["--model-repository", str(repository), "--allow-client-shm"]
        with stack.serve(*options, "--cache-config", "local,size=1048576") as d:
            d.wait_serving(timeout=120)
            yield d, grpc_port
