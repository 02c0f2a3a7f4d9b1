#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what benchmarks/gpu_host.sh installs on the offline GPU host (Python 3.12,
# x86-64): wheels of torchgate's dependencies the host lacks, LitServe's pinned set apart, wrk's Debian packages.
# Needs network; run from anywhere in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
mkdir -p .gpu/whl .gpu/litserve .gpu/deb
download() {
  dest=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any -d "$dest" "$@"
}
download .gpu/whl flask gunicorn pyzmq supervisor orjson itsdangerous blinker nvidia-ml-py
# The set LitServe 0.2.19 ran from on that host (newer fastapi wants packages it lacks).
download .gpu/litserve litserve==0.2.19 fastapi==0.115.12 starlette==0.46.2 pydantic==2.11.4 \
  pydantic-core==2.33.2 annotated-types==0.7.0 typing-inspection==0.4.0 uvicorn==0.34.2 httptools==0.6.4
(cd .gpu/deb && apt-get download wrk libluajit-5.1-2 >/dev/null 2>&1) \
  || echo "wrk's packages not fetched (apt-get update first?): the benchmark falls back to its Python load" >&2
du -sh .gpu; ls .gpu/*
