"""A benchmark's client-side shared memory (Triton's system shared-memory extension, gateway/client_shm.py):
POSIX shared-memory objects it creates and registers with a server by HTTP, and the infer requests that name
them, as a Triton client on the server's host sends them."""

from __future__ import annotations

import json
from multiprocessing import shared_memory

import numpy as np

from benchmarks.models import WORKLOAD_SPECS, Sample
from benchmarks.payloads import HttpRequest, oip_path
from benchmarks.procs import http_call

FP_BYTES = {"FP32": 4, "FP16": 2, "FP64": 8, "INT64": 8, "INT32": 4}


class ClientRegions:
    """Regions one benchmark client registered with the server at ``url``; :meth:`close` frees them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.objects: dict[str, shared_memory.SharedMemory] = {}

    def add(self, name: str, size: int, data: bytes = b"") -> None:
        """Create an object of ``size`` bytes holding ``data`` and register it as region ``name``."""
        memory = shared_memory.SharedMemory(create=True, size=size)
        self.objects[name] = memory
        assert memory.buf is not None
        memory.buf[: len(data)] = data
        doc = {"key": f"/{memory.name.lstrip('/')}", "offset": 0, "byte_size": size}
        status, _, body = http_call(
            f"{self.url}/v2/systemsharedmemory/region/{name}/register",
            json.dumps(doc).encode(),
            {"Content-Type": "application/json"},
        )
        if status != 200:
            raise RuntimeError(f"registering region {name}: {status} {body[:200]!r}")

    def read(self, name: str, size: int) -> bytes:
        buf = self.objects[name].buf
        assert buf is not None
        return bytes(buf[:size])

    def request(self, workload: str, sample: Sample) -> tuple[HttpRequest, str, int]:
        """An infer request for one sample (batch dim 1) whose inputs and first output lie in new regions;
        return it with its output's region and byte size. Requests built from one sample share nothing,
        but a load generator sends each body many times at once: their answers overwrite one another in the
        output region, which a throughput run does not read."""
        spec = WORKLOAD_SPECS[workload]
        k = len(self.objects)
        inputs = []
        for t in spec.inputs:
            blob = np.ascontiguousarray(sample[t.name]).astype(
                np.dtype(sample[t.name].dtype).newbyteorder("<")
            )
            data = blob.tobytes()
            self.add(f"in-{k}-{t.name}", len(data), data)
            inputs.append(
                {
                    "name": t.name,
                    "shape": [1, *blob.shape],
                    "datatype": t.datatype,
                    "parameters": {
                        "shared_memory_region": f"in-{k}-{t.name}",
                        "shared_memory_byte_size": len(data),
                    },
                }
            )
        out = spec.outputs[0]
        size = FP_BYTES[out.datatype] * int(np.prod(out.dims))
        self.add(f"out-{k}", size)
        outputs = [
            {
                "name": out.name,
                "parameters": {"shared_memory_region": f"out-{k}", "shared_memory_byte_size": size},
            }
        ]
        body = json.dumps({"inputs": inputs, "outputs": outputs}, separators=(",", ":")).encode()
        return HttpRequest(oip_path(workload), body, {"Content-Type": "application/json"}), f"out-{k}", size

    def close(self) -> None:
        """Unlink every object (the server, stopped or not, keeps nothing of them once it unmaps)."""
        for memory in self.objects.values():
            memory.close()
            try:
                memory.unlink()
            except FileNotFoundError:
                pass
        self.objects.clear()
