"""The optimizers a parameter server applies to its shard, in numpy, matching tf.keras 2.15.

Same float32 math as keras' SGD, SGD(momentum=0.9) and Adam(epsilon=1e-8), so a PS run with
one worker takes the same steps as the single-process run; tests/test_ps_optimizer.py checks it.
"""
import numpy as np


class SGD:
    def __init__(self, size):
        self.size = size

    def apply(self, param, grad, lr):
        param -= np.float32(lr) * grad


class Momentum:
    momentum = np.float32(0.9)

    def __init__(self, size):
        self.velocity = np.zeros(size, np.float32)

    def apply(self, param, grad, lr):
        self.velocity *= self.momentum
        self.velocity -= grad * np.float32(lr)
        param += self.velocity


class Adam:
    beta1, beta2, epsilon = np.float32(0.9), np.float32(0.999), np.float32(1e-8)

    def __init__(self, size):
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


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


class ShardUpdater:
    """Clip then apply, as FFNModel.apply_gradients does in-graph."""

    def __init__(self, name, size, clip):
        self.optimizer = OPTIMIZERS[name](size)
        self.clip = np.float32(clip)

    def apply(self, param, grad, lr):
        np.clip(grad, -self.clip, self.clip, out=grad)
        self.optimizer.apply(param, grad, lr)
