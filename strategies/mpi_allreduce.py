"""Sync data parallelism with mpi4py's Allreduce on the flat gradient: the raw-MPI baseline."""
import numpy as np
from mpi4py import MPI

from strategies.base import SyncDataParallel, register
from strategies.mpi_wait import wait


@register
class MPIAllreduce(SyncDataParallel):
    """Sync all-reduce of one flat float32 gradient with mpi4py (raw-MPI baseline)."""
    name = "mpi_allreduce"

    def setup(self):
        weights = self.model.get_flat()
        wait(self.comm, self.comm.Ibcast(weights, root=0), self.run.timeout, "initial weights")
        self.model.set_flat(weights)
        self.summed = np.empty(self.model.num_params, np.float32)

    def average(self, grad):
        wait(self.comm, self.comm.Iallreduce(grad, self.summed, op=MPI.SUM), self.run.timeout,
             "the gradient all-reduce")
        return self.summed / np.float32(self.comm.size)
