"""summary.json from a run's records: the same math `ffnbench report` uses."""
import json
import os
from dataclasses import asdict

import numpy as np

from ffnbench.bench.results import read_records, staleness_values
from ffnbench.strategies.base import EvalRecord

STEP_TIMES = ("step_s", "compute_s", "comm_s", "data_s", "wait_s")


def rate_stats(samples):
    """tf_cnn_benchmarks' definitions: mean, uncertainty = std/sqrt(n), jitter = 1.4826 * MAD."""
    x = np.asarray(samples, float)
    if x.size == 0:
        return {"mean": 0.0, "uncertainty": 0.0, "jitter": 0.0, "n": 0}
    unc = float(np.std(x) / np.sqrt(x.size)) if x.size > 1 else 0.0
    return {"mean": float(np.mean(x)), "uncertainty": unc,
            "jitter": float(1.4826 * np.median(np.abs(x - np.median(x)))), "n": int(x.size)}


def throughput_samples(steps, warmup):
    """Aggregate FOVs/s per step index: the sum over workers of fovs / step_s, warm-up excluded.

    Only step indices every worker reached are used, so a straggler's missing tail cannot
    inflate the rate.
    """
    per_rank = {}
    for r in steps:
        if r.step >= warmup and r.step_s > 0:
            per_rank.setdefault(r.rank, {})[r.step] = r.fovs / r.step_s
    if not per_rank:
        return []
    common = set.intersection(*(set(v) for v in per_rank.values()))
    return [sum(v[s] for v in per_rank.values()) for s in sorted(common)]


def staleness_stats(values):
    x = np.asarray(values, int)
    if x.size == 0:
        return None
    hist = np.bincount(x)
    return {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)), "p99": float(np.percentile(x, 99)),
            "max": int(x.max()), "histogram": hist.tolist(), "n": int(x.size)}


def summarize(run_dir, manifest):
    """summary.json of a finished run: its records reduced to the numbers the report shows."""
    records = read_records(run_dir)
    steps, evals = records.steps, records.evals
    warmup = manifest["config"]["run"]["timing_warmup_steps"]
    fovs_total = int(sum(r.fovs for r in steps))
    train_s = max((r.time for r in steps), default=0.0)  # training time: pauses excluded
    comm = sum(r.comm_s for r in steps)
    total = sum(r.step_s for r in steps)
    return {
        "name": manifest["config"]["name"],
        "strategy": manifest["strategy"],
        "ranks": manifest["ranks"],
        "workers": manifest["workers"],
        "roles": manifest["role_counts"],
        "global_batch": manifest["workers"] * manifest["config"]["train"]["batch_size"],
        "steps": max((r.step for r in steps), default=-1) + 1,
        "fovs_total": fovs_total,
        "wall_s": max((r.time for kind in records for r in kind), default=0.0),
        "train_s": train_s,
        "fovs_per_train_s": fovs_total / train_s if train_s else 0.0,
        "eval_s": float(sum(e.eval_s for e in evals)),
        "fovs_per_s": rate_stats(throughput_samples(steps, warmup)),
        "comm_share": comm / total if total else 0.0,
        "step_time_s": {k: float(np.mean([getattr(r, k) for r in steps])) if steps else 0.0 for k in STEP_TIMES},
        "final_eval": {"kind": EvalRecord.kind, **asdict(evals[-1])} if evals else None,
        "staleness": staleness_stats(staleness_values(records)),
    }


def write_json_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def fovs_line(rate):
    return f"FOVs/sec: {rate['mean']:.3f} +/- {rate['uncertainty']:.3f} (jitter = {rate['jitter']:.3f})"
