import json
import os

import pytest

STEP_KEYS = {"kind", "rank", "step", "time", "fovs", "loss", "compute_s", "comm_s", "data_s"}
EVAL_KEYS = {"kind", "step", "time", "fovs_total", "loss", "loss_sem", "accuracy", "precision", "recall", "f1",
             "eval_s"}


@pytest.mark.slow
def test_single_smoke_run_learns_and_follows_schema(run_cli, tmp_path):
    out = tmp_path / "run"
    r = run_cli("run", "configs/smoke.yaml", "--set", "train.steps=40", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "FOVs/sec:" in r.stdout and "+/-" in r.stdout and "jitter" in r.stdout
    records = [json.loads(l) for l in open(out / "metrics.jsonl")]
    steps = [x for x in records if x["kind"] == "step"]
    evals = [x for x in records if x["kind"] == "eval"]
    assert len(steps) == 40 and all(STEP_KEYS <= set(s) for s in steps)
    assert evals and all(EVAL_KEYS <= set(e) for e in evals)
    first, last = [sum(s["loss"] for s in part) / 10 for part in (steps[:10], steps[-10:])]
    assert last < first, (first, last)
    manifest = json.load(open(out / "manifest.json"))
    for key in ("config", "strategy", "ranks", "roles", "params", "python", "tensorflow", "horovod", "mpi4py",
                "mpi", "host", "start_time", "git_commit"):
        assert key in manifest
    summary = json.load(open(out / "summary.json"))
    for key in ("strategy", "ranks", "workers", "global_batch", "steps", "fovs_total", "wall_s", "fovs_per_s",
                "final_eval", "mfu", "baselines"):
        assert key in summary
    assert summary["fovs_total"] == 80 and summary["fovs_per_s"]["mean"] > 0
    assert {"mean", "uncertainty", "jitter"} <= set(summary["fovs_per_s"])
    assert os.path.exists(out / "checkpoints" / "checkpoint")
    assert os.path.exists(out / "trace.rank0.json")
    assert summary["status"] == "complete" and 0 < summary["mfu"] <= 1
    events = os.listdir(out / "tensorboard")
    assert events and all(e.startswith("events.out.tfevents") for e in events)
