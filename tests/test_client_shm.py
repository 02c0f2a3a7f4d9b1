"""Triton's system shared-memory extension (gateway/client_shm.py): regions clients register, tensors read
from and written to them; first the registry alone on real POSIX shared memory, then under `torchgate serve
--allow-client-shm` with tritonclient over HTTP and gRPC, across gateway processes and a kill -9."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from gateway.client_shm import DISABLED, ClientRegions
from gateway.codec import RegionSlice, parse_infer_request
from gateway.errors import Forbidden, InvalidArgument, NotFound
from harness import Stack, copy_digits, free_port, short_dir, wait_for, write_python_model
from harness.apps import gateway_app

pytestmark = pytest.mark.xdist_group("dev-shm")  # looks at all of /dev/shm: never beside another such test
TIMEOUT = 30.0


class Objects:
    """POSIX shared-memory objects a test creates, as a client would; every one unlinked afterwards."""

    def __init__(self) -> None:
        self.made: list[shared_memory.SharedMemory] = []

    def make(self, size: int) -> shared_memory.SharedMemory:
        memory = shared_memory.SharedMemory(f"/tg-test-{uuid.uuid4().hex[:12]}", create=True, size=size)
        self.made.append(memory)
        return memory

    def close(self) -> None:
        for memory in self.made:
            memory.close()
            try:
                memory.unlink()
            except FileNotFoundError:
                pass


def buf(memory: shared_memory.SharedMemory) -> memoryview:
    assert memory.buf is not None
    return memory.buf


@pytest.fixture
def objects() -> Iterator[Objects]:
    made = Objects()
    yield made
    made.close()


def test_register_status_and_unregister_as_triton_words_them(
    tmp_path: Path, objects: Objects, monkeypatch: pytest.MonkeyPatch
) -> None:
    regions = ClientRegions(tmp_path)
    memory = objects.make(4096)
    regions.register("in", memory.name, 16, 1024)
    assert regions.status() == [{"name": "in", "key": memory.name, "offset": 16, "byte_size": 1024}]
    assert regions.status("in") == regions.status()
    with pytest.raises(InvalidArgument, match="shared memory region 'in' already in manager"):
        regions.register("in", memory.name, 0, 8)
    with pytest.raises(InvalidArgument, match="'in2': invalid args"):
        regions.register("in2", memory.name, 4000, 1024)  # past the end of the object
    with pytest.raises(InvalidArgument, match="Unable to open shared memory region: '/tg-test-none'"):
        regions.register("gone", "/tg-test-none", 0, 8)
    for key in ("/a/b", "../etc/passwd", "/..", ""):
        with pytest.raises(InvalidArgument, match="is not a POSIX shared-memory name"):
            regions.register("bad", key, 0, 8)
    with pytest.raises(InvalidArgument, match="no 'byte_size' field"):
        regions.register("bad", memory.name, 0, None)
    with pytest.raises(InvalidArgument, match="'offset' must be a non-negative integer"):
        regions.register("bad", memory.name, -1, 8)
    with monkeypatch.context() as patched:
        patched.setattr("gateway.client_shm.MAX_REGIONS", 1)
        with pytest.raises(InvalidArgument, match="1 shared memory regions are registered, the most"):
            regions.register("in3", memory.name, 0, 8)
    regions.unregister("never registered")  # no error, as in Triton
    regions.unregister("in")
    assert regions.status() == []
    with pytest.raises(NotFound, match="Unable to find system shared memory region: 'in'"):
        regions.status("in")
    assert os.listdir(tmp_path) == []  # no record or temporary file left


def test_off_unless_allowed(objects: Objects) -> None:
    regions = ClientRegions(None)
    assert regions.status() == [] and not regions.enabled
    for call in (
        lambda: regions.register("r", objects.make(64).name, 0, 64),
        lambda: regions.unregister(),
        lambda: regions.read(RegionSlice("r", 4), 1 << 20, "input 'x'"),
    ):
        with pytest.raises(Forbidden, match="--allow-client-shm"):
            call()
    assert "--allow-client-shm" in DISABLED


def test_inputs_are_copied_out_and_outputs_written_in_place(tmp_path: Path, objects: Objects) -> None:
    regions = ClientRegions(tmp_path)
    memory = objects.make(8192)
    buf(memory)[5000:5008] = b"abcdefgh"
    regions.register("r", memory.name, 4096, 4096)  # a region that starts past a page boundary
    data = regions.read(RegionSlice("r", 8, 904), 1 << 20, "input 'x'")
    assert data == b"abcdefgh" and isinstance(data, bytes)
    buf(memory)[5000:5008] = b"changed!"
    assert data == b"abcdefgh"  # a copy: what the gateway checked is what the worker computes
    regions.write(RegionSlice("r", 16, 100), b"0123456789", "output 'y'")
    assert bytes(buf(memory)[4196:4206]) == b"0123456789"
    with pytest.raises(InvalidArgument, match=r"for output 'y' \(4 bytes\) should be at least 10 bytes"):
        regions.write(RegionSlice("r", 4, 0), b"0123456789", "output 'y'")
    with pytest.raises(InvalidArgument, match="Invalid offset \\+ byte size for shared memory region: 'r'"):
        regions.read(RegionSlice("r", 8, 4090), 1 << 20, "input 'x'")
    with pytest.raises(InvalidArgument, match="Invalid offset for shared memory region: 'r'"):
        regions.read(RegionSlice("r", 1, 4096), 1 << 20, "input 'x'")
    with pytest.raises(InvalidArgument, match="more than the 1024 bytes left of what a request may carry"):
        regions.read(RegionSlice("r", 2048), 1024, "input 'x'")
    with pytest.raises(NotFound, match="Unable to find shared memory region: 'other'"):
        regions.read(RegionSlice("other", 8), 1 << 20, "input 'x'")


def test_a_requests_inputs_in_regions_are_bounded_together_as_a_body(
    tmp_path: Path, objects: Objects
) -> None:
    app = gateway_app(tmp_path, client_shm_dir=str(tmp_path / "regions"), max_body_bytes=1024)
    (tmp_path / "regions").mkdir()
    gateway = app.extensions["torchgate"]
    model = gateway.catalog.get("digits", None)[0]
    try:
        memory = objects.make(4096)
        gateway.regions.register("r", memory.name, 0, 4096)
        shared = {"shared_memory_region": "r", "shared_memory_byte_size": 700}
        doc = {
            "inputs": [{"name": n, "datatype": "UINT8", "shape": [700], "parameters": shared} for n in "ab"]
        }
        request = parse_infer_request(json.dumps(doc).encode(), None)
        with pytest.raises(
            InvalidArgument, match="input 'b': shared_memory_byte_size 700 is more than the 324"
        ):
            gateway.read_regions(request, model)  # 700 + 700 bytes: more than one body may carry
        del doc["inputs"][1]
        request = parse_infer_request(json.dumps(doc).encode(), None)
        assert gateway.read_regions(request, model) is None  # small: copied out, no segment
        assert request.inputs[0].data == bytes(700)
    finally:
        gateway.client.close()


def test_large_inputs_are_copied_straight_into_the_segment_they_travel_in(
    tmp_path: Path, objects: Objects
) -> None:
    app = gateway_app(tmp_path, client_shm_dir=str(tmp_path / "regions"))
    (tmp_path / "regions").mkdir()
    gateway = app.extensions["torchgate"]
    model = gateway.catalog.get("digits", None)[0]
    try:
        memory = objects.make(1 << 20)
        buf(memory)[:8] = b"12345678"
        gateway.regions.register("r", memory.name, 0, 1 << 20)
        doc = {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1024, 64],
                    "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 1024 * 64 * 4},
                }
            ]
        }
        request = parse_infer_request(json.dumps(doc).encode(), None)
        lease = gateway.read_regions(request, model)
        assert lease is not None
        data = request.inputs[0].data
        assert isinstance(data, memoryview) and data.obj is lease.segment.memory  # no copy of its own
        assert bytes(data[:8]) == b"12345678"
        buf(memory)[:8] = b"changed!"
        assert bytes(data[:8]) == b"12345678"  # still a copy of what the client had
        gateway.client.release_body(lease)
    finally:
        gateway.client.close()


def test_every_process_sees_the_same_registrations(tmp_path: Path, objects: Objects) -> None:
    here, there = ClientRegions(tmp_path), ClientRegions(tmp_path)  # two gateway processes
    first, second = objects.make(64), objects.make(64)
    buf(first)[:4], buf(second)[:4] = b"one!", b"two!"
    here.register("r", first.name, 0, 64)
    assert there.read(RegionSlice("r", 4), 64, "input 'x'") == b"one!"
    here.unregister("r")
    with pytest.raises(NotFound):
        there.read(RegionSlice("r", 4), 64, "input 'x'")
    here.register("r", second.name, 0, 64)  # the same name again, another object: mapped anew
    assert there.read(RegionSlice("r", 4), 64, "input 'x'") == b"two!"
    here.unregister()
    assert there.status() == []
    with pytest.raises(NotFound):
        there.read(RegionSlice("r", 4), 64, "input 'x'")
    assert there._mapped == {}  # its mapping dropped: unmapped once no request holds a view of it


def _mapped_here(memory: shared_memory.SharedMemory, offset: int) -> bool:
    """Whether this process maps the object ``memory`` names from ``offset`` (as /proc/self/maps lists it:
    the test's own mapping, as the client's, starts at 0)."""
    with open("/proc/self/maps") as maps:
        rows = [line.split() for line in maps]
    return any(
        len(row) == 6 and row[5] == f"/dev/shm{memory.name}" and int(row[2], 16) == offset for row in rows
    )


def test_a_region_unregistered_through_another_process_is_unmapped_here_without_a_request(
    tmp_path: Path, objects: Objects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that mapped a region drops the mapping once another process unregisters it, even if no
    request of its own comes again: else the mapping keeps the memory of an object the client unlinked."""
    monkeypatch.setattr("gateway.client_shm.WATCH_SECONDS", 0.05, raising=False)
    here, there = ClientRegions(tmp_path), ClientRegions(tmp_path)  # two gateway processes
    memory = objects.make(1 << 20)
    buf(memory)[1 << 19 : (1 << 19) + 4] = b"one!"
    here.register("r", memory.name, 1 << 19, 1 << 19)
    assert there.read(RegionSlice("r", 4), 64, "input 'x'") == b"one!"
    assert _mapped_here(memory, 1 << 19)  # by ``there`` (``here`` never mapped it)
    here.unregister("r")  # through the other process: nothing more is asked of ``there``
    deadline = time.monotonic() + TIMEOUT
    while _mapped_here(memory, 1 << 19) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _mapped_here(memory, 1 << 19), "unregistered, yet still mapped by a process that used it"
    assert there._mapped == {}


