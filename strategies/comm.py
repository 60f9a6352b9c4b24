"""The MPI operations a strategy calls: start-up, bounded waits and collectives, the gradient's wire
format, and abort. (Starting ranks, and bench's own messages between
them, are bench's: bench/run/processes.py and bench/run/control.py.)

Waits poll nonblocking requests: Open MPI busy-polls inside blocking calls, and a deadline turns a
lost peer into one clear error and an MPI Abort. A nonblocking collective only progresses inside MPI
calls, so the first SPIN_S are polled without sleeping (a quick operation finishes at full speed)
before the sleeps grow to 1 ms, which keeps an idle rank off the CPU.

mpi4py is imported inside the functions: the launching process must never become an MPI rank.
"""
import importlib
import os
import sys
import time

import numpy as np

from ffnbench.strategies.declare import Option

ABORT_CODE = 3
SPIN_S = 0.005


def fail(comm, message, status="failed"):
    """Print one line and abort the whole job (every rank), so nothing waits forever.

    Args:
        status: how the run ended, for its summary: stalled, lost_ranks, diverged or failed.
    """
    print(f"ffnbench: error: rank {comm.rank}: {status}: {message}", file=sys.stderr, flush=True)
    comm.Abort(ABORT_CODE)


#: calls of done() between two reads of the clock while spinning: a call is a fraction of a
#: microsecond, as is a clock read, and a large message moves only while done() is inside MPI
CLOCK_EVERY = 16


def until(done, seconds, spin_s=SPIN_S):
    """Call done() until it is true (True) or `seconds` have passed (False): without sleeping for
    spin_s, then with sleeps growing to 1 ms."""
    if done():
        return True
    start = time.monotonic()
    nap = 2e-5
    spinning = spin_s > 0
    while True:
        for _ in range(CLOCK_EVERY if spinning else 1):
            if done():
                return True
        elapsed = time.monotonic() - start
        if elapsed > seconds:
            return False
        if elapsed > spin_s:
            spinning = False
            time.sleep(nap)
            nap = min(nap * 2, 1e-3)


def _mpi():
    """mpi4py's MPI module, cheaply once imported (a bounded wait may be a few microseconds in all)."""
    return sys.modules.get("mpi4py.MPI") or importlib.import_module("mpi4py.MPI")


def poll(comm, done, timeout_s, what, spin_s=SPIN_S):
    """Call done() until it is true (as `until` does); abort the job after timeout_s."""
    if not until(done, timeout_s, spin_s):
        fail(comm, f"timed out after {timeout_s:g}s waiting for {what}", "stalled")


def wait(comm, request, timeout_s, what, status=None):
    """Wait for one request; abort the job after timeout_s."""
    poll(comm, lambda: request.Test(status), timeout_s, what)


def wait_all(comm, requests, timeout_s, what):
    testall = _mpi().Request.Testall
    poll(comm, lambda: testall(requests), timeout_s, what)


def barrier(comm, timeout_s, what="the other ranks"):
    wait(comm, comm.Ibarrier(), timeout_s, what)


def broadcast(comm, array, timeout_s, what, root=0):
    """Bounded in-place broadcast of a numpy buffer from `root`."""
    wait(comm, comm.Ibcast(array, root=root), timeout_s, what)
    return array


def sum_allreduce(comm, send, recv, timeout_s, what):
    """Bounded element-wise sum of numpy buffers over the ranks, into `recv`; bfloat16 buffers in
    their to_wire form (uint16) are summed by BF16_SUM."""
    from mpi4py import MPI
    if send.dtype == np.uint16:
        send, recv_spec, op = [send, MPI.UINT16_T], [recv, MPI.UINT16_T], _bf16_sum()
    else:
        recv_spec, op = recv, MPI.SUM
    wait(comm, comm.Iallreduce(send, recv_spec, op=op), timeout_s, what)
    return recv


#: gradient_wire: how a gradient crosses the network (bfloat16 halves the bytes, rounding each value)
GRADIENT_WIRES = ("float32", "bfloat16")
#: the option of every strategy that sends flat gradients over MPI
GRADIENT_WIRE = Option("float32", "float32 | bfloat16: bfloat16 halves the gradient bytes sent (rounding each value; "
                                  "an all-reduce also sums in bfloat16; parameters are pulled as float32); "
                                  "convergence not yet measured", choices=GRADIENT_WIRES)


def wire_dtype(wire):
    """The numpy dtype a gradient has on the wire (bfloat16 travels as its uint16 bits)."""
    return np.float32 if wire == "float32" else np.uint16


def to_wire(array, wire):
    """A float32 array as it is sent: itself, or rounded to bfloat16 (to nearest even) as uint16."""
    if wire == "float32":
        return array
    from ml_dtypes import bfloat16
    return np.asarray(array, np.float32).astype(bfloat16).view(np.uint16)


def from_wire(buffer, wire):
    """What to_wire made, back as float32."""
    if wire == "float32":
        return buffer
    from ml_dtypes import bfloat16
    return buffer.view(bfloat16).astype(np.float32)


_BF16_SUM = []


def _bf16_sum():
    """MPI's sum of bfloat16 (as uint16), which MPI does not have: each pair added in float32 and
    rounded back, as a bfloat16 reduction does."""
    if not _BF16_SUM:
        from mpi4py import MPI
        from ml_dtypes import bfloat16

        def add(incoming, accumulated, datatype):
            a = np.frombuffer(incoming, bfloat16)
            b = np.frombuffer(accumulated, bfloat16)
            b[...] = (a.astype(np.float32) + b.astype(np.float32)).astype(bfloat16)
        _BF16_SUM.append(MPI.Op.Create(add, commute=True))
    return _BF16_SUM[0]


def oversubscribed(comm):
    """Whether this node runs more of `comm`'s ranks than it has cores (so a spinning rank steals
    a core from a peer)."""
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    ranks = local.size
    local.Free()
    return ranks > (os.cpu_count() or 1)


def duplicate(comm, timeout_s, what):
    """A bounded duplicate of `comm`, for messages no receive on the original may take (a parameter
    server's receives take any tag)."""
    new, request = comm.Idup()
    wait(comm, request, timeout_s, what)
    return new
