"""Per-rank entry point (`ffnbench train`): build the Run a strategy needs, run it, write results.

Runs unchanged under `ffnbench run`, mpirun, srun or aprun: everything it knows about the job
comes from the config and MPI.COMM_WORLD.
"""
import math
import os
import platform
import socket
import subprocess
import sys
import time

import strategies
from bench import summary as summ
from bench.config import ConfigError


def threads_for(cfg, local_compute_ranks):
    """run.threads_per_rank, or this node's cores shared by its compute ranks."""
    return cfg["run"]["threads_per_rank"] or max(1, (os.cpu_count() or 1) // max(1, local_compute_ranks))


def lr_schedule(train_cfg, workers):
    """Base lr scaled by workers (none | linear | sqrt), ramped linearly over warmup_steps."""
    base = train_cfg["lr"]
    factor = {"none": 1.0, "linear": float(workers), "sqrt": math.sqrt(workers)}[train_cfg["lr_scaling"]]
    target, warm = base * factor, train_cfg["warmup_steps"]

    def lr(step):
        if warm and step < warm:
            return base + (target - base) * step / warm
        return target
    return lr


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
            "mpi4py": mpi4py.__version__, "mpi": MPI.Get_library_version().splitlines()[0].strip()}


class Run:
    """What a strategy sees. Worker-only pieces (stream) exist only on workers."""

    def __init__(self, cfg, run_dir, comm, roles):
        from model.api import FFNModel
        from model.data import heldout_batch, load_volumes
        self.cfg, self.run_dir, self.comm, self.roles = cfg, run_dir, comm, roles
        cls = strategies.get(cfg["strategy"])
        self.options = {**cls.options, **cfg["strategy_options"]}
        m, t, d = cfg["model"], cfg["train"], cfg["data"]
        self.workers = cls.logical_workers(roles, self.options)
        self.worker_ranks = [r for r, role in enumerate(roles) if role == "worker"]
        self.role = roles[comm.rank]
        self.steps, self.batch_size = t["steps"], t["batch_size"]
        self.lr = lr_schedule(t, self.workers)
        self.timeout = cfg["run"]["timeout_s"]
        self.model = FFNModel(m["fov"], m["depth"], m["features"], t["optimizer"], t["lr"], t["clip"], t["seed"],
                              m["init_stddev"])
        self.evaluator_rank = self.worker_ranks[0]
        self.stream, self.heldout = None, None
        if self.role == "worker" or comm.rank in (0, self.evaluator_rank):
            self.train_volume, heldout_vol = load_volumes(d)
            if self.role == "worker":
                self.stream = self.make_stream(self.worker_ranks.index(comm.rank))
                self.model.trace()
            self.heldout = heldout_batch(heldout_vol, m["fov"], m["deltas"], cfg["eval"]["fovs"], d["seed"],
                                         d["min_object_size"])
        self.recorder = None
        self.progress = None

    def make_stream(self, worker_index):
        """The example stream of (logical) worker w: global slots [w*b, (w+1)*b)."""
        from model.data import ExampleStream
        m, t, d, b = self.cfg["model"], self.cfg["train"], self.cfg["data"], self.batch_size
        return ExampleStream(self.train_volume, m["fov"], m["deltas"], range(worker_index * b, (worker_index + 1) * b),
                             t["seed"], d["min_object_size"], t["augment"], t["move_threshold"], t["label_moves"])

    def start(self, t0, total):
        from bench.recorder import Recorder
        self.recorder = Recorder(self.run_dir, self.comm.rank, t0)
        if self.comm.rank == 0 and self.cfg["run"]["progress"]:
            from tqdm import tqdm
            self.progress = tqdm(total=total, desc=f"{self.cfg['strategy']} x{self.comm.size}",
                                 unit="step", file=sys.stdout, dynamic_ncols=True, mininterval=1.0)

    def tick(self):
        if self.progress is not None:
            self.progress.update(1)

    def after_step(self, step, fovs_total, global_step=None):
        """Progress, periodic evaluation and checkpoints, on the ranks that own them."""
        self.tick()
        every = self.cfg["eval"]["every"]
        if self.comm.rank == self.evaluator_rank and every and (step + 1) % every == 0 and step + 1 < self.steps:
            self.evaluate(step + 1 if global_step is None else global_step, fovs_total)
        ck = self.cfg["run"]["checkpoint_every"]
        if self.comm.rank == 0 and self.role == "worker" and ck and (step + 1) % ck == 0:
            self.checkpoint(step + 1)

    def evaluate(self, step, fovs_total):
        metrics = self.model.evaluate(self.heldout)
        self.recorder.eval(step, fovs_total, metrics)
        return metrics

    def checkpoint(self, step):
        import tensorflow as tf
        if not hasattr(self, "_ckpt"):
            ckpt = tf.train.Checkpoint(model=self.model.net)
            self._ckpt = tf.train.CheckpointManager(ckpt, os.path.join(self.run_dir, "checkpoints"), max_to_keep=2)
        self._ckpt.save(checkpoint_number=step)


