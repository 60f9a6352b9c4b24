"""Bench's own messages between the ranks of a job: the start, pauses, the end-of-run roll call, aborts.

There is one kind per launch (strategies/declare.py LAUNCHES). Under mpirun they travel over MPI on a
duplicate of the job's communicator, so no strategy's receive takes them, and each wait is bounded by
run.timeout_s. An elastic Horovod job has no MPI communicator: they are Horovod collectives over
Gloo, bounded by Horovod's Gloo timeout (the launcher sets it to run.timeout_s). There a lost worker
surfaces as Horovod's own error, which the elastic training loop recovers from.
"""
import os
import sys
import time

import numpy as np

from ffnbench.strategies import comm as mpi


def init_world():
    """Initialise MPI (thread-multiple: Horovod shares the process with mpi4py); COMM_WORLD."""
    from mpi4py import MPI
    if not MPI.Is_initialized():
        MPI.Init_thread(MPI.THREAD_MULTIPLE)
    return MPI.COMM_WORLD


def world_for(launch):
    """The communicator of all the job's ranks, for a strategy's launch kind (strategies/declare.py
    LAUNCHES): under mpirun (or srun, aprun) that is MPI's COMM_WORLD."""
    if launch != "mpirun":
        raise ValueError(f"launch {launch!r}: no communicator for it (known: mpirun)")
    return init_world()


def census(comm, flag, timeout_s):
    """(ranks on this node with `flag` true, nodes in the job): e.g. the compute ranks sharing a node's
    cores, and how many nodes' peaks add up to the job's."""
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    here = mpi.sum_allreduce(local, np.array([int(bool(flag))], np.int64), np.zeros(1, np.int64), timeout_s,
                         "the ranks on this node")
    nodes = mpi.sum_allreduce(comm, np.array([int(local.rank == 0)], np.int64), np.zeros(1, np.int64), timeout_s,
                          "the node census")
    local.Free()
    return int(here[0]), int(nodes[0])


#: tag of the message that ends a pause (strategies' own tags are small integers)
RELEASE_TAG = 30_000


def hold(comm, leader, followers, timeout_s, what):
    """The followers wait, bounded, until the leader has done its part and releases them.

    Call it on the leader after its work and on every follower; other ranks (e.g. servers) are
    not involved.
    """
    token = np.zeros(1, np.int64)
    if comm.rank == leader:
        mpi.wait_all(comm, [comm.Isend(token, dest=f, tag=RELEASE_TAG) for f in followers], timeout_s,
                 f"the other workers to resume after {what}")
    elif comm.rank in followers:
        mpi.wait(comm, comm.Irecv(token, source=leader, tag=RELEASE_TAG), timeout_s, f"rank {leader} to finish {what}")


#: tags of the end-of-run roll call
ARRIVED_TAG, FINISHED_TAG = 30_001, 30_002


def report_in(comm, absent, timeout_s, what):
    """A barrier that outlives lost ranks: every rank but `absent` (known on rank 0) tells rank 0 it
    is here; rank 0 waits for them, bounded."""
    if comm.rank == 0:
        reqs = [comm.Irecv(np.zeros(1, np.int64), source=r, tag=ARRIVED_TAG)
                for r in range(1, comm.size) if r not in absent]
        mpi.wait_all(comm, reqs, timeout_s, what)
    else:
        mpi.wait(comm, comm.Isend(np.zeros(1, np.int64), dest=0, tag=ARRIVED_TAG), timeout_s, what)


def release(comm, absent, timeout_s, what):
    """Rank 0 lets every rank but `absent` go; the others wait for it, bounded."""
    token = np.zeros(1, np.int64)
    if comm.rank == 0:
        mpi.wait_all(comm, [comm.Isend(token, dest=r, tag=FINISHED_TAG) for r in range(1, comm.size) if r not in absent],
                 timeout_s, what)
    else:
        mpi.wait(comm, comm.Irecv(token, source=0, tag=FINISHED_TAG), timeout_s, what)


class MPIControl:
    """Over MPI: `world` is the job's communicator (the strategy's)."""

    def __init__(self, world, timeout_s):
        self.world, self.timeout_s = world, timeout_s
        self.rank, self.size = world.rank, world.size
        self.comm = mpi.duplicate(world, timeout_s, "the other ranks to start")  # no strategy's receive takes it

    def census(self, flag):
        """(ranks on this node with `flag` true, nodes in the job)."""
        return census(self.world, flag, self.timeout_s)

    def barrier(self, what):
        mpi.barrier(self.comm, self.timeout_s, what)

    def start_time(self):
        """Rank 0's clock, the job's common start."""
        return float(mpi.broadcast(self.comm, np.array([time.time()]), self.timeout_s, "rank 0's start time")[0])

    def hold(self, leader, followers, what):
        """The followers wait until the leader has done `what` ."""
        hold(self.comm, leader, followers, self.timeout_s, what)

    def fail(self, message, status="failed"):
        """One line, then the whole job ends (status: one of bench/run/processes.py FAILURES)."""
        mpi.fail(self.comm, message, status)

    def report_in(self, absent, what):
        """Every rank but `absent` tells rank 0 it has written its last records."""
        report_in(self.comm, absent, self.timeout_s, what)

    def release(self, absent, what):
        """Rank 0 lets every rank but `absent` go."""
        release(self.comm, absent, self.timeout_s, what)


class ElasticControl:
    """Over an elastic Horovod job's collectives. `rank` is the rank this process started with (its
    records and files keep it when the ring shrinks); every rank is a worker."""

    def __init__(self, timeout_s):
        import horovod.tensorflow as hvd
        hvd.init()
        self.hvd, self.timeout_s = hvd, timeout_s
        self.rank, self.size = hvd.rank(), hvd.size()
        self.world = None  # no MPI communicator

    def census(self, flag):
        """Every worker of an elastic job runs on this machine (the launcher starts them here)."""
        return self.size, 1

    def barrier(self, what):
        import tensorflow as tf
        self.hvd.allreduce(tf.zeros([1]), op=self.hvd.Sum, name="ffnbench_barrier")

    def start_time(self):
        import tensorflow as tf
        t0 = self.hvd.broadcast(tf.constant([time.time()], tf.float64), root_rank=0, name="ffnbench_start_time")
        return float(t0.numpy()[0])

    def hold(self, leader, followers, what):
        self.barrier(what)

    def fail(self, message, status="failed"):
        """One line, then this worker ends: the elastic driver takes the ring on without it (a fault
        every worker meets, such as divergence, ends them all and so the job)."""
        print(f"ffnbench: error: rank {self.rank}: {status}: {message}", file=sys.stderr, flush=True)
        os._exit(mpi.ABORT_CODE)

    def report_in(self, absent, what):
        self.barrier(what)

    def release(self, absent, what):
        self.barrier(what)


def for_launch(launch, timeout_s):
    """The control of a job started by `launch` (this process's, made once)."""
    global _current
    if _current is None:
        _current = (ElasticControl(timeout_s) if launch == "horovodrun_elastic"
                    else MPIControl(world_for(launch), timeout_s))
    return _current


_current = None
