"""What every figure shares: the runs, one colour per strategy, titles that name the machine, saving."""
import math
import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import (FixedFormatter, FixedLocator, FuncFormatter, LogLocator, NullFormatter,  # noqa: E402
                               NullLocator)

from ffnbench import strategies  # noqa: E402
from ffnbench.bench.analyse.results import fields_text, machine, sortable, varying_fields  # noqa: E402

#: each built-in strategy's colour in every figure (tab10's, one family of hues per family)
STRATEGY_COLORS = {"single": "#4d4d4d", "allreduce": "#1f77b4", "mpi_allreduce": "#17becf",
                   "tf_multiworker": "#9467bd", "ps_sync": "#2ca02c", "ps_async": "#d62728",
                   "emulated_sync": "#9467bd", "emulated_async": "#e377c2"}
#: colours for other strategies (tab10's that the built-ins leave), picked from the name
SPARE_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f")
PHASE_COLORS = {"compute": "#4c72b0", "comm": "#dd8452", "data": "#55a868", "wait": "#c44e52"}
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def strategy_color(name):
    """A strategy's colour in every figure: its own, else a spare one picked from its name."""
    return STRATEGY_COLORS.get(name) or SPARE_COLORS[sum(map(ord, name)) % len(SPARE_COLORS)]


def style():
    plt.rcParams.update({
        "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "figure.titlesize": 12,
        "legend.fontsize": 9, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
        "axes.spines.right": False, "savefig.dpi": 150, "svg.fonttype": "none",
    })


def workers_text(n):
    return f"{n} worker" + ("" if n == 1 else "s")


def series_label(run, keys):
    """'allreduce, 2 workers' plus the fields in `keys` that set this run apart."""
    return ", ".join([run.strategy, workers_text(run.workers)] + fields_text(run, keys))


def label_keys(runs, exclude=("strategy", "ranks", "strategy_options.workers", "train.steps", "eval.")):
    """Fields worth naming in a legend: those that vary between the runs, minus the obvious ones."""
    return varying_fields(runs, exclude)


def model_text(runs):
    """'FFN 17³ FOV, depth 4, 16 features, batch 4/worker' for what the runs share."""
    def shared(key):
        values = {str(r.fields.get(key)) for r in runs}
        return runs[0].fields.get(key) if len(values) == 1 else None
    parts = []
    fov = shared("model.fov")
    if fov:
        parts.append(f"FFN {fov[0]}³ FOV" if len(set(fov)) == 1 else f"FFN {'×'.join(map(str, fov))} FOV")
    for key, unit in (("model.depth", "depth {}"), ("model.features", "{} features"),
                      ("train.batch_size", "batch {}/worker")):
        if shared(key) is not None:
            parts.append(unit.format(shared(key)))
    return ", ".join(parts)


def title(fig, what, runs):
    """Two-line title: what was compared, then the model and the machine."""
    context = "; ".join(p for p in (model_text(runs), f"on {machine(runs)}") if p)
    fits = int(fig.get_figwidth() * 10)  # characters of 12-point text per line, so a narrow figure wraps
    fig.suptitle("\n".join(textwrap.fill(line, fits) for line in (what, context)), fontsize=12)


def strategies_text(runs):
    return ", ".join(sorted({r.strategy for r in runs}, key=strategies.order_key))


def log2_workers_axis(ax, workers, label="workers"):
    """Log-2 axis with a tick at each worker count, padded so single points are not on the edge."""
    ticks = sorted(set(workers))
    ax.set_xscale("log", base=2)
    ax.set_xlim(ticks[0] / 1.3, ticks[-1] * 1.3)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FixedFormatter([str(t) for t in ticks]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(label)


def plain_log_yaxis(ax):
    """Log scale labelled 0.2, 0.3, 0.5, 1, 2 ... instead of 2×10⁻¹."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    within_a_decade = high / low < 10  # then 1-2-3-5 would label one or two values
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 1.5, 2, 3, 4, 5, 6, 7, 8) if within_a_decade else (1, 2, 3, 5)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def side_legend(fig, handles_labels):
    """One legend right of the panels, each label once (repeats of a run share a label)."""
    seen = {}
    for handle, label in handles_labels:
        seen.setdefault(label, handle)
    if seen:
        columns = math.ceil(len(seen) / 20)
        fig.set_figwidth(fig.get_figwidth() + 3.5 * (columns - 1))  # keep the panels' width
        fig.legend(list(seen.values()), list(seen), loc="outside right center", ncols=columns)


def run_sort_key(run, keys):
    """Strategies in their fixed order, then workers, then the given fields, numbers numerically."""
    return strategies.order_key(run.strategy), run.workers, [sortable(run.fields.get(k)) for k in keys]


def series_styles(runs, keys):
    """Legend label of each run's series -> (colour, line style, marker); see styles_for."""
    ordered = []
    for r in sorted(runs, key=lambda r: run_sort_key(r, keys)):
        if (r.strategy, series_label(r, keys)) not in ordered:
            ordered.append((r.strategy, series_label(r, keys)))
    return styles_for(ordered)


def styles_for(ordered):
    """[(strategy, label)] -> {label: (colour, line style, marker)}.

    Several strategies, few series each: the strategy's colour, told apart by line style. One
    strategy (a precision or learning-rate sweep, say), or many series: a colour per series, line
    style per strategy.
    """
    per_strategy = {s: [label for s2, label in ordered if s2 == s] for s, _ in ordered}
    if len(per_strategy) > 1 and max(len(v) for v in per_strategy.values()) <= len(LINESTYLES):
        return {label: (strategy_color(s), LINESTYLES[per_strategy[s].index(label)],
                        MARKERS[per_strategy[s].index(label)]) for s, label in ordered}
    names = list(per_strategy)
    if len(ordered) <= 20:
        cmap = plt.get_cmap("tab10" if len(ordered) <= 10 else "tab20")
        colours = [cmap(i) for i in range(len(ordered))]
    else:
        colours = [plt.get_cmap("viridis")(i / (len(ordered) - 1)) for i in range(len(ordered))]
    return {label: (colours[i], LINESTYLES[names.index(s) % len(LINESTYLES)], MARKERS[i % len(MARKERS)])
            for i, (s, label) in enumerate(ordered)}


def save(fig, out_dir, name):
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{name}.{ext}") for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths


def geometric_edges(values):
    """Cell edges halfway (in log space) between sorted positive values, for a heatmap on log axes."""
    v = sorted(values)
    if len(v) == 1:
        return [v[0] / 1.5, v[0] * 1.5]
    mids = [math.sqrt(a * b) for a, b in zip(v, v[1:])]
    return [v[0] ** 2 / mids[0]] + mids + [v[-1] ** 2 / mids[-1]]
