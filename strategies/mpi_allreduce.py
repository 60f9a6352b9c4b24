"""Sync data parallelism with mpi4py's Allreduce on the flat gradient: the raw-MPI baseline."""
import numpy as np

from ffnbench.strategies import comm
from ffnbench.strategies.base import SyncDataParallel, register


@register
class MPIAllreduce(SyncDataParallel):
    """Sync all-reduce of one flat float32 gradient with mpi4py (raw-MPI baseline)."""
    name = "mpi_allreduce"
    order, color = 20, "#17becf"

    def setup(self):
        timeout = self.ctx.settings.timeout_s
        self.model.set_flat(comm.broadcast(self.comm, self.model.get_flat(), timeout, "initial weights"))
        self.summed = np.empty(self.model.num_params, np.float32)

    def average(self, grad):
        comm.sum_allreduce(self.comm, grad, self.summed, self.ctx.settings.timeout_s, "the gradient all-reduce")
        return self.summed / np.float32(self.comm.size)
