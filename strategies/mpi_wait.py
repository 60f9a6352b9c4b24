"""Bounded, low-CPU waits on nonblocking MPI requests.

Open MPI busy-polls inside blocking calls; polling Test() with a short sleep keeps an idle rank
off the CPU, and a deadline turns a lost peer into one clear error and an MPI Abort.
"""
import sys
import time

from mpi4py import MPI

ABORT_CODE = 3


def fail(comm, message):
    """Print one line and abort the whole job (every rank), so nothing waits forever."""
    print(f"ffnbench: error: rank {comm.rank}: {message}", file=sys.stderr, flush=True)
    comm.Abort(ABORT_CODE)


def wait(comm, request, timeout_s, what, status=None):
    """Wait for one request, sleeping between polls; abort after timeout_s."""
    deadline = time.monotonic() + timeout_s
    nap = 2e-5
    while not request.Test(status):
        if time.monotonic() > deadline:
            fail(comm, f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(nap)
        nap = min(nap * 2, 1e-3)


def wait_all(comm, requests, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    nap = 2e-5
    while not MPI.Request.Testall(requests):
        if time.monotonic() > deadline:
            fail(comm, f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(nap)
        nap = min(nap * 2, 1e-3)


def barrier(comm, timeout_s, what="the other ranks"):
    wait(comm, comm.Ibarrier(), timeout_s, what)
