"""`ffnbench run`: resolve the config, make the run directory, start the ranks, report the outcome."""
import os
import re
import subprocess
import sys
import threading
import time

import yaml

from ffnbench import strategies
from ffnbench.bench import peak
from ffnbench.bench.config import ConfigError
from ffnbench.bench.results import is_complete
from ffnbench.strategies import comm

# Open MPI's multi-line banners around an abort add nothing to our one-line error.
_MPI_NOISE = re.compile(r"^(-{20,}|MPI_ABORT|NOTE: invoking|You may or may not|exactly when|with errorcode|"
                        r"Primary job|a non-zero exit|Process name|Exit code|mpirun (noticed|detected|has exited)|"
                        r"  Process name|  Exit code|\s*$|\[[^\]]+\] \d+ more process|\[[^\]]+\] Set MCA)")


def cli_command(*args):
    """The command that runs `ffnbench ARGS` with this interpreter (every rank runs one)."""
    return [sys.executable, "-m", "ffnbench.bench.cli", *args]


def check_inputs(cfg):
    """Fail before launching anything when an input file is missing (the layout is checked with
    the config)."""
    if cfg["data"]["source"] == "hdf5":
        for key in ("image", "labels"):
            path = cfg["data"][key].rsplit(":", 1)[0]
            if not os.path.isfile(path):
                raise ConfigError(f"config field data.{key}: file {path} not found")


def make_run_dir(cfg, out=None):
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = os.path.join(cfg["run"]["out"], f"{cfg['name']}-{cfg['strategy']}-r{cfg['ranks']}-{stamp}")
    if is_complete(out):
        raise ConfigError(f"--out {out}: holds a completed run; choose another directory")
    os.makedirs(out, exist_ok=True)
    for stale in ("metrics.jsonl", "manifest.json"):  # a previous, incomplete attempt
        if os.path.exists(os.path.join(out, stale)):
            os.remove(os.path.join(out, stale))
    with open(os.path.join(out, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return out


def launch(cfg, run_dir, node_peak=None):
    """Run the job; returns (exit status, first error line or None)."""
    launch = strategies.get(cfg["strategy"]).launch
    if launch != "mpirun":
        raise ConfigError(f"config field strategy: {cfg['strategy']} needs launch {launch!r}, which this "
                          f"launcher does not start")
    argv = cli_command("train", os.path.join(run_dir, "config.yaml"), "--run-dir", run_dir)
    proc = comm.launch_ranks(cfg["ranks"], argv, stderr=subprocess.PIPE, text=True, bufsize=1,
                             env_extra=peak.environment(node_peak) if node_peak else None)
    errors, deaths = [], []

    def relay():
        for line in proc.stderr:
            if line.startswith("ffnbench: error"):
                errors.append(line.strip())
            elif "noticed that process rank" in line:
                deaths.append("ffnbench: error: " + line.split("noticed that ", 1)[1].strip())
            elif not _MPI_NOISE.match(line):
                sys.stderr.write(line)
    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    status = proc.wait()
    reader.join(timeout=5)
    first = (errors or deaths or [None])[0]
    return status, first


def run_experiment(cfg, out=None, node_peak=None):
    """Validate, make the run directory, train in a fresh process (mpirun for ranks > 1).

    Returns (run_dir, error line or None); a run is complete only if its summary says so.
    """
    check_inputs(cfg)
    # a disturbed measurement can only read low (which would inflate MFU), so keep the best one
    measured = peak.node_peak(during="before any rank started")
    if node_peak is None or measured["flops_per_s"] > node_peak["flops_per_s"]:
        node_peak = measured
    run_dir = make_run_dir(cfg, out)
    print(f"run directory: {run_dir}", flush=True)
    status, error = launch(cfg, run_dir, node_peak)
    if status != 0:
        return run_dir, (error.split("error: ", 1)[1] if error else f"mpirun exited with status {status}")
    if not is_complete(run_dir):
        return run_dir, f"run in {run_dir} ended without a summary"
    return run_dir, None
