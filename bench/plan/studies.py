"""`ffnbench study NAME`: run one of the studies of the paper's findings, then state what the data say.

A study is a sweep file in configs/studies/ (run and resumed as any sweep) plus an analysis that
reduces its runs to cells (one experiment's repeats: mean and 95 % t interval), compares the cells
the paper's claim is about (Welch intervals on differences; "no difference" when one includes 0),
and writes OUT/NAME.md (tables and conclusions) and OUT/NAME.png.
"""
import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ffnbench.bench.config import ConfigError
from ffnbench.bench.analyse.results import collect_runs
from ffnbench.bench.analyse.stats import (difference_ci, final_value, first_crossing, holm, log_ratio_p, mean_ci,
                                          ratio_ci)

STUDY_DIR = os.path.join("configs", "studies")
#: the segmentation study's test volume: another generator seed and density than any training volume
TEST_VOLUME = {"seed": 1000, "density": 2.5}


@dataclass
class Cell:
    """One experiment's repeats: a value per seed (None: the seed never got there). `log`: a positive,
    skewed quantity (steps, times), summarised by its geometric mean and an interval on the log scale,
    which stays positive."""
    values: List[Optional[float]] = field(default_factory=list)
    log: bool = False

    @property
    def known(self) -> List[float]:
        return [v for v in self.values if v is not None]

    @property
    def interval(self):
        if not self.known:
            return None, None, None
        if not self.log:
            return mean_ci(self.known)
        return tuple(None if v is None else float(np.exp(v)) for v in mean_ci(np.log(self.known)))

    def text(self, fmt=".3f") -> str:
        mean, lo, hi = self.interval
        if mean is None:
            return f"not reached (0 of {len(self.values)})"
        missing = f", {len(self.known)} of {len(self.values)} reached" if len(self.known) < len(self.values) else ""
        spread = f" [{lo:{fmt}}, {hi:{fmt}}]" if lo is not None else ""
        return f"{mean:{fmt}}{spread}{missing}"


def final_loss(run) -> Optional[float]:
    return final_value([e.loss for e in run.evals])


def learned_nothing(run) -> float:
    """1 if the run's final held-out loss is no better than the best constant prediction's, else 0."""
    return float(final_loss(run) >= run.summary["baselines"]["loss_constant"])


def to_loss(run, target, clock="step") -> Optional[float]:
    """Optimizer steps (clock "step") or training seconds, evaluations left out ("time"), until the
    trailing mean of the held-out loss reaches `target`."""
    return first_crossing([getattr(e, clock) for e in run.evals], [e.loss for e in run.evals], target)


def compare(a: Cell, b: Cell, a_name: str, b_name: str, what: str = "final loss") -> str:
    """'a lower than b by d [lo, hi]', or 'no difference', from the seeds of two cells."""
    if len(a.known) < 2 or len(b.known) < 2:
        return f"{a_name} vs {b_name}: too few seeds for an interval"
    d, lo, hi = difference_ci(a.known, b.known)
    if hi < 0:
        verdict = f"{a_name} lower by {-d:.3f} [{-hi:.3f}, {-lo:.3f}]"
    elif lo > 0:
        verdict = f"{b_name} lower by {d:.3f} [{lo:.3f}, {hi:.3f}]"
    else:
        verdict = f"no difference ({a_name} - {b_name} = {d:+.3f} [{lo:+.3f}, {hi:+.3f}])"
    return f"{what}, {a_name} vs {b_name}: {verdict}"


def winner(a: Cell, b: Cell) -> Optional[int]:
    """0 if a is lower with an interval excluding 0, 1 if b is, None if no difference is shown."""
    if len(a.known) < 2 or len(b.known) < 2:
        return None
    _, lo, hi = difference_ci(a.known, b.known)
    return 0 if hi < 0 else 1 if lo > 0 else None


