"""The figures of `ffnbench plot DIR`. Each takes the complete runs (and the targets: F1, and loss
when the sweep names one) and returns a Figure, or raises Skip when the runs hold no data for it."""
from collections import defaultdict

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from ffnbench import strategies
from ffnbench.bench.analyse.results import (NOT_THROUGHPUT, aggregate_rates, baseline_rate, effective_lr, fields_text,
                                    staleness_values, varying_fields)
from ffnbench.plots.common import (PHASE_COLORS, geometric_edges, label_keys, log2_workers_axis, plain_log_yaxis,
                                   run_sort_key, series_label, series_styles, side_legend, strategies_text,
                                   strategy_color, styles_for, title, workers_text)


class Skip(Exception):
    """This figure has no data in these runs; the message says what is missing."""


def scaling(runs, targets=None):
    """FOVs/s vs workers against the ideal line, and scaling efficiency vs workers."""
    keys = varying_fields(runs, NOT_THROUGHPUT)  # e.g. batch size: each value is its own line
    lines = defaultdict(list)
    for r in sorted(runs, key=lambda r: run_sort_key(r, keys)):
        lines[", ".join([r.strategy] + fields_text(r, keys))].append(r)
    fig, (ax_rate, ax_eff) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    all_workers, all_rates, legend = [], [], []
    styles = styles_for([(members[0].strategy, label) for label, members in lines.items()])
    for label, members in lines.items():
        color, ls, marker = styles[label]
        by_workers = defaultdict(list)
        for r in members:
            by_workers[r.workers].append(r.summary["fovs_per_s"])
        workers = sorted(by_workers)
        rates = [aggregate_rates(by_workers[w]) for w in workers]
        means = [m for m, _ in rates]
        bars = ax_rate.errorbar(workers, means, yerr=[e for _, e in rates], color=color, ls=ls, marker=marker,
                                capsize=3, lw=1.8)
        legend.append((bars, label))
        base, base_strategy = (None, None) if members[0].emulated else baseline_rate(members, runs)
        if base:
            ideal = sorted({1, *workers})  # from the baseline's point, in the baseline's colour
            ax_rate.plot(ideal, [base * w for w in ideal], color=strategy_color(base_strategy), ls=(0, (2, 2)), lw=1,
                         alpha=0.6)
            ax_eff.plot(workers, [m / (base * w) for m, w in zip(means, workers)], color=color, ls=ls,
                        marker=marker, lw=1.8)
            all_rates += [base * w for w in ideal]
        all_workers += workers
        all_rates += means
    plain_log_yaxis(ax_rate)
    positive = [v for v in all_rates if v > 0]
    if positive:
        ax_rate.set_ylim(min(positive) / 1.5, max(positive) * 1.5)
    log2_workers_axis(ax_rate, all_workers)
    ax_rate.set_ylabel("training throughput (FOVs/s, all workers)")
    ax_rate.set_title("Throughput (bars: ± uncertainty, or std over repeats)")
    log2_workers_axis(ax_eff, all_workers)
    ax_eff.axhline(1.0, color="black", lw=1, ls="--", alpha=0.6)
    ax_eff.set_ylim(0, 1.2)
    ax_eff.set_ylabel("scaling efficiency (speed-up / workers)")
    ax_eff.set_title("Scaling efficiency vs the 1-worker run")
    ax_eff.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    if len(ax_eff.lines) == 1:
        ax_eff.text(0.5, 0.5, "no speed-up to show:\nno 1-worker run, or emulated workers (one process)",
                    ha="center", transform=ax_eff.transAxes, color="0.4")
    legend.append((Line2D([], [], color="0.3", ls=(0, (2, 2)), lw=1), "ideal: 1-worker rate × workers"))
    side_legend(fig, legend)
    title(fig, f"Throughput scaling of {strategies_text(runs)}", runs)
    return fig


