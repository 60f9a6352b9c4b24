"""The figures of `ffnbench study NAME`: each draws the cells its analysis (bench/plan/studies.py) computed,
every seed as a dot beside the mean and its 95 % interval, so the spread is seen, not just told."""
from collections import defaultdict

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from ffnbench.bench.plan.studies import SERIES, async_variant
from ffnbench.plots.common import log2_workers_axis, plain_log_yaxis, side_legend, strategy_color, style, title

RULE_COLORS = {"none": "0.45", "linear": "#1f77b4", "sqrt": "#ff7f0e"}


def complete(runs):
    return [r for r in runs if r.complete]


def finish(fig, legend, what, runs):
    """The legend (with the seeds' dots) right of the panels, and the title naming model and machine."""
    legend.append((Line2D([], [], ls="none", marker="o", color="0.4", alpha=0.35, ms=3.5), "one seed"))
    side_legend(fig, legend)
    title(fig, f"{what} (bars: 95 % interval over seeds)", complete(runs))
    return fig


def draw_cells(ax, xs, cells, color, label, offset=1.0, marker="o", ls="-"):
    """Mean line with 95 % interval bars, and each seed as a faint dot, at x * offset (log axes)."""
    shown = [(x, c) for x, c in zip(xs, cells) if c is not None and c.known]
    if not shown:
        return None
    x = np.array([x for x, _ in shown], float) * offset
    means = np.array([c.interval[0] for _, c in shown])
    low = np.array([c.interval[1] if c.interval[1] is not None else m for (_, c), m in zip(shown, means)])
    high = np.array([c.interval[2] if c.interval[2] is not None else m for (_, c), m in zip(shown, means)])
    line = ax.errorbar(x, means, yerr=[means - low, high - means], color=color, marker=marker, ls=ls, lw=1.8,
                       capsize=3, label=label)
    for xi, (_, c) in zip(x, shown):
        ax.plot([xi] * len(c.known), c.known, ls="none", marker=marker, ms=3.5, color=color, alpha=0.35)
    return line


#: behind a label drawn over the data, so whiskers do not run through it
LABEL_BOX = dict(facecolor="white", alpha=0.8, edgecolor="none", pad=1.5)


def paper_regions(ax, split=16):
    """Shade where the paper found each rule best (beyond `split` nodes: sqrt; below: linear)."""
    lo, hi = ax.get_xlim()
    ax.axvspan(lo, min(split, hi), color="#1f77b4", alpha=0.05, lw=0)
    ax.text(lo * 1.05, 0.98, "paper: linear + warmup best", transform=ax.get_xaxis_transform(), ha="left",
            va="top", fontsize=8, color="#1f4e79", bbox=LABEL_BOX)
    if hi > split:
        ax.axvspan(split, hi, color="#ff7f0e", alpha=0.07, lw=0)
        ax.text(split * 1.05, 0.98, "paper: sqrt best", transform=ax.get_xaxis_transform(), ha="left", va="top",
                fontsize=8, color="#b35806", bbox=LABEL_BOX)
    ax.set_xlim(lo, hi)


