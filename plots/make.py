"""`ffnbench plot DIR`: every figure the runs below DIR have data for, as PNG and SVG in DIR/plots/."""
import os

from ffnbench.bench.analyse.results import Targets, collect_runs, target_f1
from ffnbench.plots.common import save, style
from ffnbench.plots.figures import FIGURES, Skip


def make_plots(directory):
    """Returns (paths written, notes on figures skipped)."""
    runs, index = collect_runs(directory)
    complete = [r for r in runs if r.complete]
    if not complete:
        raise ValueError(f"{directory}: no complete runs to plot (none has summary.json)")
    targets = Targets(f1=target_f1(index), loss=(index or {}).get("report", {}).get("target_loss"))
    out_dir = os.path.join(directory, "plots")
    style()
    written, notes = [], []
    for name, figure in FIGURES.items():
        try:
            fig = figure(complete, targets)
        except Skip as why:
            notes.append(f"{name}: skipped, {why}")
            continue
        written += save(fig, out_dir, name)
    return written, notes
