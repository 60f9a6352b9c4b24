"""N logical workers inside one process: the algorithm of N workers without N machines.

These answer "what do N workers do to convergence" (large batches, staleness, lr rules) on a small
machine. They are emulations and say so: every record carries `emulated: true`, and their FOVs/s is
one process's, not N machines'.
"""
import numpy as np

from ffnbench.strategies.base import Final, LayoutError, Strategy, register
from ffnbench.strategies.numpy_optimizers import ShardUpdater


class _Emulated(Strategy):
    options = {"workers": 2}
    option_docs = {"workers": "logical workers inside one process"}
    emulated = True

    @classmethod
    def roles(cls, ranks, options):
        n = options["workers"]
        if ranks != 1:
            raise LayoutError(f"strategy {cls.name} runs in 1 rank (got ranks={ranks})")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise LayoutError(f"strategy_options.workers must be an integer >= 1 (got {n!r})")
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
    order, color, simulator_model = 60, "#9467bd", None

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
    """Emulated async PS: each gradient is computed on parameters tau updates old.

    delay: round_robin (equal-speed workers, tau = N-1 in steady state) or histogram
    (tau drawn from `staleness_histogram`, e.g. one measured by a real PS run: counts for tau=0,1,...).
    """
    name = "emulated_async"
    order, color, simulator_model = 70, "#e377c2", None
    options = {"workers": 2, "delay": "round_robin", "staleness_histogram": []}
    option_docs = {**_Emulated.option_docs, "delay": "round_robin (tau = N-1) or histogram",
                   "staleness_histogram": "counts for tau = 0, 1, ... (e.g. a real PS run's summary staleness.histogram)"}

    @classmethod
    def roles(cls, ranks, options):
        if options["delay"] not in ("round_robin", "histogram"):
            raise LayoutError(f"strategy_options.delay must be round_robin or histogram (got {options['delay']!r})")
        hist = options["staleness_histogram"]
        if options["delay"] == "histogram" and (not hist or min(hist) < 0 or sum(hist) <= 0):
            raise LayoutError("strategy_options.staleness_histogram must be non-negative counts for tau=0,1,...")
        return super().roles(ranks, options)

    @classmethod
    def fovs_per_update(cls, layout, batch_size):
        return batch_size  # one logical worker's gradient per update

    def setup(self):
        super().setup()
        s = self.ctx.settings
        self.params = self.model.get_flat()
        self.updater = ShardUpdater(s.optimizer, self.model.num_params, s.clip)
        self.version = 0
        if self.opts["delay"] == "histogram":
            hist = np.asarray(self.opts["staleness_histogram"], float)
            self.tau_probs = hist / hist.sum()
            self.rng = np.random.default_rng([s.seed, 7])

    def read_version(self, worker, reads):
        """The version this worker's gradient is computed on."""
        if self.opts["delay"] == "round_robin":
            return reads[worker]
        return max(0, self.version - int(self.rng.choice(len(self.tau_probs), p=self.tau_probs)))

    def train(self):
        ctx, rec, model, n = self.ctx, self.ctx.recorder, self.model, self.ctx.layout.workers
        reads = [0] * n                       # round robin: the version each worker last pulled
        snapshots = {0: self.params.copy()}   # versions some worker may still read
        keep = len(self.tau_probs) if self.opts["delay"] == "histogram" else 0
        round_loss, round_fovs = 0.0, 0
        for t in range(ctx.settings.steps * n):
            worker = t % n
            read = self.read_version(worker, reads)
            with rec.phase("data"):
                batch = self.streams[worker].next_batch()
            with rec.phase("compute"):
                model.set_flat(snapshots[read])
                grad, loss, logits = model.flat_gradients(batch)
                self.streams[worker].feedback(logits)
                lr = ctx.lr(self.version // n)
                rec.update(worker, read, self.version, lr=lr, emulated=True)
                self.updater.apply(self.params, grad, lr)
                self.version += 1
                reads[worker] = self.version
                snapshots[self.version] = self.params.copy()
                oldest = min(min(reads), self.version - keep)
                for v in [v for v in snapshots if v < oldest]:
                    del snapshots[v]
            round_loss += loss / n
            round_fovs += len(batch)
            if worker == n - 1:  # one step record per round of N updates, as N real workers would give
                model.set_flat(self.params)  # an evaluation after the record sees the current parameters
                rec.step(t // n, round_fovs, round_loss, model_version=self.version, emulated=True)
                round_loss, round_fovs = 0.0, 0

    def finish(self):
        return Final(self.params.copy(), self.version)
