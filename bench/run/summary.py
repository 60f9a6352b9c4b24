"""summary.json, assembled here only: a run's records reduced with the same math `ffnbench report`
uses, with the status it ended in (complete only when rank 0 has every rank's records)."""
import json
import os
from dataclasses import asdict

import numpy as np

from ffnbench.bench.run.peak import PEAK_DTYPE
from ffnbench.bench.analyse.results import COMPLETE, read_records, staleness_values, strict_json
from ffnbench.strategies.records import EvalRecord

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


def write_complete(run_dir, manifest, heldout_labels):
    """summary.json of a finished run (rank 0, once every rank's records are in): the records'
    summary, its baselines and MFU; printed as tf_cnn_benchmarks prints its own."""
    from ffnbench.model.network import train_flops_per_fov
    cfg = manifest["config"]
    result = {"status": COMPLETE, **summarize(run_dir, manifest), "params": manifest["params"]}
    p = float(np.mean(heldout_labels > 0.5))
    labels = heldout_labels.astype(np.float64)
    q = labels.mean()  # the best constant prediction for the soft labels, and its cross-entropy
    loss_constant = float(-np.mean(labels * np.log(q) + (1 - labels) * np.log(1 - q)))
    result["baselines"] = {"f1_all_background": 0.0, "f1_all_foreground": 2 * p / (1 + p),
                           "loss_constant": loss_constant}
    m = cfg["model"]
    peak_dtype = PEAK_DTYPE[cfg["train"]["precision"]]
    peak = manifest["peak"]["flops_per_s"][peak_dtype] * manifest["peak"]["nodes"]
    result["model_flops_per_s"] = result["fovs_per_s"]["mean"] * train_flops_per_fov(m["fov"], m["depth"],
                                                                                     m["features"])
    result["peak_flops_per_s"] = peak
    result["peak_dtype"] = peak_dtype
    result["mfu"] = result["model_flops_per_s"] / peak  # never clamped: above 1, the denominator is wrong
    if cfg["train"].get("compute") == "emulated":  # no pass ran: neither FLOPs nor learning to speak of
        result.update(compute="emulated", model_flops_per_s=None, mfu=None)
    write_json_atomic(os.path.join(run_dir, "summary.json"), result)
    print_summary(result)
    return result


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


def print_summary(s):
    fe = s["final_eval"] or {}
    print(f"{s['strategy']} ranks={s['ranks']} workers={s['workers']} global_batch={s['global_batch']} "
          f"steps={s['steps']} FOVs={s['fovs_total']} wall={s['wall_s']:.1f}s")
    if fe:
        b = s["baselines"]
        print(f"held-out: loss={fe['loss']:.4f} F1={fe['f1']:.3f} precision={fe['precision']:.3f} "
              f"recall={fe['recall']:.3f} (baselines F1: all-background {b['f1_all_background']:.3f}, "
              f"all-foreground {b['f1_all_foreground']:.3f})")
    for w in s["lost_workers"]:
        print(f"lost worker: rank {w['worker']} at {w['time']:.1f}s after {w['steps_done']} steps; the others went "
              f"on ({w['fovs_not_trained']} of its FOVs not trained)")
    if s.get("staleness"):
        st = s["staleness"]
        print(f"staleness: mean={st['mean']:.2f} p50={st['p50']:.0f} p99={st['p99']:.0f} max={st['max']}")
    if s.get("compute") == "emulated":
        print("model: emulated compute (each pass a timed wait): no FLOPs, no MFU, and no convergence to read")
    else:
        print(f"model: {s['model_flops_per_s'] / 1e9:.2f} GFLOP/s = {100 * s['mfu']:.1f}% of the job's matmul peak "
              f"{s['peak_dtype']} {s['peak_flops_per_s'] / 1e9:.1f} GFLOP/s (MFU)")
    stalls = s["stalled_steps"]
    if stalls["count"]:
        print(f"warning: {stalls['count']} step(s) took over {STALL_FACTOR:g}x the median step "
              f"(slowest {stalls['max_step_s']:.1f}s); the run's FOVs / training time is "
              f"{s['fovs_per_train_s']:.1f} FOVs/s")
    print(fovs_line(s["fovs_per_s"]))
