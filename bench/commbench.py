"""`ffnbench commbench`: the all-reduce of one gradient, three ways, on the same bytes, in one run.

Under mpirun: raw mpi4py `Allreduce` (the yardstick), mpi_allreduce's path (Iallreduce + the
bounded, sleeping wait) and allreduce's path (Horovod, in a tf.function, per variable). Each
repetition starts after a barrier, so the times are transfer + reduction, not waiting for a slow
peer (which the strategies' per-step comm_s also contains).
"""
import time

import numpy as np

from ffnbench.strategies import comm


def timed_median(world, fn, repeats):
    times = []
    for _ in range(repeats):
        world.Barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times[3:]))


def ranks_main(cfg, repeats=50):
    from mpi4py import MPI
    world = comm.init_world()
    import horovod.tensorflow as hvd
    import tensorflow as tf
    from ffnbench.model.api import FFNModel
    m = cfg["model"]
    model = FFNModel(m["fov"], m["depth"], m["features"])
    grads = [tf.ones_like(v) for v in model.variables]
    flat = np.ones(model.num_params, np.float32)
    out = np.empty_like(flat)
    hvd.init(comm=world)
    hvd_allreduce = tf.function(lambda gs: [hvd.allreduce(g, op=hvd.Average) for g in gs])
    hvd_allreduce(grads)  # trace
    results = {
        "raw MPI.Allreduce": timed_median(world, lambda: world.Allreduce(flat, out, op=MPI.SUM), repeats),
        "mpi4py Iallreduce + bounded wait (ours)": timed_median(
            world, lambda: comm.sum_allreduce(world, flat, out, 60, "the all-reduce"), repeats),
        "Horovod hvd.allreduce, in-graph (ours)": timed_median(world, lambda: hvd_allreduce(grads), repeats),
    }
    hvd.shutdown()
    if world.rank == 0:
        raw = results["raw MPI.Allreduce"]
        print(f"all-reduce of {model.num_params} float32 ({4 * model.num_params / 1e6:.2f} MB) over {world.size} ranks, "
              f"median of {repeats - 3}:")
        for name, t in results.items():
            print(f"  {name:45s} {t * 1e3:8.3f} ms   ours / raw MPI = {t / raw:.2f}")
