#!/usr/bin/env bash
# Build the pinned venv at $1: the recipe whose text (with the pins, comments stripped) names the cache.
# Horovod compiles against the TF installed first and Debian's Open MPI, with Gloo for elastic mode
# (the whole venv: ~7 min on 2 cores, of which Gloo ~2).
set -euo pipefail
venv=$1
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip==24.2
"$venv/bin/pip" install -q -r requirements.txt
HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 \
HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 MAKEFLAGS="-j$(nproc)" \
  "$venv/bin/pip" install -q --no-cache-dir --no-build-isolation -r requirements-horovod.txt
check=$("$venv/bin/horovodrun" --check-build 2>&1)
if ! grep -q '\[X\] TensorFlow' <<<"$check" || ! grep -q '\[X\] MPI' <<<"$check" \
   || ! grep -q '\[X\] Gloo' <<<"$check"; then
  echo "setup: FAILED: horovod was built without TensorFlow, MPI or Gloo support:" >&2
  echo "$check" >&2
  exit 1
fi
