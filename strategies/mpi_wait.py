"""Bounded, low-CPU waits on nonblocking MPI requests.

Open MPI busy-polls inside blocking calls; polling Test() with a short sleep keeps an idle rank
off the CPU, and a deadline turns a lost peer into one clear error and an MPI Abort. A
nonblocking collective only progresses inside MPI calls, so the first SPIN_S are polled without
sleeping (a quick operation finishes at full speed) before the sleeps grow to 1 ms.
"""
import sys
import time

from mpi4py import MPI

ABORT_CODE = 3
SPIN_S = 0.005


def fail(comm, message):
    """Print one line and abort the whole job (every rank), so nothing waits forever."""
    print(f"ffnbench: error: rank {comm.rank}: {message}", file=sys.stderr, flush=True)
    comm.Abort(ABORT_CODE)


def poll(comm, done, timeout_s, what, spin_s=SPIN_S):
    """Call done() until it is true: without sleeping for spin_s, then with sleeps growing to
    1 ms; abort the job after timeout_s."""
    start = time.monotonic()
    nap = 2e-5
    while not done():
        elapsed = time.monotonic() - start
        if elapsed > timeout_s:
            fail(comm, f"timed out after {timeout_s:g}s waiting for {what}")
        if elapsed > spin_s:
            time.sleep(nap)
            nap = min(nap * 2, 1e-3)


def wait(comm, request, timeout_s, what, status=None):
    """Wait for one request; abort the job after timeout_s."""
    poll(comm, lambda: request.Test(status), timeout_s, what)


def wait_all(comm, requests, timeout_s, what):
    poll(comm, lambda: MPI.Request.Testall(requests), timeout_s, what)


def barrier(comm, timeout_s, what="the other ranks"):
    wait(comm, comm.Ibarrier(), timeout_s, what)
