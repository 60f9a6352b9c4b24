"""Synchronous parameter server: one update from the first N gradients of each round.

With backup_workers b, N = workers - b and the b slowest gradients of a round are dropped
(SyncReplicasOptimizer's semantics; Chen, Pan, Monga, Bengio, Jozefowicz, "Revisiting Distributed
Synchronous SGD", 2016); with b = 0 it is plain sync SGD through servers.
"""
import numpy as np

from ffnbench.strategies.base import LayoutError, register
from ffnbench.strategies.parameter_server import ParameterServerStrategy


@register
class PSSync(ParameterServerStrategy):
    """Sync parameter server (mpi4py): servers average N gradients per update; optional backups."""
    name = "ps_sync"
    order, color, simulator_model = 40, "#2ca02c", "sync_ps"
    options = {**ParameterServerStrategy.options, "backup_workers": 0}
    option_docs = {**ParameterServerStrategy.option_docs,
                   "backup_workers": "aggregate the first N-b of N gradients per round, drop the rest (Chen et al. 2016)"}

    @classmethod
    def roles(cls, ranks, options):
        roles = super().roles(ranks, options)
        b = options["backup_workers"]
        if not isinstance(b, int) or not 0 <= b < roles.count("worker"):
            raise LayoutError(f"strategy_options.backup_workers must be an integer in [0, workers) "
                              f"(got {b!r} with {roles.count('worker')} workers)")
        return roles

    @classmethod
    def fovs_per_update(cls, layout, batch_size):
        return (layout.workers - layout.options["backup_workers"]) * batch_size

    def setup(self):
        super().setup()
        self.pending = {}         # this round's gradients, by worker
        self.deferred_pulls = []  # workers whose next step must see this round's update

    def waits_on_server(self, worker):
        return worker in self.deferred_pulls

    def on_pull(self, worker):
        if worker in self.pending:
            self.deferred_pulls.append(worker)
        else:
            self.server.answer_pull(worker)

    def on_push(self, worker, read, grad):
        if read < self.server.version:
            self.server.dropped += 1  # a backup's gradient for a round already applied
        else:
            self.pending[worker] = grad

    def after_message(self):
        server, layout = self.server, self.ctx.layout
        needed = layout.workers - self.opts["backup_workers"]
        may_still_push = [w for w in layout.worker_ranks
                          if w not in server.finished | server.lost | set(server.snapshot_asks) | set(self.pending)]
        if not self.pending or (len(self.pending) < needed and may_still_push):
            return
        mean = np.sum([self.pending[w] for w in sorted(self.pending)], axis=0, dtype=np.float32)
        mean /= np.float32(len(self.pending))
        lr = self.ctx.lr(server.version)
        for w in sorted(self.pending):
            server.record(w, server.version, lr)
        server.apply(mean, lr)
        self.pending.clear()
        for w in self.deferred_pulls:
            server.answer_pull(w)
        self.deferred_pulls.clear()
