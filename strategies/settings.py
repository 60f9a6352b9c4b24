"""The resolved training settings a strategy is given (never the raw config), and the learning-rate
rules they imply."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ffnbench.strategies.declare import Option

LR_SCALING_RULES = ("none", "linear", "sqrt")
OPTIMIZERS = ("sgd", "momentum", "adam")


def lr_scale(rule: str, workers: int) -> float:
    """The factor the base learning rate is multiplied by at `workers` workers.

    Args:
        rule: none | linear | sqrt (Goyal et al. 2017 use linear; Dong et al. 2019 find sqrt better
            beyond 16 nodes).
        workers: workers whose batches make one update.
    Returns:
        1, workers, or sqrt(workers).
    """
    return {"none": 1.0, "linear": float(workers), "sqrt": math.sqrt(workers)}[rule]


def staleness_lr(lr: float, staleness: int, rule: str) -> float:
    """The learning rate for a gradient `staleness` updates old.

    Args:
        rule: none, or divide: lr / tau for tau > 0 (Zhang, Gupta, Lian, Liu, "Staleness-aware
            Async-SGD for Distributed Deep Learning", IJCAI 2016).
    """
    return lr / staleness if rule == "divide" and staleness > 0 else lr


#: the staleness controls, declared once for every strategy that applies stale gradients
LR_STALENESS = Option("none", "`divide`: a gradient tau updates old is applied at lr / tau (Zhang et al. 2016)",
                      choices=("none", "divide"))
MAX_STALENESS = Option(None, "SSP bound s (Ho et al. 2013): a worker more than s pushes ahead of the slowest waits; "
                             "null: no bound", kind=int, nullable=True, at_least=0)


@dataclass(frozen=True)
class OptimizerSettings:
    """One optimizer and its hyperparameters: the single source for the TF model and the numpy copy
    that parameter servers apply."""
    name: str = "adam"
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8


@dataclass(frozen=True)
class TrainingSettings:
    """The resolved training settings a strategy needs (never the raw config)."""
    steps: int               # steps per worker
    batch_size: int          # FOVs per worker step
    lr: float                # base learning rate, before scaling by workers
    lr_scaling: str          # one of LR_SCALING_RULES
    warmup_steps: int        # linear ramp from lr to the scaled lr over these updates
    clip: float              # elementwise gradient clip, applied to the (averaged) gradient
    seed: int                # weights and example streams
    optimizer: OptimizerSettings
    timeout_s: float         # bound on every blocking wait

    def lr_schedule(self, workers: int) -> Callable[[int], float]:
        """The learning rate at each update.

        Args:
            workers: workers whose batches make one update (the layout's logical workers).
        Returns:
            lr(update): the base lr scaled by `lr_scale`, ramped linearly over warmup_steps.
        """
        base, warm = self.lr, self.warmup_steps
        target = base * lr_scale(self.lr_scaling, workers)

        def lr(update: int) -> float:
            if warm and update < warm:
                return base + (target - base) * update / warm
            return target
        return lr