def lr_scaling(runs, data):
    style()
    loss, steps, target = data["loss"], data["steps"], data["target"]
    workers = sorted({w for _, w in loss})
    fig, (ax_loss, ax_steps) = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
    legend = []
    for i, rule in enumerate(("none", "linear", "sqrt")):
        offset = (0.93, 1.0, 1.07)[i]
        at_one = rule == "none"  # one worker has no rule to scale by: one cell, drawn once
        cells = [loss.get((rule, w)) if w > 1 else loss.get(("none", 1)) if at_one else None for w in workers]
        line = draw_cells(ax_loss, workers, cells, RULE_COLORS[rule], f"lr × {'1' if rule == 'none' else 'N' if rule == 'linear' else '√N'}", offset)
        if line:
            legend.append((line, line.get_label()))
        cells = [steps.get((rule, w)) if w > 1 else steps.get(("none", 1)) if at_one else None for w in workers]
        draw_cells(ax_steps, workers, cells, RULE_COLORS[rule], None, offset)
        for w, c in zip(workers, cells):  # seeds that never reached the target, along the bottom edge
            if c is not None and len(c.known) < len(c.values):
                ax_steps.annotate(f"{len(c.values) - len(c.known)}✗", (w * offset ** 3, 0.02),
                                  xycoords=("data", "axes fraction"), color=RULE_COLORS[rule], ha="center",
                                  va="bottom", fontsize=8, fontweight="bold")
    for ax in (ax_loss, ax_steps):
        log2_workers_axis(ax, workers, "workers N (emulated, synchronous; 4 FOVs per worker step)")
        paper_regions(ax)
    plain_log_yaxis(ax_loss)  # a diverged rule's loss would otherwise flatten the others
    ax_loss.set_ylabel("final held-out loss (mean of last 3 evaluations)")
    ax_loss.set_title("Held-out loss after the same FOV budget (lower is better)")
    plain_log_yaxis(ax_steps)
    reached = [v for c in steps.values() for v in c.known]
    if reached:  # the seeds set the range; intervals from 2 seeds can span decades and are cut at the edge
        ax_steps.set_ylim(min(reached) / 2, max(reached) * 2)
    ax_steps.set_ylabel(f"optimizer steps until held-out loss ≤ {target:g}")
    ax_steps.set_title("Steps to the target loss (geometric mean; ✗: seeds that never reached it)")
    return finish(fig, legend, "Learning-rate scaling rules as workers grow", runs)


def mean_curve(runs, x_of, shown=None):
    """Mean held-out loss over seeds at each evaluation (seeds share their evaluation steps), drawn
    at x_of, or at the seeds' mean of `shown` (e.g. their training seconds, which differ)."""
    by_x = defaultdict(list)
    for r in runs:
        for e in r.evals:
            by_x[x_of(e)].append(e)
    xs = sorted(by_x)
    return ([np.mean([(shown or x_of)(e) for e in by_x[x]]) for x in xs],
            [np.mean([e.loss for e in by_x[x]]) for x in xs])


def batch_size(runs, data):
    style()
    loss, budget = data["loss"], data["budget"]
    batches = sorted({b for _, b in loss})
    colors = {b: plt.get_cmap("viridis")(0.9 * i / max(1, len(batches) - 1)) for i, b in enumerate(batches)}
    fig, (ax_final, ax_fovs, ax_time, ax_steps) = plt.subplots(1, 4, figsize=(21, 5), layout="constrained")
    legend = []
    for name, color, offset in (("fixed FOVs", "#2ca02c", 0.95), ("fixed steps", "#d62728", 1.05)):
        label = f"{data['fov_budget']} FOVs each" if name == "fixed FOVs" else f"{data['step_budget']} steps each"
        line = draw_cells(ax_final, batches, [loss.get((name, b)) for b in batches], color, label, offset)
        if line:
            legend.append((line, label))
    log2_workers_axis(ax_final, batches, "FOVs per step (batch size)")
    ax_final.set_ylabel("final held-out loss (mean of last 3 evaluations)")
    ax_final.set_title("Final loss at each budget")
    for ax, name, shown, xlabel, title in (
            (ax_fovs, "fixed FOVs", None, "FOVs processed", "Per FOV: fixed FOVs"),
            (ax_time, "fixed FOVs", lambda e: e.time, "training seconds on this machine (mean over seeds)",
             "Per second: the same runs"),
            (ax_steps, "fixed steps", None, "optimizer steps", "Per step: fixed steps")):
        x_of = (lambda e: e.fovs_total) if name == "fixed FOVs" else (lambda e: e.step)
        for b in batches:
            members = [r for r in complete(runs) if budget(r) == name and r.fields["train.batch_size"] == b]
            if members:
                ax.plot(*mean_curve(members, x_of, shown), color=colors[b], marker="o", ms=3, lw=1.6)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out loss (mean over seeds)")
        ax.set_title(title)
    for b in batches:
        legend.append((Line2D([], [], color=colors[b], lw=1.6), f"batch {b}"))
    return finish(fig, legend, "Batch size at a fixed FOV budget and at a fixed step budget", runs)


