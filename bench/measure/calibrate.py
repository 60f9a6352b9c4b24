"""`ffnbench calibrate`: this machine's MPI alpha/beta, a raw Allreduce of one gradient, and the costs
of the strategies' own machinery (e.g. a parameter server's update), for the simulator.

The ping-pong runs in two ranks that `calibrate` starts through bench/run/processes.py, with the same MCA
settings as the strategies it is a yardstick for; the parent process never becomes an MPI rank.
"""
import json
import os
import subprocess
import time

import numpy as np

from ffnbench import strategies
from ffnbench.bench.run.summary import write_json_atomic
from ffnbench.bench.run import control, processes
from ffnbench.strategies import comm


#: workers sending to one server's link at once, for its fan-in efficiency (calibrate --link)
FAN_IN = (2, 4, 8, 16)
#: sizes from which a message's time is its bytes over the bandwidth (well beyond an emulated link's
#: 32 KB token bucket, and beyond the eager limits of Open MPI's transports)
BANDWIDTH_BYTES = 256 * 1024


def calibrate_network(world, sizes=(8, 1024, 16_384, 262_144, 1 << 20, 4 << 20), repeats=20, timeout_s=60.0):
    """Fit T(n) = alpha + n*beta from ping-pong between ranks 0 and 1 of `world`.

    Buffer-based Isend/Irecv on numpy arrays (no pickling), each wait bounded by `timeout_s` (a lost
    peer aborts the job). T is the median half round trip per size (robust to OS noise). alpha is the
    smallest size's T; beta the least-squares slope of T over the sizes of BANDWIDTH_BYTES and more.
    (One weighted fit over every size let small sizes set beta too, and on a shaped link those pass
    inside the token bucket at memory speed: beta came out faster than the link.)

    Args:
        world: an mpi4py communicator with at least 2 ranks; ranks >= 2 take no part.
        sizes: message sizes in bytes.
        repeats: round trips per size (after one that warms up the path).
        timeout_s: bound on each wait.
    Returns:
        (alpha_s, beta_s_per_byte, table) on ranks 0 and 1, None on the others.
    """
    if world.Get_size() < 2:
        raise ValueError("calibrate_network needs at least 2 ranks")
    rank = world.Get_rank()
    if rank > 1:
        return None

    def wait(request):
        comm.wait(world, request, timeout_s, "the ping-pong peer")
    medians = np.zeros(len(sizes))
    for i, n in enumerate(sizes):
        buf = np.zeros(int(n), dtype=np.uint8)
        half = []
        for r in range(repeats + 1):  # the first exchange warms up the path
            if rank == 0:
                t0 = time.perf_counter()
                answer = world.Irecv(buf, source=1, tag=i)
                wait(world.Isend(buf, dest=1, tag=i))
                wait(answer)
                if r:
                    half.append((time.perf_counter() - t0) / 2)
            else:
                wait(world.Irecv(buf, source=0, tag=i))
                wait(world.Isend(buf, dest=0, tag=i))
        if rank == 0:
            medians[i] = np.median(half)
    if rank == 0:
        wait(world.Isend(medians, dest=1, tag=len(sizes)))
    else:
        wait(world.Irecv(medians, source=0, tag=len(sizes)))
    n = np.asarray(sizes, dtype=float)
    large = n >= BANDWIDTH_BYTES
    if large.sum() < 2:
        raise ValueError(f"calibrate_network needs 2 sizes of at least {BANDWIDTH_BYTES} bytes for beta")
    beta = float(np.polyfit(n[large], medians[large], 1)[0])
    alpha = float(medians[np.argmin(n)])
    table = [{"bytes": int(b), "half_rtt_s": float(t)} for b, t in zip(sizes, medians)]
    return float(alpha), float(beta), table


def quiet_barrier(world, nap_s=1e-3):
    """A barrier that waits asleep between tests (a blocking one polls, taking a core)."""
    request = world.Ibarrier()
    while not request.Test():
        time.sleep(nap_s)


