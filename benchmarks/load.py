"""Load generation with wrk: fixed concurrency and duration, a pool of request bodies, non-2xx counted as
errors.

One wrk thread drives every connection (wrk is an event loop in C; one thread leaves more of this machine's
two cores to the server under test). The Lua script cycles through the bodies, counts non-2xx answers in its
``response`` hook and prints one JSON line from ``done`` with wrk's latency percentiles.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.payloads import HttpRequest

RESULT_PREFIX = "WRKJSON "

LUA_TEMPLATE = r"""
local specs = {
%(specs)s
}
local reqs = {}
local counter = 0
non2xx = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("offset", #threads - 1)
end

function init(args)
  for i, s in ipairs(specs) do
    local f = assert(io.open(s.file, "rb"))
    local body = f:read("*a")
    f:close()
    reqs[i] = wrk.format("POST", s.path, s.headers, body)
  end
  counter = (offset or 0) %% #reqs
end

function request()
  counter = counter %% #reqs + 1
  return reqs[counter]
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non2xx") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    '%(prefix)s{"requests":%%.0f,"duration_us":%%.0f,"bytes":%%.0f,' ..
    '"connect":%%.0f,"read":%%.0f,"write":%%.0f,' ..
    '"status":%%.0f,"timeout":%%.0f,"non2xx":%%.0f,' ..
    '"p50_us":%%.0f,"p90_us":%%.0f,"p99_us":%%.0f,"max_us":%%.0f,' ..
    '"mean_us":%%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout, bad,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


class LoadError(RuntimeError):
    """wrk could not run or printed no result."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One wrk run."""

    concurrency: int
    requests: int  # completed responses, any status
    non2xx: int
    socket_errors: int  # connect, read, write errors and timeouts
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @property
    def ok(self) -> int:
        return max(0, self.requests - self.non2xx)

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors

    @property
    def throughput(self) -> float:
        """Successful responses per second."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "throughput": self.throughput, "errors": self.errors}


def wrk_path() -> str:
    """Return wrk's path or raise with how to install it."""
    path = shutil.which("wrk")
    if path is None:
        raise LoadError("wrk not found: apt-get install -y wrk")
    return path


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for these (ASCII) values


def write_script(requests: list[HttpRequest], folder: Path) -> Path:
    """Write each body to a file and a Lua script that sends them in turn; return the script's path."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for i, req in enumerate(requests):
        body_file = folder / f"body{i}.bin"
        body_file.write_bytes(req.body)
        headers = ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in req.headers.items())
        specs.append(
            f"  {{path = {_lua_string(req.path)}, file = {_lua_string(str(body_file))}, "
            f"headers = {{{headers}}}}},"
        )
    script = folder / "load.lua"
    script.write_text(LUA_TEMPLATE % {"specs": "\n".join(specs), "prefix": RESULT_PREFIX})
    return script


def parse_output(stdout: str, concurrency: int) -> LoadResult:
    """Read the JSON line printed by the script's ``done`` hook."""
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            raw = json.loads(line[len(RESULT_PREFIX) :])
            return LoadResult(
                concurrency=concurrency,
                requests=int(raw["requests"]),
                non2xx=int(raw["non2xx"]),
                socket_errors=int(raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]),
                duration_s=raw["duration_us"] / 1e6,
                p50_ms=raw["p50_us"] / 1e3,
                p90_ms=raw["p90_us"] / 1e3,
                p99_ms=raw["p99_us"] / 1e3,
                max_ms=raw["max_us"] / 1e3,
                mean_ms=raw["mean_us"] / 1e3,
            )
    raise LoadError(f"wrk printed no result:\n{stdout[-2000:]}")


def run_wrk(
    url: str,
    script: Path,
    concurrency: int,
    duration_s: float,
    timeout_s: float,
    sample: Callable[[], None] | None = None,
    sample_every_s: float = 0.5,
) -> LoadResult:
    """Run wrk against ``url`` at ``concurrency`` connections for ``duration_s``; call ``sample``
    meanwhile."""
    cmd = [
        wrk_path(),
        "-t",
        "1",
        "-c",
        str(concurrency),
        "-d",
        f"{max(1, round(duration_s))}s",
        "--timeout",
        f"{max(1, round(timeout_s))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    stop = threading.Event()
    sampler = None
    if sample is not None:

        def loop() -> None:
            while not stop.wait(sample_every_s):
                sample()

        sampler = threading.Thread(target=loop, daemon=True)
        sampler.start()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
    finally:
        stop.set()
        if sampler is not None:
            sampler.join(timeout=5)
    if done.returncode != 0:
        raise LoadError(f"wrk exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return parse_output(done.stdout, concurrency)
