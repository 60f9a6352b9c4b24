"""The failure model behind `ffnbench simulate --failures`: goodput falls with nodes and failure rate,
and each recovery mode loses what it should."""
import math

import pytest

from ffnbench.bench.analyse import failures
from ffnbench.bench.analyse.failures import FailureInputs, goodput, young_interval


def test_no_failures_cost_only_checkpoints():
    fi = FailureInputs(mtbf_node_h=1e12, work_h=1.0, checkpoint_s=10.0)
    assert goodput("elastic", 64, fi, trials=20)["mean"] == pytest.approx(1.0)
    assert goodput("async", 64, fi, trials=20)["mean"] == pytest.approx(1.0)
    restart = goodput("restart", 64, fi, trials=20)["mean"]
    assert restart == pytest.approx(1.0, abs=1e-3)  # Young's interval is longer than the job: no checkpoint


def test_young_interval():
    assert young_interval(30.0, 3600.0) == pytest.approx(math.sqrt(2 * 30 * 3600))


def test_sync_goodput_falls_with_nodes_and_each_mode_loses_what_it_should():
    fi = FailureInputs(mtbf_node_h=2000.0, work_h=6.0, checkpoint_s=30.0, restart_s=300.0, step_s=5.0)
    small = {m: goodput(m, 16, fi)["mean"] for m in failures.MODES}
    large = {m: goodput(m, 2048, fi)["mean"] for m in failures.MODES}
    for mode in ("restart", "elastic"):  # every failure costs the whole job something
        assert large[mode] < small[mode] <= 1.0
    # about 6 failures per job at 2048 nodes: restarts pay R and lost work each time; async loses only
    # the lost workers' capacity (each ~1/2047 of the job for the rest of it), and only a failure of
    # its one server node (rarer with more nodes) is a restart
    assert large["async"] > large["elastic"] > large["restart"]
    assert large["async"] > 0.99 and large["restart"] < 0.95


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        FailureInputs(mtbf_node_h=0)
    with pytest.raises(ValueError, match="failure mode"):
        failures.job_seconds("pray", 4, FailureInputs(), None)
