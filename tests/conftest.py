import os
import subprocess
import sys

import mpi4py
import pytest

mpi4py.rc.initialize = False  # the test process is never an MPI rank; jobs run under mpirun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    """The installed `ffnbench` must be this checkout (`make setup` installs it editable), else the
    tests would exercise another clone's code."""
    import ffnbench.bench
    here = os.path.dirname(os.path.realpath(os.path.dirname(ffnbench.bench.__file__)))
    if os.path.realpath(here) != os.path.realpath(ROOT):
        raise pytest.UsageError(f"ffnbench is installed from {here}, not from this checkout {ROOT}: run `make setup`")


def ffnbench(*args, timeout=600, env=None):
    """Run the CLI in a subprocess from this checkout; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "ffnbench.bench.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run_cli():
    return ffnbench
