import os
import subprocess
import sys

import mpi4py
import pytest

mpi4py.rc.initialize = False  # the test process is never an MPI rank; jobs run under mpirun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def ffnbench(*args, timeout=600):
    """Run the CLI in a subprocess from this checkout; returns CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def run_cli():
    return ffnbench
