"""Sync data parallelism with mpi4py's Allreduce on the flat gradient: the raw-MPI baseline."""
import numpy as np

from ffnbench.strategies import comm
from ffnbench.strategies.base import SyncDataParallel, register


@register
class MPIAllreduce(SyncDataParallel):
    """Sync all-reduce of one flat float32 gradient with mpi4py (raw-MPI baseline)."""
    name = "mpi_allreduce"
    options = {"gradient_wire": comm.GRADIENT_WIRE}

    @classmethod
    def exchange_benchmarks(cls, world, grads):
        """{way: call}: one exchange of the gradient (per-variable tensors, flattened) as training
        makes it, for commbench to time against raw MPI on the same float32 bytes."""
        flat = np.concatenate([np.ravel(g) for g in grads]).astype(np.float32)
        summed = np.empty_like(flat)
        return {"float32": lambda: average_flat(world, flat, "float32", summed, 60.0)}

    def setup(self):
        timeout = self.ctx.settings.timeout_s
        self.model.set_flat(comm.broadcast(self.comm, self.model.get_flat(), timeout, "initial weights"))
        self.wire = self.ctx.layout.options["gradient_wire"]
        self.summed = comm.to_wire(np.empty(self.model.num_params, np.float32), self.wire)

    def average(self, grad):
        return average_flat(self.comm, grad, self.wire, self.summed, self.ctx.settings.timeout_s)


def average_flat(world, grad, wire, summed, timeout_s):
    """The mean over `world`'s ranks of a flat float32 gradient, summed on `wire` into `summed` (a
    buffer of the wire's dtype): the exchange of mpi_allreduce, which commbench times as it is."""
    comm.sum_allreduce(world, comm.to_wire(grad, wire), summed, timeout_s, "the gradient all-reduce")
    return comm.from_wire(summed, wire) / np.float32(world.size)