def configure_threads(n):
    os.environ["OMP_NUM_THREADS"] = str(n)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, n))


def train(cfg, run_dir):
    """Run one rank. Returns the summary on rank 0 (None elsewhere)."""
    from mpi4py import MPI
    from strategies.mpi_wait import barrier
    if not MPI.Is_initialized():
        MPI.Init_thread(MPI.THREAD_MULTIPLE)  # Horovod shares the process with mpi4py
    comm = MPI.COMM_WORLD
    cls = strategies.get(cfg["strategy"])
    roles = cls.roles(cfg["ranks"], {**cls.options, **cfg["strategy_options"]})
    if comm.size != cfg["ranks"]:
        raise ConfigError(f"config field ranks: is {cfg['ranks']} but the job has {comm.size} MPI ranks")
    import numpy as np
    from strategies.mpi_wait import wait
    timeout = cfg["run"]["timeout_s"]
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    is_worker, local_workers = np.array([roles[comm.rank] == "worker"], np.int64), np.zeros(1, np.int64)
    wait(comm, local.Iallreduce(is_worker, local_workers, op=MPI.SUM), timeout, "the ranks on this node")
    local_workers = int(local_workers[0])
    threads = threads_for(cfg, local_workers) if roles[comm.rank] == "worker" else 1
    configure_threads(threads)
    run = Run(cfg, run_dir, comm, roles)
    manifest = None
    if comm.rank == 0:
        manifest = {"config": cfg, "strategy": cfg["strategy"], "ranks": comm.size, "roles": roles,
                    "role_counts": {r: roles.count(r) for r in sorted(set(roles))}, "workers": run.workers,
                    "emulated": cls.emulated, "threads_per_rank": threads, "params": run.model.num_params, **versions(),
                    "host": socket.gethostname(), "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "git_commit": git_commit()}
        summ.write_json_atomic(os.path.join(run_dir, "manifest.json"), manifest)
    strategy = cls(run)
    strategy.setup()
    barrier(comm, run.timeout, "all ranks to finish set-up")
    t0 = np.array([time.time()])
    wait(comm, comm.Ibcast(t0, root=0), run.timeout, "rank 0's start time")
    t0 = float(t0[0])
    run.start(t0, strategy.expected_updates())
    strategy.loop()
    final = strategy.finish()
    if run.progress is not None:
        run.progress.close()
    result = None
    if comm.rank == 0:
        run.model.set_flat(final)
        run.checkpoint(run.steps)
        result = finish_run(run, manifest, strategy.updates())
    run.recorder.close()
    barrier(comm, run.timeout, "rank 0 to write the summary")
    return result


def finish_run(run, manifest, updates):
    """Final held-out evaluation, baselines, peak and MFU, then summary.json (only now: complete)."""
    from bench.peak import matmul_peak
    from model.network import train_flops_per_fov
    import numpy as np
    cfg = run.cfg
    fovs_total = run.steps * run.workers * run.batch_size
    run.evaluate(updates, fovs_total)
    p = float(np.mean(run.heldout.labels > 0.5))
    flops = train_flops_per_fov(cfg["model"]["fov"], cfg["model"]["depth"], cfg["model"]["features"])
    peak = matmul_peak(seconds=2.0)
    result = summ.summarize(run.run_dir, manifest, {"params": run.model.num_params})
    result["baselines"] = {"f1_all_background": 0.0, "f1_all_foreground": 2 * p / (1 + p)}
    result["model_flops_per_s"] = result["fovs_per_s"]["mean"] * flops
    result["peak_flops_per_s"] = peak
    result["mfu"] = result["model_flops_per_s"] / peak
    summ.write_json_atomic(os.path.join(run.run_dir, "summary.json"), result)
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
    if s.get("staleness"):
        st = s["staleness"]
        print(f"staleness: mean={st['mean']:.2f} p50={st['p50']:.0f} p99={st['p99']:.0f} max={st['max']}")
    print(f"model: {s['model_flops_per_s'] / 1e9:.2f} GFLOP/s = {100 * s['mfu']:.1f}% of matmul peak "
          f"{s['peak_flops_per_s'] / 1e9:.1f} GFLOP/s (MFU)")
    print(summ.fovs_line(s["fovs_per_s"]))
