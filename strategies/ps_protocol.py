"""What parameter servers and workers say to each other, and how the parameters are sharded.

The first `servers` ranks hold contiguous, balanced slices of the flat float32 parameter vector; the
other ranks are workers. Everything on the wire is numpy buffers (persistent and nonblocking requests,
no probe, no pickle). Values travel as contiguous buffers of their own, after a small header message
(an MPI datatype spanning a header and the values would be packed and unpacked on both sides, which
doubled a 0.2 MB round trip here, 2026-12-06), so a step's exchange per shard is the gradient's
header and values one way and the parameters' version and values back.

  worker -> server  PULL     int64[1]               the first step's (or a prefetch's) request
  server -> worker  PARAMS   int64[1] version, then float32[shard]: the answer to a pull (two messages)
  worker -> server  PUSH     int64[2] version read, pull (0/1); with pull 1 it is also the PULL for the
                             next step
  worker -> server  GRADIENT gradient[shard] in the wire's dtype, right after its PUSH
  worker -> server  DONE     int64[1]
  server -> rank 0  FINAL    float32[shard]          the final parameters, for checkpoint and evaluation
  worker -> server  SNAPSHOT int64[1] step           after its pushes of that step: a checkpoint is due
  server -> worker  SAVED    int64[1]               once every worker asked: the shard's state is saved
  worker -> server  PAUSE    int64[1]               it stops for a pause every worker takes (an evaluation
                                                    or a checkpoint): its silence is not a loss
  worker -> server 0  READY  int64[1]               the worker that led the pause has done its part
  server 0 -> worker  RESUME int64[1] next leader   once every live worker paused and the leader is ready
                                                    (or lost): go on; the lowest live worker leads the next

A worker's messages reach a server in the order sent, so a server that has a SNAPSHOT from every
worker has applied every gradient they pushed before it, and from no later step: its saved state and
the workers' are one consistent snapshot.
"""
import numpy as np

PULL, PARAMS, PUSH, DONE, FINAL, SNAPSHOT, SAVED, PAUSE, READY, RESUME, GRADIENT = range(1, 12)

#: int64s in the largest header message (PUSH)
HEADER = 2


def shard_bounds(size, servers):
    """Start/stop of each server's contiguous slice; sizes differ by at most one."""
    edges = np.linspace(0, size, servers + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))
