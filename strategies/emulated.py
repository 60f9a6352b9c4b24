"""N logical workers inside one process: the algorithm of N workers without N machines.

These answer "what do N workers do to convergence" (large batches, staleness, lr rules) on a
small machine. They are emulations and say so: every record carries `emulated: true`, and their
FOVs/s is one process's, not N machines'.
"""
import numpy as np

from strategies.base import LayoutError, Strategy, register
from strategies.ps_optimizer import ShardUpdater


class _Emulated(Strategy):
    options = {"workers": 2}
    emulated = True

    @classmethod
    def roles(cls, ranks, options):
        n = options["workers"]
        if ranks != 1:
            raise LayoutError(f"strategy {cls.name} runs in 1 rank (got ranks={ranks})")
        if not isinstance(n, int) or n < 1:
            raise LayoutError(f"strategy_options.workers must be an integer >= 1 (got {n!r})")
        return ["worker"]

    @classmethod
    def logical_workers(cls, roles, options):
        return options["workers"]

    def setup(self):
        self.streams = [self.run.stream] + [self.run.make_stream(w) for w in range(1, self.run.workers)]


@register
class EmulatedSync(_Emulated):
    """Emulated sync data parallelism: each update averages N per-worker batch gradients."""
    name = "emulated_sync"

    def loop(self):
        run, rec, model, n = self.run, self.run.recorder, self.model, self.run.workers
        for step in range(run.steps):
            model.set_lr(run.lr(step))
            mean = np.zeros(model.num_params, np.float32)
            loss = 0.0
            for stream in self.streams:
                with rec.phase("data"):
                    batch = stream.next_batch()
                with rec.phase("compute"):
                    grad, part_loss, logits = model.flat_gradients(batch)
                    mean += grad
                    loss += part_loss / n
                    stream.feedback(logits)
            with rec.phase("compute"):
                model.apply_gradients(mean / np.float32(n))
            rec.step(step, n * run.batch_size, loss, emulated=True)
            run.after_step(step, fovs_total=(step + 1) * n * run.batch_size)


@register
class EmulatedAsync(_Emulated):
    """Emulated async PS: each gradient is computed on parameters tau updates old.

    delay: round_robin (equal-speed workers, tau = N-1 in steady state) or histogram
    (tau drawn from `staleness_histogram`, e.g. one measured by ps_async: counts for tau=0,1,...).
    """
    name = "emulated_async"
    options = {"workers": 2, "delay": "round_robin", "staleness_histogram": []}

    @classmethod
    def roles(cls, ranks, options):
        if options["delay"] not in ("round_robin", "histogram"):
            raise LayoutError(f"strategy_options.delay must be round_robin or histogram (got {options['delay']!r})")
        hist = options["staleness_histogram"]
        if options["delay"] == "histogram" and (not hist or min(hist) < 0 or sum(hist) <= 0):
            raise LayoutError("strategy_options.staleness_histogram must be non-negative counts for tau=0,1,...")
        return super().roles(ranks, options)

    def updates(self):
        return self.version

    def setup(self):
        super().setup()
        t = self.run.cfg["train"]
        self.params = self.model.get_flat()
        self.updater = ShardUpdater(t["optimizer"], self.model.num_params, t["clip"])
        self.version = 0
        if self.opts["delay"] == "histogram":
            hist = np.asarray(self.opts["staleness_histogram"], float)
            self.tau_probs = hist / hist.sum()
            self.rng = np.random.default_rng([t["seed"], 7])

    def read_version(self, worker, reads):
        """The version this worker's gradient is computed on."""
        if self.opts["delay"] == "round_robin":
            return reads[worker]
        return max(0, self.version - int(self.rng.choice(len(self.tau_probs), p=self.tau_probs)))

    def loop(self):
        run, rec, model, n = self.run, self.run.recorder, self.model, self.run.workers
        reads = [0] * n                       # round robin: the version each worker last pulled
        snapshots = {0: self.params.copy()}   # versions some worker may still read
        keep = len(self.tau_probs) if self.opts["delay"] == "histogram" else 0
        round_loss = 0.0
        for t in range(run.steps * n):
            worker = t % n
            read = self.read_version(worker, reads)
            with rec.phase("data"):
                batch = self.streams[worker].next_batch()
            with rec.phase("compute"):
                model.set_flat(snapshots[read])
                grad, loss, logits = model.flat_gradients(batch)
                self.streams[worker].feedback(logits)
                self.updater.apply(self.params, grad, run.lr(self.version // n))
                staleness = self.version - read
                self.version += 1
                reads[worker] = self.version
                snapshots[self.version] = self.params.copy()
                oldest = min(min(reads), self.version - keep)
                for v in [v for v in snapshots if v < oldest]:
                    del snapshots[v]
            rec.write({"kind": "update", "rank": 0, "worker": worker, "version": self.version, "read": read,
                       "staleness": staleness, "time": rec.now(), "emulated": True})
            round_loss += loss / n
            if worker == n - 1:  # one step record per round of N updates, as N real workers would give
                rec.step(t // n, n * run.batch_size, round_loss, emulated=True)
                round_loss = 0.0
                model.set_flat(self.params)  # evaluation sees the current parameters
                run.after_step(t // n, fovs_total=(t + 1) * run.batch_size, global_step=self.version)
        model.set_flat(self.params)
