"""The strategy interface: set up, run this rank's loop, finish.

A strategy sees a `Run` (bench/train.py): the model API (`run.model`), the communicator
(`run.comm`), this rank's example stream, the lr schedule, the recorder and the evaluator.
"""

import numpy as np


class LayoutError(ValueError):
    """An impossible rank layout for a strategy."""


class Strategy:
    name = ""
    #: strategy_options this strategy accepts, with defaults
    options = {}
    #: True when N workers are emulated inside one process (records say so)
    emulated = False

    def __init__(self, run):
        self.run = run
        self.comm = run.comm
        self.model = run.model
        self.opts = run.options

    @classmethod
    def roles(cls, ranks, options):
        """Role of each rank ('worker' or 'server'); raise LayoutError when impossible."""
        return ["worker"] * ranks

    @classmethod
    def logical_workers(cls, roles, options):
        """Workers whose batches make one update's worth of data (lr scaling uses it)."""
        return roles.count("worker")

    def setup(self):
        """Make every rank start from the same state."""

    def loop(self):
        raise NotImplementedError

    def expected_updates(self):
        """Length of the progress bar."""
        return self.run.steps

    def updates(self):
        """Model updates applied by the end (the `step` of the final evaluation)."""
        return self.run.steps

    def finish(self):
        """Final flat weights on rank 0 (None elsewhere)."""
        return self.model.get_flat() if self.comm.rank == 0 else None


class SyncDataParallel(Strategy):
    """Each worker computes a gradient on its own batch; `average` turns them into one mean
    gradient (the only communication); every worker applies the same update."""

    def gradients(self, batch):
        """(gradient, loss, logits) for this worker's batch."""
        return self.model.flat_gradients(batch)

    def average(self, grads):
        raise NotImplementedError

    def loop(self):
        run, rec, model = self.run, self.run.recorder, self.model
        for step in range(run.steps):
            model.set_lr(run.lr(step))
            with rec.phase("data"):
                batch = run.stream.next_batch()
            with rec.phase("compute"):
                grads, loss, logits = self.gradients(batch)
            with rec.phase("comm"):
                grads = self.average(grads)
            with rec.phase("compute"):
                model.apply_gradients(grads)
                run.stream.feedback(np.asarray(logits))
            rec.step(step, len(batch), float(loss))
            run.after_step(step, fovs_total=(step + 1) * len(batch) * run.workers)


REGISTRY = {}


def register(cls):
    REGISTRY[cls.name] = cls
    return cls
