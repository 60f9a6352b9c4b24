"""summary.json and the resume rule, on run directories written here (no training)."""
import json
from dataclasses import asdict

import numpy as np
import pytest

from ffnbench.bench.run import summary
from ffnbench.bench.analyse.results import read_records
from ffnbench.strategies.records import CommitRecord, EvalRecord, ResumeRecord, StepRecord, UpdateRecord


def step(rank, i, fovs=4):
    return StepRecord(rank=rank, step=i, time=float(i), fovs=fovs, loss=0.5, model_version=i + 1, compute_s=0.1,
                      comm_s=0.0, data_s=0.0, wait_s=0.0, step_s=0.1)


def write(run_dir, records):
    with open(run_dir / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps({"kind": r.kind, **asdict(r)}) + "\n" for r in records)


def manifest(nodes):
    config = {"name": "t", "run": {"timing_warmup_steps": 0}, "train": {"batch_size": 4, "steps": 10,
                                                                        "precision": "float32"},
              "model": {"fov": [9, 9, 9], "depth": 2, "features": 8}}
    return {"config": config, "strategy": "allreduce", "ranks": 2, "workers": 2, "role_counts": {"worker": 2},
            "params": 100, "peak": {"flops_per_s": {"float32": 1e11, "bfloat16": 4e11}, "nodes": nodes}}


@pytest.mark.parametrize("nodes", [1, 2])
def test_mfu_is_against_the_peak_of_every_node_of_the_job(tmp_path, nodes, capsys):
    write(tmp_path, [step(r, i) for i in range(10) for r in (0, 1)] +
          [EvalRecord(step=10, time=10.0, fovs_total=80, loss=0.5, loss_sem=0.01, accuracy=0.9, precision=0.5,
                      recall=0.5, f1=0.5, eval_s=0.1)])
    result = summary.write_complete(str(tmp_path), manifest(nodes), np.array([0.0, 1.0, 1.0, 0.0]))
    assert result["peak_flops_per_s"] == pytest.approx(1e11 * nodes)
    assert result["mfu"] == pytest.approx(result["model_flops_per_s"] / (1e11 * nodes))
    assert result["fovs_per_s"]["mean"] == pytest.approx(80.0)  # 2 workers x 4 FOVs / 0.1 s
    assert json.load(open(tmp_path / "summary.json"))["status"] == "complete"
    assert "FOVs/sec: 80.000" in capsys.readouterr().out


def test_a_resume_supersedes_what_each_rank_recorded_after_its_commit(tmp_path):
    """Rank 0 (a server) and rank 1 (a worker) saved the checkpoint after step 2; the first attempt
    went on to step 4 before it was stopped; the second resumes from step 2 and finishes."""
    first = [step(1, 0), step(1, 1), UpdateRecord(0, 0.5, 1, 0, 0, 0), UpdateRecord(0, 1.5, 1, 1, 1, 0),
             CommitRecord(0, 2, 2.0), CommitRecord(1, 2, 2.0),
             step(1, 2), step(1, 3), UpdateRecord(0, 2.5, 1, 2, 2, 0), UpdateRecord(0, 3.5, 1, 3, 3, 0)]
    second = [ResumeRecord(0, 2, 2.0), ResumeRecord(1, 2, 2.0), step(1, 2), step(1, 3),
              UpdateRecord(0, 2.5, 1, 2, 2, 0), UpdateRecord(0, 3.5, 1, 3, 3, 0)]
    write(tmp_path, first + second)
    records = read_records(str(tmp_path))
    assert [s.step for s in records.steps] == [0, 1, 2, 3]
    assert [u.version for u in records.updates] == [0, 1, 2, 3]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "rank": 1, "st')  # cut short by an interruption: skipped
    assert [s.step for s in read_records(str(tmp_path)).steps] == [0, 1, 2, 3]


def test_a_lost_worker_that_never_reached_the_commit_keeps_its_records(tmp_path):
    """An elastic ring rolls a lost worker back with the others; one killed before the commit has no
    record past it to drop."""
    write(tmp_path, [CommitRecord(1, 0, 0.0), step(1, 0), step(1, 1), ResumeRecord(1, 2, 2.0)])
    assert [s.step for s in read_records(str(tmp_path)).steps] == [0, 1]