def test_an_object_replaced_removed_or_shrunk_after_registration_is_refused(
    tmp_path: Path, objects: Objects
) -> None:
    regions = ClientRegions(tmp_path)
    memory = objects.make(8192)
    regions.register("r", memory.name, 0, 8192)
    assert regions.read(RegionSlice("r", 4), 64, "input 'x'") == b"\0" * 4  # mapped here
    # shrunk: touching the mapping past the object's end would kill the process (SIGBUS); refused instead
    fd = os.open(f"/dev/shm/{memory.name.lstrip('/')}", os.O_RDWR)
    os.ftruncate(fd, 4096)
    os.close(fd)
    for process in (regions, ClientRegions(tmp_path)):  # mapped before, or mapping now
        with pytest.raises(InvalidArgument, match="now holds only 4096 bytes"):
            process.write(RegionSlice("r", 4, 8000), b"boom", "output 'y'")
    memory.unlink()  # removed: the client's writes would go nowhere the server reads
    with pytest.raises(InvalidArgument, match="was removed or replaced since the region was registered"):
        regions.read(RegionSlice("r", 4), 64, "input 'x'")
    objects.made.append(shared_memory.SharedMemory(memory.name, create=True, size=8192))  # replaced
    for process in (regions, ClientRegions(tmp_path)):
        with pytest.raises(InvalidArgument, match="was removed or replaced"):
            process.read(RegionSlice("r", 4), 64, "input 'x'")


