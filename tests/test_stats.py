"""The statistics behind the report's intervals and verdicts, against values computed by hand."""
import math

import pytest

from ffnbench.bench.analyse.stats import final_value, first_crossing, mean_ci, ratio_ci, verdict


def test_mean_ci_is_the_t_interval():
    # mean 2, sem = 1/sqrt(3), t(0.975, 2) = 4.302653
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert mean - lo == pytest.approx(hi - mean)
    assert mean_ci([5.0]) == (5.0, None, None)


def test_ratio_ci_is_on_the_log_scale_and_symmetric_in_it():
    ratio, lo, hi = ratio_ci([20.0, 22.0, 19.0], [10.0, 11.0, 9.5])
    assert ratio == pytest.approx(2.0)
    assert lo < 2.0 < hi and lo * hi == pytest.approx(4.0)  # geometric symmetry around the ratio
    assert verdict(ratio, lo, hi) == "slower" and verdict(1 / ratio, 1 / hi, 1 / lo) == "faster"
    same = ratio_ci([10.0, 12.0, 11.0], [11.5, 10.2, 11.1])
    assert same[1] < 1 < same[2] and verdict(*same).startswith("no difference")
    assert ratio_ci([10.0], [5.0, 6.0])[1:] == (None, None)


def test_a_run_is_summarised_by_its_last_evaluations_not_its_last_point():
    assert final_value([0.9, 0.5, 0.4, 0.6]) == pytest.approx(0.5)
    assert final_value([]) is None
    assert first_crossing([1, 2, 3], [0.9, 0.2, 0.9], 0.5) is None  # one lucky point is not enough
    assert first_crossing([1, 2, 3], [0.2, 0.7, 0.9], 0.5, below=False) == 3
