"""`ffnbench sweep SWEEP.yaml`: run many experiments from one base config, resumably.

A sweep file:

    name: demo                       # default: the file's stem
    base: ../bench.yaml              # relative to the sweep file, else to the working directory
    set: {train.optimizer: adam}     # overrides shared by every run
    presets:                         # optional: named groups of overrides a variant takes whole
      small: {model.depth: 4, model.features: 16}
    runs:                            # run variants: a list of override mappings ...
      - {strategy: single, ranks: 1}
      - {preset: small, strategy: single, ranks: 1}   # its directory says preset=small
      - {strategy: allreduce, ranks: 2, repeats: 6}   # `repeats` in a variant overrides the sweep's
    grid:                            # ... and/or a grid: every combination of these values
      train.lr: [0.001, 0.003]
    fov_budget: 2400                 # optional: train.steps = ceil(budget / (workers * batch_size))
    repeats: 1                       # each variant this many times
    report: {target_loss: 0.45}      # held-out loss for time to target, read by `ffnbench report`
                                     # (target_f1 draws a line in the F1 panels of the figures)
    out: results/sweeps              # results go to OUT/NAME (or to --out DIR)

Runs are every `runs` variant combined with every grid point (either may be absent, not both).
`fov_budget` gives each run the same FOVs in total whatever its worker count, which a cartesian
grid cannot express by itself ("single needs twice the steps of two workers"). Workers are those
the strategy lays out on the ranks (the logical workers of emulated strategies).

Repeat r of a run adds r to its train.seed (weights and example streams); the held-out volume and
its FOVs depend on data.seed only, so every run of a sweep is evaluated on the same FOVs. The
report gives each experiment's mean and 95 % confidence interval over its repeats.
`ffnbench sweep FILE --set train.seed=100` starts the repeats from another seed.

Each run's directory is named after its variant and grid values, e.g.
`strategy=allreduce,ranks=2,rep=0`, so re-running the sweep finds it again: runs whose directory
holds summary.json are skipped, which resumes an interrupted sweep. OUT/NAME/index.json records
the sweep and every run's status (complete | failed | pending) and error.
"""
import hashlib
import itertools
import math
import os
import re
import signal
import sys
import time

from ffnbench.bench import config
from ffnbench.bench.run import launcher, peak
from ffnbench.bench.run.context import layout_of
from ffnbench.bench.analyse.results import COMPLETE, DEFAULT_TARGET_F1, is_complete, stored_config
from ffnbench.bench.config import ConfigError
from ffnbench.bench.run.summary import write_json_atomic

SWEEP_KEYS = ("name", "base", "set", "presets", "runs", "grid", "fov_budget", "repeats", "report", "out")
REPORT_KEYS = ("target_loss", "target_f1")


