"""`ffnbench report DIR`: one row per experiment of a sweep (or any directory of runs), and one verdict
line per pair of experiments.

Runs that differ only by repeat (train.seed) are one row: the mean over repeats with its 95 % t
interval (bench/analyse/stats.py). Speed-up and scaling efficiency are against the 1-worker run
with the same throughput-relevant config (model, data, per-worker batch, threads): of the same
strategy when there is one, else of the reference strategy (the first in display order). Runs are
loaded and grouped by bench/analyse/results.py.
"""
import csv
import math
import os

import numpy as np

from ffnbench import strategies
from ffnbench.bench.analyse.results import (aggregate_rates, baseline_rate, collect_runs, fields_text, group_runs, machine,
                                    sortable, varying_fields)
from ffnbench.bench.analyse.stats import CONFIDENCE, WINDOW, final_value, first_crossing, mean_ci, ratio_ci, verdict


# ---------------------------------------------------------------- the math (pure, tested)

def speedup(rate, rate_1worker):
    return rate / rate_1worker if rate_1worker else None


def efficiency(rate, rate_1worker, workers):
    """Scaling efficiency: speed-up over the 1-worker rate per worker (1.0 = ideal)."""
    s = speedup(rate, rate_1worker)
    return s / workers if s is not None else None


def time_to_target(eval_records, target):
    """(training seconds, FOVs processed) when the trailing mean of the held-out loss first reaches
    `target` (bench/analyse/stats.py's first_crossing), else (None, None)."""
    evals = sorted(eval_records, key=lambda r: r.time)
    when = first_crossing([e.time for e in evals], [e.loss for e in evals], target)
    if when is None:
        return None, None
    return when, next(e.fovs_total for e in evals if e.time == when)


def default_target_loss(runs):
    """A held-out loss every complete run reaches by its end: the highest of their final values."""
    finals = [final_value([e.loss for e in r.evals]) for r in runs if r.complete and r.evals]
    return max(finals) if finals else None


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _values(group, get):
    return [v for v in (get(r) for r in group) if v is not None]


def _interval(prefix, values):
    mean, lo, hi = mean_ci(values) if values else (None, None, None)
    return {prefix: mean, f"{prefix}_lo": lo, f"{prefix}_hi": hi}


def report_rows(runs, target):
    """One dict per experiment (repeats together), every number unformatted (the CSV).

    Each repeat is reduced to robust numbers (final = mean of its last evaluations; time to target
    from the trailing mean), then the experiment gets their mean and 95 % t interval."""
    complete = [r for r in runs if r.complete]
    keys = varying_fields(complete)
    rows = []
    for group in group_runs(runs):
        first = group[0].summary
        rates = [r.summary["fovs_per_s"]["mean"] for r in group]
        # an emulated run computes its workers one after another: no speed-up to speak of
        base, base_strategy = (None, None) if group[0].emulated else baseline_rate(group, complete)
        emulated_compute = group[0].compute_emulated  # no pass ran: nothing learnt to report
        reached = [time_to_target(r.evals, target) for r in group] if target is not None else []
        times = [t for t, _ in reached if t is not None]
        stale = [r.summary["staleness"] for r in group if r.summary.get("staleness")]
        rows.append({
            "config": ",".join(fields_text(group[0], keys)),
            "strategy": first["strategy"], "ranks": first["ranks"], "workers": first["workers"],
            "global_batch": first["global_batch"], "n": len(group),
            **_interval("fovs_per_s", rates), "fovs_per_s_err": aggregate_rates([r.summary["fovs_per_s"] for r in group])[1],
            "speedup": speedup(float(np.mean(rates)), base), "efficiency": efficiency(float(np.mean(rates)), base, first["workers"]),
            "baseline": f"{base_strategy} ×1" if base_strategy else None,
            **_interval("time_to_target_s", times), "reached": len(times),
            "fovs_to_target": _mean([f for t, f in reached if t is not None]),
            **_interval("final_loss", _values(group, lambda r: final_value([e.loss for e in r.evals]))),
            **_interval("final_f1", _values(group, lambda r: final_value([e.f1 for e in r.evals]))),
            "f1_all_foreground": None if emulated_compute else _mean([r.summary["baselines"]["f1_all_foreground"]
                                                                      for r in group]),
            "loss_constant": None if emulated_compute else _mean([r.summary["baselines"].get("loss_constant")
                                                                  for r in group]),
            "compute": "emulated" if emulated_compute else "real",
            "beats_all_foreground": sum(final_value([e.f1 for e in r.evals]) > r.summary["baselines"]["f1_all_foreground"]
                                        for r in group if r.evals),
            "mfu": _mean([r.summary["mfu"] for r in group]),
            "staleness_mean": _mean([s["mean"] for s in stale]), "staleness_p99": _mean([s["p99"] for s in stale]),
            "comm_share": _mean([r.summary["comm_share"] for r in group]),
            "train_s": _mean([r.summary["train_s"] for r in group]),
            "are": _mean([(r.seg or {}).get("are") for r in group]),
            "voi": _mean([(r.seg or {}).get("voi") for r in group]),
            "_times": times,
            "run_dirs": ";".join(r.run_dir for r in group),
            "_order": (strategies.order_key(first["strategy"]), first["workers"], first["ranks"],
                       [sortable(group[0].fields.get(k)) for k in keys]),
        })
    rows.sort(key=lambda row: row.pop("_order"))
    return rows


def row_label(row):
    return " ".join(filter(None, [row["strategy"], f"×{row['workers']}", f"({row['config']})" if row["config"] else ""]))