def test_pages_of_a_sparse_object_are_allocated_before_they_are_touched(
    tmp_path: Path, objects: Objects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's object is sparse until written (tritonclient's create_shared_memory_region): touching a
    page the file system has no room for kills the process (SIGBUS, a full /dev/shm: 64 MiB in a container by
    default). The pages a use touches are allocated first, or the request refused (400)."""
    regions = ClientRegions(tmp_path)
    memory = objects.make(1 << 20)  # never written: no page allocated
    regions.register("r", memory.name, 0, 1 << 20)
    allocated: list[tuple[int, int]] = []
    real = os.posix_fallocate

    def full(fd: int, offset: int, length: int) -> None:
        allocated.append((offset, length))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(InvalidArgument, match="no memory for 4096 bytes of its object.*No space left"):
        regions.write(RegionSlice("r", 8192, 4096), bytes(4096), "output 'y'")
    with pytest.raises(InvalidArgument, match="no memory for 64 bytes"):
        regions.read(RegionSlice("r", 64, 100), 1 << 20, "input 'x'")
    assert allocated == [(4096, 4096), (100, 64)]

    def room(fd: int, offset: int, length: int) -> None:
        allocated.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", room)
    regions.write(RegionSlice("r", 8192, 4096), b"y" * 4096, "output 'y'")
    assert bytes(buf(memory)[4096:8192]) == b"y" * 4096
    del allocated[:]
    regions.write(RegionSlice("r", 8192, 4096), b"z" * 4096, "output 'y'")  # allocated by its first use
    assert regions.read(RegionSlice("r", 4, 4096), 64, "input 'x'") == b"zzzz"
    assert regions.read(RegionSlice("r", 4, 4096), 64, "input 'x'") == b"zzzz"
    assert allocated == [(4096, 4)]  # a slice's first use allocates what it touches, and no more


TINY_TMPFS = """
import os, sys
from gateway.client_shm import ClientRegions
from gateway.codec import RegionSlice
from gateway.errors import InvalidArgument
root, records = sys.argv[1:]
fd = os.open(os.path.join(root, "object"), os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 8 << 20)  # a sparse object of 8 MiB on a file system of 1 MiB, as a client makes it
os.close(fd)
regions = ClientRegions(records, shm_root=root)
regions.register("r", "/object", 0, 8 << 20)
for touch in (lambda: regions.write(RegionSlice("r", 4 << 20), bytes(4 << 20), "output 'y'"),
              lambda: regions.read(RegionSlice("r", 4 << 20), 8 << 20, "input 'x'")):
    try:
        touch()
    except InvalidArgument as exc:
        print(exc)
