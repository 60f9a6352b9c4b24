"""One rank's life (`ffnbench train`): start up, train with the strategy, finish, write the summary.

Runs unchanged under `ffnbench run`, mpirun, srun or aprun: everything it knows about the job comes
from the config, from what the launcher left in the run directory (context.Handoff) and from the
communicator of the strategy's launch (bench/run/control.py).
"""
import os

from ffnbench import strategies
from ffnbench.bench.config import ConfigError
from ffnbench.bench.run import checkpoints, context, control as controls, peak, summary as summ
from ffnbench.bench.run.duties import RankDuties
from ffnbench.bench.run.manifest import manifest as manifest_of
from ffnbench.bench.run.recorder import Recorder
from ffnbench.strategies.base import TrainingContext


def threads_for(cfg, local_compute_ranks):
    """run.threads_per_rank, or this node's cores shared by its compute ranks."""
    return cfg["run"]["threads_per_rank"] or max(1, (os.cpu_count() or 1) // max(1, local_compute_ranks))


def configure_threads(n):
    os.environ["OMP_NUM_THREADS"] = str(n)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, n))


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
    if cfg["run"]["nodes"] > 1:  # emulated nodes share this machine: its cores, and one matmul peak
        local_workers, machines = layout.workers, 1
    else:
        machines = nodes
    threads = threads_for(cfg, local_workers) if role == "worker" else 1
    configure_threads(threads)

    recorder = Recorder(run_dir, rank, compute=cfg["train"]["compute"])
    data = context.Data(cfg, handoff.synthetic_npz) if role == "worker" or rank == 0 else None
    settings = context.training_settings(cfg)
    with cls.model_scope(layout, rank, settings, handoff.strategy):
        model = context.build_model(cfg, rank)
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

    manifest = manifest_of(cfg, layout, control.size, threads, model.num_params, nodes, init_from) if rank == 0 else None
    strategy.setup()
    if saved:
        strategy.load_state(checkpoints.split(saved, "strategy"))
    control.barrier("all ranks to finish set-up")
    if rank == 0:  # measured now only when the launcher did not; the others sleep in the next barrier
        manifest["peak"] = {**(handoff.node_peak or peak.node_peak(during="while the other ranks slept in a barrier")),
                            "nodes": machines}
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
        if cfg["train"]["compute"] != "emulated":  # its weights never learned: no held-out figure
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
