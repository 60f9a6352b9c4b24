"""`ffnbench report DIR`: one row per experiment of a sweep (or any directory of runs).

Runs that differ only by repeat are one row: the mean over repeats, with the spread shown as
± the std over repeats when there are several (n > 1), else ± the run's own tf_cnn_benchmarks
uncertainty (std/sqrt(n) over steps). Speed-up and scaling efficiency are against the 1-worker run
with the same throughput-relevant config (model, data, per-worker batch, threads): of the same
strategy when there is one, else of `single`.
"""
import csv
import json
import math
import os
import socket
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import yaml

from bench.config import flatten
from bench.summary import read_records

DEFAULT_TARGET_F1 = 0.8
#: fields that never change a result: repeats of one experiment may differ in these
NOT_THE_EXPERIMENT = ("name", "run.out", "run.progress", "run.timeout_s", "run.checkpoint_every")
#: fields that do not change per-worker throughput: the 1-worker baseline may differ in these
NOT_THROUGHPUT = NOT_THE_EXPERIMENT + ("strategy", "ranks", "strategy_options", "train.steps", "train.lr",
                                       "train.lr_scaling", "train.warmup_steps", "train.seed", "eval.")
STRATEGY_ORDER = ("single", "allreduce", "mpi_allreduce", "ps_sync", "ps_async", "emulated_sync")


# ---------------------------------------------------------------- the math (pure, tested)

def speedup(rate, rate_1worker):
    return rate / rate_1worker if rate_1worker else None


def efficiency(rate, rate_1worker, workers):
    """Scaling efficiency: speed-up over the 1-worker rate per worker (1.0 = ideal)."""
    s = speedup(rate, rate_1worker)
    return s / workers if s is not None else None


def time_to_target(eval_records, target):
    """(seconds, FOVs processed) at the first evaluation with F1 >= target, else (None, None)."""
    for r in sorted(eval_records, key=lambda r: r["time"]):
        if r.get("f1") is not None and r["f1"] >= target:
            return r["time"], r["fovs_total"]
    return None, None


def aggregate_rates(rates):
    """Mean FOVs/s over repeats, ± std over repeats (n > 1) or the single run's uncertainty."""
    means = [r["mean"] for r in rates]
    if len(means) == 1:
        return means[0], rates[0]["uncertainty"]
    return float(np.mean(means)), float(np.std(means, ddof=1))


# ---------------------------------------------------------------- loading runs

@dataclass
class RunData:
    """One run directory; complete only if it has summary.json."""
    run_dir: str
    run_id: str
    status: str = "incomplete"
    error: str = None
    summary: dict = None
    manifest: dict = None
    config: dict = None
    seg: dict = None  # eval.json (ARE, VOI), written by segmentation evaluation when run
    fields: dict = field(default_factory=dict)  # flattened config

    @property
    def complete(self):
        return self.summary is not None

    @cached_property
    def records(self):
        return read_records(self.run_dir)

    @cached_property
    def evals(self):
        return sorted((r for r in self.records if r["kind"] == "eval"), key=lambda r: r["time"])

    @cached_property
    def emulated(self):
        """N logical workers in one process: its FOVs/s is one process's, not N workers'."""
        return bool((self.manifest or {}).get("emulated")
                    or any(r.get("emulated") for r in self.records if r["kind"] == "step"))

    @property
    def strategy(self):
        return self.summary["strategy"] if self.complete else self.fields.get("strategy", "?")

    @property
    def workers(self):
        return self.summary["workers"]


