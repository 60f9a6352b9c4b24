"""This node's dense matmul rates, float32 and bfloat16: the denominators of MFU (a run's MFU uses
the peak of the precision its convolutions compute in).

Measured with all of a node's cores in a fresh process (its own TensorFlow threads), where nothing
else of the job runs: by `ffnbench run` before any rank starts (a sweep also measures once before its
first run, and each run keeps the higher of the two, since a disturbed measurement only reads low),
and handed to the ranks in the run directory (bench/run/context.py Handoff); a job started by another launcher (srun, aprun)
measures it on rank 0 after set-up, while the other ranks sleep.
"""
import json
import os
import subprocess
import time

#: the matmul dtype whose peak bounds a run of each train.precision
PEAK_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16"}


def matmul_peak(n=2048, seconds=3.0, dtype="float32"):
    """Best FLOP/s of n^3 matmuls of `dtype` over about `seconds`, using TF's threads as configured."""
    import tensorflow as tf
    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y), tf.float32)))
    warm = time.perf_counter() + 1.0  # the first calls read low (bfloat16 by half, 2026-12-06), so they do not count
    while time.perf_counter() < warm:
        mm(a, b).numpy()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        mm(a, b).numpy()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def node_peak(during, timeout_s=120.0):
    """{flops_per_s: {float32, bfloat16}, threads, n, how}: `ffnbench peak --json` with every core
    of this node.

    Args:
        during: what the rest of the job was doing meanwhile, for the record.
    """
    from ffnbench.bench.run.launcher import cli_command
    cores = os.cpu_count() or 1
    proc = subprocess.run(cli_command("peak", "--threads", str(cores), "--seconds", "2", "--json"),
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring the matmul peak failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    result = json.loads(proc.stdout)
    result["how"] = (f"tf.matmul {result['n']}x{result['n']}, best of 2 s per dtype, {cores} threads in a fresh "
                     f"process, {during}")
    return result
