"""Emulated compute: each worker's pass is a timed wait of the requested length, the exchange and
updates stay real, the records and manifest say so, and no convergence figure comes from the run."""
import json

import numpy as np
import pytest

from ffnbench.bench.analyse.results import load_run
from ffnbench.model.timed import StepTimes


def test_waits_have_the_mean_and_spread_asked_for_or_resample_a_real_run():
    times = StepTimes(0.5, 0.2, seed=2)
    draws = np.array([times.draw() for _ in range(4000)])
    assert abs(draws.mean() / 0.5 - 1) < 0.02 and abs(draws.std() / draws.mean() / 0.2 - 1) < 0.1
    assert (draws > 0).all()
    assert StepTimes(0.5, 0.0, seed=3).draw() == 0.5
    measured = [0.1, 0.2, 0.3]
    resampled = StepTimes(9.0, 0.1, seed=4, measured=measured)
    assert {resampled.draw() for _ in range(200)} == set(measured)


@pytest.mark.slow
def test_a_run_with_emulated_compute_waits_exchanges_for_real_and_says_so(run_cli, tmp_path):
    out = tmp_path / "run"
    r = run_cli("run", "configs/smoke.yaml", "--set", "strategy=ps_async", "--set", "ranks=3", "--set",
                "train.compute=emulated", "--set", "train.compute_mean_s=0.05", "--set", "train.compute_cv=0",
                "--set", "eval.every=0", "--set", "train.steps=12", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    steps = [x for x in records if x["kind"] == "step"]
    assert len(steps) == 24 and all(s["compute"] == "emulated" and s["loss"] == 0.0 for s in steps)
    assert all(s["compute_s"] >= 0.05 for s in steps)  # a sleep is never shorter than asked
    assert len([x for x in records if x["kind"] == "update"]) == 24  # the servers applied every gradient
    assert json.load(open(out / "manifest.json"))["compute"] == {"mode": "emulated", "mean_s": 0.05, "cv": 0.0,
                                                               "from": None}
    run = load_run(str(out))
    assert run.complete and run.compute_emulated and run.evals == []  # no convergence figure from it
    assert run.summary["final_eval"] is None and "held-out" not in r.stdout


def test_emulated_compute_needs_its_mean_and_no_evaluations(run_cli, tmp_path):
    r = run_cli("run", "configs/smoke.yaml", "--set", "train.compute=emulated", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "train.compute_mean_s" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("run", "configs/smoke.yaml", "--set", "train.compute=emulated", "--set", "train.compute_mean_s=0.1",
                "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "eval.every: must be 0" in r.stderr
