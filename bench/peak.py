"""This machine's dense float32 matmul rate: the denominator of MFU."""
import time


def matmul_peak(n=2048, seconds=3.0):
    """Best FLOP/s of n^3 matmuls over about `seconds`, using TF's threads as configured."""
    import tensorflow as tf
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    mm(a, b).numpy()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        mm(a, b).numpy()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best