def convergence(runs, targets=None):
    """Held-out loss (the primary curve, with its standard error over the FOVs) and F1, against
    training time and against FOVs processed."""
    keys = label_keys(runs)
    styles = series_styles(runs, keys)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), layout="constrained", sharey="row")
    legend = []
    for r in sorted(runs, key=lambda r: run_sort_key(r, keys)):
        if not r.evals:
            continue
        label = series_label(r, keys)
        color, ls, marker = styles[label]
        x_values = (np.array([e.time for e in r.evals]), np.array([e.fovs_total for e in r.evals]))
        loss, sem = np.array([e.loss for e in r.evals]), np.array([e.loss_sem for e in r.evals])
        for col, x in enumerate(x_values):
            line, = axes[0, col].plot(x, loss, color=color, ls=ls, marker=marker, ms=3, lw=1.4)
            axes[0, col].fill_between(x, loss - sem, loss + sem, color=color, alpha=0.15, lw=0)
            axes[1, col].plot(x, [e.f1 for e in r.evals], color=color, ls=ls, marker=marker, ms=3, lw=1.4)
        legend.append((line, label))
    if not legend:
        raise Skip("no evaluation records")
    all_fg = [r.summary["baselines"]["f1_all_foreground"] for r in runs if r.summary.get("baselines")]
    for ax in axes[1]:
        if all_fg:
            ax.axhline(np.mean(all_fg), color="0.5", ls=":", lw=1.2)
        if targets and targets.f1:
            ax.axhline(targets.f1, color="black", ls="--", lw=0.8, alpha=0.5)
    for ax in axes[0]:
        if targets and targets.loss:
            ax.axhline(targets.loss, color="black", ls="-.", lw=0.8, alpha=0.6)
    axes[0, 0].set_ylabel("held-out loss (sigmoid cross-entropy)")
    axes[1, 0].set_ylabel("held-out F1 at logit(0.9)")
    losses = [e.loss for r in runs for e in r.evals if e.loss > 0]
    if max(losses) > 3 * min(losses):  # a log scale only helps across a wide range
        plain_log_yaxis(axes[0, 0])
    for col, (name, xlabel) in enumerate((("training time", "training time (s; evaluation pauses excluded)"),
                                          ("FOVs processed", "FOVs processed (all workers)"))):
        axes[1, col].set_xlabel(xlabel)
        axes[0, col].set_title(f"loss vs {name}")
        axes[1, col].set_title(f"F1 vs {name}")
    legend.append((plt.Rectangle((0, 0), 1, 1, color="0.5", alpha=0.3), "loss ± standard error over held-out FOVs"))
    if all_fg:
        legend.append((Line2D([], [], color="0.5", ls=":"), f"F1 predicting all foreground ({np.mean(all_fg):.2f})"))
    if targets and targets.loss:
        legend.append((Line2D([], [], color="black", ls="-.", alpha=0.6), f"target loss {targets.loss:g}"))
    if targets and targets.f1:
        legend.append((Line2D([], [], color="black", ls="--", alpha=0.5), f"target F1 {targets.f1:g}"))
    side_legend(fig, legend)
    title(fig, f"Convergence of {strategies_text(runs)} on the held-out volume", runs)
    return fig


HATCHES = ("", "//", "..", "xx")


