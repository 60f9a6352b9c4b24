"""Synchronous parameter server: one update from the first N gradients of each round.

With backup_workers b, N = workers - b and the b slowest gradients of a round are dropped
(SyncReplicasOptimizer's semantics; Chen, Pan, Monga, Bengio, Jozefowicz, "Revisiting Distributed
Synchronous SGD", 2016); with b = 0 it is plain sync SGD through servers.
"""
import numpy as np

from ffnbench.strategies.base import register
from ffnbench.strategies.declare import LayoutError, Option, Traits
from ffnbench.strategies.parameter_server import ParameterServerStrategy


@register
class PSSync(ParameterServerStrategy):
    """Sync parameter server (mpi4py): servers average N gradients per update; optional backups."""
    name = "ps_sync"
    traits = Traits(resumable=True, simulator_model="sync_ps")
    options = {**ParameterServerStrategy.options,
               "backup_workers": Option(0, "aggregate the first N-b of N gradients per round, drop the rest "
                                           "(Chen et al. 2016)", at_least=0)}

    @classmethod
    def roles(cls, ranks, options):
        roles = super().roles(ranks, options)
        if options["backup_workers"] >= roles.count("worker"):
            raise LayoutError(f"config field strategy_options.backup_workers: must be below the workers "
                              f"(got {options['backup_workers']} with {roles.count('worker')} workers)")
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
            self.pending[worker] = grad.copy()  # grad is the worker's inbox, which its next message fills

    def after_message(self):
        server, layout = self.server, self.ctx.layout
        needed = layout.workers - layout.options["backup_workers"]
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
