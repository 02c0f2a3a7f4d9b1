#!/usr/bin/env bash
# On the offline GPU host, from the repository root with .gpu/ carried (benchmarks/gpu_wheelhouse.sh fills it):
# install the wheels into /tmp, put wrk and the `torchgate` / `supervisorctl` commands on PATH, run the GPU
# tests, then `python3 -m benchmarks.gpu --mode gpu`, everything bounded so that the whole script ends within
# GPU_HOST_SECONDS (default 580, for a device call of timeout_s=600), and leave the report, the raw results and
# the logs in $OUT (7 files). Extra benchmark flags: GPU_BENCH_ARGS="..."; GPU_TESTS=0 skips the tests.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/tg-gpu-out}
py=${PYTHON:-python3}
budget=${GPU_HOST_SECONDS:-580}
mkdir -p "$out"
site=/tmp/tg-site lit=/tmp/tg-litserve wrkdir=/tmp/tg-wrk bin=/tmp/tg-bin work=/tmp/tg-work
left() { echo $((budget - SECONDS)); }
# End every process whose command line names folder $1 (what a killed test or benchmark left), by pid.
end_under() {
  "$py" -c 'import contextlib, os, sys, psutil
for p in psutil.process_iter(["cmdline"]):
    if p.pid != os.getpid() and any(sys.argv[1] in a for a in p.info["cmdline"] or ()):
        with contextlib.suppress(psutil.Error): p.kill()' "$1"
}
if ! ls .gpu/whl/*.whl >/dev/null 2>&1; then
  echo "no wheels in .gpu/whl: run benchmarks/gpu_wheelhouse.sh where there is network, and carry .gpu/" >&2
  exit 2
fi
"$py" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' 2>/dev/null \
  || echo "warning: $("$py" -V 2>&1), but .gpu/ holds wheels for Python 3.12 (GPU_PYTHON_VERSION for others)" >&2
rm -rf "$site" "$lit" "$wrkdir" "$bin" "$work"
"$py" -m pip install -q --no-index --no-deps --target "$site" .gpu/whl/*.whl >"$out/install.log" 2>&1 \
  || { echo "installing .gpu/whl failed:" >&2; tail -20 "$out/install.log" >&2; exit 2; }
lit_args=()
if ls .gpu/litserve/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --target "$lit" .gpu/litserve/*.whl >>"$out/install.log" 2>&1 \
    && lit_args=(--litserve-path "$lit") || echo "LitServe's wheels did not install; it will be skipped" >&2
fi
mkdir -p "$wrkdir" "$bin"
for deb in .gpu/deb/*.deb; do [ -e "$deb" ] && dpkg -x "$deb" "$wrkdir"; done
if [ -x "$wrkdir/usr/bin/wrk" ]; then
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$wrkdir/usr/lib/x86_64-linux-gnu" "$wrkdir/usr/bin/wrk" >"$bin/wrk"
  chmod +x "$bin/wrk"
  # wrk -v exits 1 even when it works: a missing shared library is what this catches (then: the Python load)
  { "$bin/wrk" -v 2>&1 || true; } | grep -q '^wrk ' \
    || { echo "wrk does not run here: $("$bin/wrk" -v 2>&1 | head -1)" >&2; rm -f "$bin/wrk"; }
fi
# What `pip install torchgate` would put beside python3 (the tests run them from TORCHGATE_TEST_BIN).
printf '#!/bin/sh\nexec %s -m deploy.cli "$@"\n' "$py" >"$bin/torchgate"
printf '#!/bin/sh\nexec %s -m supervisor.supervisorctl "$@"\n' "$py" >"$bin/supervisorctl"
chmod +x "$bin/torchgate" "$bin/supervisorctl"
export PATH="$bin:$PATH" PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 \
  TORCHGATE_TEST_BIN="$bin" PYTHONUNBUFFERED=1
{ nvidia-smi; "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'; } \
  >"$out/host.txt" 2>&1
if [ "${GPU_TESTS:-1}" != 0 ]; then
  # The tests that need CUDA (they skip without it), bounded: they must not eat the benchmark's time.
  tests_tmp=/tmp/tg-tests
  timeout --kill-after=10 "${GPU_TESTS_SECONDS:-90}" "$py" -m pytest -q -p no:cacheprovider -m gpu \
    -o addopts=-ra --basetemp="$tests_tmp" tests/test_pipeline.py tests/test_pinned.py \
    tests/test_deploy_supervisor.py >"$out/gpu-tests.log" 2>&1
  echo "GPU tests: exit status $? ($(tail -1 "$out/gpu-tests.log")); $(left) s left" | tee -a "$out/host.txt"
  end_under "$tests_tmp"  # a test stopped by the timeout leaves what it started, in sessions of their own
fi
limit=$(($(left) - 75))  # room to stop the systems (up to 45 s), then pack the logs
if [ "$limit" -lt 60 ]; then echo "only $limit s left for the benchmark: not started" >&2; exit 3; fi
# shellcheck disable=SC2086
timeout --signal=TERM --kill-after=45 "$limit" "$py" -m benchmarks.gpu --mode gpu --output "$out/benchmarks-gpu.md" \
  --results "$out/results.json" --work-dir "$work" --formats binary,json,shm "${lit_args[@]}" ${GPU_BENCH_ARGS:-} \
  2>&1 | tee "$out/bench.log"
rc=${PIPESTATUS[0]}
end_under "$work"  # what a benchmark killed mid-stop left running
tar -czf "$out/logs.tgz" -C "$work" --exclude='*.pt' --exclude='*.pt2' --exclude='*.bin' systems 2>/dev/null
echo "exit status $rc in $SECONDS s; results in $out: $(ls "$out" | tr '\n' ' ')"
exit "$rc"