"""


def test_a_full_tmpfs_is_a_400_not_a_bus_error(tmp_path: Path) -> None:
    """The same on a real tmpfs of 1 MiB (in a mount namespace of its own: skipped where none can be had)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    (tmp_path / "tmpfs").mkdir()
    (tmp_path / "records").mkdir()
    script = tmp_path / "touch.py"
    script.write_text(TINY_TMPFS)
    mount = f"mount -t tmpfs -o size=1m tmpfs {tmp_path / 'tmpfs'}"
    command = f'{mount} || exit 99; exec "$0" "$@"'
    args = [sys.executable, str(script), str(tmp_path / "tmpfs"), str(tmp_path / "records")]
    for unshare in (["unshare", "-m"], ["unshare", "-rm"]):
        done = subprocess.run(
            [*unshare, "sh", "-c", command, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        if done.returncode not in (1, 99) or "unshare" not in done.stderr:
            break
    else:
        pytest.skip(f"no mount namespace with a tmpfs of its own: {done.stderr.strip()}")
    if done.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    assert done.returncode == 0, f"exit {done.returncode} (-7 or 135: SIGBUS): {done.stderr[-2000:]}"
    assert done.stdout.count("no memory for 4194304 bytes") == 2, done.stdout


def test_a_symbolic_link_or_a_folder_is_no_region(tmp_path: Path) -> None:
    root = tmp_path / "shm"
    root.mkdir()
    (root / "secret").write_bytes(b"x" * 64)
    (root / "link").symlink_to(root / "secret")
    (root / "folder").mkdir()
    regions = ClientRegions(tmp_path / "records", shm_root=str(root))
    (tmp_path / "records").mkdir()
    with pytest.raises(InvalidArgument, match="Unable to open shared memory region: '/link'"):
        regions.register("r", "/link", 0, 8)
    with pytest.raises(InvalidArgument, match="Unable to open|Invalid shared memory region"):
        regions.register("r", "/folder", 0, 8)


# -- under `torchgate serve --allow-client-shm` -------------------------------------------------------------


DOUBLE = """
import torch

class Double(torch.nn.Module):
    def forward(self, x):
        return x * 2

def build():
    return Double()
"""
WIDE = 32768  # the double model's samples: 128 KiB each, past the 64 KiB from which tensors take segments


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Stack, int]]:
    before = set(os.listdir("/dev/shm"))
    with short_dir() as base:
        grpc_port = free_port()
        repository = base / "repo"
        copy_digits(repository)
        write_python_model(repository, "double", DOUBLE, {}, width=WIDE, out=WIDE)
        stack = Stack.at(base, repository)
        options = ["--gpus", "none", "--cpu-workers", "1", "--worker-threads", "1", "--worker-startsecs", "2"]
        options += ["--gateway-processes", "2", "--gateway-threads", "4", "--grpc-port", str(grpc_port)]
        options += ["--model-repository", str(repository)]
        with stack.serve(*options, "--allow-client-shm") as d:
            d.wait_serving(timeout=120)
            yield d, grpc_port

    def left() -> set[str]:
        return {name for name in set(os.listdir("/dev/shm")) - before if not name.startswith("tg-test-")}

    # What torchgate left stays; what another test makes meanwhile (perf_analyzer's regions) goes.
    wait_for(lambda: not left(), timeout=30, interval=0.5, what="torchgate to leave nothing in /dev/shm")


