"""N logical workers inside one process: the algorithm of N workers without N machines.

These answer "what do N workers do to convergence" (large batches, staleness, lr rules) on a small
machine. They are emulations and say so: every record carries `emulated: true`, and their FOVs/s is
one process's, not N machines'.
"""
import heapq

import numpy as np

from ffnbench.strategies.base import Final, Strategy, register
from ffnbench.strategies.declare import LayoutError, Option, Traits
from ffnbench.strategies.settings import LR_STALENESS, MAX_STALENESS, staleness_lr
from ffnbench.strategies.numpy_optimizers import ShardUpdater


class _Emulated(Strategy):
    options = {"workers": Option(2, "logical workers inside one process", at_least=1)}
    traits = Traits(emulated=True)

    @classmethod
    def roles(cls, ranks, options):
        if ranks != 1:
            raise LayoutError(f"strategy {cls.name} runs in 1 rank (got ranks={ranks})")
        return ["worker"]

    @classmethod
    def logical_workers(cls, roles, options):
        return options["workers"]

    def setup(self):
        self.streams = [self.ctx.stream] + [self.ctx.make_stream(w) for w in range(1, self.ctx.layout.workers)]


@register
class EmulatedSync(_Emulated):
    """Emulated sync data parallelism: each update averages N per-worker batch gradients."""
    name = "emulated_sync"

    def train(self):
        ctx, rec, model, n = self.ctx, self.ctx.recorder, self.model, self.ctx.layout.workers
        for step in range(ctx.settings.steps):
            model.set_lr(ctx.lr(step))
            mean = np.zeros(model.num_params, np.float32)
            loss, fovs = 0.0, 0
            for stream in self.streams:
                with rec.phase("data"):
                    batch = stream.next_batch()
                with rec.phase("compute"):
                    grad, part_loss, logits = model.flat_gradients(batch)
                    mean += grad
                    loss += part_loss / n
                    fovs += len(batch)
                    stream.feedback(logits)
            with rec.phase("compute"):
                model.apply_gradients(mean / np.float32(n))
            rec.step(step, fovs, loss, model_version=step + 1, emulated=True)


