"""Multi-rank behaviour, run for real under mpirun through `ffnbench run`."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, ffnbench

STEPS = 6
LR = {"sgd": 0.05, "adam": 0.003}
BASE = ["--set", f"train.steps={STEPS}", "--set", "eval.every=0", "--set", "run.progress=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run each configuration once per module; returns a function name -> run directory."""
    root = tmp_path_factory.mktemp("runs")
    done = {}

    def get(name, *overrides):
        if name not in done:
            out = root / name
            r = ffnbench("run", "configs/smoke.yaml", *BASE, *sum((["--set", o] for o in overrides), []),
                         "--out", str(out), timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr
            done[name] = out
        return done[name]
    return get


def final_weights(run_dir):
    from ffnbench.model.api import FFNModel
    cfg = json.load(open(os.path.join(run_dir, "manifest.json")))["config"]["model"]
    m = FFNModel(cfg["fov"], cfg["depth"], cfg["features"])
    m.restore(os.path.join(run_dir, "checkpoints"))
    return m.get_flat()


def records(run_dir, kind):
    return [r for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl"))) if r["kind"] == kind]


def assert_same(a, b, atol):
    """Equal to float tolerance. The two runs' graphs may order float sums differently, and a
    ReLU or clip sitting exactly at its kink can turn that into a rare larger difference, so
    99.9 % of weights must agree to atol and none may differ by more than 10 * atol."""
    wa, wb = final_weights(a), final_weights(b)
    moved = np.abs(wa - final_weights_init()).max()
    assert moved > 100 * atol, f"training hardly moved the weights ({moved})"
    diff = np.abs(wa - wb)
    assert np.quantile(diff, 0.999) <= atol and diff.max() <= 10 * atol, (np.quantile(diff, 0.999), diff.max())


def final_weights_init():
    from ffnbench.model.api import FFNModel
    return FFNModel((9, 9, 9), 2, 8).get_flat()


@pytest.mark.slow
@pytest.mark.parametrize("opt,atol", [("sgd", 2e-6), ("adam", 2e-5)])
def test_horovod_allreduce_2_ranks_equals_single_at_double_batch(runs, opt, atol):
    single = runs(f"single-{opt}", "train.batch_size=4", f"train.optimizer={opt}", f"train.lr={LR[opt]}")
    hvd = runs(f"allreduce-{opt}", "strategy=allreduce", "ranks=2", "train.batch_size=2", f"train.optimizer={opt}", f"train.lr={LR[opt]}")
    assert_same(single, hvd, atol)


@pytest.mark.slow
@pytest.mark.parametrize("exchange", ["grouped", "per_variable", "flat_eager"])
def test_horovod_exchanges_equal_single_at_double_batch(runs, exchange):
    single = runs("single-sgd", "train.batch_size=4", "train.optimizer=sgd", f"train.lr={LR['sgd']}")
    hvd = runs(f"allreduce-{exchange}", "strategy=allreduce", "ranks=2", f"strategy_options.exchange={exchange}",
               "train.batch_size=2", "train.optimizer=sgd", f"train.lr={LR['sgd']}")
    assert_same(single, hvd, 2e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name,ranks", [("mpi_allreduce", 2), ("ps_sync", 3)])  # ps_sync: 1 server + 2 workers
def test_other_sync_strategies_equal_horovod_allreduce(runs, name, ranks):
    hvd = runs("allreduce-sgd", "strategy=allreduce", "ranks=2", "train.batch_size=2", "train.optimizer=sgd", "train.lr=0.05")
    other = runs(f"{name}-sgd", f"strategy={name}", f"ranks={ranks}", "train.batch_size=2", "train.optimizer=sgd",
                 "train.lr=0.05")
    assert_same(hvd, other, 2e-6)


@pytest.mark.slow
@pytest.mark.parametrize("opt,atol", [("sgd", 2e-6), ("adam", 2e-5)])
def test_tf_multiworker_2_ranks_equals_single_at_double_batch(runs, opt, atol):
    """TF's own collective all-reduce (gRPC, no MPI in the exchange) takes the same steps."""
    single = runs(f"single-{opt}", "train.batch_size=4", f"train.optimizer={opt}", f"train.lr={LR[opt]}")
    tfmw = runs(f"tf_multiworker-{opt}", "strategy=tf_multiworker", "ranks=2", "train.batch_size=2",
                f"train.optimizer={opt}", f"train.lr={LR[opt]}")
    assert_same(single, tfmw, atol)


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides", [
    ("mpi-sgd", ["strategy=mpi_allreduce", "ranks=2", "train.batch_size=2", "train.optimizer=sgd", "train.lr=0.05"]),
    ("ps-1-1", ["strategy=ps_async", "ranks=2", "train.batch_size=2", "train.optimizer=adam"])])
def test_bfloat16_gradients_on_the_wire_round_but_take_nearly_the_same_steps(runs, name, overrides):
    exact = final_weights(runs(name, *overrides))
    rounded = final_weights(runs(f"{name}-bf16", *overrides, "strategy_options.gradient_wire=bfloat16"))
    moved = np.abs(exact - final_weights_init())
    diff = np.abs(rounded - exact)
    assert diff.max() > 0, "bfloat16 on the wire changed nothing: the gradients were not rounded"
    # Adam turns a gradient near zero into a full step whichever way it points, so where rounding
    # flips such a sign a weight moves up to 2 lr apart: a few do (37 of 5,657 here). The steps as a
    # whole, and 99 % of the weights, stay within 2 %.
    assert np.linalg.norm(diff) < 0.02 * np.linalg.norm(moved)
    assert np.quantile(diff, 0.99) < 0.02 * moved.max(), (np.quantile(diff, 0.99), moved.max())


@pytest.mark.slow
def test_ps_async_one_worker_equals_single_with_zero_staleness(runs):
    single = runs("single-adam-b2", "train.batch_size=2", "train.optimizer=adam")
    ps = runs("ps-1-1", "strategy=ps_async", "ranks=2", "train.batch_size=2", "train.optimizer=adam")
    assert_same(single, ps, 2e-5)
    updates = records(ps, "update")
    assert len(updates) == STEPS and all(u["staleness"] == 0 for u in updates)
    assert json.load(open(ps / "summary.json"))["staleness"]["max"] == 0


@pytest.mark.slow
def test_ps_async_two_servers_equal_one_server(runs):
    one = runs("ps-1-1", "strategy=ps_async", "ranks=2", "train.batch_size=2", "train.optimizer=adam")
    two = runs("ps-2-1", "strategy=ps_async", "ranks=3", "strategy_options.servers=2", "train.batch_size=2",
               "train.optimizer=adam")
    assert_same(one, two, 2e-5)  # TF's inter-op threads may sum gradient parts in either order


# Equal workers whose steps are long against message latency, so their steps overlap as on a cluster.
EQUAL_WORKERS = ("train.steps=20", "train.batch_size=2", "model.features=24")
# The timing is controlled, not left to the OS: each worker holds 300 ms between its pull and its push
# (straggle_s), far longer than a step of this model even on a loaded machine, so the two interleave
# the same way under load.
EQUAL_PS_WORKERS = (*EQUAL_WORKERS, "strategy_options.straggle_s=[0.3,0.3]")


@pytest.mark.slow
def test_ps_async_two_workers_are_stale_by_about_one(runs):
    ps = runs("ps-1-2", "strategy=ps_async", "ranks=3", *EQUAL_PS_WORKERS)
    stale = [u["staleness"] for u in records(ps, "update")]
    assert len(stale) == 40 and max(stale) > 0
    assert 0.5 <= np.mean(stale) <= 1.5, np.bincount(stale)
    summary = json.load(open(ps / "summary.json"))
    assert summary["roles"] == {"server": 1, "worker": 2} and summary["workers"] == 2
    assert summary["fovs_total"] == 2 * 20 * 2  # worker FOVs only


@pytest.mark.slow
def test_a_killed_rank_fails_a_sync_ps_job_without_hanging(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ffnbench.bench.cli", "run", "configs/smoke.yaml", "--set", "strategy=ps_sync",
           "--set", "ranks=3", "--set", "train.steps=100000", "--set", "run.timeout_s=20", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 2000):
        time.sleep(0.5)
    assert metrics.exists(), "the run never started"
    pattern = f"^{re.escape(sys.executable)} -m ffnbench.bench.cli train {out}"
    ranks = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    assert len(ranks) == 3, ranks
    os.kill(int(max(ranks, key=int)), signal.SIGKILL)
    t = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and time.time() - t < 40
    assert json.load(open(out / "summary.json"))["status"] == "lost_ranks"
    assert err.strip().splitlines()[-1].startswith("ffnbench: error:")


@pytest.mark.slow
def test_ssp_bounds_staleness_of_a_straggler(runs):
    free = runs("ps-straggler", "strategy=ps_async", "ranks=3", "train.steps=8", "strategy_options.straggle_s=[0.0,0.4]")
    bounded = runs("ps-straggler-ssp", "strategy=ps_async", "ranks=3", "train.steps=8",
                   "strategy_options.straggle_s=[0.0,0.4]", "strategy_options.max_staleness=0")
    slow = lambda run: [u["staleness"] for u in records(run, "update") if u["worker"] == 2]
    assert max(slow(free)) >= 3          # the fast worker runs ahead while the straggler computes
    assert max(slow(bounded)) <= 1       # SSP s=0: at most (s+1)(workers-1) updates in between
    assert max(u["staleness"] for u in records(bounded, "update")) <= 1


@pytest.mark.slow
def test_lr_divided_by_staleness(runs):
    run = runs("ps-divide", "strategy=ps_async", "ranks=3", "train.steps=8", "train.optimizer=sgd",
               "train.lr=0.01", "strategy_options.lr_staleness=divide", "strategy_options.straggle_s=[0.0,0.2]")
    updates = records(run, "update")
    assert any(u["staleness"] > 1 for u in updates)
    for u in updates:
        assert u["lr"] == pytest.approx(0.01 / max(1, u["staleness"]))


@pytest.mark.slow
def test_emulated_sync_equals_allreduce(runs):
    hvd = runs("allreduce-sgd", "strategy=allreduce", "ranks=2", "train.batch_size=2", "train.optimizer=sgd", "train.lr=0.05")
    emu = runs("emu-sync-sgd", "strategy=emulated_sync", "strategy_options.workers=2", "train.batch_size=2",
               "train.optimizer=sgd", "train.lr=0.05")
    assert_same(hvd, emu, 2e-6)
    assert all(r["emulated"] for r in records(emu, "step"))
    assert json.load(open(emu / "summary.json"))["workers"] == 2


@pytest.mark.slow
def test_emulated_async_staleness_matches_ps_async_with_equal_workers(runs):
    ps = runs("ps-1-2", "strategy=ps_async", "ranks=3", *EQUAL_PS_WORKERS)
    emu = runs("emu-async-2", "strategy=emulated_async", "strategy_options.workers=2", *EQUAL_WORKERS)
    real = np.array([u["staleness"] for u in records(ps, "update")])
    emulated = np.array([u["staleness"] for u in records(emu, "update")])
    assert len(real) == len(emulated) == 40
    assert list(emulated[1:]) == [1] * 39  # round robin: tau = N - 1 by construction, after the first
    # Two equal real workers: staggered by half a step, as round robin assumes, each push is stale by
    # 1. In phase (reading the same version) they alternate 0 and 1, mean 0.5; nearly in phase, one
    # can push twice during the other's step (a 2, and a 0 beside it). So 1 is the mode, nothing
    # exceeds 2, and the mean lies between in-phase 0.5 and the emulation's at the top.
    assert real.max() <= 2 and np.bincount(real).argmax() == 1
    assert 0.45 <= real.mean() <= emulated.mean() + 0.05


@pytest.mark.slow
def test_emulated_async_one_worker_is_plain_sgd(runs):
    single = runs("single-sgd-b2", "train.batch_size=2", "train.optimizer=sgd", "train.lr=0.05")
    emu = runs("emu-async-1", "strategy=emulated_async", "strategy_options.workers=1", "train.batch_size=2",
               "train.optimizer=sgd", "train.lr=0.05")
    assert_same(single, emu, 2e-6)
    assert all(u["staleness"] == 0 for u in records(emu, "update"))


@pytest.mark.slow
def test_emulated_async_speeds_bound_and_lr_rule_as_ps_async(runs):
    run = runs("emu-async-speeds", "strategy=emulated_async", "strategy_options.workers=3",
               "strategy_options.delay=speeds", "strategy_options.worker_speeds=[1,1,0.25]",
               "strategy_options.max_staleness=1", "strategy_options.lr_staleness=divide",
               "train.optimizer=sgd", "train.lr=0.01")
    updates = records(run, "update")
    assert len(updates) == 3 * STEPS
    assert max(u["staleness"] for u in updates) == 4  # (s+1)(N-1): the slow worker waits on by the bound
    for u in updates:
        assert u["lr"] == pytest.approx(0.01 / max(1, u["staleness"]))


def summary_of(run_dir):
    return json.load(open(os.path.join(run_dir, "summary.json")))


@pytest.mark.slow
def test_a_runs_mfu_is_against_the_peak_measured_before_its_ranks_started(runs):
    """On this one machine (nodes == 1); the x nodes of a multi-node job: tests/test_summary.py."""
    for run in (runs("allreduce-sgd", "strategy=allreduce", "ranks=2", "train.batch_size=2", "train.optimizer=sgd",
                     "train.lr=0.05"),
                runs("ps-1-2", "strategy=ps_async", "ranks=3", *EQUAL_PS_WORKERS)):
        summary, manifest = summary_of(run), json.load(open(run / "manifest.json"))
        assert summary["status"] == "complete"
        assert 0 < summary["mfu"] <= 1, summary["mfu"]
        peak = manifest["peak"]
        assert peak["threads"] == os.cpu_count() and peak["nodes"] == 1
        assert summary["peak_dtype"] == "float32"
        assert summary["peak_flops_per_s"] == pytest.approx(peak["flops_per_s"]["float32"] * peak["nodes"])


@pytest.mark.slow
def test_evaluation_pauses_every_worker_and_leaks_into_no_communication(tmp_path):
    """rank 0 evaluates 512 held-out FOVs every 3 steps; its peer waits in the same pause, not in
    its next all-reduce, and every worker's last records are in the summary."""
    out = tmp_path / "paused"
    r = ffnbench("run", "configs/smoke.yaml", *BASE[:2], "--set", "strategy=allreduce", "--set", "ranks=2",
                 "--set", "eval.every=3", "--set", "eval.fovs=512", "--set", "run.progress=false",
                 "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    evals = [e for e in records(out, "eval")]
    assert len(evals) == STEPS // 3 and min(e["eval_s"] for e in evals) > 0.02
    steps = records(out, "step")
    assert sorted({s["rank"] for s in steps}) == [0, 1] and len(steps) == 2 * STEPS
    peer = [s for s in steps if s["rank"] == 1]
    assert max(s["comm_s"] for s in peer[1:]) < 0.5 * min(e["eval_s"] for e in evals)
    for rank in (0, 1):
        trace = json.load(open(out / f"trace.rank{rank}.json"))["traceEvents"]
        assert sum(e["name"] == "eval" for e in trace) == STEPS // 3 - 1  # the last one is the final evaluation
    summary = summary_of(out)
    assert summary["fovs_total"] == 2 * STEPS * 2 and summary["eval_s"] > 0
    assert summary["train_s"] < summary["wall_s"] + 1e-9
