"""What parameter servers and workers say to each other, and how the parameters are sharded.

The first `servers` ranks hold contiguous, balanced slices of the flat float32 parameter vector; the
other ranks are workers. Everything on the wire is a numpy buffer (Isend/Irecv/Iprobe, no pickle):

  worker -> server  PULL   int64[1]               answered with VERSION int64[1] + PARAMS float32[shard]
  worker -> server  PUSH   int64[1] version read, then GRAD float32[shard]
  worker -> server  DONE   int64[1]
  server -> rank 0  FINAL  float32[shard]          the final parameters, for checkpoint and evaluation
"""
import numpy as np

PULL, VERSION, PARAMS, PUSH, GRAD, DONE, FINAL = range(1, 8)


def shard_bounds(size, servers):
    """Start/stop of each server's contiguous slice; sizes differ by at most one."""
    edges = np.linspace(0, size, servers + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))
