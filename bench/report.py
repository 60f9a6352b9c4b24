"""`ffnbench report DIR`: one row per experiment of a sweep (or any directory of runs).

Runs that differ only by repeat are one row: the mean over repeats, with the spread shown as
± the std over repeats when there are several (n > 1), else ± the run's own tf_cnn_benchmarks
uncertainty (std/sqrt(n) over steps). Speed-up and scaling efficiency are against the 1-worker run
with the same throughput-relevant config (model, data, per-worker batch, threads): of the same
strategy when there is one, else of the reference strategy (the first in display order). Runs are
loaded and grouped by bench/results.py.
"""
import csv
import math
import os

import numpy as np

from ffnbench import strategies
from ffnbench.bench.results import (aggregate_rates, baseline_rate, collect_runs, fields_text, group_runs, machine,
                                    sortable, target_f1, varying_fields)


# ---------------------------------------------------------------- the math (pure, tested)

def speedup(rate, rate_1worker):
    return rate / rate_1worker if rate_1worker else None


def efficiency(rate, rate_1worker, workers):
    """Scaling efficiency: speed-up over the 1-worker rate per worker (1.0 = ideal)."""
    s = speedup(rate, rate_1worker)
    return s / workers if s is not None else None


def time_to_target(eval_records, target):
    """(seconds, FOVs processed) at the first evaluation (EvalRecord) with F1 >= target, else (None, None)."""
    for r in sorted(eval_records, key=lambda r: r.time):
        if r.f1 is not None and r.f1 >= target:
            return r.time, r.fovs_total
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
            "_order": (strategies.order_key(first["strategy"]), first["workers"], first["ranks"],
                       [sortable(group[0].fields.get(k)) for k in keys]),
        })
    rows.sort(key=lambda row: row.pop("_order"))
    return rows


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
    target = target_f1(index, target)
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