def sync_async(runs, data):
    style()
    loss, series = data["loss"], data["series"]
    workers = sorted({w for _, w in loss})
    fig, (ax_loss, ax_tau) = plt.subplots(1, 2, figsize=(14, 5), layout="constrained")
    cmap = plt.get_cmap("tab10")
    colors = {s: ("black" if s.startswith("sync") else cmap(i)) for i, s in enumerate(series)}
    legend = []
    for i, s in enumerate(series):
        offset = 1 + 0.03 * (i - len(series) / 2)
        line = draw_cells(ax_loss, workers, [loss.get((s, w)) for w in workers], colors[s], s, offset,
                          marker="s" if s.startswith("sync") else "o")
        if line:
            legend.append((line, s))
        taus = defaultdict(list)
        for r in runs:
            if r.complete and async_variant(r) == s and r.summary.get("staleness"):
                taus[r.workers].append(r.summary["staleness"]["mean"])
        if taus and not s.startswith("sync"):
            ws = sorted(taus)
            ax_tau.plot(np.array(ws) * offset, [np.mean(taus[w]) for w in ws], color=colors[s], marker="o", lw=1.6)
    for ax in (ax_loss, ax_tau):
        log2_workers_axis(ax, workers, "workers N (emulated; 4 FOVs per worker step, one FOV budget)")
        ax.axvline(32, color="0.3", ls=":", lw=1)
    ax_loss.text(32 * 0.97, 0.98, "google/ffn: async suffers beyond ~32 ", transform=ax_loss.get_xaxis_transform(),
                 fontsize=8, va="top", ha="right", color="0.3", bbox=LABEL_BOX)
    ax_loss.set_ylim(bottom=0)  # a loss is never negative; a 3-seed t interval can reach below 0
    ax_loss.set_ylabel("final held-out loss (mean of last 3 evaluations)")
    ax_loss.set_title("Held-out loss after the same FOVs (lower is better)")
    plain_log_yaxis(ax_tau)
    ax_tau.set_ylabel("mean staleness τ of applied gradients (updates)")
    ax_tau.set_title("Measured staleness (sync: 0)")
    return finish(fig, legend, "Synchronous vs asynchronous SGD as workers grow", runs)


