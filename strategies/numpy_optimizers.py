"""The optimizers in numpy, matching tf.keras 2.15's float32 math step for step.

Parameter servers apply these to their shards (and emulated_async to its copy), so a PS run with one
worker takes the same steps as the single-process run (tests/test_strategies.py checks it). The
hyperparameters come from the same OptimizerSettings the TF model is built with.
"""
import numpy as np

from ffnbench.strategies.settings import OptimizerSettings


class SGD:
    STATE = ()  # the attributes a checkpoint keeps

    def __init__(self, size, settings):
        self.size = size

    def apply(self, param, grad, lr):
        param -= np.float32(lr) * grad


class Momentum:
    """keras SGD(momentum=m): v = m v - lr g; p += v."""
    STATE = ("velocity",)

    def __init__(self, size, settings):
        self.momentum = np.float32(settings.momentum)
        self.velocity = np.zeros(size, np.float32)

    def apply(self, param, grad, lr):
        self.velocity *= self.momentum
        self.velocity -= grad * np.float32(lr)
        param += self.velocity


class Adam:
    """keras Adam: bias correction folded into the step size, epsilon outside the square root."""
    STATE = ("m", "v", "t")

    def __init__(self, size, settings):
        self.beta1, self.beta2 = np.float32(settings.beta1), np.float32(settings.beta2)
        self.epsilon = np.float32(settings.epsilon)
        self.m = np.zeros(size, np.float32)
        self.v = np.zeros(size, np.float32)
        self.t = 0

    def apply(self, param, grad, lr):
        self.t += 1
        b1t = np.power(self.beta1, np.float32(self.t), dtype=np.float32)
        b2t = np.power(self.beta2, np.float32(self.t), dtype=np.float32)
        alpha = np.float32(lr) * np.sqrt(np.float32(1) - b2t) / (np.float32(1) - b1t)
        self.m += (grad - self.m) * (np.float32(1) - self.beta1)
        self.v += (np.square(grad) - self.v) * (np.float32(1) - self.beta2)
        param -= (self.m * alpha) / (np.sqrt(self.v) + self.epsilon)


_OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


class ShardUpdater:
    """Clip then apply, as FFNModel.apply_gradients does in-graph."""

    def __init__(self, optimizer: OptimizerSettings, size: int, clip: float):
        self.optimizer = _OPTIMIZERS[optimizer.name](size, optimizer)
        self.clip = np.float32(clip)

    def apply(self, param, grad, lr):
        np.clip(grad, -self.clip, self.clip, out=grad)
        self.optimizer.apply(param, grad, lr)

    def state(self):
        """The optimizer's slots and step count, as arrays."""
        return {name: np.asarray(getattr(self.optimizer, name)) for name in self.optimizer.STATE}

    def load_state(self, arrays):
        for name in self.optimizer.STATE:
            value = arrays[name]
            setattr(self.optimizer, name, value.copy() if value.ndim else value.item())
