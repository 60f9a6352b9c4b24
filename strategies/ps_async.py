"""Asynchronous parameter server over mpi4py: each gradient is applied the moment it arrives.

Staleness controls: `lr_staleness: divide` scales the lr by 1/tau (Zhang, Gupta, Lian, Liu,
"Staleness-aware Async-SGD for Distributed Deep Learning", IJCAI 2016); `max_staleness: s` is
stale-synchronous parallel (Ho et al., "More Effective Distributed ML via a Stale Synchronous Parallel
Parameter Server", NIPS 2013): a worker more than s pushes ahead of the slowest unfinished worker has
its pull held until the slowest catches up.
"""
from ffnbench.strategies.base import register
from ffnbench.strategies.declare import Option, Traits
from ffnbench.strategies.parameter_server import ParameterServerStrategy
from ffnbench.strategies.settings import LR_STALENESS, MAX_STALENESS, staleness_lr


@register
class PSAsync(ParameterServerStrategy):
    """Async parameter server (mpi4py): gradients applied as they arrive, staleness measured."""
    name = "ps_async"
    # asynchrony's advantage: when a worker is lost, the others' gradients keep coming
    traits = Traits(resumable=True, survives_lost_workers=True, simulator_model="async_ps")
    options = {**ParameterServerStrategy.options,
               "prefetch": Option(False, "pull the next parameters during compute (more staleness, which is measured)"),
               "lr_staleness": LR_STALENESS, "max_staleness": MAX_STALENESS}

    @classmethod
    def fovs_per_update(cls, layout, batch_size):
        return batch_size  # every worker's gradient is an update of its own

    def setup(self):
        super().setup()
        self.held = []  # pulls held back by the bound

    def waits_on_server(self, worker):
        return worker in self.held

    def may_proceed(self, worker):
        bound = self.ctx.layout.options["max_staleness"]
        gone = self.server.finished | self.server.lost
        clocks = self.server.pushes  # gradients received from each worker
        active = [c for w, c in clocks.items() if w not in gone] or [clocks[worker]]
        return bound is None or clocks[worker] - min(active) <= bound

    def on_pull(self, worker):
        if self.may_proceed(worker):
            self.server.answer_pull(worker)
        else:
            self.held.append(worker)

    def on_push(self, worker, read, grad):
        server = self.server
        staleness = server.version - read
        lr = staleness_lr(self.ctx.lr(server.version // self.ctx.layout.workers), staleness,
                          self.ctx.layout.options["lr_staleness"])
        server.record(worker, read, lr)
        server.apply(grad, lr)

    def after_message(self):
        for w in [w for w in self.held if self.may_proceed(w)]:
            self.held.remove(w)
            self.server.answer_pull(w)
