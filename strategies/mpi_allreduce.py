"""Sync data parallelism with mpi4py's Allreduce on the flat gradient: the raw-MPI baseline."""
import numpy as np

from ffnbench.strategies import comm
from ffnbench.strategies.base import SyncDataParallel, check_choice, register


@register
class MPIAllreduce(SyncDataParallel):
    """Sync all-reduce of one flat float32 gradient with mpi4py (raw-MPI baseline)."""
    name = "mpi_allreduce"
    order, color = 20, "#17becf"
    options = {"gradient_wire": "float32"}
    option_docs = {"gradient_wire": "float32 | bfloat16: bfloat16 halves the bytes all-reduced (and sums in "
                                    "bfloat16); convergence not yet measured"}

    @classmethod
    def roles(cls, ranks, options):
        check_choice(options, "gradient_wire", comm.GRADIENT_WIRES)
        return super().roles(ranks, options)

    def setup(self):
        timeout = self.ctx.settings.timeout_s
        self.model.set_flat(comm.broadcast(self.comm, self.model.get_flat(), timeout, "initial weights"))
        self.wire = self.opts["gradient_wire"]
        self.summed = comm.to_wire(np.empty(self.model.num_params, np.float32), self.wire)

    def average(self, grad):
        comm.sum_allreduce(self.comm, comm.to_wire(grad, self.wire), self.summed, self.ctx.settings.timeout_s,
                           "the gradient all-reduce")
        return comm.from_wire(self.summed, self.wire) / np.float32(self.comm.size)

