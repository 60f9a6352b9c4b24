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
from ffnbench.bench import checkpoints, context, control as controls, peak, summary as summ
from ffnbench.bench.config import ConfigError
from ffnbench.bench.peak import PEAK_DTYPE
from ffnbench.bench.recorder import Recorder
from ffnbench.model.network import bf16_flags
from ffnbench.strategies import comm as mpi


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

    def __init__(self, cfg, ctx, control, strategy, data, fovs_per_update):
        self.cfg, self.ctx, self.control, self.strategy, self.data = cfg, ctx, control, strategy, data
        self.fovs_per_update = fovs_per_update
        workers = ctx.layout.worker_ranks
        self.leader, self.followers = workers[0], workers[1:]
        self.eval_every = cfg["eval"]["every"]
        self.checkpoint_every = cfg["run"]["checkpoint_every"]
        self.resumable = ctx.layout.resumable
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
            from ffnbench.bench.tensorboard import TensorBoard
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
                    state = checkpoints.join(model=ctx.model.state(), stream=ctx.stream.state())
                    checkpoints.save_rank(ctx.run_dir, done, ctx.rank, state)
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
    layout = context.layout_of(cfg)
    cls = strategies.get(cfg["strategy"])
    timeout = cfg["run"]["timeout_s"]
    control = controls.for_launch(layout.launch, timeout)
    if control.size != cfg["ranks"]:
        raise ConfigError(f"config field ranks: is {cfg['ranks']} but the job has {control.size} ranks")
    rank = control.rank
    role = layout.roles[rank]
    local_workers, nodes = control.census(role == "worker")
    threads = threads_for(cfg, local_workers) if role == "worker" else 1
    configure_threads(threads)

    recorder = Recorder(run_dir, rank)
    holds_data = role == "worker" or rank == 0
    data = context.Data(cfg) if holds_data else None
    ctx = context.build_context(cfg, layout, rank, control.world, recorder, run_dir, data)
    strategy = cls(ctx)
    with strategy.model_scope():
        ctx.model = context.build_model(cfg)
        init_from = context.load_initial_weights(cfg, ctx.model, bool(os.environ.get(checkpoints.RESUME_ENV)))
    if role == "worker":
        ctx.stream = data.stream(layout.worker_ranks.index(rank))
        ctx.model.trace()
    ctx.save_state = lambda step, arrays: checkpoints.save_rank(run_dir, step, rank,
                                                                checkpoints.join(strategy=arrays))
    resumed, saved = resume(ctx, os.environ.get(checkpoints.RESUME_ENV))
    duties = RankDuties(cfg, ctx, control, strategy, data, context.fovs_per_update(cfg, layout))

    manifest = None
    if rank == 0:
        manifest = {"config": cfg, "strategy": cfg["strategy"], "ranks": control.size, "roles": list(layout.roles),
                    "role_counts": layout.role_counts(), "workers": layout.workers, "emulated": cls.emulated,
                    "threads_per_rank": threads, "params": ctx.model.num_params, **versions(),
                    "host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count(), "nodes": nodes,
                    "precision": {"train": cfg["train"]["precision"], "forced": cfg["train"]["force_precision"],
                                  "cpu_bf16_flags": bf16_flags()},
                    "init_from": init_from,
                    "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit()}
    strategy.setup()
    if saved:
        strategy.load_state(checkpoints.split(saved, "strategy"))
    control.barrier("all ranks to finish set-up")
    if rank == 0:  # measured now only when the launcher did not; the others sleep in the next barrier
        manifest["peak"] = {**(peak.given() or peak.node_peak(during="while the other ranks slept in a barrier")),
                            "nodes": nodes}
        summ.write_json_atomic(os.path.join(run_dir, "manifest.json"), manifest)
    control.barrier("rank 0 to measure the matmul peak")
    recorder.start_clock(control.start_time() - (resumed["train_time"] if resumed else 0.0))
    if resumed and rank == 0:
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
        ctx.model.set_flat(final.weights)
        duties.save_weights(cfg["train"]["steps"])
        duties.evaluate(final.model_version)
        recorder.close()
        finish_run(cfg, duties.data, run_dir, manifest)
    control.release(lost, "rank 0 to write the summary")


def resume(ctx, directory):
    """Load a worker's model and stream from the checkpoint `directory` (None: a fresh start).

    Returns:
        (its state.json, or None; this rank's saved arrays, or None). A worker lost before the
        checkpoint has none: it resumes with no steps left, and the others go on without it.
    """
    if not directory:
        return None, None
    meta = checkpoints.read_meta(directory)
    ctx.start_step = meta["step"]
    try:
        state = checkpoints.load_rank(directory, ctx.rank)
    except FileNotFoundError:
        if ctx.role != "worker" or not ctx.layout.survives_lost_workers:
            raise
        ctx.start_step = ctx.settings.steps
        return meta, None
    if ctx.role == "worker":
        ctx.model.load_state(checkpoints.split(state, "model"))
        ctx.stream.load_state(checkpoints.split(state, "stream"))
    return meta, state


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


def finish_run(cfg, data, run_dir, manifest):
    """Baselines and MFU next to the records' summary, then summary.json with status complete (only
    now, when every rank's records are in)."""
    from ffnbench.model.network import train_flops_per_fov
    p = float(np.mean(data.heldout.labels > 0.5))
    flops = train_flops_per_fov(cfg["model"]["fov"], cfg["model"]["depth"], cfg["model"]["features"])
    peak_dtype = PEAK_DTYPE[cfg["train"]["precision"]]
    peak = manifest["peak"]["flops_per_s"][peak_dtype] * manifest["peak"]["nodes"]
    result = {"status": "complete", **summ.summarize(run_dir, manifest), "params": manifest["params"]}
    labels = data.heldout.labels.astype(np.float64)
    q = labels.mean()  # the best constant prediction for the soft labels, and its cross-entropy
    loss_constant = float(-np.mean(labels * np.log(q) + (1 - labels) * np.log(1 - q)))
    result["baselines"] = {"f1_all_background": 0.0, "f1_all_foreground": 2 * p / (1 + p),
                           "loss_constant": loss_constant}
    result["model_flops_per_s"] = result["fovs_per_s"]["mean"] * flops
    result["peak_flops_per_s"] = peak
    result["peak_dtype"] = peak_dtype
    result["mfu"] = result["model_flops_per_s"] / peak  # never clamped: above 1, the denominator is wrong
    summ.write_json_atomic(os.path.join(run_dir, "summary.json"), result)
    print_summary(result)
    return result


def print_summary(s):
    fe = s["final_eval"] or {}
    print(f"{s['strategy']} ranks={s['ranks']} workers={s['workers']} global_batch={s['global_batch']} "
          f"steps={s['steps']} FOVs={s['fovs_total']} wall={s['wall_s']:.1f}s")
    if fe:
        b = s["baselines"]
        print(f"held-out: loss={fe['loss']:.4f} F1={fe['f1']:.3f} precision={fe['precision']:.3f} "
              f"recall={fe['recall']:.3f} (baselines F1: all-background {b['f1_all_background']:.3f}, "
              f"all-foreground {b['f1_all_foreground']:.3f})")
    for w in s["lost_workers"]:
        print(f"lost worker: rank {w['worker']} at {w['time']:.1f}s after {w['steps_done']} steps; the others went "
              f"on ({w['fovs_not_trained']} of its FOVs not trained)")
    if s.get("staleness"):
        st = s["staleness"]
        print(f"staleness: mean={st['mean']:.2f} p50={st['p50']:.0f} p99={st['p99']:.0f} max={st['max']}")
    print(f"model: {s['model_flops_per_s'] / 1e9:.2f} GFLOP/s = {100 * s['mfu']:.1f}% of the job's matmul peak "
          f"{s['peak_dtype']} {s['peak_flops_per_s'] / 1e9:.1f} GFLOP/s (MFU)")
    stalls = s["stalled_steps"]
    if stalls["count"]:
        print(f"warning: {stalls['count']} step(s) took over {summ.STALL_FACTOR:g}x the median step "
              f"(slowest {stalls['max_step_s']:.1f}s); the run's FOVs / training time is "
              f"{s['fovs_per_train_s']:.1f} FOVs/s")
    print(summ.fovs_line(s["fovs_per_s"]))
