"""Sync data parallelism with Horovod's ring all-reduce, in-graph or eager; optionally elastic.

The gradient and the all-reduce are two calls rather than one tf.function, so comm_s is measured
rather than guessed; with TF2's tape Horovod reduces after the whole backward pass either way,
so nothing overlaps that the split loses. `exchange: flat_eager` hands Horovod the flat gradient
without a tf.function at all: commbench finds a tf.function call costs more than the ops in it.

Elastic (`elastic: true`): horovodrun starts the workers over Gloo, and the training state (weights,
optimizer slots, step) is committed to memory every `commit_every` steps. When a worker dies, the
others' all-reduce fails, they roll back to the last commit, the ring re-forms without it (Horovod's
elastic driver drops its host), and training goes on with a learning rate rescaled to the workers
left (Horovod's elastic guide does the same).
"""
import os

import numpy as np

from ffnbench.strategies.base import SyncDataParallel, register
from ffnbench.strategies.declare import Option, Traits

EXCHANGES = ("per_variable", "grouped", "flat", "flat_eager")


def build_exchange(hvd, way, compression):
    """The call that averages a list of per-variable gradients over the ranks, `way` being one of
    EXCHANGES: what training runs, and what commbench times."""
    import tensorflow as tf

    def per_variable(grads):
        return [hvd.allreduce(g, op=hvd.Average, compression=compression) for g in grads]

    def grouped(grads):
        return hvd.grouped_allreduce(grads, op=hvd.Average, compression=compression)

    def flat(grads):  # the model applies a flat gradient as it is
        return hvd.allreduce(tf.concat([tf.reshape(g, [-1]) for g in grads], 0), op=hvd.Average,
                             compression=compression)
    if way == "flat_eager":
        return flat
    return tf.function({"per_variable": per_variable, "grouped": grouped, "flat": flat}[way])