def load_sweep(path):
    """Read and check a sweep file; every problem is one ConfigError line naming the key."""
    spec = config.read_mapping(path, "sweep file")

    def bad(key, message):
        return ConfigError(f"sweep file {path}: {key}: {message}")

    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise bad(unknown[0], f"unknown key (known: {', '.join(SWEEP_KEYS)})")
    if "base" not in spec or not isinstance(spec["base"], str):
        raise bad("base", "required: the path of the base config")
    if "grid" not in spec and "runs" not in spec:
        raise bad("grid", "required (or a runs list)")
    grid = spec.get("grid", {})
    if "grid" in spec:
        if not isinstance(grid, dict) or not grid:
            raise bad("grid", "must be a non-empty mapping of dotted.key: [values]")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise bad(f"grid.{key}", f"must be a non-empty list of values (got {values!r})")
    runs = spec.get("runs", [{}])
    if "runs" in spec and (not isinstance(runs, list) or not runs
                           or not all(isinstance(r, dict) and r for r in runs)):
        raise bad("runs", "must be a non-empty list of non-empty mappings of dotted.key: value")
    presets = spec.get("presets", {})
    if not isinstance(presets, dict) or not all(isinstance(p, dict) and p for p in presets.values()):
        raise bad("presets", "must be a mapping of name: {dotted.key: value}")
    for i, r in enumerate(runs):
        if "preset" in r and r["preset"] not in presets:
            raise bad(f"runs[{i}].preset", f"{r['preset']!r} is not one of presets ({', '.join(presets) or 'none'})")
        if "repeats" in r and (not isinstance(r["repeats"], int) or isinstance(r["repeats"], bool) or r["repeats"] < 1):
            raise bad(f"runs[{i}].repeats", f"must be an integer >= 1 (got {r['repeats']!r})")
    both = sorted({k for r in runs for k in r} & set(grid))
    if both:
        raise bad(both[0], "is set by both runs and grid")
    fixed = spec.get("set", {})
    if not isinstance(fixed, dict):
        raise bad("set", "must be a mapping of dotted.key: value")
    budget = spec.get("fov_budget")
    if budget is not None:
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise bad("fov_budget", f"must be an integer >= 1 (got {budget!r})")
        clash = "train.steps" in fixed or "train.steps" in grid or any("train.steps" in r for r in runs)
        if clash:
            raise bad("fov_budget", "sets train.steps, so train.steps cannot also be given")
    repeats = spec.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise bad("repeats", f"must be an integer >= 1 (got {repeats!r})")
    report = spec.get("report", {})
    if not isinstance(report, dict) or set(report) - set(REPORT_KEYS):
        raise bad("report", f"must be a mapping with keys from: {', '.join(REPORT_KEYS)}")
    target = report.get("target_f1", DEFAULT_TARGET_F1)
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < target <= 1:
        raise bad("report.target_f1", f"must be a number in (0, 1] (got {target!r})")
    target_loss = report.get("target_loss")
    if target_loss is not None and (not isinstance(target_loss, (int, float)) or isinstance(target_loss, bool)
                                    or target_loss <= 0):
        raise bad("report.target_loss", f"must be a number > 0 (got {target_loss!r})")
    name = spec.get("name", os.path.splitext(os.path.basename(path))[0])
    out = spec.get("out", "results/sweeps")
    for key, value in (("name", name), ("out", out)):
        if not isinstance(value, str) or not value:
            raise bad(key, "must be a non-empty string")
    return {"file": os.path.abspath(path), "name": name, "base": resolve_base(path, spec["base"]), "set": fixed,
            "presets": presets, "runs": runs, "grid": grid, "fov_budget": budget, "repeats": repeats,
            "report": {"target_f1": float(target), "target_loss": target_loss}, "out": out}


def resolve_base(sweep_path, base):
    """The base config next to the sweep file wins; then the working directory."""
    for candidate in (os.path.join(os.path.dirname(os.path.abspath(sweep_path)), base), base):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise ConfigError(f"sweep file {sweep_path}: base: config {base} not found next to the sweep file or in "
                      f"the working directory")


def format_value(value):
    """Compact, deterministic text for a run id: 0.001, 9x9x9, workers-4."""
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, list):
        return "x".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}-{format_value(v)}" for k, v in sorted(value.items()))
    return str(value)


#: a value longer than this (a staleness histogram, say) appears in a run's directory name as a hash,
#: so names stay within the file system's 255 bytes
LONGEST_VALUE_IN_ID = 48


def id_value(value):
    text = format_value(value)
    if len(text) <= LONGEST_VALUE_IN_ID:
        return text
    return "sha256-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def run_id(overrides, repeat):
    """Directory name of a run: its varying values in order, then the repeat index."""
    parts = [f"{key}={id_value(value)}" for key, value in overrides.items()] + [f"rep={repeat}"]
    rid = re.sub(r"[^A-Za-z0-9._,=+-]", "_", ",".join(parts))
    if len(rid) > 255:
        raise ConfigError(f"sweep run {rid[:60]}...: its directory name is {len(rid)} characters, more than a file "
                          f"system allows (255); vary fewer keys in one variant")
    return rid