def staleness(runs, targets=None):
    """Histogram of gradient staleness for each worker count, parameter-server runs only."""
    ps_runs = [r for r in runs if r.summary.get("staleness")]
    if not ps_runs:
        raise Skip("no parameter-server runs (no staleness records)")
    by_workers = defaultdict(lambda: defaultdict(list))
    # e.g. the servers: one server and two are different experiments (their nodes follow from them)
    keys = [k for k in label_keys(ps_runs) if not k.startswith("run.")]
    for r in ps_runs:
        by_workers[r.workers][(r.strategy, ", ".join(fields_text(r, keys)))] += staleness_values(r.records)
    counts = sorted(by_workers)
    fig, axes = plt.subplots(1, len(counts), figsize=(min(16, 4 * len(counts) + 3), 4.5), layout="constrained",
                             sharey=True, squeeze=False)
    legend = []
    for ax, n in zip(axes[0], counts):
        names = sorted(by_workers[n], key=lambda k: (strategies.order_key(k[0]), k[1]))
        width = 0.8 / len(names)
        top = max(max(v) for v in by_workers[n].values())
        for i, (strategy, extra) in enumerate(names):
            values = np.asarray(by_workers[n][(strategy, extra)])
            share = np.bincount(values, minlength=top + 1) / values.size
            label = ", ".join(p for p in (strategy, extra) if p)
            same = [k for k in names if k[0] == strategy]  # its layouts share a colour, told apart by hatching
            bars = ax.bar(np.arange(top + 1) + (i - (len(names) - 1) / 2) * width, share, width,
                          color=strategy_color(strategy), alpha=0.85, hatch=HATCHES[same.index((strategy, extra)) % len(HATCHES)])
            if label not in [text for _, text in legend]:
                legend.append((bars, label))
            ax.text(0.97, 0.95 - 0.08 * i, f"{label}: mean {values.mean():.2f}, p99 {np.percentile(values, 99):.0f}",
                    transform=ax.transAxes, ha="right", va="top", color=strategy_color(strategy), fontsize=9)
        ax.axvline(n - 1, color="0.3", ls="--", lw=1)
        ax.set_title(workers_text(n))
        ax.set_xlabel("staleness τ (versions)")
        ax.set_xticks(range(top + 1) if top < 12 else np.linspace(0, top, 7).round().astype(int))
        ax.set_ylim(0, 1.15)
    axes[0, 0].set_ylabel("fraction of updates")
    side_legend(fig, legend + [(Line2D([], [], color="0.3", ls="--"), "τ = workers − 1\n(equal-speed workers)")])
    title(fig, f"Gradient staleness of {strategies_text(ps_runs)}: server version at apply − version read",
          ps_runs)
    return fig


def breakdown(runs, targets=None):
    """Mean seconds per worker step in compute, communication, data and waiting, stacked."""
    keys = label_keys(runs)
    groups = defaultdict(list)
    for r in sorted(runs, key=lambda r: (run_sort_key(r, keys), r.summary["ranks"])):
        groups[(r.strategy, r.summary["ranks"], r.workers, tuple(fields_text(r, keys)))].append(r)
    order = list(groups)
    fig, ax = plt.subplots(figsize=(min(16, max(7, 1.0 * len(order) + 3)), 5), layout="constrained")
    bottoms = np.zeros(len(order))
    for phase, color in PHASE_COLORS.items():
        heights = np.array([np.mean([r.summary["step_time_s"][f"{phase}_s"] for r in groups[k]]) for k in order])
        ax.bar(range(len(order)), heights, 0.6, bottom=bottoms, color=color, label=phase)
        bottoms += heights
    for i, total in enumerate(bottoms):
        ax.text(i, total, f"{total * 1e3:.0f} ms", ha="center", va="bottom", fontsize=9)
    ticks = ["\n".join([strategy, f"{ranks} rank{'s' if ranks > 1 else ''}", workers_text(workers), *extra])
             for strategy, ranks, workers, extra in order]
    ax.set_xticks(range(len(order)), ticks, fontsize=9)
    ax.set_ylim(0, bottoms.max() * 1.15 if bottoms.max() > 0 else 1)
    ax.set_ylabel("mean time per worker step (s)")
    ax.grid(axis="x", visible=False)
    side_legend(fig, zip(*ax.get_legend_handles_labels()))
    title(fig, f"Where a step's time goes: {strategies_text(runs)}", runs)
    return fig


