"""`ffnbench sweep FILE --scheduler slurm`: each run of a sweep as its own batch job.

The same plan, run directories and index.json as a local sweep (bench/plan/sweep.py), so `report` and
`plot` read the results as usual and the sweep file needs no edit to move to a cluster. Each run
gets the job script of `ffnbench job` for its resolved config (RUN_DIR/config.yaml); index.json
records each job id as soon as it is submitted. The sweep waits for its jobs with a bound, then
reads each run's summary.json; jobs still queued at the bound stay `submitted` (not failed), and
the command says to re-run it. Re-running resumes: complete runs are skipped, runs whose job is
still queued or running are waited for, the rest are submitted again from the start.
"""
import os
import re
import shutil
import subprocess
import time

from ffnbench.bench.run import launcher
from ffnbench.bench.config import ConfigError
from ffnbench.bench.plan.jobs import render_job
from ffnbench.bench.analyse.results import COMPLETE, is_complete, read_json, read_summary
from ffnbench.bench.plan.sweep import prepare, write_index

POLL_S = 5.0


def _slurm(command, *args, timeout=60):
    """A Slurm client command's stdout; one ConfigError line when it is missing or fails."""
    try:
        out = subprocess.run([command, *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ConfigError(f"--scheduler slurm: {command} not found (is this a Slurm login node?)")
    except subprocess.TimeoutExpired:
        raise ConfigError(f"--scheduler slurm: {command} did not answer within {timeout} s")
    if out.returncode != 0:
        raise ConfigError(f"--scheduler slurm: {command} {' '.join(args)} failed: "
                          f"{(out.stderr.strip().splitlines() or ['no message'])[-1]}")
    return out.stdout


def queued(job_ids):
    """The subset of job_ids Slurm still has pending or running (all of the user's jobs are listed:
    asking for a job Slurm has already forgotten is an error)."""
    if not job_ids:
        return set()
    return set(_slurm("squeue", "-h", "-o", "%i", "--me").split()) & set(job_ids)


def submit(run, run_dir, job_name, options):
    """Write RUN_DIR/job.sh for the run's resolved config and sbatch it; returns the job id."""
    cfg = run["config"]
    rpn = min(options["ranks_per_node"], cfg["ranks"])
    script = render_job(os.path.join(run_dir, "config.yaml"), "slurm", cfg["ranks"] // rpn, rpn,
                        options["threads"], walltime=options["walltime"], account=options["account"],
                        queue=options["queue"], name=job_name, run_dir=run_dir, output=os.path.join(run_dir, "job-%j.out"),
                        bin_dir=ffnbench_dir(), mpi=options["mpi"], cpu_bind=options["cpu_bind"])
    path = os.path.join(run_dir, "job.sh")
    with open(path, "w") as f:
        f.write(script)
    # singleton: one job of this name (this sweep's) at a time, so runs sharing nodes are timed apart
    serial = ["--dependency=singleton"] if options["one_at_a_time"] else []
    return _slurm("sbatch", "--parsable", f"--chdir={run_dir}", *serial, path).strip().split(";")[0]


def check_placement(planned, options):
    """One ConfigError line, before anything is submitted, for a run the job options cannot place."""
    if not re.fullmatch(r"\d+:\d{2}:\d{2}", options["walltime"]):
        raise ConfigError(f"--walltime must be HH:MM:SS, got {options['walltime']!r}")
    for run in planned:
        ranks, rpn = run["config"]["ranks"], min(options["ranks_per_node"], run["config"]["ranks"])
        if ranks % rpn:
            raise ConfigError(f"sweep run {run['id']}: its {ranks} ranks do not fill nodes of --ranks-per-node "
                              f"{options['ranks_per_node']} (a job would start {-(-ranks // rpn) * rpn})")


def run_sweep_on_slurm(path, out=None, overrides=(), options=None):
    """Submit every unfinished run of a sweep as a Slurm job, wait for them (bounded), and record how
    each ended. Returns (sweep_dir, number of runs not complete)."""
    from tqdm import tqdm
    sweep, planned, sweep_dir = prepare(path, out, overrides, here=False)
    check_placement(planned, options)
    job_name = "ffnbench-" + re.sub(r"[^\w.-]", "_", sweep["name"])
    previous = {e["id"]: e for e in (read_json(os.path.join(sweep_dir, "index.json")) or {}).get("runs", [])}
    still = queued({e["job"] for e in previous.values() if e.get("job")})
    entries = [{"id": run["id"], "overrides": run["overrides"], "run_dir": os.path.join(sweep_dir, run["id"]),
                "status": COMPLETE, "error": None, "job": previous.get(run["id"], {}).get("job")} for run in planned]
    jobs = {}
    for run, entry in zip(planned, entries):
        if is_complete(entry["run_dir"]):
            continue
        if entry["job"] not in still:  # not queued any more (or never submitted): submit afresh
            _, lock = launcher.make_run_dir(run["config"], entry["run_dir"])
            os.remove(lock)  # the job's ranks write the run; no local process holds it
            entry["job"] = submit(run, entry["run_dir"], job_name, options)
        entry["status"] = "submitted"
        jobs[entry["job"]] = entry
        write_index(sweep, sweep_dir, entries)  # each job id on record at once: a re-run finds it
    write_index(sweep, sweep_dir, entries)
    print(f"sweep {sweep['name']}: {len(planned)} runs in {sweep_dir}; {len(jobs)} Slurm jobs "
          f"({', '.join(sorted(jobs, key=int)) or 'none'})", flush=True)
    h, m, s = (int(x) for x in options["walltime"].split(":"))
    walltime = 3600 * h + 60 * m + s
    # each job ends by its walltime (one after another with --one-at-a-time); an hour more for the queue
    deadline = time.time() + walltime * (len(jobs) if options["one_at_a_time"] else 1) + 3600
    with tqdm(total=len(planned), initial=len(planned) - len(jobs), desc=sweep["name"], unit="run") as bar:
        waiting = set(jobs)
        while waiting and time.time() < deadline:
            time.sleep(POLL_S)
            for job in waiting - queued(waiting):
                entry = jobs[job]
                summary = read_summary(entry["run_dir"])
                ok = summary.get("status") == COMPLETE
                entry.update(status=COMPLETE if ok else summary.get("status", "failed"),
                             error=None if ok else summary.get("error") or
                             f"Slurm job {job} ended without a summary; see {entry['run_dir']}/job-{job}.out")
                bar.write(f"{entry['id']}: {'complete' if ok else 'FAILED: ' + entry['error']} (job {job})")
                bar.update(1)
                waiting.discard(job)
                write_index(sweep, sweep_dir, entries)
    for job in waiting:
        jobs[job]["error"] = f"Slurm job {job} still queued or running when the sweep stopped waiting; re-run to collect it"
        print(f"{jobs[job]['id']}: {jobs[job]['error']}", flush=True)
    write_index(sweep, sweep_dir, entries)
    return sweep_dir, sum(e["status"] != COMPLETE for e in entries)


def ffnbench_dir():
    """The directory of the `ffnbench` to run in jobs: this interpreter's (a venv's bin), else PATH's."""
    here = os.path.dirname(launcher.cli_command()[0])
    if os.path.exists(os.path.join(here, "ffnbench")):
        return here
    found = shutil.which("ffnbench")
    return os.path.dirname(found) if found else here