def plan(sweep, here=True):
    """Every run of the sweep, resolved and validated: [{id, overrides, config}].

    Raises ConfigError naming the run before anything has been started.
    """
    keys = list(sweep["grid"])
    planned, seen = [], {}
    # repeats outermost: each round runs every variant once, so a machine's drift over the sweep
    # falls on all of them alike (interleaved, not one variant's repeats back to back)
    repeats = [variant.get("repeats", sweep["repeats"]) for variant in sweep["runs"]]
    for rep in range(max(repeats)):
        for variant, times in zip(sweep["runs"], repeats):
            if rep >= times:
                continue
            variant = {k: v for k, v in variant.items() if k != "repeats"}
            for values in itertools.product(*(sweep["grid"][k] for k in keys)):
                varying = {**variant, **dict(zip(keys, values))}
                rid = run_id(varying, rep)
                if rid in seen:
                    raise ConfigError(f"sweep file {sweep['file']}: runs {seen[rid]} and {len(planned)} are the "
                                      f"same run ({rid})")
                seen[rid] = len(planned)
                preset = sweep["presets"].get(varying.get("preset"), {})
                overrides = {**sweep["set"], **preset, **{k: v for k, v in varying.items() if k != "preset"}}
                try:
                    cfg = config.load(sweep["base"], list(overrides.items()))
                    # a repeat is the same experiment from another seed (weights and example streams);
                    # the held-out volume and FOVs depend on data.seed only, so they stay the same
                    overrides["train.seed"] = cfg["train"]["seed"] + rep
                    cfg["train"]["seed"] += rep
                    layout = layout_of(cfg)
                    if sweep["fov_budget"]:
                        steps = math.ceil(sweep["fov_budget"] / (layout.workers * cfg["train"]["batch_size"]))
                        overrides["train.steps"] = steps
                        cfg["train"]["steps"] = steps
                    launcher.check_inputs(cfg, layout, here=here)
                except ValueError as e:
                    raise ConfigError(f"sweep run {rid}: {e}")
                planned.append({"id": rid, "overrides": overrides, "config": cfg})
    return planned


def with_defaults(stored):
    """A finished run's config as this version resolves it: fields added since it ran take their
    defaults, so a study can resume across versions; None if it no longer validates."""
    try:
        return config.load(base=stored)
    except ConfigError:
        return None


def training_part(cfg):
    """A config without its inference settings, which a finished training run does not depend on."""
    return None if cfg is None else {k: v for k, v in cfg.items() if k != "inference"}


def check_resumable(planned, sweep_dir):
    """A finished run whose training config differs from the sweep's must not be mistaken for its result."""
    for run in planned:
        run_dir = os.path.join(sweep_dir, run["id"])
        if is_complete(run_dir) and training_part(with_defaults(stored_config(run_dir))) != training_part(run["config"]):
            raise ConfigError(f"sweep run {run['id']}: {run_dir} holds a completed run with a different config; "
                              f"move it away or use another --out")


class OutputToFile:
    """Send this process's and the launched ranks' stdout/stderr to a log file for one run.

    The launcher lets the ranks inherit our terminal; the sweep keeps the terminal for its own
    progress bar and one line per run, and the run's output ends up next to its results.
    """

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        log = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)


def write_index(sweep, sweep_dir, entries):
    write_json_atomic(os.path.join(sweep_dir, "index.json"), {
        "name": sweep["name"], "file": sweep["file"], "base": sweep["base"], "set": sweep["set"],
        "grid": sweep["grid"], "fov_budget": sweep["fov_budget"], "repeats": sweep["repeats"],
        "report": sweep["report"], "runs": entries})


def _stop(signum, frame):
    raise launcher.Interrupted(signum)


