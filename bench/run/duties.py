"""What bench does on a rank while the strategy trains, driven by its records: the watchdog, the
progress bar, evaluation and checkpoint pauses, TensorBoard, and the stop at divergence."""
import contextlib
import math
import os
import sys
import threading
import time

import numpy as np

from ffnbench.bench.run import checkpoints, context


class Watchdog:
    """Aborts the job when this rank has made no progress for run.timeout_s while training: a
    collective that a stopped or lost peer never joins (Horovod's included, which no MPI wait of
    ours bounds) ends with one line instead of a hang."""

    def __init__(self, control, timeout_s):
        self.control, self.timeout_s = control, timeout_s
        self.last = time.monotonic()
        self.armed = False
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="ffnbench-watchdog", daemon=True)

    def beat(self, *_):
        self.last = time.monotonic()

    @contextlib.contextmanager
    def disarmed(self):
        """Work that its own bounds cover (pauses, the final evaluation) is not a stall."""
        armed, self.armed = self.armed, False
        try:
            yield
        finally:
            self.beat()
            self.armed = armed

    def start(self):
        self.beat()
        self.armed = True
        self.thread.start()

    def stop(self):
        self.armed = False
        self.stopped.set()

    def _watch(self):
        while not self.stopped.wait(min(1.0, self.timeout_s / 10)):
            idle = time.monotonic() - self.last
            if self.armed and idle > self.timeout_s:
                self.control.fail(f"no training progress for {idle:.0f}s (run.timeout_s {self.timeout_s:g}): a "
                                    f"rank stopped or an exchange hung", "stalled")


class RankDuties:
    """What bench does on this rank as the strategy records: the progress bar (rank 0); pauses of
    every worker alike for periodic evaluation (done by the first worker) and checkpoints (rank 0,
    when it is a worker), so their time leaks into no rank's communication or waiting; TensorBoard
    scalars (rank 0 and the first worker)."""

    def __init__(self, cfg, ctx, control, strategy, data, save_part):
        """save_part(step, arrays): this rank's part of the checkpoint after `step` steps."""
        self.cfg, self.ctx, self.control, self.strategy, self.data = cfg, ctx, control, strategy, data
        self.fovs_per_update = context.fovs_per_update(cfg, ctx.layout)
        self.save_part = save_part
        workers = ctx.layout.worker_ranks
        self.leader, self.followers = workers[0], workers[1:]
        self.eval_every = cfg["eval"]["every"]
        self.checkpoint_every = cfg["run"]["checkpoint_every"]
        self.resumable = ctx.layout.traits.resumable
        self.progress = None
        self.checkpointer = None
        self.watchdog = Watchdog(control, ctx.settings.timeout_s)

    def attach(self, recorder):
        ctx = self.ctx
        (recorder.on_update if ctx.role == "server" else recorder.on_step).append(self.watchdog.beat)
        if ctx.role == "worker":
            recorder.on_step.append(self.stop_if_diverged)
        if ctx.rank == 0 and self.cfg["run"]["progress"]:
            from tqdm import tqdm
            on_server = ctx.role == "server"
            per_step = ctx.layout.workers if on_server else 1
            self.progress = tqdm(total=ctx.settings.steps * per_step, initial=ctx.start_step * per_step, desc=f"{self.cfg['strategy']} x{ctx.layout.ranks}",
                                 unit="update" if on_server else "step", file=sys.stdout, dynamic_ncols=True,
                                 mininterval=1.0)
            (recorder.on_update if on_server else recorder.on_step).append(lambda record: self.progress.update(1))
        if ctx.role == "worker" and (self.eval_every or self.checkpoint_every):
            recorder.on_step.append(self.pause_if_due)
        if ctx.rank in (0, self.leader):
            from ffnbench.bench.run.tensorboard import TensorBoard
            board = TensorBoard(ctx.run_dir, ctx.rank)
            (recorder.on_update if ctx.role == "server" else recorder.on_step).append(
                board.update if ctx.role == "server" else board.step)
            recorder.on_eval.append(board.eval)
            recorder.on_close.append(board.close)

    def stop_if_diverged(self, record):
        """Stop at the first non-finite loss: nothing after it is worth training or checkpointing."""
        if not math.isfinite(record.loss):
            self.control.fail(f"training loss is {record.loss} at step {record.step}; the last good "
                                    f"checkpoint (if any) is in {self.ctx.run_dir}/checkpoints", "diverged")

    def pause_if_due(self, record):
        """After a worker step: every worker pauses together for a due evaluation or checkpoint."""
        ctx, rec, done = self.ctx, self.ctx.recorder, record.step + 1
        if self.eval_every and done % self.eval_every == 0 and done < ctx.settings.steps:
            with rec.pause("eval"), self.watchdog.disarmed():
                self.strategy.pause_begins()
                led = ctx.rank == self.leader
                if led:
                    self.evaluate(record.model_version)
                self.end_pause(led, "the evaluation")
        if self.checkpoint_every and done % self.checkpoint_every == 0 and done < ctx.settings.steps:
            train_time = rec.now()
            with rec.pause("checkpoint"), self.watchdog.disarmed():
                self.strategy.pause_begins()
                led = ctx.rank == self.leader
                if self.resumable:  # the workers' state, and the other ranks' that snapshot() has saved
                    self.save_part(done, checkpoints.join(model=ctx.model.state(), stream=ctx.stream.state()))
                    self.strategy.snapshot(done)  # returns once every rank's part is saved
                if led:  # the weights the leading worker holds (for PS: its last pull)
                    self.save_weights(done)
                    if self.resumable:
                        checkpoints.commit(ctx.run_dir, done, {"train_time": train_time, "ranks": ctx.layout.ranks,
                                                               "strategy": ctx.layout.strategy})
                self.end_pause(led, "the checkpoint")

    def end_pause(self, led, what):
        """Every live worker goes on together once the leader has done `what`: coordinated by the
        strategy when it can go on without lost workers (the next pause's leader may change then),
        else by bench's control plane."""
        leader = self.strategy.pause_ends(led)
        if leader is None:
            self.control.hold(self.leader, self.followers, what)
        else:
            self.leader, self.followers = leader, [w for w in self.ctx.layout.worker_ranks if w != leader]

    def evaluate(self, model_version):
        """Held-out loss and voxel metrics of the weights the model holds, after `model_version` updates."""
        start = time.perf_counter()
        metrics = self.ctx.model.evaluate(self.data.heldout)
        return self.ctx.recorder.eval(model_version, model_version * self.fovs_per_update, metrics,
                                      time.perf_counter() - start)

    def save_weights(self, step):
        """The weights in TensorFlow's checkpoint format (what `ffnbench evaluate` restores)."""
        import tensorflow as tf
        if not np.isfinite(self.ctx.model.get_flat()).all():
            self.control.fail(f"the weights are not finite after step {step}; the last good checkpoint "
                                    f"(if any) is in {self.ctx.run_dir}/checkpoints", "diverged")
        if self.checkpointer is None:
            ckpt = tf.train.Checkpoint(model=self.ctx.model.net)
            self.checkpointer = tf.train.CheckpointManager(ckpt, os.path.join(self.ctx.run_dir, "checkpoints"),
                                                           max_to_keep=2)
        self.checkpointer.save(checkpoint_number=step)

    def close(self):
        self.watchdog.stop()
        if self.progress is not None:
            self.progress.close()