@register
class HorovodAllreduce(SyncDataParallel):
    """Sync ring all-reduce with Horovod (hvd.allreduce per gradient inside a tf.function)."""
    name = "allreduce"
    options = {
        "exchange": Option("flat", "how the gradient is handed to Horovod: flat (one concatenated buffer; fastest in "
                                   "commbench), per_variable (hvd.allreduce each, fused by Horovod), grouped "
                                   "(hvd.grouped_allreduce) or flat_eager (flat, as eager ops rather than a tf.function)",
                           choices=EXCHANGES),
        "fusion_threshold_mb": Option(128.0, "Horovod fusion buffer (HOROVOD_FUSION_THRESHOLD)", at_least=0),
        # 0.1 rather than Horovod's 1: each cycle's coordination is a blocking MPI collective that spins
        # while the other rank's cycle is out of phase, and at 1 ms that took 0.09-0.20 of a core from
        # each rank's compute here (0.03-0.05 at 0.1 ms; docs/measurements.md)
        "cycle_time_ms": Option(0.1, "Horovod cycle time (HOROVOD_CYCLE_TIME)", at_least=0),
        "thread_affinity": Option([], "the core of each local rank's Horovod background thread "
                                      "(HOROVOD_THREAD_AFFINITY; empty: unpinned)", items=int, at_least=0),
        "fp16": Option(False, "hvd.Compression.fp16 on the wire"),
        "timeline": Option(False, "Horovod's chrome-trace timeline in RUN_DIR/horovod_timeline.json"),
        "elastic": Option(False, "elastic Horovod (horovodrun over Gloo): a lost worker shrinks the ring"),
        "commit_every": Option(10, "elastic: steps between in-memory commits (the most a failure rolls back)",
                               at_least=1),
    }

    @classmethod
    def traits_with(cls, options):
        if not options["elastic"]:
            return cls.traits
        return Traits(launch="horovodrun_elastic", survives_lost_workers=True, simulator_model="ring_allreduce")

    @classmethod
    def exchange_benchmarks(cls, world, grads):
        """{way: call}: one exchange of the per-variable `grads` each of EXCHANGES' ways, as training
        builds it, for commbench to time (Horovod initialised on `world`; shut it down after)."""
        import horovod.tensorflow as hvd
        hvd.init(comm=world)
        return {way: (lambda fn=build_exchange(hvd, way, hvd.Compression.none): fn(grads)) for way in EXCHANGES}

    def setup(self):
        o = self.ctx.layout.options
        os.environ["HOROVOD_FUSION_THRESHOLD"] = str(int(float(o["fusion_threshold_mb"]) * 1024 * 1024))
        os.environ["HOROVOD_CYCLE_TIME"] = str(float(o["cycle_time_ms"]))
        # A lost rank stalls Horovod's collectives: shut down after the run's wait bound.
        os.environ.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", str(int(min(60, self.ctx.settings.timeout_s))))
        os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", str(int(self.ctx.settings.timeout_s)))
        if o["thread_affinity"]:
            os.environ["HOROVOD_THREAD_AFFINITY"] = ",".join(str(c) for c in o["thread_affinity"])
        if o["timeline"]:
            os.environ["HOROVOD_TIMELINE"] = os.path.join(self.ctx.run_dir, "horovod_timeline.json")
        import horovod.tensorflow as hvd
        if o["elastic"]:
            hvd.init()  # over Gloo; elastic.run broadcasts rank 0's state before training
        else:
            hvd.init(comm=self.comm)
            hvd.broadcast_variables(self.model.variables, root_rank=0)
        self.allreduce = build_exchange(hvd, o["exchange"], hvd.Compression.fp16 if o["fp16"] else hvd.Compression.none)
        self.hvd = hvd

    def gradients(self, batch):
        return self.model.gradients(batch)  # per-variable tensors, for Horovod's fusion buffer

    def average(self, grads):
        return self.allreduce(grads)

    def train(self):
        if not self.ctx.layout.options["elastic"]:
            return super().train()
        state = elastic_state(self.hvd, self.model, self.ctx.start_step)
        self.ctx.recorder.commit(state.step)
        self.ring, self.lost_at = None, {}  # {worker: the step the ring went back to when it was lost}

        @self.hvd.elastic.run
        def train_elastic(state):  # runs again, from the last commit, each time the ring re-forms
            self.join_ring(state.step)
            while state.step < self.ctx.settings.steps:
                self.step(state.step, self.lr(state.step))
                state.step += 1
                if state.step % self.ctx.layout.options["commit_every"] == 0:
                    self.ctx.recorder.commit(state.step)  # before: commit() may end in a ring change
                    state.commit()
        train_elastic(state)

    def join_ring(self, step):
        """Learn who is in the ring; after a failure, record who was lost and where training resumes,
        and rescale the learning rate to the workers left."""
        import tensorflow as tf
        ring = self.hvd.allgather(tf.constant([self.ctx.rank]), name="ffnbench_ring").numpy().tolist()
        if self.ring is not None:
            self.ctx.recorder.resume(step)  # supersedes this rank's records since the commit, earlier losses too:
            for worker in sorted(set(self.lost_at) | set(self.ring) - set(ring)) if self.ctx.rank == 0 else ():
                self.lost_at.setdefault(worker, step)  # so every worker lost so far is recorded again
                self.ctx.recorder.resume(step, rank=worker)  # its steps since the commit are undone too
                self.ctx.recorder.lost(worker, pushes=self.lost_at[worker])
        self.ring = ring
        self.lr = self.ctx.settings.lr_schedule(len(ring))

    def finish(self):
        final = super().finish()
        if not self.ctx.layout.options["elastic"]:  # an elastic job's Horovod is bench's too, until the end (bench/run/control.py)
            self.hvd.shutdown()
        return final


def elastic_state(hvd, model, step):
    """The training state elastic Horovod keeps: weights, optimizer slots and the step (the model's
    state()), committed to memory, restored after a failure, then rank 0's broadcast to all.
    Everything crosses as tensors (Horovod's ObjectState would pickle)."""
    import tensorflow as tf
    from horovod.common.elastic import State
    from horovod.runner.elastic.worker import HostUpdateResult

    def broadcast_host_update(update):
        """State.check_host_updates' (previous timestamp, last timestamp, update flags): rank 0's."""
        values = hvd.broadcast(tf.constant([float(update[0]), float(update[1]), float(int(update[2]))], tf.float64),
                               root_rank=0, name="ffnbench_host_update").numpy()
        return values[0], values[1], HostUpdateResult(int(values[2]))

    class TrainingState(State):
        def __init__(self):
            super().__init__(bcast_object=broadcast_host_update, get_rank=hvd.rank)
            self.step = step
            self.save()

        def save(self):
            self.saved = (model.state(), self.step)

        def restore(self):
            model.load_state(self.saved[0])
            self.step = self.saved[1]

        def sync(self):
            arrays = {k: hvd.broadcast(tf.constant(v), root_rank=0, name=f"ffnbench_state_{k}").numpy()
                      for k, v in {**model.state(), "step": np.array([self.step], np.int64)}.items()}
            self.step = int(arrays.pop("step")[0])
            model.load_state(arrays)
            self.save()

    return TrainingState()
