"""summary.json from a run's records: the same math `ffnbench report` uses."""
import json
import os
from dataclasses import asdict

import numpy as np

from ffnbench.bench.results import read_records, staleness_values, strict_json
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


#: a step this many times the median step is flagged as a stall: a mean rate would hide it
STALL_FACTOR = 10.0


def stall_stats(steps):
    """Steps slower than STALL_FACTOR x the median step: how many, and the slowest."""
    times = np.array([r.step_s for r in steps], float)
    if times.size == 0:
        return {"bound_s": 0.0, "count": 0, "max_step_s": 0.0, "steps": []}
    bound = STALL_FACTOR * float(np.median(times))
    slow = [{"rank": r.rank, "step": r.step, "step_s": r.step_s} for r in steps if r.step_s > bound]
    return {"bound_s": bound, "count": len(slow), "max_step_s": float(times.max()), "steps": slow[:20]}


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
        "stalled_steps": stall_stats([r for r in steps if r.step >= warmup]),  # the first steps trace graphs
        "step_time_s": {k: float(np.mean([getattr(r, k) for r in steps])) if steps else 0.0 for k in STEP_TIMES},
        "final_eval": {"kind": EvalRecord.kind, **asdict(evals[-1])} if evals else None,
        "staleness": staleness_stats(staleness_values(records)),
        "lost_workers": lost_workers(records, manifest),
    }


def lost_workers(records, manifest):
    """The workers the run went on without: when each was lost, the steps it did, the FOVs it did not."""
    t = manifest["config"]["train"]
    out = []
    for worker in sorted({r.worker for r in records.lost}):
        first = min((r for r in records.lost if r.worker == worker), key=lambda r: r.time)
        done = sum(1 for r in records.steps if r.rank == worker)
        out.append({"worker": worker, "time": first.time, "steps_done": done,
                    "fovs_not_trained": (t["steps"] - done) * t["batch_size"]})
    return out


def write_failure(run_dir, status, error):
    """summary.json of a run that did not complete: how it ended, and what its records reached."""
    result = {"status": status, "error": error}
    manifest_path = os.path.join(run_dir, "manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        try:
            result.update(summarize(run_dir, manifest))
        except (ValueError, KeyError, OSError) as e:
            result["records_error"] = str(e)
    write_json_atomic(os.path.join(run_dir, "summary.json"), result)


def write_json_atomic(path, data):
    """Strict JSON (non-finite numbers as null), replaced in one rename so no reader sees half of it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(strict_json(data, indent=2))
    os.replace(tmp, path)


def fovs_line(rate):
    return f"FOVs/sec: {rate['mean']:.3f} +/- {rate['uncertainty']:.3f} (jitter = {rate['jitter']:.3f})"
