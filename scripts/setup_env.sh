#!/usr/bin/env bash
# Ensure system MPI and a cached, pinned venv; link it as ./.venv.
# The venv lives in ~/.cache/ffnbench/venv-<hash of the pins>, so a fresh clone with
# unchanged pins reuses it in seconds; a new pin set builds a new one (~8 min here).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin)
command -v mpicxx >/dev/null 2>&1 || need_apt+=(libopenmpi-dev)
command -v cmake  >/dev/null 2>&1 || need_apt+=(cmake)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} with apt-get"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
hash=$(cat requirements.txt requirements-horovod.txt scripts/setup_env.sh <("$PY" -c 'import sys; print(sys.version)') \
       | sha256sum | cut -c1-16)
cache=${FFNBENCH_CACHE:-$HOME/.cache/ffnbench}
venv="$cache/venv-$hash"

mkdir -p "$cache"
exec 9>"$cache/.lock-$hash"
flock 9   # one builder per pin set; concurrent clones wait for it
if [ ! -f "$venv/.complete" ]; then
  echo "setup: building venv $venv (first time for these pins; horovod compiles for ~6 min)"
  rm -rf "$venv"   # a half-built venv from an interrupted build
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip==24.2
  "$venv/bin/pip" install -q -r requirements.txt
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 \
  HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITHOUT_GLOO=1 MAKEFLAGS="-j$(nproc)" \
    "$venv/bin/pip" install -q --no-cache-dir --no-build-isolation -r requirements-horovod.txt
  check=$("$venv/bin/horovodrun" --check-build 2>&1)
  if ! grep -q '\[X\] TensorFlow' <<<"$check" || ! grep -q '\[X\] MPI' <<<"$check"; then
    echo "setup: FAILED: horovod was built without TensorFlow or MPI support:" >&2
    echo "$check" >&2
    exit 1
  fi
  touch "$venv/.complete"
fi
exec 9>&-
ln -sfn "$venv" .venv
# The project itself, editable, so `ffnbench` runs this checkout (seconds).
.venv/bin/pip install -q --no-deps --no-build-isolation -e . >/dev/null
