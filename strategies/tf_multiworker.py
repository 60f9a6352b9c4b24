"""Sync data parallelism with TensorFlow's own engine: MultiWorkerMirroredStrategy's collective
all-reduce over gRPC, as the peer that Horovod and raw MPI are measured against.

The ranks start under mpirun like every other strategy (bench's census, pauses and checkpoints use
MPI), but no gradient crosses MPI: each rank is one TF worker of a cluster on 127.0.0.1 ports, which
`launch_info` picks before the job starts and each rank writes into its TF_CONFIG. One machine only.

The model is built outside the strategy's variable scope, on purpose: keras' optimizer under a
distribution strategy aggregates gradients itself with a merge_call, which cannot cross the model
API's separate gradient and apply tf.functions (TF refuses a synchronization point inside a nested
tf.function). So the gradient is reduced explicitly, with MEAN, by the replica context's all_reduce,
the same call keras makes, and applied by the shared model API, as in every other sync strategy.
"""
import dataclasses
import json
import os
import socket

import numpy as np

from ffnbench.strategies.base import SyncDataParallel, register
from ffnbench.strategies.declare import Option

CONFIG_ENV = "TF_CONFIG"
#: this process's MultiWorkerMirroredStrategy and its communication options: TensorFlow allows one
#: per process, made before its first op, so it is joined once, before the model is built
_JOINED = {}


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
    traits = dataclasses.replace(SyncDataParallel.traits, one_machine=True)  # its cluster is 127.0.0.1 ports
    options = {"bytes_per_pack_mb": Option(0.0, "CommunicationOptions.bytes_per_pack: gradients are all-reduced in "
                                                "packs of this size (0: TF's own choice)", at_least=0)}

    @classmethod
    def launch_info(cls, layout):
        return {"workers": [f"127.0.0.1:{port}" for port in free_ports(layout.ranks)]}

    @classmethod
    def model_scope(cls, layout, rank, settings, launch_info):
        """Join the TF cluster as worker `rank`: MultiWorkerMirroredStrategy must exist before
        TensorFlow runs its first op, and the model is the first thing bench builds."""
        import tensorflow as tf
        if "workers" not in launch_info:
            raise RuntimeError(f"strategy {cls.name}: no cluster in the run directory (start it with `ffnbench run`)")
        os.environ[CONFIG_ENV] = json.dumps({"cluster": {"worker": launch_info["workers"]},
                                             "task": {"type": "worker", "index": rank}})
        communication = tf.distribute.experimental.CommunicationOptions(
            bytes_per_pack=int(layout.options["bytes_per_pack_mb"] * 1024 * 1024),
            timeout_seconds=settings.timeout_s,
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        _JOINED.update(strategy=tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication),
                       communication=communication)
        return super().model_scope(layout, rank, settings, launch_info)

    def setup(self):
        import tensorflow as tf
        self.strategy, self.communication = _JOINED["strategy"], _JOINED["communication"]

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
