"""TensorBoard event files next to metrics.jsonl, written with TensorFlow's own summary writer, so
`tensorboard --logdir results/` shows every run: training loss and FOVs/s per step, the held-out
metrics, and the servers' staleness per update."""
import os

from ffnbench.strategies.records import EvalRecord, StepRecord, UpdateRecord


class TensorBoard:
    """Listens to one rank's records and writes them as scalars under RUN_DIR/tensorboard."""

    def __init__(self, run_dir, rank):
        import tensorflow as tf
        self.tf = tf
        self.writer = tf.summary.create_file_writer(os.path.join(run_dir, "tensorboard"),
                                                    filename_suffix=f".rank{rank}")

    def scalars(self, step, values):
        with self.writer.as_default():
            for name, value in values.items():
                self.tf.summary.scalar(name, value, step=step)

    def step(self, record: StepRecord):
        rate = {"train/fovs_per_s_this_worker": record.fovs / record.step_s} if record.step_s > 0 else {}
        self.scalars(record.model_version, {"train/loss": record.loss, **rate})

    def update(self, record: UpdateRecord):
        self.scalars(record.version, {"server/staleness": record.staleness})

    def eval(self, record: EvalRecord):
        self.scalars(record.step, {f"heldout/{k}": getattr(record, k)
                                   for k in ("loss", "f1", "precision", "recall", "accuracy")})

    def close(self):
        self.writer.flush()
        self.writer.close()