def _read_json(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def flat_fields(cfg):
    """Flattened config with strategy_options spread out as strategy_options.KEY."""
    flat = flatten(cfg or {})
    for key, value in (flat.pop("strategy_options", None) or {}).items():
        flat[f"strategy_options.{key}"] = value
    return flat


def load_run(run_dir, run_id=None, status=None, error=None):
    run = RunData(run_dir=run_dir, run_id=run_id or os.path.basename(run_dir.rstrip(os.sep)))
    run.summary = _read_json(os.path.join(run_dir, "summary.json"))
    run.manifest = _read_json(os.path.join(run_dir, "manifest.json"))
    run.seg = _read_json(os.path.join(run_dir, "eval.json"))
    cfg_path = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            run.config = yaml.safe_load(f)
    elif run.manifest:
        run.config = run.manifest["config"]
    run.fields = flat_fields(run.config)
    run.status = "complete" if run.complete else (status if status in ("failed", "pending") else "incomplete")
    run.error = error
    return run


def find_run_dirs(directory):
    """Directories holding a run (config.yaml or summary.json), not looking inside a run."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        if "summary.json" in files or "config.yaml" in files:
            found.append(root)
            dirs[:] = []
    return found


def collect_runs(directory):
    """(runs, index.json or None): the sweep's runs in sweep order, or every run below DIR."""
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory")
    index = _read_json(os.path.join(directory, "index.json"))
    if index is not None:
        runs = [load_run(e["run_dir"] if os.path.isdir(e["run_dir"]) else os.path.join(directory, e["id"]),
                         e["id"], e["status"], e.get("error")) for e in index["runs"]]
    else:
        runs = [load_run(d, os.path.relpath(d, directory)) for d in find_run_dirs(directory)]
    if not runs:
        raise ValueError(f"{directory}: no runs found (no index.json and no run directories below it)")
    return runs, index


def machine(runs):
    """'host (N cores)' for the runs' hosts; cores are known for this host or from the manifest."""
    here = socket.gethostname()
    described = []
    for host in sorted({r.manifest["host"] for r in runs if r.manifest and r.manifest.get("host")}):
        cores = next((r.manifest.get("cores") for r in runs if r.manifest and r.manifest.get("host") == host
                      and r.manifest.get("cores")), None)
        cores = cores or (os.cpu_count() if host == here else None)
        described.append(f"{host} ({cores} cores)" if cores else host)
    return ", ".join(described) or "unknown host"


# ---------------------------------------------------------------- grouping

def ignored(key, ignore):
    """Whether a flattened field is in `ignore` (entries ending in '.' cover a whole section)."""
    return any(key == i or key.startswith(i if i.endswith(".") else i + ".") for i in ignore)


def _key(run, ignore):
    kept = {k: v for k, v in run.fields.items() if not ignored(k, ignore)}
    return json.dumps(kept, sort_keys=True, default=str)


def experiment_key(run):
    return _key(run, NOT_THE_EXPERIMENT)


def throughput_key(run):
    return _key(run, NOT_THROUGHPUT)


def varying_fields(runs, exclude=("strategy", "ranks")):
    """Config fields whose value differs between the runs (what tells experiments apart)."""
    keys = sorted({k for r in runs for k in r.fields})
    return [k for k in keys if not ignored(k, tuple(exclude) + NOT_THE_EXPERIMENT)
            and len({json.dumps(r.fields.get(k), sort_keys=True, default=str) for r in runs}) > 1]


def fields_text(run, keys):
    """['batch_size=4', 'lr=0.001'] for the given fields, by leaf name unless two leaves collide."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    parts = []
    for k, leaf in zip(keys, leaves):
        name, value = (leaf if leaves.count(leaf) == 1 else k), run.fields.get(k)
        parts.append(f"{name}={format(value, 'g') if isinstance(value, float) else value}")
    return parts


def group_runs(runs):
    """Complete runs grouped by experiment (repeats together), in order of first appearance."""
    groups = {}
    for r in runs:
        if r.complete:
            groups.setdefault(experiment_key(r), []).append(r)
    return list(groups.values())


def baseline_rate(group, complete_runs):
    """(FOVs/s of the 1-worker baseline, its strategy) for a group, or (None, None)."""
    key = throughput_key(group[0])
    candidates = [r for r in complete_runs if r.workers == 1 and throughput_key(r) == key]
    for wanted in (group[0].strategy, "single"):
        chosen = [r for r in candidates if r.strategy == wanted]
        if chosen:
            return aggregate_rates([r.summary["fovs_per_s"] for r in chosen])[0], wanted
    return None, None


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def report_rows(runs, target):
    """One dict per experiment, every number unformatted (the CSV)."""
    complete = [r for r in runs if r.complete]
    keys = varying_fields(complete)
    rows = []
    for group in group_runs(runs):
        first = group[0].summary
        rate, err = aggregate_rates([r.summary["fovs_per_s"] for r in group])
        # an emulated run computes its workers one after another: no speed-up to speak of
        base, base_strategy = (None, None) if group[0].emulated else baseline_rate(group, complete)
        reached = [time_to_target(r.evals, target) for r in group]
        reached = [t for t in reached if t[0] is not None]
        f1s = [(r.summary["final_eval"] or {}).get("f1") for r in group]
        f1s = [f for f in f1s if f is not None]
        stale = [r.summary["staleness"] for r in group if r.summary.get("staleness")]
        rows.append({
            "config": ",".join(fields_text(group[0], keys)),
            "strategy": first["strategy"], "ranks": first["ranks"], "workers": first["workers"],
            "global_batch": first["global_batch"], "n": len(group),
            "fovs_per_s": rate, "fovs_per_s_err": err,
            "speedup": speedup(rate, base), "efficiency": efficiency(rate, base, first["workers"]),
            "baseline": f"{base_strategy} ×1" if base_strategy else None,
            "time_to_target_s": _mean([t for t, _ in reached]), "fovs_to_target": _mean([f for _, f in reached]),
            "reached": len(reached),
            "final_f1": _mean(f1s), "final_f1_std": float(np.std(f1s, ddof=1)) if len(f1s) > 1 else None,
            "staleness_mean": _mean([s["mean"] for s in stale]), "staleness_p99": _mean([s["p99"] for s in stale]),
            "comm_share": _mean([r.summary["comm_share"] for r in group]),
            "wall_s": _mean([r.summary["wall_s"] for r in group]),
            "are": _mean([(r.seg or {}).get("are") for r in group]),
            "voi": _mean([(r.seg or {}).get("voi") for r in group]),
            "run_dirs": ";".join(r.run_dir for r in group),
            "_order": (strategy_sort_key(first["strategy"]), first["workers"], first["ranks"],
                       [sortable(group[0].fields.get(k)) for k in keys]),
        })
    rows.sort(key=lambda row: row.pop("_order"))
    return rows


def sortable(value):
    """Numbers in numeric order, anything else after them by its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, json.dumps(value, sort_keys=True, default=str))


