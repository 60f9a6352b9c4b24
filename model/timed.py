"""Emulated compute: the real FFN, its variables, optimizer and updates, with the forward and backward
pass replaced by a timed wait. A worker's step then costs what the real one costs in time but not in
CPU, so many ranks on few cores measure the network and the strategies' exchange, not the cores'
contention. The gradient has the model's real shapes (zeros: an update still runs, and changes
nothing); the loss is 0 and the logits are zeros, so no convergence figure may come from such a run
(its records and manifest say `compute: emulated`).

The waits are drawn from a lognormal distribution of the given mean and coefficient of variation
(positive and right-skewed, like real step times, and the simulator's model of them, so its
predictions for such runs assume what they ran), or resampled from a real run's compute times.
"""
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from ffnbench.model.api import Batch, FFNModel


class StepTimes:
    """Seconds of each emulated forward and backward pass, drawn with their own seed."""

    def __init__(self, mean_s: float, cv: float, seed: int, measured: Optional[Sequence[float]] = None):
        self.rng = np.random.default_rng(seed)
        self.mean_s, self.cv = mean_s, cv
        self.measured = np.asarray(measured, float) if measured is not None and len(measured) else None

    def draw(self) -> float:
        if self.measured is not None:
            return float(self.rng.choice(self.measured))
        if self.cv == 0:
            return self.mean_s
        s2 = np.log1p(self.cv ** 2)
        return float(self.mean_s * np.exp(np.sqrt(s2) * self.rng.standard_normal() - s2 / 2))


class TimedComputeFFN(FFNModel):
    """An FFNModel whose gradients cost a timed wait instead of the network's passes."""

    def __init__(self, *args, step_times: StepTimes, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_times = step_times
        self._zero_grads = [tf.zeros_like(v) for v in self.variables]
        self._zero_flat = np.zeros(self.num_params, np.float32)

    def _wait(self, batch: Batch) -> np.ndarray:
        """The pass's time, slept; the zero logits of the batch."""
        time.sleep(self.step_times.draw())
        return np.zeros(np.shape(batch.images), np.float32)

    def trace(self) -> None:
        """Nothing to trace: no pass runs (updates trace on first use, before the clock starts)."""
        self._apply_flat.get_concrete_function()

    def gradients(self, batch: Batch) -> Tuple[List[tf.Tensor], tf.Tensor, tf.Tensor]:
        logits = self._wait(batch)
        return list(self._zero_grads), tf.constant(0.0), tf.constant(logits)

    def flat_gradients(self, batch: Batch) -> Tuple[np.ndarray, float, np.ndarray]:
        logits = self._wait(batch)
        return self._zero_flat.copy(), 0.0, logits

    def train_step(self, batch: Batch) -> Tuple[float, np.ndarray]:
        logits = self._wait(batch)
        self.apply_gradients(self._zero_flat)
        return 0.0, logits