def verdicts(rows, target):
    """One line per pair of experiments: the ratio of their times to the target loss, its 95 %
    interval (Welch, on log times), and whether it excludes 1."""
    lines = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            pair = f"{row_label(b)} vs {row_label(a)}"
            short = [r for r in (a, b) if r["reached"] < r["n"]]
            if short:
                lines.append(f"- {pair}: not comparable: " + "; ".join(
                    f"{row_label(r)} reached the target in {r['reached']} of {r['n']} runs" for r in short))
                continue
            ratio, lo, hi = ratio_ci(b["_times"], a["_times"])
            interval = f" [{lo:.2f}, {hi:.2f}]" if lo is not None else ""
            lines.append(f"- {pair}: time to held-out loss {target:.4g} is {ratio:.2f}×{interval} "
                         f"({b['n']} vs {a['n']} runs): {verdict(ratio, lo, hi)}")
    return lines


# ---------------------------------------------------------------- formatting

def decimals_for(x):
    """Enough decimals for 3 significant digits of x (at most 4)."""
    if not x:
        return 2
    return int(min(4, max(0, 2 - math.floor(math.log10(abs(x))))))


def _num(x, fmt):
    return "" if x is None else format(x, fmt)


def format_interval(row, key, fmt=None):
    """'44.6 [43.9, 45.3]': mean and 95 % interval; the mean alone for one value."""
    mean, lo, hi = row[key], row[f"{key}_lo"], row[f"{key}_hi"]
    if mean is None:
        return ""
    fmt = fmt or f".{decimals_for(mean)}f"
    return format(mean, fmt) + (f" [{lo:{fmt}}, {hi:{fmt}}]" if lo is not None else "")


def format_target(row):
    if row["compute"] == "emulated":
        return "n/a (emulated compute)"
    if not row["reached"]:
        return "not reached"
    partial = f" ({row['reached']}/{row['n']} reached)" if row["reached"] < row["n"] else ""
    return format_interval(row, "time_to_target_s", ".1f") + partial


COLUMNS = ("config", "strategy", "ranks", "workers", "global batch", "n", "FOVs/s", "speed-up", "efficiency",
           "vs", "MFU", "t→loss (s)", "FOVs→loss", "final loss", "constant loss", "final F1", "F1 > all-fg",
           "stale mean",
           "stale p99", "comm share", "ARE", "VOI")


def markdown_cells(row):
    fg = f"{row['beats_all_foreground']}/{row['n']} (all-fg {row['f1_all_foreground']:.3f})" \
        if row["f1_all_foreground"] is not None else ""
    return [row["config"], row["strategy"], row["ranks"], row["workers"], row["global_batch"], row["n"],
            format_interval(row, "fovs_per_s"), _num(row["speedup"], ".2f") or "n/a",
            _num(row["efficiency"], ".0%") or "n/a", row["baseline"] or "", _num(row["mfu"], ".1%"),
            format_target(row), _num(row["fovs_to_target"], ".0f") if row["reached"] else "",
            format_interval(row, "final_loss", ".4f"), _num(row["loss_constant"], ".4f"),
            format_interval(row, "final_f1", ".3f"), fg,
            _num(row["staleness_mean"], ".2f"), _num(row["staleness_p99"], ".0f"), _num(row["comm_share"], ".0%"),
            _num(row["are"], ".4f"), _num(row["voi"], ".4f")]


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
    rows = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["config"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def build_report(directory, target_loss=None):
    """(markdown text, rows, segmentation table or None); writes DIR/report.csv and DIR/report.md.

    Args:
        directory: a sweep's directory, or any directory of runs.
        target_loss: held-out loss for time to target (default: the sweep's report.target_loss,
            else the highest final loss among the runs, which every run reaches).
    """
    runs, index = collect_runs(directory)
    target = target_loss if target_loss is not None else (index or {}).get("report", {}).get("target_loss")
    how = "given" if target is not None else "the highest final loss among the runs, so every run reaches it"
    target = target if target is not None else default_target_loss(runs)
    rows = report_rows(runs, target)
    title = index["name"] if index else os.path.basename(os.path.abspath(directory))
    complete = sum(r.complete for r in runs)
    level = f"{CONFIDENCE:.0%}"
    parts = [f"# {title}: {complete} of {len(runs)} runs complete, on {machine(runs)}", "",
             f"Each run is summarised robustly: its final held-out loss and F1 are the means of its last {WINDOW} "
             f"evaluations, and it reaches the target held-out loss **{_num(target, '.4g') or 'n/a'}** ({how}) when "
             f"the trailing mean of {WINDOW} evaluations first falls to it. Times are training time (pauses for "
             f"evaluation and checkpoints excluded). Each row is an experiment; `n` runs with different "
             f"train.seed; values are means with their {level} t interval in brackets when n > 1. Speed-up and "
             f"efficiency (= speed-up / workers) are against the 1-worker run named in `vs`. `F1 > all-fg`: runs "
             f"whose final F1 beats predicting every voxel as the object.", ""]
    parts.append(markdown_table(rows) if rows else "No complete runs.")
    if len(rows) > 1 and target is not None:
        parts += ["", f"## Verdicts: time to held-out loss {target:.4g}", "",
                  f"Ratio of geometric-mean times (first ÷ second), {level} interval from Welch's t test on log "
                  f"times; \"no difference\" when the interval includes 1.", ""] + verdicts(rows, target)
    seg = seg_table(rows)
    if seg:
        parts += ["", "## Segmentation", "", seg]
    missing = incomplete_lines(runs)
    if missing:
        parts += ["", "## Incomplete runs (no complete summary.json; not results)", ""] + missing
    text = "\n".join(parts) + "\n"
    with open(os.path.join(directory, "report.md"), "w") as f:
        f.write(text)
    write_csv(os.path.join(directory, "report.csv"), rows)
    return text, rows, seg
