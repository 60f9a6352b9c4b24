"""summary.json from a run's records: the same math `ffnbench report` uses."""
import json
import os

import numpy as np


def read_records(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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
        if r["step"] >= warmup and r["step_s"] > 0:
            per_rank.setdefault(r["rank"], {})[r["step"]] = r["fovs"] / r["step_s"]
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


def summarize(run_dir, manifest, extra=None):
    records = read_records(run_dir)
    steps = [r for r in records if r["kind"] == "step"]
    evals = [r for r in records if r["kind"] == "eval"]
    warmup = manifest["config"]["run"]["timing_warmup_steps"]
    rate = rate_stats(throughput_samples(steps, warmup))
    updates = [r for r in records if r["kind"] == "update"]
    first_server = min((r["rank"] for r in updates), default=None)
    stale = [r["staleness"] for r in updates if r["rank"] == first_server]  # one shard's view
    comm = sum(r["comm_s"] for r in steps)
    total = sum(r["step_s"] for r in steps)
    summary = {
        "name": manifest["config"]["name"],
        "strategy": manifest["strategy"],
        "ranks": manifest["ranks"],
        "workers": manifest["workers"],
        "roles": manifest["role_counts"],
        "global_batch": manifest["workers"] * manifest["config"]["train"]["batch_size"],
        "steps": max((r["step"] for r in steps), default=-1) + 1,
        "fovs_total": int(sum(r["fovs"] for r in steps)),
        "wall_s": max((r["time"] for r in records), default=0.0),
        "fovs_per_s": rate,
        "comm_share": comm / total if total else 0.0,
        "step_time_s": {k: float(np.mean([r[k] for r in steps])) if steps else 0.0
                        for k in ("step_s", "compute_s", "comm_s", "data_s", "wait_s")},
        "final_eval": evals[-1] if evals else None,
        "staleness": staleness_stats(stale),
    }
    summary.update(extra or {})
    return summary


def write_json_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def fovs_line(rate):
    return f"FOVs/sec: {rate['mean']:.3f} +/- {rate['uncertainty']:.3f} (jitter = {rate['jitter']:.3f})"
