"""`ffnbench calibrate`: this machine's MPI alpha/beta, server apply cost and per-step compute.

The ping-pong runs in two ranks that `calibrate` starts with mpirun; the parent process never
becomes an MPI rank.
"""
import json
import os
import subprocess
import time

import numpy as np

from bench.launcher import PACKAGE_ROOT, mpirun_command
from bench.summary import write_json_atomic


def ranks_main(out, params):
    """Under mpirun -np 2: fit alpha and beta, and time a raw MPI Allreduce of one gradient
    (`params` float32), the yardstick for the strategies' comm_s; rank 0 writes `out`."""
    from mpi4py import MPI
    from bench.simulator import calibrate_network
    if not MPI.Is_initialized():
        MPI.Init()
    comm = MPI.COMM_WORLD
    result = calibrate_network(comm)
    grad, summed, times = np.ones(params, np.float32), np.empty(params, np.float32), []
    for _ in range(30):
        comm.Barrier()
        t = time.perf_counter()
        comm.Allreduce(grad, summed, op=MPI.SUM)
        times.append(time.perf_counter() - t)
    if comm.rank == 0:
        alpha, beta, table = result
        write_json_atomic(out, {"alpha_s": alpha, "beta_s_per_byte": beta, "pingpong": table,
                                "allreduce_params": params, "allreduce_s": float(np.median(times[5:]))})


def server_apply_s_per_byte(params=638_433, optimizer="adam", repeats=20):
    """Seconds per gradient byte for a parameter server's clip + optimizer update (numpy)."""
    from strategies.ps_optimizer import ShardUpdater
    updater = ShardUpdater(optimizer, params, 0.7)
    w = np.zeros(params, np.float32)
    g = np.random.default_rng(0).normal(size=params).astype(np.float32)
    best = min(_timed(lambda: updater.apply(w, g.copy(), 1e-3)) for _ in range(repeats))
    return best / (4 * params)


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def calibrate(out, params, timeout_s=120):
    tmp = out + ".ranks"
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = mpirun_command(2, ["calibrate", "--ranks-part", tmp, "--params", str(params)])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not os.path.exists(tmp):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"calibration ranks failed: {last}")
    with open(tmp) as f:
        result = json.load(f)
    os.remove(tmp)
    result["server_apply_s_per_byte"] = server_apply_s_per_byte(params)
    result["host"], result["cores"] = os.uname().nodename, os.cpu_count()
    write_json_atomic(out, result)
    return result