def segmentation(runs, data):
    style()
    methods = list(data["are"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    for ax, metric, cells in ((axes[0], "ARE", data["are"]), (axes[1], "VOI", data["voi"])):
        x = np.arange(len(methods))
        means = [cells[m].interval[0] for m in methods]
        errs = np.array([[m - (lo if lo is not None else m), (hi if hi is not None else m) - m]
                         for m, (_, lo, hi) in zip(means, (cells[k].interval for k in methods))]).T
        colors = [strategy_color(m.split(" x")[0]) for m in methods]  # labels are "STRATEGY xWORKERS"
        ax.bar(x, means, yerr=errs, capsize=4, color=colors, alpha=0.45, edgecolor=colors, label="trained FFN (mean)")
        for xi, m, c in zip(x, methods, colors):
            ax.plot([xi] * len(cells[m].known), cells[m].known, "o", color=c, ms=4)
        for (name, b), ls in zip(data["baselines"].items(), ("--", ":")):
            ax.axhline(b[metric.lower()], color="#e6550d", ls=ls, lw=1.4, label=f"{name.replace('_', ' ')}")
        ax.set_xticks(x, methods)
        ax.set_ylabel(f"{metric} (lower is better)")
        ax.set_title(metric)
    side_legend(fig, [*zip(*axes[0].get_legend_handles_labels()),
                      (Line2D([], [], ls="none", marker="o", color="0.3"), "one seed")])
    title(fig, "Segmentation of a test volume by models of each strategy (bars: 95 % interval over seeds)",
          complete(runs))
    return fig


#: the network study's exchanges: ring all-reduce as Horovod's colour, the one-server PS dashed
SERIES_STYLE = {"allreduce": (strategy_color("allreduce"), "-", "o"), "mpi_allreduce": (strategy_color("mpi_allreduce"), "-", "s"),
                "ps_sync": (strategy_color("ps_sync"), "-", "^"), "ps_async, 1 server": (strategy_color("ps_async"), "--", "D"),
                "ps_async, sharded": (strategy_color("ps_async"), "-", "v")}


def network(runs, data):
    """FOVs/s against N per gradient (rows) and link (columns), measured (seeds, mean, 95 %) with the
    simulator's prediction as a thin line of the same colour and the ideal N x one worker in grey;
    a last column with ps_async's measured staleness."""
    style()
    fovs, sim, links, stale = data["fovs"], data["sim"], data["links"], data["stale"]
    grads = sorted({k[0] for k in fovs}, reverse=True)
    fig, axes = plt.subplots(len(grads), len(links) + 1, figsize=(4.2 * (len(links) + 1), 3.8 * len(grads)),
                             layout="constrained", squeeze=False)
    legend = {}
    for row, g in zip(axes, grads):
        workers = sorted({k[3] for k in fovs if k[0] == g})
        for ax, link in zip(row, links):
            alone = data["alone"].get(g)
            if alone:
                ax.plot(workers, [n * alone.interval[0] for n in workers], color="0.6", lw=1, ls=":")
                legend["ideal"] = (Line2D([], [], color="0.6", ls=":"), "N x one worker alone (ideal)")
            for i, series in enumerate(SERIES):
                color, ls, marker = SERIES_STYLE[series]
                keys = [(g, link if n > 1 or series.startswith("ps") else None, series, n) for n in workers]
                offset = 1 + 0.04 * (i - 2)
                line = draw_cells(ax, workers, [fovs.get(k) for k in keys], color, series, offset, marker, ls)
                if line:
                    legend[series] = (line, series)
                shown = [(n, sim[k].interval[0]) for n, k in zip(workers, keys) if k in sim]
                if shown:
                    ax.plot([n * offset for n, _ in shown], [v for _, v in shown], color=color, lw=3, alpha=0.25)
            legend["sim"] = (Line2D([], [], color="0.3", lw=3, alpha=0.25), "simulated (calibration alone)")
            log2_workers_axis(ax, workers, "workers N (one per emulated node)")
            plain_log_yaxis(ax)
            ax.set_title(f"{g} gradients, links {link}")
            ax.set_ylabel("FOVs/s (emulated compute)")
        ax = row[-1]
        for link, color in zip(links, ("#2b8cbe", "#e34a33", "0.4")):
            for series, ls in (("ps_async, 1 server", "--"), ("ps_async, sharded", "-")):
                pts = [(n, np.mean(stale[(g, link, series, n)].known)) for n in workers
                       if (g, link, series, n) in stale and stale[(g, link, series, n)].known]
                if pts:
                    ax.plot(*zip(*pts), color=color, ls=ls, marker="o", ms=4, label=f"{link}, {series[10:]}")
        log2_workers_axis(ax, workers, "workers N")
        ax.set_ylabel("mean staleness τ (updates)")
        ax.set_title(f"{g}: ps_async staleness")
        if ax.lines:
            ax.legend(fontsize=7)
    return finish(fig, list(legend.values()), "What the network does to the exchange: FOVs/s as workers grow on "
                  "emulated nodes", runs)


FIGURES = {"lr_scaling": lr_scaling, "batch_size": batch_size, "sync_async": sync_async, "segmentation": segmentation,
           "network": network}