def fan_in_efficiency(world, params, beta_s_per_byte, senders=(), repeats=5):
    """{k: the share of rank 0's link rate it receives at when ranks 1..k each send it `params`
    float32 at once}: how a server's link fares when k workers push together (TCP incast into the
    link's queue). The median of `repeats` after one that warms the connections up."""
    from mpi4py import MPI
    out = np.ones(params, np.float32)
    back = [np.empty(params, np.float32) for _ in range(max(senders, default=0))] if world.rank == 0 else []
    result = {}
    for k in senders:
        times = []
        for _ in range(repeats + 1):
            quiet_barrier(world)
            t = time.perf_counter()
            if world.rank == 0:
                MPI.Request.Waitall([world.Irecv(back[r - 1], source=r, tag=k) for r in range(1, k + 1)])
            elif world.rank <= k:
                world.Send(out, dest=0, tag=k)
            times.append(time.perf_counter() - t)
        result[k] = min(1.0, k * 4 * params * beta_s_per_byte / float(np.median(times[1:])))
    return result


def ranks_main(out, params):
    """Under mpirun: fit alpha and beta between ranks 0 and 1, time a raw MPI Allreduce of one
    gradient (`params` float32) between them (the yardstick for the strategies' comm_s), and with
    more ranks (one per emulated node) the fan-in efficiency of rank 0's link; rank 0 writes `out`."""
    from mpi4py import MPI
    world = control.init_world()
    pair = world.Split(0 if world.rank < 2 else MPI.UNDEFINED)
    times = []
    if pair != MPI.COMM_NULL:
        result = calibrate_network(pair)
        grad, summed = np.ones(params, np.float32), np.empty(params, np.float32)
        for _ in range(30):
            pair.Barrier()
            t = time.perf_counter()
            pair.Allreduce(grad, summed, op=MPI.SUM)
            times.append(time.perf_counter() - t)
    quiet_barrier(world)  # the other ranks wait asleep: 2 cores, and a busy wait would slow the pair down
    beta = world.bcast(result[1] if world.rank == 0 else None, root=0)
    fan_in = fan_in_efficiency(world, params, beta, [k for k in FAN_IN if k < world.size])
    if world.rank == 0:
        alpha, beta, table = result
        write_json_atomic(out, {"alpha_s": alpha, "beta_s_per_byte": beta, "pingpong": table,
                                "allreduce_params": params, "allreduce_s": float(np.median(times[5:])),
                                "fan_in": sorted([k, e] for k, e in fan_in.items())})


def calibrate(out, cfg, params, timeout_s=600, link=None):
    """Measure, write `out` (JSON) and return the calibration: network, raw Allreduce, strategy costs.
    link: measure the network between two emulated nodes with links of this rate ("unshaped": no
    shaping) instead of within this machine."""
    from ffnbench.bench.run.context import training_settings
    from ffnbench.bench.run.launcher import cli_command
    from ffnbench.bench.run import netcluster
    tmp = out + ".ranks"
    argv = cli_command("calibrate", "--ranks-part", tmp, "--params", str(params))
    popen = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if link is None:
        proc = processes.launch_ranks(2, argv, **popen)
        _, _, err = processes.finish(proc, timeout_s, "the calibration ranks")
    else:
        nodes = 1 + max(FAN_IN)
        with netcluster.Cluster("calib", nodes, None if link == "unshaped" else link) as cluster:
            proc = processes.launch_on_cluster(cluster, [1] * nodes, argv, **popen)
            _, _, err = processes.finish(proc, timeout_s, "the calibration ranks")
    if proc.returncode != 0 or not os.path.exists(tmp):
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"calibration ranks failed: {last}")
    with open(tmp) as f:
        result = json.load(f)
    os.remove(tmp)
    settings = training_settings(cfg)
    for name in strategies.names():
        result.update(strategies.get(name).measure_costs(settings, params))
    result["host"], result["cores"] = os.uname().nodename, os.cpu_count()
    result["network"] = (f"2 emulated nodes, links {link} (fan-in: {1 + max(FAN_IN)} nodes)" if link else
                         "one machine (shared memory)")
    write_json_atomic(out, result)
    return result
