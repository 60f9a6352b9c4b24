"""Bench's own messages between the ranks of a job: the start, pauses, the end-of-run roll call, aborts.

There is one kind per launch (strategies/base.py LAUNCHES). Under mpirun they travel over MPI on a
duplicate of the job's communicator, so no strategy's probe sees them, and each wait is bounded by
run.timeout_s. An elastic Horovod job has no MPI communicator: they are Horovod collectives over
Gloo, bounded by Horovod's Gloo timeout (the launcher sets it to run.timeout_s). There a lost worker
surfaces as Horovod's own error, which the elastic training loop recovers from.
"""
import os
import sys
import time

import numpy as np

from ffnbench.strategies import comm as mpi


class MPIControl:
    """Over MPI: `world` is the job's communicator (the strategy's)."""

    def __init__(self, world, timeout_s):
        self.world, self.timeout_s = world, timeout_s
        self.rank, self.size = world.rank, world.size
        self.comm = mpi.duplicate(world, timeout_s, "the other ranks to start")

    def census(self, flag):
        """(ranks on this node with `flag` true, nodes in the job)."""
        return mpi.census(self.world, flag, self.timeout_s)

    def barrier(self, what):
        mpi.barrier(self.comm, self.timeout_s, what)

    def start_time(self):
        """Rank 0's clock, the job's common start."""
        return float(mpi.broadcast(self.comm, np.array([time.time()]), self.timeout_s, "rank 0's start time")[0])

    def hold(self, leader, followers, what):
        """The followers wait until the leader has done `what` (strategies/comm.py hold)."""
        mpi.hold(self.comm, leader, followers, self.timeout_s, what)

    def fail(self, message, status="failed"):
        """One line, then the whole job ends (status: one of strategies/comm.py FAILURES)."""
        mpi.fail(self.comm, message, status)

    def report_in(self, absent, what):
        """Every rank but `absent` tells rank 0 it has written its last records."""
        mpi.report_in(self.comm, absent, self.timeout_s, what)

    def release(self, absent, what):
        """Rank 0 lets every rank but `absent` go."""
        mpi.release(self.comm, absent, self.timeout_s, what)


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
                    else MPIControl(mpi.world_for(launch), timeout_s))
    return _current


_current = None
