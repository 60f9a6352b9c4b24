"""The report's math and table, on fabricated run directories (no training)."""
import json
import math
import os
from dataclasses import asdict

import pytest
import yaml

from ffnbench.bench import config
from ffnbench.bench.analyse.report import build_report, efficiency, speedup, time_to_target
from ffnbench.bench.analyse.results import aggregate_rates, read_records, staleness_values
from ffnbench.bench.run.summary import rate_stats
from ffnbench.strategies.records import EvalRecord, UpdateRecord


def eval_record(step, time, fovs_total, f1, loss=0.5):
    return EvalRecord(step=step, time=time, fovs_total=fovs_total, loss=loss, loss_sem=0.01, accuracy=0.9,
                      precision=f1, recall=f1, f1=f1, eval_s=0.1)


def test_efficiency_is_speedup_per_worker():
    assert speedup(150.0, 100.0) == pytest.approx(1.5)
    assert efficiency(150.0, 100.0, 2) == pytest.approx(0.75)
    assert efficiency(400.0, 100.0, 4) == pytest.approx(1.0)


def test_efficiency_without_a_one_worker_rate_is_unknown():
    assert efficiency(150.0, None, 2) is None
    assert efficiency(150.0, 0.0, 2) is None


def test_time_to_target_is_when_the_trailing_mean_of_the_loss_reaches_it():
    evals = [eval_record(3, 30.0, 300, 0.8, loss=0.4),  # out of order on purpose
             eval_record(1, 10.0, 100, 0.4, loss=0.9),
             eval_record(2, 20.0, 200, 0.8, loss=0.5),   # one good point is not enough: mean 0.7
             eval_record(4, 40.0, 400, 0.7, loss=0.3)]   # trailing means 0.9, 0.7, 0.6, 0.4
    assert time_to_target(evals, 0.6) == (30.0, 300)  # <= counts
    assert time_to_target(evals, 0.5) == (40.0, 400)
    assert time_to_target(evals, 0.2) == (None, None)
    assert time_to_target([], 0.5) == (None, None)


def test_rate_stats_follow_tf_cnn_benchmarks():
    # mean 4; population std sqrt(50/5) = sqrt(10), so uncertainty = sqrt(10)/sqrt(5) = sqrt(2);
    # median 3, absolute deviations 2,1,0,1,7 -> MAD 1, so jitter = 1.4826.
    stats = rate_stats([1, 2, 3, 4, 10])
    assert stats["mean"] == pytest.approx(4.0)
    assert stats["uncertainty"] == pytest.approx(math.sqrt(2))
    assert stats["jitter"] == pytest.approx(1.4826)
    assert stats["n"] == 5


def test_repeats_spread_is_their_std_and_one_run_keeps_its_uncertainty():
    one = {"mean": 10.0, "uncertainty": 0.3}
    assert aggregate_rates([one]) == (10.0, 0.3)
    mean, spread = aggregate_rates([one, {"mean": 12.0, "uncertainty": 0.1}])
    assert mean == pytest.approx(11.0)
    assert spread == pytest.approx(math.sqrt(2))  # sample std of 10 and 12


def fake_run(run_dir, strategy, ranks, workers, rate, evals, staleness=None, seg=None, seed=0):
    """A complete run directory as `ffnbench run` leaves it, with made-up numbers; evals are
    (time, fovs_total, f1, loss)."""
    os.makedirs(run_dir)
    cfg = config.load(None, [("strategy", strategy), ("ranks", ranks), ("train.seed", seed)])
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f)
    records = [{"kind": EvalRecord.kind, **asdict(eval_record(i, t, fovs, f1, loss))}
               for i, (t, fovs, f1, loss) in enumerate(evals)]
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    summary = {"status": "complete", "strategy": strategy, "mfu": 0.3, "train_s": evals[-1][0],
               "baselines": {"f1_all_background": 0.0, "f1_all_foreground": 0.6}, "ranks": ranks, "workers": workers, "global_batch": 4 * workers,
               "fovs_per_s": {"mean": rate, "uncertainty": 0.5, "jitter": 1.0, "n": 20}, "comm_share": 0.25,
               "wall_s": evals[-1][0], "final_eval": records[-1], "staleness": staleness,
               "step_time_s": {"step_s": 1.0, "compute_s": 0.75, "comm_s": 0.25, "data_s": 0.0, "wait_s": 0.0}}
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f)
    if seg:
        with open(os.path.join(run_dir, "eval.json"), "w") as f:
            json.dump(seg, f)


@pytest.fixture
def runs_dir(tmp_path):
    fake_run(tmp_path / "single", "single", 1, 1, 10.0, [(10.0, 40, 0.5, 0.8), (20.0, 80, 0.9, 0.4)])
    fake_run(tmp_path / "ps" / "rep0", "ps_async", 3, 2, 15.0, [(5.0, 40, 0.6, 0.7), (12.0, 80, 0.85, 0.3)],
             staleness={"mean": 1.0, "p99": 3.0}, seg={"are": 0.1, "voi": 2.0})
    fake_run(tmp_path / "ps" / "rep1", "ps_async", 3, 2, 17.0, [(6.0, 40, 0.7, 0.6), (10.0, 80, 0.81, 0.4)],
             staleness={"mean": 1.2, "p99": 5.0}, seg={"are": 0.2, "voi": 3.0}, seed=1)
    os.makedirs(tmp_path / "crashed")
    with open(tmp_path / "crashed" / "config.yaml", "w") as f:
        yaml.safe_dump(config.load(None), f)
    return tmp_path


