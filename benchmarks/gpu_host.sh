#!/usr/bin/env bash
# On the offline GPU host, from the repository root with .gpu/ carried (benchmarks/gpu_wheelhouse.sh fills it):
# install the wheels into /tmp, unpack wrk, run `python3 -m benchmarks.gpu --mode gpu` bounded in time, and
# copy the report, the raw results and the systems' logs to $OUT. Extra flags: GPU_BENCH_ARGS="...".
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/tg-gpu-out}
py=${PYTHON:-python3}
limit=${GPU_BENCH_SECONDS:-560}
mkdir -p "$out"
site=/tmp/tg-site lit=/tmp/tg-litserve wrkdir=/tmp/tg-wrk bin=/tmp/tg-bin work=/tmp/tg-work
if ! ls .gpu/whl/*.whl >/dev/null 2>&1; then
  echo "no wheels in .gpu/whl: run benchmarks/gpu_wheelhouse.sh where there is network, and carry .gpu/" >&2
  exit 2
fi
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
fi
export PATH="$bin:$PATH" PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
# shellcheck disable=SC2086
timeout --signal=TERM --kill-after=20 "$limit" "$py" -m benchmarks.gpu --mode gpu --output "$out/benchmarks-gpu.md" \
  --work-dir "$work" "${lit_args[@]}" ${GPU_BENCH_ARGS:-} 2>&1 | tee "$out/bench.log"
rc=${PIPESTATUS[0]}
cp "$work/results.json" "$out/" 2>/dev/null
tar -czf "$out/logs.tgz" -C "$work" --exclude='*.pt' --exclude='*.pt2' --exclude='*.bin' systems 2>/dev/null
echo "exit status $rc; results in $out"
exit "$rc"
