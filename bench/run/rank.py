"""One rank's life (`ffnbench train`): start up, train with the strategy, finish, write the summary.

Runs unchanged under `ffnbench run`, mpirun, srun or aprun: everything it knows about the job comes
from the config and from the communicator of the strategy's launch (strategies/comm.py).
"""
import contextlib
import math
import os
import platform
import socket
import subprocess
import sys
import threading
import time

import numpy as np

from ffnbench import strategies
from ffnbench.bench.run import checkpoints, context, control as controls, peak, summary as summ
from ffnbench.bench.config import ConfigError
from ffnbench.bench.run.recorder import Recorder
from ffnbench.model.network import bf16_flags
from ffnbench.strategies.base import TrainingContext


def threads_for(cfg, local_compute_ranks):
    """run.threads_per_rank, or this node's cores shared by its compute ranks."""
    return cfg["run"]["threads_per_rank"] or max(1, (os.cpu_count() or 1) // max(1, local_compute_ranks))


def configure_threads(n):
    os.environ["OMP_NUM_THREADS"] = str(n)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, n))


def git_commit():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions():
    from mpi4py import MPI
    import mpi4py
    import tensorflow as tf
    try:
        import horovod
        hvd_version = horovod.__version__
    except ImportError:
        hvd_version = None
    return {"python": platform.python_version(), "tensorflow": tf.__version__, "horovod": hvd_version,
            "mpi4py": mpi4py.__version__, "mpi": MPI.Get_library_version().splitlines()[0].strip(),
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}


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
                if ctx.rank == self.leader:
                    self.evaluate(record.model_version)
                self.control.hold(self.leader, self.followers, "the evaluation")
        if self.checkpoint_every and done % self.checkpoint_every == 0 and done < ctx.settings.steps:
            train_time = rec.now()
            with rec.pause("checkpoint"), self.watchdog.disarmed():
                if self.resumable:  # the workers' state, and the other ranks' that snapshot() has saved
                    self.save_part(done, checkpoints.join(model=ctx.model.state(), stream=ctx.stream.state()))
                    self.strategy.snapshot(done)  # returns once every rank's part is saved
                if ctx.rank == self.leader:  # the weights the first worker holds (for PS: its last pull)
                    self.save_weights(done)
                    if self.resumable:
                        checkpoints.commit(ctx.run_dir, done, {"train_time": train_time, "ranks": ctx.layout.ranks,
                                                               "strategy": ctx.layout.strategy})
                self.control.hold(self.leader, self.followers, "the checkpoint")

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


def train(cfg, run_dir):
    """Run one rank. Returns the summary on rank 0 (None elsewhere)."""
    handoff = context.read_handoff(run_dir)
    layout = context.layout_of(cfg)
    cls = strategies.get(layout.strategy)
    control = controls.for_launch(layout.traits.launch, cfg["run"]["timeout_s"])
    if control.size != layout.ranks:
        raise ConfigError(f"config field ranks: is {layout.ranks} but the job has {control.size} ranks")
    rank = control.rank
    role = layout.roles[rank]
    local_workers, nodes = control.census(role == "worker")
    threads = threads_for(cfg, local_workers) if role == "worker" else 1
    configure_threads(threads)

    recorder = Recorder(run_dir, rank)
    data = context.Data(cfg, handoff.synthetic_npz) if role == "worker" or rank == 0 else None
    settings = context.training_settings(cfg)
    with cls.model_scope(layout, rank, settings, handoff.strategy):
        model = context.build_model(cfg)
        init_from = context.load_initial_weights(cfg, model, handoff.resume_from is not None)
    stream = data.stream(layout.worker_ranks.index(rank)) if role == "worker" else None
    if stream is not None:
        model.trace()
    resumed, saved, start_step = resume(handoff.resume_from, rank, layout, settings.steps, model, stream)

    def save_part(step, arrays):
        """This rank's part of the checkpoint after `step` steps, and its commit record."""
        checkpoints.save_rank(run_dir, step, rank, arrays)
        recorder.commit(step)

    def make_stream(worker_index):
        if data is None:
            raise RuntimeError(f"rank {rank} holds no training data")
        return data.stream(worker_index)
    ctx = TrainingContext(settings=settings, layout=layout, rank=rank, comm=control.world, recorder=recorder,
                          run_dir=os.path.abspath(run_dir), model=model, make_stream=make_stream, stream=stream,
                          start_step=start_step, save_state=lambda step, arrays: save_part(step, checkpoints.join(
                              strategy=arrays)), launch_info=handoff.strategy)
    strategy = cls(ctx)
    duties = RankDuties(cfg, ctx, control, strategy, data, save_part)

    manifest = None
    if rank == 0:
        manifest = {"config": cfg, "strategy": layout.strategy, "ranks": control.size, "roles": list(layout.roles),
                    "role_counts": layout.role_counts(), "workers": layout.workers,
                    "emulated": layout.traits.emulated, "threads_per_rank": threads, "params": model.num_params,
                    **versions(), "host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count(),
                    "nodes": nodes, "precision": {"train": cfg["train"]["precision"],
                                                  "forced": cfg["train"]["force_precision"],
                                                  "cpu_bf16_flags": bf16_flags()},
                    "init_from": init_from,
                    "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit()}
    strategy.setup()
    if saved:
        strategy.load_state(checkpoints.split(saved, "strategy"))
    control.barrier("all ranks to finish set-up")
    if rank == 0:  # measured now only when the launcher did not; the others sleep in the next barrier
        manifest["peak"] = {**(handoff.node_peak or peak.node_peak(during="while the other ranks slept in a barrier")),
                            "nodes": nodes}
        summ.write_json_atomic(os.path.join(run_dir, "manifest.json"), manifest)
    control.barrier("rank 0 to measure the matmul peak")
    recorder.start_clock(control.start_time() - (resumed["train_time"] if resumed else 0.0))
    if saved is not None:
        recorder.resume(resumed["step"])
    duties.attach(recorder)
    duties.watchdog.start()
    strategy.train()
    final = strategy.finish()
    duties.close()
    if rank != 0:
        recorder.close()
    lost = final.lost_ranks if rank == 0 else ()
    control.report_in(lost, "every rank to write its last records")
    if rank == 0:
        model.set_flat(final.weights)
        duties.save_weights(settings.steps)
        duties.evaluate(final.model_version)
        recorder.close()
        summ.write_complete(run_dir, manifest, duties.data.heldout.labels)
    control.release(lost, "rank 0 to write the summary")


def resume(directory, rank, layout, steps, model, stream):
    """Load a worker's model and stream from the checkpoint `directory` (None: a fresh start).

    Returns:
        (its state.json, or None; this rank's saved arrays, or None; the step training starts at).
        A worker lost before the checkpoint has no part: it resumes with no steps left, and the
        others go on without it.
    """
    if not directory:
        return None, None, 0
    meta = checkpoints.read_meta(directory)
    try:
        state = checkpoints.load_rank(directory, rank)
    except FileNotFoundError:
        if layout.roles[rank] != "worker" or not layout.traits.survives_lost_workers:
            raise
        return meta, None, steps
    if stream is not None:
        model.load_state(checkpoints.split(state, "model"))
        stream.load_state(checkpoints.split(state, "stream"))
    return meta, state, meta["step"]


def cpu_model():
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
