"""The statistics a comparison rests on: robust summaries of one run's held-out curve, and means,
95 % confidence intervals and ratios across repeats (scipy's t distribution and Welch's test).

A conclusion never hangs on one evaluation point: a run is summarised by the mean of its last
evaluations, and reaches a target when the trailing mean of its evaluations first crosses it.
"""
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
#: evaluations averaged for a run's final value and for the trailing mean that crosses a target
WINDOW = 3


def final_value(values: Sequence[float], window: int = WINDOW) -> Optional[float]:
    """Mean of the last `window` evaluations (fewer if the run has fewer); None without any."""
    tail = list(values)[-window:]
    return float(np.mean(tail)) if tail else None


def first_crossing(times: Sequence[float], values: Sequence[float], target: float, below: bool = True,
                   window: int = WINDOW) -> Optional[float]:
    """The first time the trailing mean of `window` evaluations is at or below (or above) `target`.

    Args:
        times, values: the evaluations in time order.
        target: the level to reach; below: True for a loss, False for F1.
    Returns:
        The time of the evaluation at which the trailing mean first reaches the target, or None.
    """
    values = np.asarray(values, float)
    for i in range(len(values)):
        mean = values[max(0, i - window + 1):i + 1].mean()
        if (mean <= target) if below else (mean >= target):
            return float(times[i])
    return None


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Tuple[float, Optional[float], Optional[float]]:
    """Mean and its two-sided t confidence interval; (mean, None, None) for a single value."""
    x = np.asarray(values, float)
    mean = float(x.mean())
    if x.size < 2:
        return mean, None, None
    if np.all(x == x[0]):
        return mean, mean, mean
    lo, hi = stats.t.interval(confidence, x.size - 1, loc=mean, scale=stats.sem(x))
    return mean, float(lo), float(hi)


def ratio_ci(a: Sequence[float], b: Sequence[float],
             confidence: float = CONFIDENCE) -> Tuple[float, Optional[float], Optional[float]]:
    """Ratio of geometric means a/b with a Welch confidence interval on the log scale.

    Times are positive and skewed, so ratios are compared as differences of logs (Welch's t test:
    unequal variances, scipy.stats.ttest_ind(equal_var=False)).

    Returns:
        (ratio, low, high); low and high are None unless both sides have 2 or more values.
    """
    la, lb = np.log(np.asarray(a, float)), np.log(np.asarray(b, float))
    ratio = math.exp(la.mean() - lb.mean())
    if la.size < 2 or lb.size < 2:
        return ratio, None, None
    if np.ptp(la) == 0 and np.ptp(lb) == 0:
        return ratio, ratio, ratio
    interval = stats.ttest_ind(la, lb, equal_var=False).confidence_interval(confidence)
    return ratio, math.exp(interval.low), math.exp(interval.high)


def difference_ci(a: Sequence[float], b: Sequence[float],
                  confidence: float = CONFIDENCE) -> Tuple[float, float, float]:
    """mean(a) - mean(b) with its Welch confidence interval (unequal variances); needs 2+ values each."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    d = float(x.mean() - y.mean())
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return d, d, d
    interval = stats.ttest_ind(x, y, equal_var=False).confidence_interval(confidence)
    return d, float(interval.low), float(interval.high)


def verdict(ratio: float, low: Optional[float], high: Optional[float]) -> str:
    """'faster', 'slower' or 'no difference' for a time ratio a/b and its interval."""
    if low is None:
        return "too few repeats for an interval"
    if high < 1:
        return "faster"
    if low > 1:
        return "slower"
    return "no difference (the interval includes 1)"


def log_ratio_p(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Welch's two-sided p for equal geometric means of a and b (None with fewer than 2 values a side)."""
    la, lb = np.log(np.asarray(a, float)), np.log(np.asarray(b, float))
    if la.size < 2 or lb.size < 2:
        return None
    if np.ptp(la) == 0 and np.ptp(lb) == 0:
        return 0.0 if la[0] != lb[0] else 1.0
    return float(stats.ttest_ind(la, lb, equal_var=False).pvalue)


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm's step-down adjustment of a family of p values (Holm 1979): compare each with the level
    as it stands; controls the family-wise error rate without assuming independence."""
    p = np.asarray(pvalues, float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