def cells_by(runs, key, value, log=False) -> Dict:
    """{key(run): Cell of value(run)} over the complete runs (log: see Cell)."""
    cells = defaultdict(lambda: Cell(log=log))
    for r in runs:
        if r.complete:
            cells[key(r)].values.append(value(r))
    return dict(cells)


def markdown(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                     ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def seeds_line(runs):
    complete = [r for r in runs if r.complete]
    seeds = sorted({r.fields.get("train.seed") for r in complete})
    missing = len(runs) - len(complete)
    return (f"{len(complete)} complete runs, seeds {', '.join(map(str, seeds))}; cells give the mean and 95 % t interval "
            f"over seeds" + (f"; {missing} runs not complete (left out)" if missing else ""))


# ------------------------------------------------------------------ the four studies

def lr_scaling(runs, index):
    """Final held-out loss and steps to the target per (rule, workers); sqrt vs linear at each N."""
    target = index["report"]["target_loss"]
    rule = lambda r: r.fields["train.lr_scaling"] if r.workers > 1 else "none"
    loss = cells_by(runs, lambda r: (rule(r), r.workers), final_loss)
    steps = cells_by(runs, lambda r: (rule(r), r.workers), lambda r: to_loss(r, target), log=True)
    workers = sorted({w for _, w in loss})
    failed = cells_by(runs, lambda r: (rule(r), r.workers), learned_nothing)
    rules = ("none", "linear", "sqrt")
    rows = [[w] + [loss[(k, w)].text() if (k, w) in loss else "" for k in rules] +
            [steps[(k, w)].text(".0f") if (k, w) in steps else "" for k in rules] +
            [f"{sum(failed[(k, w)].values):.0f} of {len(failed[(k, w)].values)}" if (k, w) in failed else ""
             for k in rules] for w in workers]
    lines = [markdown(["workers", "final loss: none", "linear", "sqrt", f"steps to {target}: none", "linear", "sqrt",
                       "no better than constant: none", "linear", "sqrt"], rows),
             "", seeds_line(runs) + "; 'no better than constant': seeds whose final loss is at or above the loss "
             "of predicting the held-out labels' mean everywhere (a diverged or stalled run)", ""]
    for w in workers:
        if ("linear", w) in loss and ("sqrt", w) in loss:
            lines.append(f"- {w} workers: " + compare(loss[("sqrt", w)], loss[("linear", w)], "sqrt", "linear"))
    big = [w for w in workers if w > 16 and ("sqrt", w) in loss and ("linear", w) in loss]
    small = [w for w in workers if 1 < w < 16 and ("sqrt", w) in loss and ("linear", w) in loss]
    beyond = [winner(loss[("sqrt", w)], loss[("linear", w)]) for w in big]
    below = [winner(loss[("sqrt", w)], loss[("linear", w)]) for w in small]
    lines += ["", "The paper's claim, sqrt beats linear beyond 16 nodes and linear (with warmup) is best below: "
              + agreement(beyond, below, big, small)]
    return {"loss": loss, "steps": steps, "target": target}, lines


def agreement(beyond, below, big, small):
    """Whether per-N winners (0 = sqrt, 1 = linear, None = no difference) agree with the paper's claim."""
    def at(ns):
        return f" ({', '.join(map(str, ns))} workers)" if ns else ""
    said = [f"beyond 16{at(big)}: " + describe(beyond), f"below 16{at(small)}: " + describe(below)]
    agree_beyond = bool(beyond) and all(w == 0 for w in beyond)
    agree_below = bool(below) and all(w == 1 for w in below)
    verdict = ("the data agree" if agree_beyond and agree_below else
               "the data agree beyond 16 only" if agree_beyond else
               "the data agree below 16 only" if agree_below else "the data do not show it")
    return f"{verdict} ({'; '.join(said)})."


def describe(winners):
    if not winners:
        return "no runs"
    names = {0: "sqrt lower", 1: "linear lower", None: "no difference"}
    return ", ".join(names[w] for w in winners)


def batch_size(runs, index):
    """Final held-out loss per batch size at the fixed FOV budget and at the fixed step budget, and
    the training seconds to the target loss at the fixed FOV budget."""
    complete = [r for r in runs if r.complete]
    target = index["report"]["target_loss"]
    fovs = lambda r: r.fields["train.steps"] * r.fields["train.batch_size"]
    fov_budget = max({fovs(r) for r in complete}, key=lambda v: sum(fovs(r) == v for r in complete))
    step_budget = max({r.fields["train.steps"] for r in complete},
                      key=lambda v: sum(r.fields["train.steps"] == v for r in complete))
    budget = lambda r: "fixed FOVs" if fovs(r) == fov_budget else "fixed steps"
    cell = lambda r: (budget(r), r.fields["train.batch_size"])
    loss = cells_by(runs, cell, final_loss)
    seconds = cells_by(runs, cell, lambda r: r.summary["train_s"])
    to_target = cells_by(runs, cell, lambda r: to_loss(r, target, "time"), log=True)
    batches = sorted({b for _, b in loss})
    text = lambda cells, k, b, fmt=".3f": cells[(k, b)].text(fmt) if (k, b) in cells else ""
    rows = [[b, text(loss, "fixed FOVs", b), text(loss, "fixed steps", b), text(seconds, "fixed FOVs", b, ".0f"),
             text(to_target, "fixed FOVs", b, ".1f"), text(seconds, "fixed steps", b, ".0f")] for b in batches]
    lines = [markdown(["batch", f"final loss, {fov_budget} FOVs", f"final loss, {step_budget} steps",
                       "train s, fixed FOVs", f"train s to loss {target}, fixed FOVs", "train s, fixed steps"],
                      rows), "", seeds_line(runs), ""]
    lo_b, hi_b = batches[0], batches[-1]
    verdicts = {}
    for name, cells, k, what in (("per FOV", loss, "fixed FOVs", f"{fov_budget} FOVs: final loss"),
                                 ("per step", loss, "fixed steps", f"{step_budget} steps: final loss"),
                                 ("in wall time", to_target, "fixed FOVs", f"train s to loss {target}")):
        verdicts[name] = None
        if (k, lo_b) in cells and (k, hi_b) in cells:
            a, b = cells[(k, lo_b)], cells[(k, hi_b)]
            lines.append("- " + compare(a, b, f"batch {lo_b}", f"batch {hi_b}", what))
            verdicts[name] = winner(a, b)
    best = {k: min((b for kk, b in loss if kk == k), key=lambda b: loss[(k, b)].interval[0], default=None)
            for k in ("fixed FOVs", "fixed steps")}
    lines.append(f"- lowest mean final loss: batch {best['fixed FOVs']} at fixed FOVs, batch {best['fixed steps']} "
                 f"at fixed steps")
    names = {0: "small batches win", 1: "large batches win", None: "no difference"}
    agree = verdicts["per FOV"] == 0 and verdicts["per step"] == 1
    lines += ["", "The paper's claim, small batches win per FOV and large batches in wall time (in steps on a "
                  "cluster, where a node's step takes the same time whatever the global batch): "
              + "; ".join(f"{k} {names[v]}" for k, v in verdicts.items()) + " (wall time on this machine); "
              + ("the data agree per FOV and per step." if agree else "the data do not show both.")]
    return {"loss": loss, "fov_budget": fov_budget, "step_budget": step_budget, "budget": budget}, lines


def async_variant(run):
    """The sync_async study's series a run belongs to."""
    if not run.summary.get("staleness"):  # no gradient was applied stale: a synchronous run
        return f"sync, lr x {run.fields.get('train.lr_scaling')}"
    options = {k.split(".", 1)[1]: v for k, v in run.fields.items() if k.startswith("strategy_options.")}
    delay = options.get("delay", "round_robin")
    if delay == "histogram":
        name = "async, simulated tau"
    elif delay == "speeds":
        bound = options.get("max_staleness")
        name = "async, 1 in 4 slow" + (f", SSP {bound}" if bound is not None else "")
    else:
        name = "async, tau = N-1"
    return name + (", lr / tau" if options.get("lr_staleness") == "divide" else "")


def sync_async(runs, index):
    """Final held-out loss per (series, workers); async against sync at each N."""
    loss = cells_by(runs, lambda r: (async_variant(r), r.workers), final_loss)
    series = sorted({s for s, _ in loss}, key=lambda s: (not s.startswith("sync"), s))
    workers = sorted({w for _, w in loss})
    rows = [[s] + [loss[(s, w)].text() if (s, w) in loss else "" for w in workers] for s in series]
    lines = [markdown(["final held-out loss"] + [f"N={w}" for w in workers], rows), "", seeds_line(runs), ""]
    sync = next((s for s in series if s.startswith("sync")), None)
    worse = []
    for s in (s for s in series if not s.startswith("sync")):
        for w in workers:
            if (s, w) in loss and (sync, w) in loss:
                lines.append(f"- {w} workers: " + compare(loss[(s, w)], loss[(sync, w)], s, sync))
                if winner(loss[(s, w)], loss[(sync, w)]) == 1 and s == "async, tau = N-1":
                    worse.append(w)
    plain = [w for w in workers if ("async, tau = N-1", w) in loss]
    breaks = min(worse) if worse else None
    lines += ["", "google/ffn's manual, async convergence suffers beyond about 32 replicas: " +
              (f"here async (tau = N-1) is first worse than sync at {breaks} workers"
               + (" and at every larger N tested" if all(w in worse for w in plain if w > breaks) else "") + "."
               if breaks else f"async (tau = N-1) was not shown worse than sync at any N tested ({plain})."
               if plain else "no async runs yet.")]
    return {"loss": loss, "series": series}, lines


def segmentation(runs, index):
    """ARE and VOI per strategy on the test volume (the paper's table), with the trivial baselines."""
    evaluated = [r for r in runs if r.complete and r.seg]
    label = lambda r: f"{r.strategy} x{r.workers}"
    are = cells_by(evaluated, label, lambda r: r.seg["are"])
    voi = cells_by(evaluated, label, lambda r: r.seg["voi"])
    rows = [[m, are[m].text(), voi[m].text()] for m in are]
    data = (evaluated[0].config or {}).get("data", {}) if evaluated else {}
    volume = (f"synthetic, generator seed {TEST_VOLUME['seed']} and density {TEST_VOLUME['density']} "
              f"(training's: seed {data.get('seed')}, density {data.get('density')})" if evaluated else "?")
    if evaluated:
        for name, b in evaluated[0].seg["baselines"].items():
            rows.append([f"{name.replace('_', ' ')} (baseline)", f"{b['are']:.3f}", f"{b['voi']:.3f}"])
    lines = [markdown(["method", "ARE", "VOI"], rows), "", f"test volume: {volume}", seeds_line(evaluated), ""]
    methods = list(are)
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            lines.append("- " + compare(are[a], are[b], a, b, "ARE"))
            lines.append("- " + compare(voi[a], voi[b], a, b, "VOI"))
    if evaluated:
        base = min(b["are"] for b in evaluated[0].seg["baselines"].values())
        beats = [m for m in methods if are[m].interval[2] is not None and are[m].interval[2] < base]
        lines += ["", f"Beats the better trivial segmentation (ARE {base:.3f}) with its whole interval: "
                  + (", ".join(beats) if beats else "none") + "."]
    return {"are": are, "voi": voi, "baselines": evaluated[0].seg["baselines"] if evaluated else {}}, lines


# ------------------------------------------------------------------ the network study

#: a run's measured throughput and its workers' step seconds outside the exchange (kept by archive)
THROUGHPUT_FILE = "throughput.json"
#: the simulator's prediction of a shaped-link cell should be within this of the measurement
SIM_TOLERANCE = 0.10
SERIES = ("allreduce", "mpi_allreduce", "ps_sync", "ps_async, 1 server", "ps_async, sharded")


def link_of(run):
    """The link a run's nodes had: its rate, 'unshaped', or None (one node: no network)."""
    if (run.fields.get("run.nodes") or 1) == 1:
        return None
    return run.fields.get("run.link") or "unshaped"


def series_of(run):
    if run.strategy == "ps_async":
        return "ps_async, 1 server" if (run.fields.get("strategy_options.servers") or 1) == 1 else "ps_async, sharded"
    return run.strategy


def gradient_of(run):
    return f"{4 * run.summary['params'] / 1e6:.2f} MB"


def throughput(run):
    """{fovs_per_s: worker FOVs after warm-up over their wall time (the quantity the simulator
    predicts); compute_mean_s: a worker's seconds per step outside the exchange (its wall time per
    step less its mean comm_s: the emulated pass, the data and the harness between steps);
    compute_cv: that of its passes and data}, from the run's step records once, then from
    THROUGHPUT_FILE."""
    from ffnbench.bench.analyse.results import read_json
    from ffnbench.bench.analyse.simulate import measured_throughput
    from ffnbench.bench.run.summary import write_json_atomic
    path = os.path.join(run.run_dir, THROUGHPUT_FILE)
    cached = read_json(path)
    if cached is not None:
        return cached
    warm = run.fields["run.timing_warmup_steps"]
    by_rank = defaultdict(list)
    for r in run.records.steps:
        if r.step >= warm:
            by_rank[r.rank].append(r)
    outside = [(max(r.time for r in rs) - min(r.time - r.step_s for r in rs)) / len(rs) - np.mean([r.comm_s for r in rs])
               for rs in by_rank.values()]
    passes = np.array([r.compute_s + r.data_s + r.wait_s for rs in by_rank.values() for r in rs])
    result = {"fovs_per_s": measured_throughput(run.run_dir, warm), "compute_mean_s": float(np.mean(outside)),
              "compute_cv": float(passes.std() / passes.mean())}
    write_json_atomic(path, result)
    return result


def calibrate_links(sweep_dir, runs):
    """{(link, gradient): the simulator's network}, each from `ffnbench calibrate --link LINK` with that
    gradient (alpha, beta, the server's optimizer and the fan-in efficiency of a server's link, which
    depends on the message size) on an emulated cluster of its own, made once before any prediction
    reads it (SWEEP_DIR/calibration-LINK-GRADIENT.json): the predictions are out of sample. One node
    (link None) has no network."""
    from ffnbench.bench.analyse.simulate import network
    from ffnbench.bench.measure.calibrate import calibrate
    nets = {}
    for r in runs:
        key = (link_of(r), gradient_of(r)) if r.complete else None
        if key is None or key in nets:
            continue
        if key[0] is None:
            nets[key] = {}
            continue
        path = os.path.join(sweep_dir, f"calibration-{key[0]}-{key[1].replace(' ', '')}.json")
        if not os.path.isfile(path):
            calibrate(path, r.config, r.summary["params"], link=key[0])
            print(f"calibrated the {key[0]} link with {key[1]} gradients: {path}", flush=True)
        nets[key] = network(path)
    return nets


def predicted(run, net):
    """The simulator's FOVs/s for the run from its step seconds outside the exchange, its sizes and
    layout, and the link's calibration alone."""
    from ffnbench.bench.analyse.simulate import simulator_model
    from ffnbench.bench.analyse.simulator import SimInputs, simulate
    t = throughput(run)
    inputs = SimInputs(mean_s=t["compute_mean_s"], cv=t["compute_cv"], grad_bytes=4.0 * run.summary["params"],
                       batch_per_worker=run.fields["train.batch_size"],
                       servers=run.fields.get("strategy_options.servers") or 1, **net)
    return simulate(simulator_model(run.strategy), run.workers, inputs, steps=400)["fovs_per_s"]


def network(runs, index):
    """Throughput, scaling efficiency, comm share and staleness per (gradient, link, exchange, N),
    each beside the simulator's prediction from the link's calibration; where ring all-reduce
    overtakes ps_async with one server, measured (Holm over every N and link) and predicted."""
    nets = index["calibrations"]
    done = [r for r in runs if r.complete]
    links = sorted({link_of(r) for r in done} - {None}, key=lambda k: (k == "unshaped", k))
    cell = lambda r: (gradient_of(r), link_of(r), series_of(r), r.workers)
    fovs = cells_by(done, cell, lambda r: throughput(r)["fovs_per_s"], log=True)
    comm = cells_by(done, cell, lambda r: r.summary["comm_share"])
    stale = cells_by(done, cell, lambda r: (r.summary.get("staleness") or {}).get("mean"))
    sim = cells_by(done, cell, lambda r: predicted(r, nets[(link_of(r), gradient_of(r))]), log=True)
    alone = {k[0]: c for k, c in fovs.items() if k[1] is None and k[2] == "allreduce" and k[3] == 1}
    lines = [f"Compute is emulated (a timed wait per pass; the real exchange on real-sized gradients): "
             f"throughput, not convergence. {seeds_line(runs)}. Predictions: the simulator given each run's "
             f"step seconds outside the exchange and the link's calibration alone "
             f"({'; '.join(link_line(k, nets[k]) for k in sorted(nets, key=str) if k[0])}); "
             f"efficiency: FOVs/s over N times one worker's alone on one node.", ""]
    misses, comparisons = [], []
    for g in sorted({k[0] for k in fovs}, reverse=True):
        for link in links:
            rows = []
            for series in SERIES:
                for n in sorted({k[3] for k in fovs if k[:3] == (g, link, series)} |
                                ({1} if series in ("allreduce", "mpi_allreduce") else set())):
                    key = (g, link if n > 1 or series.startswith("ps") else None, series, n)
                    if key not in fovs:
                        continue
                    measured, prediction = fovs[key], sim[key]
                    ratio = prediction.interval[0] / measured.interval[0]
                    base = alone.get(g)
                    eff = f"{measured.interval[0] / (n * base.interval[0]):.2f}" if base else ""
                    tau = stale[key].known
                    rows.append([series, n, measured.text(".1f"), eff, comm[key].text(".2f"),
                                 f"{np.mean(tau):.1f}" if tau else "", f"{prediction.interval[0]:.1f}",
                                 f"{ratio:.2f}"])
                    if link != "unshaped" and key[1] is not None and abs(ratio - 1) > SIM_TOLERANCE:
                        misses.append(f"{g}, {link}, {series}, N={n}: simulator / measured {ratio:.2f}")
            lines += [f"### {g} gradients, links {link}", "",
                      markdown(["exchange", "N", "FOVs/s [95 %]", "efficiency", "comm share", "staleness",
                                "simulated FOVs/s", "simulated / measured"], rows), ""]
            for n in sorted({k[3] for k in fovs if k[:3] == (g, link, "allreduce")}):
                ring, ps = fovs.get((g, link, "allreduce", n)), fovs.get((g, link, "ps_async, 1 server", n))
                if ring and ps and len(ring.known) > 1 and len(ps.known) > 1:
                    comparisons.append(((g, link, n), ring, ps, sim[(g, link, "allreduce", n)],
                                        sim[(g, link, "ps_async, 1 server", n)]))
    lines += crossover_lines(comparisons)
    lines += ["", f"Shaped-link cells whose simulator / measured is beyond {SIM_TOLERANCE:.0%}: "
              + ("; ".join(misses) if misses else "none") + "."]
    return {"fovs": fovs, "sim": sim, "comm": comm, "stale": stale, "links": links, "alone": alone}, lines


def link_line(key, net):
    fan_in = ", ".join(f"{k}: {e:.2f}" for k, e in net.get("fan_in") or ())
    return (f"{key[0]} with {key[1]}: alpha {net['alpha_s'] * 1e6:.0f} us, 1/beta {8 / net['beta_s_per_byte'] / 1e6:.0f} "
            f"Mbit/s, fan-in {fan_in or 'not measured'}")


def crossover_lines(comparisons):
    """Ring all-reduce against ps_async with one server at each (gradient, link, N): the ratio of
    their FOVs/s with its 95 % interval and Welch's p on logs, Holm-adjusted over the whole family;
    then per gradient and link where each is faster, measured and simulated, and the crossover: the
    N from which the ring is faster after one server was (or that there is none in the N tested)."""
    if not comparisons:
        return ["Ring against one server: no N with 2 or more seeds of both yet."]
    adjusted = holm([log_ratio_p(ring.known, ps.known) for _, ring, ps, _, _ in comparisons])
    lines = ["Ring all-reduce ÷ ps_async with one server (FOVs/s; Welch on logs, Holm-adjusted over "
             f"{len(comparisons)} comparisons):", ""]
    verdicts = defaultdict(list)
    for ((g, link, n), ring, ps, sim_ring, sim_ps), p in zip(comparisons, adjusted):
        ratio, lo, hi = ratio_ci(ring.known, ps.known)
        measured = "ring" if p < 0.05 and lo > 1 else "one server" if p < 0.05 and hi < 1 else None
        simulated = sim_ring.interval[0] / sim_ps.interval[0]
        verdicts[(g, link)].append((n, measured, "ring" if simulated > 1 else "one server"))
        lines.append(f"- {g}, {link}, N={n}: {ratio:.2f} [{lo:.2f}, {hi:.2f}], Holm p {p:.3f}: "
                     f"{measured + ' faster' if measured else 'no difference shown'}; simulated {simulated:.2f}")
    lines.append("")
    for (g, link), rows in verdicts.items():
        lines.append(f"- {g} gradients, {link}: measured {faster_where(rows, 1)}; simulated {faster_where(rows, 2)}")
    return lines


def faster_where(rows, column):
    """'ring faster at N=8, 16; no difference shown at N=2, 4; crossover at N=8' from (N, measured,
    simulated) rows: the crossover is the N from which the ring is faster after one server was."""
    said = []
    for who in ("ring", "one server", None):
        ns = [str(row[0]) for row in rows if row[column] == who]
        if ns:
            said.append(f"{who + ' faster' if who else 'no difference shown'} at N={', '.join(ns)}")
    server_then_ring = [row[0] for i, row in enumerate(rows) if row[column] == "ring"
                        and any(r[column] == "one server" for r in rows[:i])]
    said.append(f"crossover at N={server_then_ring[0]}" if server_then_ring else
                "no crossover in the N tested")
    return "; ".join(said)

ANALYSES = {"lr_scaling": lr_scaling, "batch_size": batch_size, "sync_async": sync_async, "segmentation": segmentation,
            "network": network}


def study_file(name):
    """configs/studies/NAME.yaml (or NAME itself, a path); one ConfigError line if there is none."""
    path = name if name.endswith((".yaml", ".yml")) else os.path.join(STUDY_DIR, f"{name}.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"study {name}: no {path} (studies: {', '.join(sorted(ANALYSES))}; run from the "
                          f"ffnbench checkout)")
    return path


def evaluate_on_test_volume(sweep_dir, runs):
    """Flood-fill the test volume with every complete run's model not yet scored on it (eval.json).

    A run was scored on it if its eval.json names SWEEP_DIR's test_volume.h5, wherever that directory
    has since moved: an archived study (no checkpoints, no test volume) is redrawn without re-scoring.
    """
    from ffnbench.bench.measure.segmentation_eval import evaluate
    from ffnbench.model.synthetic import make_volume, write_h5
    path = os.path.join(sweep_dir, "test_volume.h5")
    spec = f"{path}:image,{path}:labels"

    def scored(r):
        return r.seg and [os.path.basename(p) for p in r.seg.get("volume", "").split(",")] == \
            ["test_volume.h5:image", "test_volume.h5:labels"]
    todo = [r for r in runs if r.complete and not scored(r)]
    if todo and not os.path.exists(path):
        image, labels = make_volume(tuple(todo[0].config["data"]["shape"]), **TEST_VOLUME)
        write_h5(path + ".tmp", image, labels)
        os.replace(path + ".tmp", path)
    for r in todo:
        r.seg, _ = evaluate(r.run_dir, spec, progress=False)
        print(f"{r.run_id}: ARE {r.seg['are']:.3f} VOI {r.seg['voi']:.3f}", flush=True)


#: what a study's analysis reads of a run; the rest (per-step records, checkpoints, traces) stays behind
EVIDENCE_FILES = ("config.yaml", "manifest.json", "summary.json", "eval.json", THROUGHPUT_FILE)
EVIDENCE_RECORDS = ("eval", "lost", "resume")


def archive(name, sweep_dir, dest):
    """Copy the evidence of SWEEP_DIR's complete runs to DEST (a few kB a run, small enough to commit),
    with the analysis and figures: `ffnbench study NAME --out DEST --analyse-only` redraws from it and
    `ffnbench study NAME --out DEST` resumes the study there (complete runs are skipped).

    Returns:
        how many runs were archived.
    """
    if os.path.realpath(dest) == os.path.realpath(sweep_dir):
        raise ValueError(f"--archive {dest}: that is the study's own directory; archive to another")
    runs, index = collect_runs(sweep_dir)
    os.makedirs(dest, exist_ok=True)
    kept = 0
    for r in runs:
        if not r.complete:
            continue
        to = os.path.join(dest, r.run_id)
        os.makedirs(to, exist_ok=True)
        for f in EVIDENCE_FILES:
            if os.path.isfile(os.path.join(r.run_dir, f)):
                shutil.copyfile(os.path.join(r.run_dir, f), os.path.join(to, f))
        with open(os.path.join(r.run_dir, "metrics.jsonl")) as src, open(os.path.join(to, "metrics.jsonl"), "w") as out:
            out.writelines(line for line in src if json.loads(line).get("kind") in EVIDENCE_RECORDS)
        kept += 1
    entries = [{**e, "run_dir": os.path.abspath(os.path.join(dest, e["id"]))} for e in index["runs"]]
    with open(os.path.join(dest, "index.json"), "w") as f:
        json.dump({**index, "runs": entries}, f, indent=1)
    for f in os.listdir(sweep_dir):
        if f.startswith(name + ".") and f.endswith((".md", ".png")) or f.startswith("calibration-"):
            shutil.copyfile(os.path.join(sweep_dir, f), os.path.join(dest, f))
    return kept


def analyse(name, sweep_dir):
    """Write SWEEP_DIR/NAME.md from the runs complete so far.

    Returns:
        (runs, the analysis' data for the study's figure, the conclusion lines, the .md path).
    """
    runs, index = collect_runs(sweep_dir)
    if name == "segmentation":
        evaluate_on_test_volume(sweep_dir, runs)
    if not any(r.complete for r in runs):
        raise ValueError(f"{sweep_dir}: no complete runs to analyse yet")
    if name == "network":
        index = {**(index or {}), "calibrations": calibrate_links(sweep_dir, runs)}
    data, lines = ANALYSES[name](runs, index)
    text = os.path.join(sweep_dir, f"{name}.md")
    with open(text + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(text + ".tmp", text)
    return runs, data, lines, text