def prepare(path, out, overrides, here=True, chosen=None):
    """The sweep file with `overrides` (KEY=VALUE) added to its `set`, its planned runs, and its
    results directory (created), refusing to resume over runs of another config, or a `chosen`
    pattern (run_sweep's --only) that matches no run. `here`: the runs train on this machine (not a
    cluster's nodes)."""
    sweep = load_sweep(path)
    for item in overrides:
        key, value = config.parse_override(item)
        sweep["set"][key] = value
    planned = plan(sweep, here)
    if chosen is not None and not any(chosen.search(run["id"]) for run in planned):
        raise ConfigError(f"--only {chosen.pattern}: matches none of the sweep's {len(planned)} runs")
    sweep_dir = os.path.abspath(out or os.path.join(sweep["out"], sweep["name"]))
    check_resumable(planned, sweep_dir)
    os.makedirs(sweep_dir, exist_ok=True)
    return sweep, planned, sweep_dir


def run_sweep(path, out=None, overrides=(), only=None):
    """Run (or resume) a sweep; `overrides` (KEY=VALUE) are added to its `set`; `only`: a regular
    expression, and only runs whose id it matches (re.search) run now, the rest stay pending.
    Returns (sweep_dir, number of failed runs)."""
    from tqdm import tqdm
    try:
        chosen = re.compile(only or "")
    except re.error as e:
        raise ConfigError(f"--only {only}: not a regular expression ({e})")
    sweep, planned, sweep_dir = prepare(path, out, overrides, chosen=chosen)
    entries = []
    for run in planned:
        run_dir = os.path.join(sweep_dir, run["id"])
        done = is_complete(run_dir)
        entries.append({"id": run["id"], "overrides": run["overrides"], "run_dir": run_dir,
                        "status": COMPLETE if done else "pending", "error": None})
    write_index(sweep, sweep_dir, entries)
    print(f"sweep {sweep['name']}: {len(planned)} runs in {sweep_dir}"
          + (f" ({sum(bool(chosen.search(r['id'])) for r in planned)} of them chosen by --only)" if only else ""),
          flush=True)
    # measured once, while nothing else of the sweep runs, and given to every run (MFU's denominator)
    todo = [chosen.search(r["id"]) is not None and e["status"] != COMPLETE for r, e in zip(planned, entries)]
    node_peak = peak.node_peak(during="before the sweep's runs started") if any(todo) else None
    signal.signal(signal.SIGTERM, _stop)  # between runs too: the index records the interruption
    console = os.fdopen(os.dup(1), "w")  # stays on the terminal while runs write to their logs
    failed = 0
    with tqdm(total=len(planned), desc=sweep["name"], unit="run", file=console, dynamic_ncols=True) as bar:
        for run, entry, due in zip(planned, entries, todo):
            if not due:
                if entry["status"] == COMPLETE:
                    bar.write(f"{run['id']}: skipped (already complete)")
                bar.update(1)
                continue
            bar.set_postfix_str(run["id"])
            os.makedirs(entry["run_dir"], exist_ok=True)
            start = time.time()
            try:
                volumes = os.path.join(sweep_dir, "volumes")
                with OutputToFile(os.path.join(entry["run_dir"], "output.log")):
                    if launcher.can_resume(entry["run_dir"]):  # an interrupted attempt left a checkpoint
                        _, error = launcher.resume_experiment(entry["run_dir"], node_peak, volumes)
                    else:
                        _, error = launcher.run_experiment(run["config"], entry["run_dir"], node_peak, volumes)
            except KeyboardInterrupt:
                entry["status"], entry["error"] = "interrupted", "interrupted"
                write_index(sweep, sweep_dir, entries)
                raise
            except ValueError as e:
                error = str(e)
            entry["status"], entry["error"] = ("failed", error) if error else (COMPLETE, None)
            failed += bool(error)
            write_index(sweep, sweep_dir, entries)
            outcome = f"FAILED: {error}" if error else f"complete in {time.time() - start:.0f} s"
            bar.write(f"{run['id']}: {outcome}")
            bar.update(1)
    console.close()
    return sweep_dir, failed
