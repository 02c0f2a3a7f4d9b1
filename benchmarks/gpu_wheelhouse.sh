#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what benchmarks/gpu_host.sh installs on the offline GPU host (Python 3.12,
# x86-64, glibc 2.28 or later): wheels of torchgate's dependencies (pyproject.toml's, resolved with theirs) less
# what the host has (docs: /work/shared/gpu/README.md), LitServe's pinned set apart, wrk's Debian packages.
# Needs network; run from anywhere in the repository. GPU_PYTHON_VERSION=3.11 builds the set for another Python.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
pyver=${GPU_PYTHON_VERSION:-3.12}
rm -rf .gpu/whl .gpu/litserve
mkdir -p .gpu/whl .gpu/litserve .gpu/deb
download() {
  dest=$1; shift
  python3 -m pip download -q --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any -d "$dest" "$@" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
}
# torchgate's own dependencies with everything they need: a dependency added to pyproject.toml comes along.
mapfile -t deps < <(python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
download .gpu/whl "${deps[@]}" nvidia-ml-py
# What the host already has stays the host's (its torch was built against its numpy): drop those wheels.
for have in numpy msgpack werkzeug jinja2 markupsafe click prometheus_client psutil packaging typing_extensions \
  requests urllib3 idna certifi charset_normalizer setuptools; do
  rm -f .gpu/whl/"$have"-[0-9]*.whl
done
# The set LitServe 0.2.19 ran from on that host (newer fastapi wants packages it lacks), with anyio, sniffio
# and h11, which LitServe's stack needs and a host without them would miss; apart, so nothing shadows the host's.
download .gpu/litserve --no-deps litserve==0.2.19 fastapi==0.115.12 starlette==0.46.2 pydantic==2.11.4 \
  pydantic-core==2.33.2 annotated-types==0.7.0 typing-inspection==0.4.0 uvicorn==0.34.2 httptools==0.6.4 \
  anyio==4.9.0 sniffio==1.3.1 h11==0.16.0
(cd .gpu/deb && rm -f ./*.deb && apt-get download wrk libluajit-5.1-2 >/dev/null 2>&1) \
  || echo "wrk's packages not fetched (apt-get update first?): the benchmark falls back to its Python load" >&2
du -sh .gpu; ls .gpu/*
