#!/usr/bin/env bash
# Ensure system MPI and a cached, pinned venv; link it as ./.venv.
# The venv lives in ~/.cache/ffnbench/venv-<hash of the pins>, so a fresh clone with
# unchanged pins reuses it in seconds; a new pin set builds a new one (3-7 min on 2 cores). The cache key is
# the pins and the build recipe (scripts/build_venv.sh) without comments, so editing a comment or this
# script does not rebuild.
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

# Slurm and munge for the cluster tests' private single-node Slurm (tests/slurm_cluster.py starts
# its own daemons). Best effort: without them (or without root) those tests are skipped with the
# reason. On a machine with systemd, apt may also start the packages' own services.
need_slurm=()
command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ] || need_slurm+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || [ -x /usr/sbin/slurmd ] || need_slurm+=(slurmd)
command -v sbatch >/dev/null 2>&1 || need_slurm+=(slurm-client)
command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ] || need_slurm+=(munge)
if [ ${#need_slurm[@]} -gt 0 ]; then
  echo "setup: installing ${need_slurm[*]} with apt-get (for the Slurm tests)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_slurm[@]}"; } \
    >/dev/null 2>&1 || echo "setup: could not install ${need_slurm[*]}; the Slurm tests will be skipped"
fi

PY=${PYTHON:-python3}
hash=$(cat requirements.txt requirements-horovod.txt scripts/build_venv.sh <("$PY" -c 'import sys; print(sys.version)') \
       | sed -e 's/[[:space:]]*#.*//' -e '/^$/d' | sha256sum | cut -c1-16)
cache=${FFNBENCH_CACHE:-$HOME/.cache/ffnbench}
venv="$cache/venv-$hash"

mkdir -p "$cache"
exec 9>"$cache/.lock-$hash"
flock 9   # one builder per pin set; concurrent clones wait for it
if [ ! -f "$venv/.complete" ]; then
  echo "setup: building venv $venv (first time for these pins; 3-7 min on 2 cores)"
  rm -rf "$venv"   # a half-built venv from an interrupted build
  PYTHON="$PY" bash scripts/build_venv.sh "$venv"
  touch "$venv/.complete"
fi
exec 9>&-
ln -sfn "$venv" .venv
# The project itself, editable, so `ffnbench` runs this checkout (seconds).
.venv/bin/pip install -q --no-deps --no-build-isolation -e . >/dev/null