def _digits() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 17, (4, 64)).astype(np.float32)


def _expected(url: str, x: np.ndarray) -> np.ndarray:
    with httpclient.InferenceServerClient(url, network_timeout=TIMEOUT) as client:
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result: np.ndarray = client.infer("digits", [inp]).as_numpy("output")
        return result


@pytest.mark.processes
def test_tritonclient_passes_tensors_in_shared_memory_over_http_and_grpc(served: tuple[Stack, int]) -> None:
    stack, grpc_port = served
    url = stack.url.removeprefix("http://")
    x = _digits()
    expected = _expected(url, x)
    out_bytes = expected.nbytes
    key = f"/tg-test-{uuid.uuid4().hex[:12]}"
    in_handle = shm.create_shared_memory_region("in", key + "-in", x.nbytes)
    out_handle = shm.create_shared_memory_region("out", key + "-out", 64 + 2 * out_bytes)
    try:
        shm.set_shared_memory_region(in_handle, [x])
        http = httpclient.InferenceServerClient(url, network_timeout=TIMEOUT)
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        http.register_system_shared_memory("in", key + "-in", x.nbytes)
        grpc.register_system_shared_memory("out", key + "-out", 64 + 2 * out_bytes)
        # registered through either server process, seen by the other
        assert {r["name"] for r in http.get_system_shared_memory_status()} == {"in", "out"}
        assert set(grpc.get_system_shared_memory_status().regions) == {"in", "out"}

        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_shared_memory("in", x.nbytes)
        out = httpclient.InferRequestedOutput("output")
        out.set_shared_memory("out", out_bytes, offset=64)
        result = http.infer("digits", [inp], outputs=[out])
        assert result.get_output("output")["shape"] == list(expected.shape)
        got = shm.get_contents_as_numpy(out_handle, np.float32, expected.shape, offset=64)
        assert np.array_equal(got, expected)

        g_inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        g_inp.set_shared_memory("in", x.nbytes)
        g_out = grpcclient.InferRequestedOutput("output")
        g_out.set_shared_memory("out", out_bytes, offset=64 + out_bytes)
        g_result = grpc.infer("digits", [g_inp], outputs=[g_out], client_timeout=TIMEOUT)
        assert list(g_result.get_output("output").shape) == list(expected.shape)
        got = shm.get_contents_as_numpy(out_handle, np.float32, expected.shape, offset=64 + out_bytes)
        assert np.array_equal(got, expected)

        # plain JSON on a new connection each time, so both gateway processes answer
        body: dict[str, Any] = {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": x.nbytes},
                }
            ],
            "outputs": [
                {
                    "name": "output",
                    "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": out_bytes},
                }
            ],
        }
        for i in range(6):
            shm.set_shared_memory_region(out_handle, [np.zeros(expected.shape, np.float32)])
            response = requests.post(
                f"{stack.url}/v2/models/digits/infer",
                json=body,
                headers={"Connection": "close"},
                timeout=TIMEOUT,
            )
            assert response.status_code == 200, response.text
            answer = response.json()["outputs"][0]
            # as Triton answers: the output's shape, no data, no parameters (Triton's C++ client refuses
            # an output's parameters without binary_data_size)
            assert answer == {"name": "output", "datatype": "FP32", "shape": list(expected.shape)}
            got = shm.get_contents_as_numpy(out_handle, np.float32, expected.shape)
            assert np.array_equal(got, expected), f"request {i}"

        # a region too small for the output fails that request alone, with a 400
        small = httpclient.InferRequestedOutput("output")
        small.set_shared_memory("out", 8)
        with pytest.raises(InferenceServerException) as info:
            http.infer("digits", [inp], outputs=[small])
        assert info.value.status() == "400" and "should be at least" in info.value.message()
        assert np.array_equal(_expected(url, x), expected)

        # unregistered through gRPC: HTTP no longer finds it, in any process
        grpc.unregister_system_shared_memory("in")
        for _ in range(4):
            response = requests.post(
                f"{stack.url}/v2/models/digits/infer",
                json=body,
                headers={"Connection": "close"},
                timeout=TIMEOUT,
            )
            assert response.status_code == 404
            assert response.json()["error"] == "Unable to find shared memory region: 'in'"
        http.unregister_system_shared_memory()
        assert http.get_system_shared_memory_status() == []
        http.close()
        grpc.close()
    finally:
        shm.destroy_shared_memory_region(in_handle)
        shm.destroy_shared_memory_region(out_handle)