@register
class EmulatedAsync(_Emulated):
    """Emulated async PS: each gradient is applied to parameters that moved on since it was read.

    delay: round_robin (equal-speed workers: tau = N-1 in steady state), speeds (workers take
    1/speed time units per step and push in the order they finish, so slow ones are staler), or
    histogram (tau drawn from `staleness_histogram`, e.g. a real PS run's or the simulator's).
    `max_staleness` and `lr_staleness` are ps_async's SSP bound and 1/tau rule, applied the same way.
    """
    name = "emulated_async"
    options = {**_Emulated.options,
               "delay": Option("round_robin", "round_robin (tau = N-1), speeds or histogram",
                               choices=("round_robin", "speeds", "histogram")),
               "worker_speeds": Option([], "delay speeds: relative step rates, repeated over the workers "
                                           "(e.g. [1, 1, 1, 0.25])", items=float, at_least=0),
               "staleness_histogram": Option([], "delay histogram: counts for tau = 0, 1, ... (e.g. a real PS run's "
                                                 "summary staleness.histogram)", items=float, at_least=0),
               "max_staleness": MAX_STALENESS, "lr_staleness": LR_STALENESS}

    @classmethod
    def roles(cls, ranks, options):
        hist, speeds = options["staleness_histogram"], options["worker_speeds"]
        if options["delay"] == "histogram" and sum(hist) <= 0:
            raise LayoutError("config field strategy_options.staleness_histogram: must hold counts for tau=0,1,... "
                              "for delay histogram")
        if options["delay"] == "speeds" and (not speeds or min(speeds) <= 0):
            raise LayoutError("config field strategy_options.worker_speeds: must be positive step rates for delay "
                              "speeds, e.g. [1, 0.5]")
        if options["max_staleness"] is not None and options["delay"] == "histogram":
            raise LayoutError("config field strategy_options.max_staleness: needs delay round_robin or speeds (a "
                              "histogram has no clocks)")
        return super().roles(ranks, options)

    @classmethod
    def fovs_per_update(cls, layout, batch_size):
        return batch_size  # one logical worker's gradient per update

    def setup(self):
        super().setup()
        s, n, o = self.ctx.settings, self.ctx.layout.workers, self.ctx.layout.options
        self.params = self.model.get_flat()
        self.updater = ShardUpdater(s.optimizer, self.model.num_params, s.clip)
        self.version = 0
        speeds = o["worker_speeds"] if o["delay"] == "speeds" else [1.0]
        self.step_time = [1.0 / speeds[w % len(speeds)] for w in range(n)]
        if o["delay"] == "histogram":
            hist = np.asarray(o["staleness_histogram"], float)
            self.tau_probs = hist / hist.sum()
            self.rng = np.random.default_rng([s.seed, 7])

    def train(self):
        ctx, rec, model, n = self.ctx, self.ctx.recorder, self.model, self.ctx.layout.workers
        o = ctx.layout.options
        order = PushOrder(self.step_time, o["max_staleness"])
        histogram = o["delay"] == "histogram"
        snapshots = {0: self.params.copy()}   # versions some worker may still read
        round_loss, round_fovs = 0.0, 0
        for t in range(ctx.settings.steps * n):
            worker, read = order.next_push()
            if histogram:
                read = max(0, self.version - int(self.rng.choice(len(self.tau_probs), p=self.tau_probs)))
            with rec.phase("data"):
                batch = self.streams[worker].next_batch()
            with rec.phase("compute"):
                model.set_flat(snapshots[read])
                grad, loss, logits = model.flat_gradients(batch)
                self.streams[worker].feedback(logits)
                lr = staleness_lr(ctx.lr(self.version // n), self.version - read, o["lr_staleness"])
                rec.update(worker, read, self.version, lr=lr, emulated=True)
                self.updater.apply(self.params, grad, lr)
                self.version += 1
                snapshots[self.version] = self.params.copy()
                order.pushed(worker, self.version)
                oldest = self.version - len(self.tau_probs) if histogram else order.oldest_read()
                for v in [v for v in snapshots if v < oldest]:
                    del snapshots[v]
            round_loss += loss / n
            round_fovs += len(batch)
            if (t + 1) % n == 0:  # one step record per N updates, as N real workers would give
                model.set_flat(self.params)  # an evaluation after the record sees the current parameters
                rec.step(t // n, round_fovs, round_loss, model_version=self.version, emulated=True)
                round_loss, round_fovs = 0.0, 0

    def finish(self):
        return Final(self.params.copy(), self.version)


class PushOrder:
    """The order in which emulated workers' pushes reach the server, and the version each read.

    A worker reads the current version when it starts a step and pushes `step_time` later; ties go to
    the lower worker, so equal speeds are round robin (tau = N-1). Under SSP a worker more than
    `bound` pushes ahead of the slowest is held, and starts (reading) when the slowest pushes.
    """

    def __init__(self, step_time, bound):
        self.step_time, self.bound = step_time, bound
        self.pushes = [0] * len(step_time)
        self.running = [(t, w, 0) for w, t in enumerate(step_time)]  # (finish time, worker, version read)
        heapq.heapify(self.running)
        self.held, self.now = [], 0.0

    def next_push(self):
        """(worker, version read) of the next push to arrive."""
        self.now, worker, read = heapq.heappop(self.running)
        return worker, read

    def pushed(self, worker, version):
        """`worker`'s push made `version`; it and any held worker the bound now allows start a step."""
        self.pushes[worker] += 1
        self.held.append(worker)
        slowest = min(self.pushes)
        for w in sorted(self.held):
            if self.bound is None or self.pushes[w] - slowest <= self.bound:
                self.held.remove(w)
                heapq.heappush(self.running, (self.now + self.step_time[w], w, version))

    def oldest_read(self):
        """The oldest version a running worker computes on (held workers will read a newer one)."""
        return min(read for _, _, read in self.running)
