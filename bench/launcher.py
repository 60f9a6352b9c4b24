"""`ffnbench run`: resolve the config, make the run directory, start the ranks, report the outcome."""
import os
import re
import subprocess
import sys
import threading
import time

import strategies
import yaml
from bench.config import ConfigError

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Open MPI's multi-line banners around an abort add nothing to our one-line error.
_MPI_NOISE = re.compile(r"^(-{20,}|MPI_ABORT|NOTE: invoking|You may or may not|exactly when|with errorcode|"
                        r"Primary job|a non-zero exit|Process name|Exit code|mpirun (noticed|detected|has exited)|"
                        r"  Process name|  Exit code|\s*$|\[[^\]]+\] \d+ more process|\[[^\]]+\] Set MCA)")


def check_layout(cfg):
    """Fail before launching anything when the strategy cannot run on these ranks."""
    cls = strategies.get(cfg["strategy"])
    options = {**cls.options, **cfg["strategy_options"]}
    unknown = sorted(set(cfg["strategy_options"]) - set(cls.options))
    if unknown:
        raise ConfigError(f"config field strategy_options.{unknown[0]}: not an option of strategy "
                          f"{cfg['strategy']} (options: {', '.join(sorted(cls.options)) or 'none'})")
    cls.roles(cfg["ranks"], options)
    if cfg["data"]["source"] == "hdf5":
        for key in ("image", "labels"):
            path = cfg["data"][key].rsplit(":", 1)[0]
            if not os.path.isfile(path):
                raise ConfigError(f"config field data.{key}: file {path} not found")


def make_run_dir(cfg, out=None):
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = os.path.join(cfg["run"]["out"], f"{cfg['name']}-{cfg['strategy']}-r{cfg['ranks']}-{stamp}")
    if os.path.exists(os.path.join(out, "summary.json")):
        raise ConfigError(f"--out {out}: holds a completed run; choose another directory")
    os.makedirs(out, exist_ok=True)
    for stale in ("metrics.jsonl", "manifest.json"):  # a previous, incomplete attempt
        if os.path.exists(os.path.join(out, stale)):
            os.remove(os.path.join(out, stale))
    with open(os.path.join(out, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return out


def mpirun_command(ranks, args, cores=None):
    cores = cores or os.cpu_count() or 1
    cmd = ["mpirun", "-np", str(ranks), "--bind-to", "none"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    if ranks > cores:
        cmd.append("--oversubscribe")
    return cmd + [sys.executable, "-m", "bench.cli"] + args


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    return env


def launch(cfg, run_dir):
    """Run the job; returns (exit status, first error line or None)."""
    config_path = os.path.join(run_dir, "config.yaml")
    args = ["train", config_path, "--run-dir", run_dir]
    cmd = mpirun_command(cfg["ranks"], args) if cfg["ranks"] > 1 else [sys.executable, "-m", "bench.cli", *args]
    proc = subprocess.Popen(cmd, env=child_env(), stderr=subprocess.PIPE, text=True, bufsize=1)
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


def run_experiment(cfg, out=None):
    """Validate, make the run directory, train in a fresh process (mpirun for ranks > 1).

    Returns (run_dir, error line or None); a run is complete only if summary.json exists.
    """
    check_layout(cfg)
    run_dir = make_run_dir(cfg, out)
    print(f"run directory: {run_dir}", flush=True)
    status, error = launch(cfg, run_dir)
    if status != 0:
        return run_dir, (error.split("error: ", 1)[1] if error else f"mpirun exited with status {status}")
    if not os.path.exists(os.path.join(run_dir, "summary.json")):
        return run_dir, f"run in {run_dir} ended without a summary"
    return run_dir, None
