"""Synchronous parameter server: one update from the first N gradients of each round.

With backup_workers b, N = workers - b and the b slowest gradients of a round are dropped
(SyncReplicas semantics, Chen et al. 2016); with b = 0 it is plain sync SGD through servers.
"""
import numpy as np

from strategies.base import LayoutError, register
from strategies.mpi_wait import fail
from strategies.ps_common import DONE, PULL, PUSH, ParameterServerStrategy


@register
class PSSync(ParameterServerStrategy):
    """Sync parameter server (mpi4py): servers average N gradients per update; optional backups."""
    name = "ps_sync"
    options = {**ParameterServerStrategy.options, "backup_workers": 0}

    @classmethod
    def roles(cls, ranks, options):
        roles = super().roles(ranks, options)
        b = options["backup_workers"]
        if not isinstance(b, int) or not 0 <= b < roles.count("worker"):
            raise LayoutError(f"strategy_options.backup_workers must be an integer in [0, workers) "
                              f"(got {b!r} with {roles.count('worker')} workers)")
        return roles

    def serve(self):
        run, token = self.run, np.empty(1, np.int64)
        pending, deferred_pulls, finished = {}, [], set()
        dropped = 0
        needed = run.workers - self.opts["backup_workers"]
        while len(finished) < run.workers:
            worker, tag = self.next_message()
            if tag == PULL:
                self.recv(token, worker, PULL, "a pull request")
                if worker in pending:
                    deferred_pulls.append(worker)  # its next step must see this round's update
                else:
                    self.answer_pull(worker)
            elif tag == PUSH:
                read, _, grad = self.receive_push(worker)
                if read < self.version:
                    dropped += 1  # a backup's gradient for a round already applied
                else:
                    pending[worker] = grad
            elif tag == DONE:
                self.recv(token, worker, DONE, "a done message")
                finished.add(worker)
            else:
                fail(self.comm, f"unexpected message tag {tag} from rank {worker}")
            may_still_push = [w for w in run.worker_ranks if w not in finished and w not in pending]
            if pending and (len(pending) >= needed or not may_still_push):
                mean = np.sum([pending[w] for w in sorted(pending)], axis=0, dtype=np.float32)
                mean /= np.float32(len(pending))
                for w in sorted(pending):
                    self.record_update(w, self.version, 0)
                self.apply(mean, run.lr(self.version))
                run.tick()
                pending.clear()
                for w in deferred_pulls:
                    self.answer_pull(w)
                deferred_pulls.clear()
        self.dropped = dropped
