"""Asynchronous parameter server over mpi4py: each gradient is applied the moment it arrives.

Staleness controls (REFERENCE §6): `lr_staleness: divide` scales the lr by 1/tau (Zhang et al.
2016); `max_staleness: s` is stale-synchronous parallel (Ho et al. 2013): a worker more than s
pushes ahead of the slowest unfinished worker has its pull held until the slowest catches up.
"""
import numpy as np

from strategies.base import LayoutError, register
from strategies.mpi_wait import fail
from strategies.ps_common import DONE, PULL, PUSH, ParameterServerStrategy


@register
class PSAsync(ParameterServerStrategy):
    """Async parameter server (mpi4py): gradients applied as they arrive, staleness measured."""
    name = "ps_async"
    options = {**ParameterServerStrategy.options, "prefetch": False, "lr_staleness": "none",
               "max_staleness": None}

    @classmethod
    def roles(cls, ranks, options):
        if options["lr_staleness"] not in ("none", "divide"):
            raise LayoutError(f"strategy_options.lr_staleness must be none or divide (got {options['lr_staleness']!r})")
        s = options["max_staleness"]
        if s is not None and (not isinstance(s, int) or s < 0):
            raise LayoutError(f"strategy_options.max_staleness must be an integer >= 0 or null (got {s!r})")
        return super().roles(ranks, options)

    def expected_updates(self):
        return self.run.steps * self.run.workers

    def serve(self):
        run, token = self.run, np.empty(1, np.int64)
        bound, divide = self.opts["max_staleness"], self.opts["lr_staleness"] == "divide"
        clocks = {w: 0 for w in run.worker_ranks}   # pushes received from each worker
        held = []                                   # pulls held back by the staleness bound

        def may_proceed(worker):
            active = [clocks[w] for w in clocks if w not in finished] or [clocks[worker]]
            return bound is None or clocks[worker] - min(active) <= bound

        finished = set()
        while len(finished) < run.workers:
            worker, tag = self.next_message()
            if tag == PULL:
                self.recv(token, worker, PULL, "a pull request")
                if may_proceed(worker):
                    self.answer_pull(worker)
                else:
                    held.append(worker)
            elif tag == PUSH:
                read, _, grad = self.receive_push(worker)
                staleness = self.version - read
                lr = run.lr(self.version // run.workers)
                if divide and staleness > 0:
                    lr /= staleness
                self.apply(grad, lr)
                self.record_update(worker, read, staleness, lr=lr)
                clocks[worker] += 1
                run.tick()
            elif tag == DONE:
                self.recv(token, worker, DONE, "a done message")
                finished.add(worker)
            else:
                fail(self.comm, f"unexpected message tag {tag} from rank {worker}")
            for w in [w for w in held if may_proceed(w)]:
                held.remove(w)
                self.answer_pull(w)
