"""What parameter servers and workers say to each other, and how the parameters are sharded.

The first `servers` ranks hold contiguous, balanced slices of the flat float32 parameter vector; the
other ranks are workers. Every message is one contiguous byte buffer (persistent and nonblocking
requests, no probe, no pickle, no MPI datatype: one spanning noncontiguous parts is packed and
unpacked on both sides, which doubled a 0.2 MB round trip here, 2026-12-06), so a step's exchange per
shard is two messages, the gradient one way and the parameters back, as in a raw ping-pong.

A server takes each worker's messages through one receive into one buffer (any tag, so in the order
sent); the tag says what came. A gradient carries no header: the server knows the version it is
computed on, the oldest of the answers it sent that worker not yet pushed against (a worker pushes
against its answers in the order it got them, with or without prefetch).

  worker -> server  PULL      int64[1]                 the first step's (or a prefetch's) request
  server -> worker  PARAMS    int64 version, float32[shard]: the answer to a pull, one message
  worker -> server  PUSH      gradient[shard] in the wire's dtype
  worker -> server  PUSH_PULL the same, and the pull of the next step
  worker -> server  DONE      int64[1]
  server -> rank 0  FINAL     float32[shard]          the final parameters, for checkpoint and evaluation
  worker -> server  SNAPSHOT  int64[1] step           after its pushes of that step: a checkpoint is due
  server -> worker  SAVED     int64[1]               once every worker asked: the shard's state is saved
  worker -> server  PAUSE     int64[1]               it stops for a pause every worker takes (an evaluation
                                                     or a checkpoint): its silence is not a loss
  worker -> server 0  READY   int64[1]               the worker that led the pause has done its part
  server 0 -> worker  RESUME  int64[1] next leader   once every live worker paused and the leader is ready
                                                     (or lost): go on; the lowest live worker leads the next

A worker's messages reach a server in the order sent, so a server that has a SNAPSHOT from every
worker has applied every gradient they pushed before it, and from no later step: its saved state and
the workers' are one consistent snapshot.
"""
import numpy as np

PULL, PARAMS, PUSH, PUSH_PULL, DONE, FINAL, SNAPSHOT, SAVED, PAUSE, READY, RESUME = range(1, 12)

#: bytes of the version before the values in an answer (PARAMS)
VERSION_BYTES = 8


def shard_bounds(size, servers):
    """Start/stop of each server's contiguous slice; sizes differ by at most one."""
    edges = np.linspace(0, size, servers + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))


def as_bytes(array):
    """A flat contiguous numpy array as the bytes every message of the protocol is sent as (no copy)."""
    return array.view(np.uint8)


def number(value):
    """A small message's int64 payload, as bytes."""
    return as_bytes(np.array([value], np.int64))


def versioned(size):
    """A buffer of one answer: [int64 version | float32 values of `size`]; its (version, values) views."""
    buffer = np.empty(VERSION_BYTES + 4 * size, np.uint8)
    return buffer, buffer[:VERSION_BYTES].view(np.int64), buffer[VERSION_BYTES:].view(np.float32)
