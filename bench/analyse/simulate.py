"""`ffnbench simulate`: predicted throughput at N workers, and predicted vs measured for real runs.

Each strategy declares the simulator model that describes it (its traits.simulator_model, strategies/declare.py),
so a new strategy is modelled without being named here.
"""
import json
import os

from ffnbench import strategies
from ffnbench.bench.analyse.results import is_complete, read_records
from ffnbench.bench.analyse.simulator import NETWORK_PRESETS, SimInputs, simulate


def simulator_model(strategy):
    """The simulator model a registered strategy declares (None: it declares none)."""
    return strategies.get(strategy).traits.simulator_model


def modelled_strategies():
    """Registered strategies that declare a simulator model, in display order."""
    return [name for name in strategies.names() if simulator_model(name)]


def network(name_or_path):
    """A preset name (e.g. theta_aries) or a calibration JSON written by `ffnbench calibrate`."""
    if name_or_path in NETWORK_PRESETS:
        return dict(NETWORK_PRESETS[name_or_path])
    if not os.path.isfile(name_or_path):
        raise FileNotFoundError(f"--network {name_or_path}: neither a preset "
                                f"({', '.join(NETWORK_PRESETS)}) nor a calibration file")
    with open(name_or_path) as f:
        cal = json.load(f)
    net = {k: cal[k] for k in ("alpha_s", "beta_s_per_byte", "server_apply_s_per_byte") if k in cal}
    if cal.get("fan_in"):
        net["fan_in"] = tuple((int(k), float(e)) for k, e in cal["fan_in"])
    return net


def inputs_from_run(run_dir, net):
    """Per-step compute (+ data) seconds of every worker step after warm-up, the run's batch,
    gradient size and servers."""
    with open(os.path.join(run_dir, "manifest.json")) as f:
        manifest = json.load(f)
    cfg = manifest["config"]
    warm = cfg["run"]["timing_warmup_steps"]
    steps = [r for r in read_records(run_dir).steps if r.step >= warm]
    samples = [r.compute_s + r.data_s + r.wait_s for r in steps]
    servers = manifest["role_counts"].get("server", 1)
    return manifest, SimInputs(samples=samples, grad_bytes=4.0 * manifest["params"],
                               batch_per_worker=cfg["train"]["batch_size"], servers=servers, **net)


def measured_throughput(run_dir, warm):
    """Worker FOVs after warm-up over the wall time they took: the quantity the simulator predicts
    (a ratio of totals, not the mean of per-step rates that the summary line reports)."""
    steps = [r for r in read_records(run_dir).steps if r.step >= warm]
    start = min(r.time - r.step_s for r in steps)
    return sum(r.fovs for r in steps) / (max(r.time for r in steps) - start)


def validate(dirs, net):
    """Predicted vs measured for every complete run below `dirs`.

    Returns:
        (rows of {run, strategy, workers, measured, predicted, ratio}, notes on runs not modelled).
    """
    rows, notes = [], []
    for top in dirs:
        for root, _, files in sorted(os.walk(top)):
            if not is_complete(root):
                continue
            with open(os.path.join(root, "summary.json")) as f:
                summary = json.load(f)
            name = summary["strategy"]
            model = simulator_model(name) if name in strategies.names() else None
            if model is None:
                why = "declares no simulator model" if name in strategies.names() else "is not a registered strategy"
                notes.append(f"{os.path.relpath(root, top)}: not modelled ({name} {why})")
                continue
            manifest, inp = inputs_from_run(root, net)
            predicted = simulate(model, summary["workers"], inp, steps=2000)["fovs_per_s"]
            measured = measured_throughput(root, manifest["config"]["run"]["timing_warmup_steps"])
            rows.append({"run": os.path.relpath(root, top), "strategy": summary["strategy"],
                         "workers": summary["workers"], "measured": measured, "predicted": predicted,
                         "ratio": predicted / measured})
    return rows, notes


def scaling_table(strategy, workers, inp):
    """Predicted throughput of a registered strategy at each worker count."""
    return [simulate(simulator_model(strategy), n, inp, steps=400) for n in workers]


def format_validation(rows):
    lines = ["| run | strategy | workers | measured FOVs/s | predicted FOVs/s | predicted / measured |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['strategy']} | {r['workers']} | {r['measured']:.2f} | {r['predicted']:.2f} "
              f"| {r['ratio']:.3f} |" for r in rows]
    return "\n".join(lines)


def format_scaling(results):
    lines = ["| workers | FOVs/s | step s | efficiency | staleness mean | staleness p99 |", "|---|---|---|---|---|---|"]
    for r in results:
        st = r.get("staleness") or {}
        lines.append(f"| {r['n_workers']} | {r['fovs_per_s']:.1f} | {r['step_s_mean']:.3f} | {r['efficiency']:.3f} "
                     f"| {st.get('mean', float('nan')):.2f} | {st.get('p99', float('nan')):.0f} |")
    return "\n".join(lines)


def format_histograms(results):
    """The predicted staleness distributions as emulated_async runs of a sweep file (YAML flow mappings)."""
    lines = ["# staleness_histogram: predicted counts of tau = 0, 1, ... (after warm-up)"]
    for r in results:
        if r.get("staleness"):
            lines.append(f"- {{strategy_options.workers: {r['n_workers']}, strategy_options.delay: histogram, "
                         f"strategy_options.staleness_histogram: {r['staleness']['counts_by_tau']}}}")
    return "\n".join(lines)


def parse_workers(text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--workers {text}: expected a comma-separated list of integers")
    if min(values) < 1:
        raise ValueError(f"--workers {text}: worker counts must be >= 1")
    return values


def compute_inputs(args, net):
    if args.run:
        return inputs_from_run(args.run, net)[1]
    return SimInputs(mean_s=args.mean_s, cv=args.cv, batch_per_worker=args.batch, grad_bytes=4.0 * args.params,
                     servers=args.servers or 1, **net)
