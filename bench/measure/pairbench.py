"""`ffnbench pairbench`: how close a 2-rank strategy comes to two processes that never talk.

Two 1-thread workers can at best train at twice one worker's rate; on a shared machine two
processes get less than that even when they never exchange a byte (memory bandwidth, the OS, the
clock). So each round measures, one after the other:
  - the unit: a 1-thread `single` run alone;
  - the pair ceiling: two 1-thread `single` runs started together (seeds 0 and 1), their rates summed:
    what the machine gives two independent processes;
  - each candidate: a 2-rank run at 1 thread per rank (a strategy and its options).
Every figure is a rate ÷ (2 × the unit) of the same round; the medians over the rounds are the
result, since separate runs on a shared machine drift by tens of per cent. A candidate above the
ceiling (beyond noise) means the ceiling is wrong, and the table says so.
"""
import json
import os
import subprocess
import time

import numpy as np

from ffnbench.bench.run import processes
from ffnbench.bench.run.manifest import cpu_model

#: the default candidate: Horovod's ring all-reduce over two ranks
DEFAULT_CANDIDATES = ("strategy=allreduce ranks=2",)
#: a candidate this far above the pair ceiling beats what two independent processes get
ABOVE_CEILING = 1.05
UNIT, CEILING = "single, 1 thread, alone", "pair ceiling: 2 x single, 1 thread, together"


class CandidateError(ValueError):
    """A --candidate that is not KEY=VALUE overrides."""


def parse_candidate(text):
    """'strategy=allreduce ranks=2' -> ['strategy=allreduce', 'ranks=2'] (values are YAML)."""
    overrides = text.split()
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0]]
    if not overrides or bad:
        raise CandidateError(f"--candidate {text!r}: must be space-separated KEY=VALUE overrides, "
                             "such as: strategy=allreduce ranks=2")
    return overrides


def _start(cli_command, config_path, overrides, run_dir, seed=0):
    sets = ["run.threads_per_rank=1", f"train.seed={seed}", "eval.every=0", *overrides]
    argv = cli_command("run", config_path, *[a for s in sets for a in ("--set", s)], "--out", run_dir)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=processes.rank_environment())


def _rate(proc, run_dir, timeout_s):
    """The run's steady-state FOVs/s; RuntimeError when it did not complete."""
    status, _, err = processes.finish(proc, timeout_s, run_dir)
    path = os.path.join(run_dir, "summary.json")
    summary = json.load(open(path)) if os.path.exists(path) else {}
    if status != 0 or summary.get("status") != "complete":
        last = (err or "").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{run_dir}: did not complete ({last[0]})")
    return float(summary["fovs_per_s"]["mean"])


def one_round(config_path, common, candidates, out, cli_command, timeout_s):
    """{name: FOVs/s} of the unit, the pair ceiling (summed) and each candidate, run one after the other;
    `common`: overrides of every run."""
    def run(name, overrides):
        run_dir = os.path.join(out, name.replace(" ", "_").replace("=", "-"))
        return _rate(_start(cli_command, config_path, common + overrides, run_dir), run_dir, timeout_s)

    unit = ["strategy=single", "ranks=1"]
    rates = {UNIT: run("single", unit)}
    dirs = [os.path.join(out, f"pair-{seed}") for seed in (0, 1)]
    started = [_start(cli_command, config_path, common + unit, d, seed) for seed, d in enumerate(dirs)]
    rates[CEILING] = sum(_rate(p, d, timeout_s) for p, d in zip(started, dirs))
    for candidate in candidates:
        rates[candidate] = run(candidate, parse_candidate(candidate))
    return rates


def ratios(rounds):
    """Each round's rates ÷ (2 × its unit), the unit left out; {name: [ratio per round]}."""
    return {name: [r[name] / (2 * r[UNIT]) for r in rounds] for name in rounds[0] if name != UNIT}


def print_table(rounds, stamp):
    """The medians over the rounds, each round's ratio beside; the candidates above the ceiling."""
    per_name = ratios(rounds)
    print(f"÷ 2 x a 1-thread single run alone, in the same round; median over {len(rounds)} rounds ({stamp}):")
    for name, values in per_name.items():
        each = ", ".join(f"{v:.3f}" for v in values)
        print(f"  {name:60s} {np.median(values):6.3f}   (rounds: {each})")
    units = [r[UNIT] for r in rounds]
    print(f"  unit: {np.median(units):.1f} FOVs/s (rounds: {', '.join(f'{u:.1f}' for u in units)})")
    ceiling = np.median(per_name[CEILING])
    above = [n for n, v in per_name.items() if n != CEILING and np.median(v) > ABOVE_CEILING * ceiling]
    if above:
        print(f"warning: {', '.join(above)} beat the pair ceiling by more than {ABOVE_CEILING - 1:.0%}: two "
              f"independent processes should bound them, so the ceiling was measured wrong")
    return above


def measure(config_path, common, candidates, out, rounds, cli_command, timeout_s=1800):
    """Run the rounds into `out` (round-K/...), write pairbench.json there, print the table; `common`:
    overrides of every run."""
    from tqdm import tqdm
    for candidate in candidates:
        parse_candidate(candidate)
    os.makedirs(out, exist_ok=True)
    results = [one_round(config_path, common, candidates, os.path.join(out, f"round-{k}"), cli_command, timeout_s)
               for k in tqdm(range(rounds), desc="pairbench rounds", unit="round")]
    stamp = f"{time.strftime('%Y-%m-%d')}, {cpu_model()}, {os.cpu_count()} cores"
    with open(os.path.join(out, "pairbench.json"), "w") as f:
        json.dump({"config": config_path, "set": list(common), "candidates": list(candidates), "machine": stamp,
                   "rounds": results, "ratios": ratios(results)}, f, indent=1)
    return print_table(results, stamp)