def test_report_aggregates_repeats_and_compares_with_one_worker(runs_dir):
    text, rows, seg = build_report(str(runs_dir), target_loss=0.6)
    assert [r["strategy"] for r in rows] == ["single", "ps_async"]
    ps = rows[1]
    assert ps["n"] == 2
    assert ps["fovs_per_s"] == pytest.approx(16.0)
    assert ps["fovs_per_s_err"] == pytest.approx(math.sqrt(2))
    assert ps["speedup"] == pytest.approx(1.6)  # against single's 10 FOVs/s
    assert ps["efficiency"] == pytest.approx(0.8)
    assert ps["time_to_target_s"] == pytest.approx(9.0)  # trailing means 0.7, 0.5 (12 s) and 0.6 (6 s)
    assert ps["time_to_target_s_lo"] < 9.0 < ps["time_to_target_s_hi"]
    assert ps["fovs_to_target"] == pytest.approx(60)  # 80 and 40
    assert ps["final_loss"] == pytest.approx(0.5)  # means of (0.7, 0.3) and (0.6, 0.4)
    assert ps["beats_all_foreground"] == 2 and rows[0]["beats_all_foreground"] == 1
    assert ps["staleness_mean"] == pytest.approx(1.1)
    assert (ps["are"], ps["voi"]) == (pytest.approx(0.15), pytest.approx(2.5))
    assert "| ps_async (2 workers) | 0.1500 | 2.5000 |" in seg
    assert os.path.isfile(runs_dir / "report.csv") and os.path.isfile(runs_dir / "report.md")


def test_incomplete_runs_are_listed_but_never_results(runs_dir):
    text, rows, _ = build_report(str(runs_dir), target_loss=0.6)
    assert len(rows) == 2
    assert "## Incomplete runs" in text and "- crashed: incomplete" in text
    with open(runs_dir / "report.csv") as f:
        assert "crashed" not in f.read()


def test_target_not_reached_is_said_so(runs_dir):
    text, rows, _ = build_report(str(runs_dir), target_loss=0.1)
    assert all(r["time_to_target_s"] is None for r in rows)
    assert "not reached" in text


def test_records_are_read_typed_and_staleness_is_one_servers_view(tmp_path):
    updates = [UpdateRecord(rank=rank, time=0.1 * i, worker=i % 2, version=i, read=i - s, staleness=s)
               for i, s in enumerate([0, 1, 2]) for rank in (1, 2)]  # 2 servers: each gradient twice
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps({"kind": r.kind, **asdict(r)}) + "\n"
                     for r in updates + [eval_record(0, 1.0, 8, 0.5)])
    records = read_records(str(tmp_path))
    assert records.updates == updates and records.steps == [] and records.evals == [eval_record(0, 1.0, 8, 0.5)]
    assert staleness_values(records) == [0, 1, 2]


def test_verdicts_need_repeats_and_say_no_difference_when_the_interval_includes_one(tmp_path):
    curve = lambda t: [(t, 40, 0.7, 0.5), (2 * t, 80, 0.8, 0.3), (3 * t, 120, 0.9, 0.2)]
    for rep, (a, b) in enumerate([(10.0, 20.0), (11.0, 22.0), (9.5, 19.0)]):
        fake_run(tmp_path / "fast" / f"rep{rep}", "single", 1, 1, 10.0, curve(a), seed=rep)
        fake_run(tmp_path / "slow" / f"rep{rep}", "ps_async", 3, 2, 10.0, curve(b), seed=rep)
    text, _, _ = build_report(str(tmp_path), target_loss=0.35)
    line = next(l for l in text.splitlines() if l.startswith("- ps_async ×2 vs single ×1"))
    assert "is 2.00×" in line and line.endswith(": slower"), line
    fake_run(tmp_path / "same" / "rep0", "mpi_allreduce", 2, 2, 10.0, curve(9.0))
    fake_run(tmp_path / "same" / "rep1", "mpi_allreduce", 2, 2, 10.0, curve(12.0), seed=1)
    text, _, _ = build_report(str(tmp_path), target_loss=0.35)
    line = next(l for l in text.splitlines() if l.startswith("- mpi_allreduce ×2 vs single ×1"))
    assert "no difference" in line, line
    assert "time to held-out loss 0.35" in text and "Verdicts" in text


def test_a_run_without_status_complete_is_not_a_result(runs_dir):
    path = runs_dir / "single" / "summary.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({**summary, "status": "stalled"}))
    _, rows, _ = build_report(str(runs_dir), target_loss=0.6)
    assert [r["strategy"] for r in rows] == ["ps_async"]