@pytest.mark.processes
def test_registrations_outlive_a_gateway_process_killed_with_kill_9(served: tuple[Stack, int]) -> None:
    stack, _ = served
    url = stack.url.removeprefix("http://")
    x = _digits()
    expected = _expected(url, x)
    key = f"/tg-test-{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region("both", key, x.nbytes + expected.nbytes)
    try:
        shm.set_shared_memory_region(handle, [x])
        with httpclient.InferenceServerClient(url, network_timeout=TIMEOUT) as http:
            http.register_system_shared_memory("both", key, x.nbytes + expected.nbytes)
            stack.kill_gateway_process()
            stack.wait_ready()
        with httpclient.InferenceServerClient(url, network_timeout=TIMEOUT) as http:
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_shared_memory("both", x.nbytes)
            out = httpclient.InferRequestedOutput("output")
            out.set_shared_memory("both", expected.nbytes, offset=x.nbytes)
            http.infer("digits", [inp], outputs=[out])
            got = shm.get_contents_as_numpy(handle, np.float32, expected.shape, offset=x.nbytes)
            assert np.array_equal(got, expected)
            http.unregister_system_shared_memory("both")
    finally:
        shm.destroy_shared_memory_region(handle)


@pytest.mark.processes
def test_large_tensors_go_between_regions_and_segments_and_come_back_right(served: tuple[Stack, int]) -> None:
    """Inputs past 64 KiB are copied from the client's region into the segment they travel in, and outputs
    from the segment they come back in straight into the client's region: every byte checked, over HTTP and
    gRPC, with requests at once."""
    stack, grpc_port = served
    url = stack.url.removeprefix("http://")
    rows = [np.random.default_rng(seed).random((2, WIDE), dtype=np.float32) for seed in range(4)]
    key = f"/tg-test-{uuid.uuid4().hex[:12]}"
    size = rows[0].nbytes
    handles = [shm.create_shared_memory_region(f"big-{i}", f"{key}-{i}", 2 * size) for i in range(4)]
    try:
        with httpclient.InferenceServerClient(url, network_timeout=TIMEOUT, concurrency=4) as http:
            for i, (handle, x) in enumerate(zip(handles, rows, strict=True)):
                shm.set_shared_memory_region(handle, [x])
                http.register_system_shared_memory(f"big-{i}", f"{key}-{i}", 2 * size)

            def send(i: int) -> Any:
                inp = httpclient.InferInput("x", [2, WIDE], "FP32")
                inp.set_shared_memory(f"big-{i}", size)
                out = httpclient.InferRequestedOutput("y")
                out.set_shared_memory(f"big-{i}", size, offset=size)
                return http.async_infer("double", [inp], outputs=[out])

            def answer(i: int) -> np.ndarray:
                return shm.get_contents_as_numpy(handles[i], np.float32, [2, WIDE], offset=size)

            for pending in [send(i) for i in range(4)]:  # four at once
                pending.get_result(timeout=TIMEOUT)
            for i, x in enumerate(rows):
                assert np.array_equal(answer(i), x * 2)
            grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            shm.set_shared_memory_region(handles[0], [np.zeros((2, WIDE), np.float32)], offset=size)
            inp = grpcclient.InferInput("x", [2, WIDE], "FP32")
            inp.set_shared_memory("big-0", size)
            out = grpcclient.InferRequestedOutput("y")
            out.set_shared_memory("big-0", size, offset=size)
            grpc.infer("double", [inp], outputs=[out], client_timeout=TIMEOUT)
            got = shm.get_contents_as_numpy(handles[0], np.float32, [2, WIDE], offset=size)
            assert np.array_equal(got, rows[0] * 2)
            grpc.close()
            # an output region too small for a large output: that request alone fails, with a 400
            small = httpclient.InferRequestedOutput("y")
            small.set_shared_memory("big-1", 1024)
            inp = httpclient.InferInput("x", [2, WIDE], "FP32")
            inp.set_shared_memory("big-1", size)
            with pytest.raises(InferenceServerException) as info:
                http.infer("double", [inp], outputs=[small])
            assert info.value.status() == "400" and "should be at least" in info.value.message()
            shm.set_shared_memory_region(handles[2], [np.zeros((2, WIDE), np.float32)], offset=size)
            send(2).get_result(timeout=TIMEOUT)
            assert np.array_equal(answer(2), rows[2] * 2)
            http.unregister_system_shared_memory()
    finally:
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
