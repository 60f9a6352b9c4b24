"""The model API every strategy sees: compute gradients, apply them, move weights as flat buffers.

Gradients and weights cross process boundaries as one contiguous float32 vector (the order of
`trainable_variables`); the concat and split happen inside tf.functions, never in a Python loop
per step. Clipping is part of *applying* (it acts on the averaged gradient), so N workers at
batch b and one worker at batch N*b take identical steps.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from ffnbench.model.network import build_convstack_3d, logit


@dataclass
class Batch:
    """FOVs as float32 (B, z, y, x, 1): normalised image, seed logits, soft labels."""
    images: np.ndarray
    seeds: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.images)


def make_optimizer(settings, lr: float) -> tf.keras.optimizers.Optimizer:
    """The keras optimizer that `settings` names, with its hyperparameters.

    Args:
        settings: has `name` (sgd | momentum | adam), `momentum`, `beta1`, `beta2` and `epsilon`
            (strategies/base.py's OptimizerSettings, which the parameter servers' numpy copy reads too).
        lr: initial learning rate (set_lr changes it per step).
    Returns:
        A keras optimizer, not yet built.
    """
    if settings.name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate=lr)
    if settings.name == "momentum":
        return tf.keras.optimizers.SGD(learning_rate=lr, momentum=settings.momentum)
    if settings.name == "adam":
        return tf.keras.optimizers.Adam(learning_rate=lr, beta_1=settings.beta1, beta_2=settings.beta2,
                                        epsilon=settings.epsilon)
    raise ValueError(f"unknown optimizer {settings.name!r}")


def voxel_metrics(logits: np.ndarray, labels: np.ndarray, threshold: float = logit(0.9)) -> Dict[str, float]:
    """Voxel-wise quality of the predicted mask, as FFN's training reports it.

    Args:
        logits: predicted logits; labels: soft labels (> 0.5 is the object);
        threshold: the mask is logits >= threshold (FFN: logit(0.9)).
    Returns:
        {accuracy, precision, recall, f1}.
    """
    pred = logits >= threshold
    true = labels > 0.5
    tp = float(np.sum(pred & true))
    fp = float(np.sum(pred & ~true))
    fn = float(np.sum(~pred & true))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float(np.mean(pred == true)), "precision": precision, "recall": recall, "f1": f1}


class FFNModel:
    """convstack_3d with the operations strategies need, each traced once as a tf.function."""

    def __init__(self, fov: Sequence[int], depth: int, features: int, optimizer=None, lr: float = 1e-3,
                 clip: float = 0.7, seed: int = 0, init: str = "glorot_uniform", init_stddev: float = 0.01,
                 precision: str = "float32"):
        """Build the network (and the optimizer, for training).

        Args:
            fov: field of view (z, y, x), odd sizes.
            depth: conv modules; features: channels per conv.
            optimizer: OptimizerSettings-like (see make_optimizer), or None for a model that only
                predicts, moves weights or restores checkpoints.
            lr: initial learning rate; clip: elementwise gradient clip applied before each update.
            seed: weight init; init: network.INITS; init_stddev: the truncated normal's stddev.
            precision: float32 | mixed_bfloat16 (network.PRECISIONS). Weights, gradients, optimizer
                and loss are float32 either way, so strategies exchange the same buffers.
        """
        tf.random.set_seed(seed)
        self.fov = tuple(fov)
        self.precision = precision
        self.net = build_convstack_3d(self.fov, depth, features, seed=seed, init=init, init_stddev=init_stddev,
                                      precision=precision)
        self.variables = self.net.trainable_variables
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.num_params = int(sum(self.sizes))
        self.clip = float(clip)
        self.optimizer = None
        if optimizer is not None:
            self.optimizer = make_optimizer(optimizer, lr)
            self.optimizer.build(self.variables)
        spec = tf.TensorSpec((None, *self.fov, 1), tf.float32)
        self._gradients = tf.function(self._gradients_graph, input_signature=[spec] * 3)
        self._flat_gradients = tf.function(self._flat_grad_graph, input_signature=[spec] * 3)
        self._apply_flat = tf.function(lambda g: self._apply_graph(self._split(g)),
                                       input_signature=[tf.TensorSpec((self.num_params,), tf.float32)])
        self._apply_list = tf.function(self._apply_graph)
        self._train_step = tf.function(self._train_step_graph, input_signature=[spec] * 3)
        self._predict = tf.function(lambda i, s: self.net(tf.concat([i, s], -1), training=False),
                                    input_signature=[spec] * 2)
        self._get_flat = tf.function(lambda: self._flatten(self.variables))
        self._set_flat = tf.function(self._set_flat_graph,
                                     input_signature=[tf.TensorSpec((self.num_params,), tf.float32)])

    # ---- graphs (traced once) ----
    def _loss_and_logits(self, images, seeds, labels):
        logits = self.net(tf.concat([images, seeds], -1), training=True)
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
        return loss, logits

    def _gradients_graph(self, images, seeds, labels):
        with tf.GradientTape() as tape:
            loss, logits = self._loss_and_logits(images, seeds, labels)
        return tape.gradient(loss, self.variables), loss, logits

    def _flat_grad_graph(self, images, seeds, labels):
        grads, loss, logits = self._gradients_graph(images, seeds, labels)
        return self._flatten(grads), loss, logits

    def _flatten(self, tensors):
        return tf.concat([tf.reshape(t, [-1]) for t in tensors], 0)

    def _split(self, flat):
        return [tf.reshape(t, s) for t, s in zip(tf.split(flat, self.sizes), self.shapes)]

    def _apply_graph(self, grads):
        grads = [tf.clip_by_value(g, -self.clip, self.clip) for g in grads]
        self.optimizer.apply_gradients(zip(grads, self.variables))

    def _train_step_graph(self, images, seeds, labels):
        grads, loss, logits = self._gradients_graph(images, seeds, labels)
        self._apply_graph(grads)
        return loss, logits

    def _set_flat_graph(self, flat):
        for v, t in zip(self.variables, self._split(flat)):
            v.assign(t)

    def trace(self) -> None:
        """Build (and run once, where that has no side effect) every graph now, so tracing is
        neither timed as the first step nor skews when workers start."""
        zeros = tf.zeros((1, *self.fov, 1))
        self._gradients(zeros, zeros, zeros)
        self._flat_gradients(zeros, zeros, zeros)
        self._predict(zeros, zeros)
        for fn in (self._train_step, self._apply_flat, self._get_flat, self._set_flat):
            fn.get_concrete_function()

    # ---- the API ----
    def set_lr(self, lr: float) -> None:
        """The learning rate of the next update."""
        self.optimizer.learning_rate.assign(lr)

    def gradients(self, batch: Batch) -> Tuple[List[tf.Tensor], tf.Tensor, tf.Tensor]:
        """Per-variable gradients, for in-graph collectives (Horovod fuses them itself).

        Returns:
            (gradient tensors in the order of `variables`, mean loss, logits (B, z, y, x, 1)).
        """
        return self._gradients(batch.images, batch.seeds, batch.labels)

    def flat_gradients(self, batch: Batch) -> Tuple[np.ndarray, float, np.ndarray]:
        """The gradient as one float32 vector, ready for MPI buffers.

        Returns:
            (flat gradient of num_params, mean loss, logits (B, z, y, x, 1)) as numpy.
        """
        g, loss, logits = self._flat_gradients(batch.images, batch.seeds, batch.labels)
        return g.numpy(), float(loss), logits.numpy()

    def apply_gradients(self, grads) -> None:
        """Clip and apply an (averaged) gradient.

        Args:
            grads: a flat float32 vector of num_params, or per-variable tensors.
        """
        if isinstance(grads, (np.ndarray, tf.Tensor)) and len(np.shape(grads)) == 1:
            self._apply_flat(tf.convert_to_tensor(grads, tf.float32))
        else:
            self._apply_list(list(grads))

    def train_step(self, batch: Batch) -> Tuple[float, np.ndarray]:
        """Gradient and update in one graph, for a single process.

        Returns:
            (mean loss, logits as numpy).
        """
        loss, logits = self._train_step(batch.images, batch.seeds, batch.labels)
        return float(loss), logits.numpy()

    def get_flat(self) -> np.ndarray:
        """The weights as one float32 vector (the order of `variables`)."""
        return self._get_flat().numpy()

    def set_flat(self, flat: np.ndarray) -> None:
        """Overwrite the weights from one float32 vector (the order of `variables`)."""
        self._set_flat(tf.convert_to_tensor(flat, tf.float32))

    def state(self) -> Dict[str, np.ndarray]:
        """Everything training depends on: the weights and every optimizer variable (slots, iterations)."""
        arrays = {"weights": self.get_flat()}
        if self.optimizer is not None:
            arrays.update({f"optimizer_{i}": v.numpy() for i, v in enumerate(self.optimizer.variables)})
        return arrays

    def load_state(self, arrays: Dict[str, np.ndarray]) -> None:
        """Continue exactly where state() was taken (the same model and optimizer)."""
        self.set_flat(arrays["weights"])
        if self.optimizer is not None:
            for i, v in enumerate(self.optimizer.variables):
                v.assign(arrays[f"optimizer_{i}"])

    def restore(self, directory: str) -> None:
        """Load the latest checkpoint a run wrote (TensorFlow's format) into this network."""
        path = tf.train.latest_checkpoint(directory)
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        tf.train.Checkpoint(model=self.net).restore(path).expect_partial()

    def predict(self, images: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """Logits (B, z, y, x, 1) for images and seed logits of the same shape (inference mode)."""
        return self._predict(tf.convert_to_tensor(images, tf.float32),
                             tf.convert_to_tensor(seeds, tf.float32)).numpy()

    def evaluate(self, batch: Batch, chunk: int = 8) -> Dict[str, float]:
        """Loss and voxel metrics on held-out FOVs, predicted from their initial seeds.

        Returns:
            {loss, loss_sem, accuracy, precision, recall, f1}: loss_sem is the standard error of the
            mean loss over the FOVs; the mask is logit >= logit(0.9), as in FFN.
        """
        logits = np.concatenate([self.predict(batch.images[i:i + chunk], batch.seeds[i:i + chunk])
                                 for i in range(0, len(batch), chunk)])
        per_voxel = tf.nn.sigmoid_cross_entropy_with_logits(labels=batch.labels, logits=logits).numpy()
        per_fov = per_voxel.reshape(len(batch), -1).mean(axis=1)
        sem = float(per_fov.std(ddof=1) / np.sqrt(len(per_fov))) if len(per_fov) > 1 else 0.0
        return {"loss": float(per_fov.mean()), "loss_sem": sem, **voxel_metrics(logits, batch.labels)}
