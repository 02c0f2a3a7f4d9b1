"""Probe the gateway's front door as an outside attacker would, and print what each attack did.

    .venv/bin/python -m benchmarks.front_door [--slow 200] [--seconds 12]

Starts a real stack with default gateway settings (1 gunicorn process x 32 threads, dispatcher, one digits
worker), then, one after the other: slow clients (half trickle a request head, half a body, one byte each per
0.5 s) while liveness and inference are timed; idle connections; 2,000 made-up HTTP methods (then the size of
/metrics); a JSON body of 3 million empty arrays in an unused field (then the gateway's RSS); chunked bodies
past
the limit, with a size of 18 hex digits, and never finished. Run it against two checkouts to compare.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from harness import DIGITS_BODY, Stack, copy_digits

INFER = "/v2/models/digits/infer"


def timed(send: Any) -> tuple[int, float]:
    start = time.monotonic()
    try:
        status = send().status_code
    except requests.RequestException:
        status = 0
    return status, time.monotonic() - start


def probe(url: str, count: int, timeout: float) -> dict[str, Any]:
    """Liveness and inference ``count`` times each: how many answered 200 within ``timeout``, worst
    latency."""
    results = []
    for _ in range(count):
        results.append(timed(lambda: requests.get(url + "/v2/health/live", timeout=timeout)))
        results.append(timed(lambda: requests.post(url + INFER, json=DIGITS_BODY, timeout=timeout)))
    ok = [s for s, _ in results if s == 200]
    return {"answered": f"{len(ok)}/{len(results)}", "worst_s": round(max(t for _, t in results), 2)}


def slow_clients(port: int, count: int, seconds: float, url: str) -> dict[str, Any]:
    stop = threading.Event()
    closed = [0]
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4000
    body = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 60000000\r\n\r\n".encode() + b" " * 100000

    def run() -> None:
        conns: list[list[Any]] = []
        for i in range(count):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.setblocking(False)
                conns.append([sock, head if i % 2 else body, 0])
            except OSError:
                closed[0] += 1
        while not stop.wait(0.5):
            for entry in conns:
                sock, data, sent = entry
                try:
                    sock.send(data[sent % len(data) : sent % len(data) + 1])
                    entry[2] = sent + 1
                except BlockingIOError:
                    pass
                except OSError:
                    closed[0] += 1
                    entry[2] = -(10**9)  # counted once
        for sock, _, _ in conns:
            sock.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(1.0)
    start = time.monotonic()
    result = probe(url, 10, timeout=seconds)
    time.sleep(max(0.0, seconds - (time.monotonic() - start)))  # the attack lasts `seconds` in any case
    stop.set()
    thread.join(timeout=30)
    return {**result, "slow connections closed by the server": closed[0]}


def idle(port: int, count: int, url: str) -> dict[str, Any]:
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    try:
        return probe(url, 5, timeout=30)
    finally:
        for sock in socks:
            sock.close()


def raw(port: int, data: bytes, wait: float = 15.0) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            sock.sendall(data)
            answer = sock.recv(200)
        except TimeoutError:
            return f"no answer in {wait:g} s"
        except OSError as exc:
            return f"{type(exc).__name__}"
    return answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed without an answer"


def chunked(port: int, chunks: list[bytes], wait: float = 15.0) -> str:
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        answer = [b""]

        def read() -> None:
            try:
                answer[0] = sock.recv(200)
            except OSError:
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            sock.sendall(head)
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass
        reader.join(timeout=wait)
    return answer[0].split(b"\r\n", 1)[0].decode(errors="replace") or f"no answer in {wait:g} s"


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tg-fd-") as base:
        root = Path(base)
        copy_digits(root / "repo")
        with Stack.at(root, root / "repo") as stack:
            stack.start(gateway_processes=1, gateway_threads=32)
            url, port = stack.url, stack.port
            gateway = psutil.Process(stack.pids()["gateway-0"])
            report: dict[str, Any] = {}
            report["baseline"] = probe(url, 5, timeout=30)
            junk = b"[" + b"[]," * 3_000_000 + b"[]]"
            doc = json.dumps(DIGITS_BODY).encode()[:-1] + b', "junk": ' + junk + b"}"
            peak = peak_rss(gateway.pid)
            status = requests.post(url + INFER, data=doc, timeout=60).status_code
            report["3M empty arrays in an unused field (9 MB)"] = {
                "status": status,
                "gateway peak RSS growth MiB": round((peak_rss(gateway.pid) - peak) / 2**20, 1),
            }
            report[f"{args.slow} slow clients"] = slow_clients(port, args.slow, args.seconds, url)
            report["40 idle connections"] = idle(port, 40, url)
            for i in range(2000):
                raw(port, f"XM{i} /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            report["/metrics bytes after 2000 made-up methods"] = len(
                requests.get(url + "/metrics", timeout=30).content
            )
            piece = b" " * (1 << 20)
            doc = json.dumps(DIGITS_BODY).encode()
            report["chunked: a document then 80 MiB of spaces"] = chunked(
                port, [b"%x\r\n%s\r\n" % (len(doc), doc)] + [b"%x\r\n%s\r\n" % (len(piece), piece)] * 80
            )
            report["chunked: size FFFFFFFFFFFFFFFFFF"] = chunked(port, [b"FFFFFFFFFFFFFFFFFF\r\n"])
            report["chunked: size -1"] = chunked(port, [b"-1\r\n"])
            report["chunked: never finished"] = chunked(port, [b"2\r\n{}\r\n"], wait=30.0)
            report["timeout parameter of 400 digits"] = requests.post(
                url + INFER, json={**DIGITS_BODY, "parameters": {"timeout": 10**400}}, timeout=30
            ).status_code
            for name, value in report.items():
                print(f"{name}: {value}")


if __name__ == "__main__":
    main()