def strategy_sort_key(name):
    """Known strategies in a fixed order (simplest first), then the rest by name."""
    return (STRATEGY_ORDER.index(name), "") if name in STRATEGY_ORDER else (len(STRATEGY_ORDER), name)


# ---------------------------------------------------------------- formatting

def decimals_for(x):
    """Enough decimals for 3 significant digits of x (at most 4)."""
    if not x:
        return 2
    return int(min(4, max(0, 2 - math.floor(math.log10(abs(x))))))


def _num(x, fmt):
    return "" if x is None else format(x, fmt)


def format_rate(row):
    d = decimals_for(row["fovs_per_s"])
    return f"{row['fovs_per_s']:.{d}f} ± {row['fovs_per_s_err']:.{d}f}"


def format_target(row, value, fmt):
    if not row["reached"]:
        return "not reached"
    partial = f" ({row['reached']}/{row['n']})" if row["reached"] < row["n"] else ""
    return format(value, fmt) + partial


COLUMNS = ("config", "strategy", "ranks", "workers", "global batch", "FOVs/s", "n", "speed-up", "efficiency",
           "vs", "t→F1 (s)", "FOVs→F1", "final F1", "stale mean", "stale p99", "comm share", "ARE", "VOI")


def markdown_cells(row):
    f1 = _num(row["final_f1"], ".3f") + (f" ± {row['final_f1_std']:.3f}" if row["final_f1_std"] is not None else "")
    return [row["config"], row["strategy"], row["ranks"], row["workers"], row["global_batch"], format_rate(row),
            row["n"], _num(row["speedup"], ".2f") or "n/a", _num(row["efficiency"], ".0%") or "n/a",
            row["baseline"] or "", format_target(row, row["time_to_target_s"], ".1f"),
            format_target(row, row["fovs_to_target"], ".0f"), f1, _num(row["staleness_mean"], ".2f"),
            _num(row["staleness_p99"], ".0f"), _num(row["comm_share"], ".0%"), _num(row["are"], ".4f"),
            _num(row["voi"], ".4f")]


def markdown_table(rows):
    """The table; the config column only when some field other than strategy/ranks varies."""
    skip = 0 if any(r["config"] for r in rows) else 1
    lines = ["| " + " | ".join(COLUMNS[skip:]) + " |", "|" + "---|" * (len(COLUMNS) - skip)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in markdown_cells(r)[skip:]) + " |" for r in rows])


def seg_table(rows):
    """`method | ARE | VOI`, as in the paper's segmentation table, for experiments with eval.json."""
    lines = ["| method | ARE | VOI |", "|---|---|---|"]
    for r in rows:
        if r["are"] is not None or r["voi"] is not None:
            details = ", ".join(filter(None, [f"{r['workers']} workers", r["config"]]))
            method = f"{r['strategy']} ({details})"
            lines.append(f"| {method} | {_num(r['are'], '.4f') or '—'} | {_num(r['voi'], '.4f') or '—'} |")
    return "\n".join(lines) if len(lines) > 2 else None


def incomplete_lines(runs):
    return [f"- {r.run_id}: {r.status}" + (f" ({r.error})" if r.error else "") for r in runs if not r.complete]


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["config"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def build_report(directory, target=None):
    """(markdown text, rows, segmentation table or None); writes DIR/report.csv and DIR/report.md."""
    runs, index = collect_runs(directory)
    target = target or (index or {}).get("report", {}).get("target_f1") or DEFAULT_TARGET_F1
    rows = report_rows(runs, target)
    title = index["name"] if index else os.path.basename(os.path.abspath(directory))
    complete = sum(r.complete for r in runs)
    parts = [f"# {title}: {complete} of {len(runs)} runs complete, on {machine(runs)}", "",
             f"FOVs/s: mean ± std over repeats when n > 1, else ± std/sqrt(steps) of the run. Speed-up and "
             f"efficiency (= speed-up / workers) are against the 1-worker run named in `vs`. "
             f"t→F1 and FOVs→F1: first held-out evaluation with F1 >= {target:g}.", ""]
    parts.append(markdown_table(rows) if rows else "No complete runs.")
    seg = seg_table(rows)
    if seg:
        parts += ["", "## Segmentation", "", seg]
    missing = incomplete_lines(runs)
    if missing:
        parts += ["", "## Incomplete runs (no summary.json; not results)", ""] + missing
    text = "\n".join(parts) + "\n"
    with open(os.path.join(directory, "report.md"), "w") as f:
        f.write(text)
    write_csv(os.path.join(directory, "report.csv"), rows)
    return text, rows, seg