def lr_scaling(runs, targets=None):
    """Final F1 over workers × effective learning rate, with the linear and square-root rules on top."""
    cells = defaultdict(list)
    for r in runs:
        f1 = (r.summary.get("final_eval") or {}).get("f1")
        if f1 is not None:
            cells[(r.workers, round(effective_lr(r), 12))].append(f1)
    workers = sorted({w for w, _ in cells})
    lrs = sorted({lr for _, lr in cells})
    if len(workers) < 2 or len(lrs) < 2:
        raise Skip("needs runs at 2 or more worker counts and 2 or more learning rates")
    grid = np.full((len(lrs), len(workers)), np.nan)
    for (w, lr), f1s in cells.items():
        grid[lrs.index(lr), workers.index(w)] = np.mean(f1s)
    fig, ax = plt.subplots(figsize=(max(7.5, 0.9 * len(workers) + 4.5), max(5, 0.55 * len(lrs) + 3)),
                           layout="constrained")
    x_edges, y_edges = geometric_edges(workers), geometric_edges(lrs)
    mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(grid), cmap="viridis", vmin=0,
                         vmax=max(np.nanmax(grid), 0.05))
    fig.colorbar(mesh, ax=ax, label="final held-out F1")
    ax.set_yscale("log")
    log2_workers_axis(ax, workers)
    ax.set_xlim(x_edges[0], x_edges[-1])
    ax.set_ylim(y_edges[0], y_edges[-1])
    ax.set_yticks(lrs, [f"{lr:.3g}" for lr in lrs])
    ax.yaxis.set_minor_locator(plt.NullLocator())
    ax.grid(False)
    for (w, lr), f1s in cells.items():
        ink = "black" if mesh.norm(np.mean(f1s)) > 0.6 else "white"
        ax.text(w, lr, f"{np.mean(f1s):.2f}", ha="center", va="center", fontsize=8, color=ink)
    best = [(w, lrs[int(np.nanargmax(grid[:, i]))]) for i, w in enumerate(workers) if not np.isnan(grid[:, i]).all()]
    ax.plot(*zip(*best), ls="none", marker="s", ms=18, mfc="none", mec="#e41a1c", mew=2.5,
            label="best lr per worker count")
    n0, base = best[0]  # the rules start from the best lr at the fewest workers
    n = "N" if n0 == 1 else f"N/{n0}"
    xs = np.geomspace(x_edges[0], x_edges[-1], 50)
    ax.plot(xs, base * xs / n0, color="white", ls="--", lw=2, label=f"linear rule: lr = {base:.3g} × {n}")
    root = "√N" if n0 == 1 else f"√({n})"
    ax.plot(xs, base * np.sqrt(xs / n0), color="#ff7f0e", lw=2, label=f"sqrt rule: lr = {base:.3g} × {root}")
    ax.set_ylabel("effective learning rate (lr × scaling factor)")
    legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=3, markerscale=0.6)
    legend.get_frame().set_facecolor("0.8")
    title(fig, f"Learning rate vs workers: final held-out F1 of {strategies_text(runs)}", runs)
    return fig


def batch_size(runs, targets=None):
    """Held-out F1 against wall time and FOVs, one line per global batch size.

    Only for runs that vary train.batch_size: elsewhere the global batch follows the worker count
    and the convergence figure already shows it."""
    if len({r.fields.get("train.batch_size") for r in runs}) < 2:
        raise Skip("needs runs at 2 or more values of train.batch_size")
    batches = sorted({r.summary["global_batch"] for r in runs})
    colors = {b: plt.get_cmap("viridis")(0.9 * i / max(1, len(batches) - 1)) for i, b in enumerate(batches)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained", sharey=True)
    legend = []
    for r in sorted(runs, key=lambda r: r.summary["global_batch"]):
        b = r.summary["global_batch"]
        f1 = [e.f1 for e in r.evals]
        axes[0].plot([e.time for e in r.evals], f1, color=colors[b], marker="o", ms=4, lw=1.6)
        line, = axes[1].plot([e.fovs_total for e in r.evals], f1, color=colors[b], marker="o", ms=4, lw=1.6)
        legend.append((line, f"global batch {b}"))
    if targets and targets.f1:
        for ax in axes:
            ax.axhline(targets.f1, color="black", ls="--", lw=0.8, alpha=0.5)
        legend.append((Line2D([], [], color="black", ls="--", alpha=0.5), f"target F1 {targets.f1:g}"))
    axes[0].set_xlabel("wall time since the start of training (s)")
    axes[1].set_xlabel("FOVs processed (all workers)")
    axes[0].set_ylabel("held-out F1")
    axes[0].set_title("F1 vs wall time")
    axes[1].set_title("F1 vs FOVs processed")
    side_legend(fig, legend)
    title(fig, f"Batch size: held-out F1 of {strategies_text(runs)} at global batch "
               f"{', '.join(map(str, batches))}", runs)
    return fig


#: name -> figure; scaling, convergence and breakdown are made whenever there is a complete run
FIGURES = {"scaling": scaling, "convergence": convergence, "breakdown": breakdown, "staleness": staleness,
           "lr_scaling": lr_scaling, "batch_size": batch_size}
