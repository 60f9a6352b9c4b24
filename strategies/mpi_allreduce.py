"""Sync data parallelism with mpi4py's Allreduce on the flat gradient: the raw-MPI baseline."""
import numpy as np
from mpi4py import MPI

from strategies.base import Strategy, register
from strategies.mpi_wait import wait


@register
class MPIAllreduce(Strategy):
    """Sync all-reduce of one flat float32 gradient with mpi4py (raw-MPI baseline)."""
    name = "mpi_allreduce"

    def setup(self):
        weights = self.model.get_flat()
        wait(self.comm, self.comm.Ibcast(weights, root=0), self.run.timeout, "initial weights")
        self.model.set_flat(weights)
        self.summed = np.empty(self.model.num_params, np.float32)

    def loop(self):
        run, rec = self.run, self.run.recorder
        for step in range(run.steps):
            self.model.set_lr(run.lr(step))
            with rec.phase("data"):
                batch = run.stream.next_batch()
            with rec.phase("compute"):
                grad, loss, logits = self.model.flat_gradients(batch)
            with rec.phase("comm"):
                wait(self.comm, self.comm.Iallreduce(grad, self.summed, op=MPI.SUM), run.timeout,
                     "the gradient all-reduce")
            with rec.phase("compute"):
                self.model.apply_gradients(self.summed / self.comm.size)
                run.stream.feedback(logits)
            rec.step(step, len(batch), loss)
            run.after_step(step, fovs_total=(step + 1) * len(batch) * self.comm.size)
