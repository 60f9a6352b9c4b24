"""`ffnbench commbench`: one gradient's all-reduce, ours against the best plain MPI on the same bytes.

The yardstick is the fastest way plain MPI has to all-reduce these bytes: a blocking `Allreduce` and
an `Iallreduce` + `Wait`, each with Open MPI's waiting ranks yielding the CPU
(`mpi_yield_when_idle=1`, what the strategies run with) and busy-polling (`=0`), each in its own
mpirun. It must bound what it measures from below: ours ÷ raw under 1 (beyond noise) means the
yardstick is wrong, and commbench says so. Then ours, in one mpirun with the strategies' settings:
mpi_allreduce's path (Iallreduce and its bounded, sleeping wait) and Horovod's (hvd.allreduce per
variable in a tf.function, as `allreduce` trains). Each repetition starts after a barrier, so the
times are transfer + reduction, not waiting for a slow peer (which a step's comm_s also holds).
"""
import json
import time

import numpy as np

from ffnbench.strategies import comm

#: plain MPI's ways to all-reduce (the yardstick's candidates), each run under both yield settings
RAW_WAYS = ("Allreduce", "Iallreduce+Wait")
#: the prefix of rank 0's one result line on stdout
RESULT = "commbench-result "
#: a ratio below this is not noise: the yardstick does not bound ours from below
BELOW_RAW = 0.9


def timed_median(world, fn, repeats):
    times = []
    for _ in range(repeats):
        world.Barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times[3:]))


def _report(world, results):
    if world.rank == 0:
        print(RESULT + json.dumps(results), flush=True)


def raw_main(params, way, repeats=50):
    """One rank of a raw run: plain MPI's `way` on `params` float32."""
    from mpi4py import MPI
    world = comm.init_world()
    flat, out = np.ones(params, np.float32), np.empty(params, np.float32)
    if way == "Allreduce":
        def allreduce():
            world.Allreduce(flat, out, op=MPI.SUM)
    else:
        def allreduce():
            world.Iallreduce(flat, out, op=MPI.SUM).Wait()
    _report(world, {way: timed_median(world, allreduce, repeats)})


def ours_main(cfg, repeats=50):
    """One rank of the run of our exchanges, with the strategies' MCA settings."""
    world = comm.init_world()
    import horovod.tensorflow as hvd
    import tensorflow as tf
    from ffnbench.model.api import FFNModel
    m = cfg["model"]
    model = FFNModel(m["fov"], m["depth"], m["features"])
    grads = [tf.ones_like(v) for v in model.variables]
    flat, out = np.ones(model.num_params, np.float32), np.empty(model.num_params, np.float32)
    hvd.init(comm=world)
    per_variable = tf.function(lambda gs: [hvd.allreduce(g, op=hvd.Average) for g in gs])
    grouped = tf.function(lambda gs: hvd.grouped_allreduce(gs, op=hvd.Average))
    one_buffer = tf.function(lambda gs: hvd.allreduce(tf.concat([tf.reshape(g, [-1]) for g in gs], 0),
                                                      op=hvd.Average))
    for exchange in (per_variable, grouped, one_buffer):
        exchange(grads)  # trace
    results = {
        "mpi_allreduce (Iallreduce + bounded wait)": timed_median(
            world, lambda: comm.sum_allreduce(world, flat, out, 60, "the all-reduce"), repeats),
        "allreduce (Horovod, in-graph, per variable)": timed_median(world, lambda: per_variable(grads), repeats),
        "Horovod grouped_allreduce, in-graph": timed_median(world, lambda: grouped(grads), repeats),
        "Horovod one flat buffer, in-graph": timed_median(world, lambda: one_buffer(grads), repeats),
    }
    hvd.shutdown()
    _report(world, results)


def _run_ranks(ranks, argv, mca, timeout_s=600):
    """Launch one mpirun of commbench ranks; rank 0's results."""
    import subprocess
    proc = comm.launch_ranks(ranks, argv, mca=mca, stdout=subprocess.PIPE, text=True)
    status, out, _ = comm.finish(proc, timeout_s, "commbench")
    lines = [ln for ln in (out or "").splitlines() if ln.startswith(RESULT)]
    if status != 0 or not lines:
        raise RuntimeError(f"commbench ranks exited with status {status} and no result")
    return json.loads(lines[-1][len(RESULT):])


def measure(config_path, cfg, ranks, cli_command):
    """{name: median seconds} of every raw way under both yield settings, and of ours; the params."""
    from ffnbench.model.network import param_count
    params = param_count(cfg["model"]["depth"], cfg["model"]["features"])
    raw = {}
    for way in RAW_WAYS:
        for yield_when_idle in ("1", "0"):
            mca = {**comm.MCA_DEFAULTS, "mpi_yield_when_idle": yield_when_idle}
            argv = cli_command("commbench", config_path, "--ranks-part", f"raw:{way}")
            (seconds,) = _run_ranks(ranks, argv, mca).values()
            raw[f"raw {way}, yield {'on' if yield_when_idle == '1' else 'off'}"] = seconds
    ours = _run_ranks(ranks, cli_command("commbench", config_path, "--ranks-part", "ours"), None)
    return raw, ours, params


def print_table(raw, ours, params, ranks):
    best_name = min(raw, key=raw.get)
    best = raw[best_name]
    print(f"all-reduce of {params} float32 ({4 * params / 1e6:.2f} MB) over {ranks} ranks, median of 47 "
          f"after a barrier; the yardstick is the fastest raw way ({best_name}):")
    for name, t in {**raw, **ours}.items():
        ratio = t / best
        print(f"  {name:45s} {t * 1e3:8.3f} ms   / best raw = {ratio:5.2f}")
    low = [name for name, t in ours.items() if t / best < BELOW_RAW]
    if low:
        print(f"warning: {', '.join(low)} beat the best raw way by more than noise: the yardstick does not bound "
              f"them from below")
    return low
