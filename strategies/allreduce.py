"""Sync data parallelism with Horovod's ring all-reduce, in-graph.

The gradient and the all-reduce are two tf.functions rather than one, so comm_s is measured
rather than guessed; with TF2's tape Horovod reduces after the whole backward pass either way,
so nothing overlaps that the split loses.
"""
import os

from ffnbench.strategies.base import SyncDataParallel, register


@register
class HorovodAllreduce(SyncDataParallel):
    """Sync ring all-reduce with Horovod (hvd.allreduce per gradient inside a tf.function)."""
    name = "allreduce"
    order, color = 10, "#1f77b4"
    options = {"fusion_threshold_mb": 128.0, "cycle_time_ms": 1.0, "fp16": False, "timeline": False}
    option_docs = {"fusion_threshold_mb": "Horovod fusion buffer (HOROVOD_FUSION_THRESHOLD)",
                   "cycle_time_ms": "Horovod cycle time (HOROVOD_CYCLE_TIME)",
                   "fp16": "hvd.Compression.fp16 on the wire",
                   "timeline": "Horovod's chrome-trace timeline in RUN_DIR/horovod_timeline.json"}

    def setup(self):
        o = self.opts
        os.environ["HOROVOD_FUSION_THRESHOLD"] = str(int(float(o["fusion_threshold_mb"]) * 1024 * 1024))
        os.environ["HOROVOD_CYCLE_TIME"] = str(float(o["cycle_time_ms"]))
        # A lost rank stalls Horovod's collectives: shut down after the run's wait bound.
        os.environ.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", str(int(min(60, self.ctx.settings.timeout_s))))
        os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", str(int(self.ctx.settings.timeout_s)))
        if o["timeline"]:
            os.environ["HOROVOD_TIMELINE"] = os.path.join(self.ctx.run_dir, "horovod_timeline.json")
        import horovod.tensorflow as hvd
        import tensorflow as tf
        hvd.init(comm=self.comm)
        hvd.broadcast_variables(self.model.variables, root_rank=0)
        compression = hvd.Compression.fp16 if o["fp16"] else hvd.Compression.none
        self.allreduce = tf.function(
            lambda grads: [hvd.allreduce(g, op=hvd.Average, compression=compression) for g in grads])
        self.hvd = hvd

    def gradients(self, batch):
        return self.model.gradients(batch)  # per-variable tensors, for Horovod's fusion buffer

    def average(self, grads):
        return self.allreduce(grads)

    def finish(self):
        final = super().finish()
        self.hvd.shutdown()
        return final
