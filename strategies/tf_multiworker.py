"""Sync data parallelism with TensorFlow's own engine: MultiWorkerMirroredStrategy's collective
all-reduce over gRPC, as the peer that Horovod and raw MPI are measured against.

The ranks start under mpirun like every other strategy (bench's census, pauses and checkpoints use
MPI), but no gradient crosses MPI: each rank is one TF worker of a cluster on 127.0.0.1 ports, which
`launch_environment` writes into TF_CONFIG before the job starts. One machine only.

The model is built outside the strategy's variable scope, on purpose: keras' optimizer under a
distribution strategy aggregates gradients itself with a merge_call, which cannot cross the model
API's separate gradient and apply tf.functions (TF refuses a synchronization point inside a nested
tf.function). So the gradient is reduced explicitly, with MEAN, by the replica context's all_reduce,
the same call keras makes, and applied by the shared model API, as in every other sync strategy.
"""
import json
import os
import socket

import numpy as np

from ffnbench.strategies.base import SyncDataParallel, check_at_least, register

CONFIG_ENV = "TF_CONFIG"


def free_ports(count):
    """`count` distinct free TCP ports of 127.0.0.1 (held together while they are picked)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@register
class TFMultiWorker(SyncDataParallel):
    """Sync all-reduce with tf.distribute.MultiWorkerMirroredStrategy (gRPC ring collectives)."""
    name = "tf_multiworker"
    order, color = 25, "#9467bd"
    options = {"bytes_per_pack_mb": 0.0}
    option_docs = {"bytes_per_pack_mb": "CommunicationOptions.bytes_per_pack: gradients are all-reduced in packs "
                                        "of this size (0: TF's own choice)"}

    @classmethod
    def roles(cls, ranks, options):
        check_at_least(options, "bytes_per_pack_mb", 0)
        return super().roles(ranks, options)

    @classmethod
    def launch_environment(cls, layout):
        workers = [f"127.0.0.1:{port}" for port in free_ports(layout.ranks)]
        return {CONFIG_ENV: json.dumps({"cluster": {"worker": workers}})}

    def model_scope(self):
        """Join the TF cluster as worker `rank`: MultiWorkerMirroredStrategy must exist before
        TensorFlow runs its first op, and the model is the first thing bench builds."""
        import tensorflow as tf
        if CONFIG_ENV not in os.environ:
            raise RuntimeError(f"strategy {self.name}: ${CONFIG_ENV} is not set (start it with `ffnbench run`)")
        cluster = json.loads(os.environ[CONFIG_ENV])
        cluster["task"] = {"type": "worker", "index": self.ctx.rank}
        os.environ[CONFIG_ENV] = json.dumps(cluster)
        self.communication = tf.distribute.experimental.CommunicationOptions(
            bytes_per_pack=int(self.opts["bytes_per_pack_mb"] * 1024 * 1024),
            timeout_seconds=self.ctx.settings.timeout_s,
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=self.communication)
        return super().model_scope()

    def setup(self):
        import tensorflow as tf

        def reduce(op, values):  # in the replica context: inputs placed on this worker's device first
            values = [tf.identity(v) for v in values]
            return tf.distribute.get_replica_context().all_reduce(op, values, options=self.communication)

        def run(op):
            return tf.function(lambda values: self.strategy.run(reduce, args=(op, values)))
        self.mean = run(tf.distribute.ReduceOp.MEAN)
        # rank 0's weights to every worker: a sum with zeros elsewhere is exact
        total = run(tf.distribute.ReduceOp.SUM)
        weights = self.model.get_flat()
        self.model.set_flat(total([weights if self.ctx.rank == 0 else np.zeros_like(weights)])[0].numpy())
        self.mean([tf.zeros_like(v) for v in self.model.variables])  # traced and connected now, not in step 1

    def gradients(self, batch):
        return self.model.gradients(batch)  # per-variable tensors, packed by TF's collectives

    def average(self, grads):
        return self.mean(list(grads))
