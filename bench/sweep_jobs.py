"""`ffnbench sweep FILE --scheduler slurm`: each run of a sweep as its own batch job.

The same plan, run directories and index.json as a local sweep (bench/sweep.py), so `report` and
`plot` read the results as usual and the sweep file needs no edit to move to a cluster. Each run
gets the job script of `ffnbench job` for its resolved config (RUN_DIR/config.yaml); the sweep
waits for its jobs with a bound, then reads each run's summary.json. Re-running resumes: complete
runs are skipped, runs whose job is still queued or running are waited for, the rest resubmitted.
"""
import math
import os
import subprocess
import time

from ffnbench.bench import launcher
from ffnbench.bench.config import ConfigError
from ffnbench.bench.jobs import render_job
from ffnbench.bench.results import is_complete, read_json, read_summary
from ffnbench.bench.sweep import prepare, write_index

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
    """The subset of job_ids Slurm still has pending or running."""
    if not job_ids:
        return set()
    out = _slurm("squeue", "-h", "-o", "%i", "-j", ",".join(sorted(job_ids)))
    return {line.strip() for line in out.splitlines() if line.strip()} & set(job_ids)


def submit(run, run_dir, options):
    """Write RUN_DIR/job.sh for the run's resolved config and sbatch it; returns the job id."""
    cfg = run["config"]
    rpn = min(options["ranks_per_node"], cfg["ranks"])
    script = render_job(os.path.join(run_dir, "config.yaml"), "slurm", math.ceil(cfg["ranks"] / rpn), rpn,
                        options["threads"], walltime=options["walltime"], account=options["account"],
                        queue=options["queue"], name=f"ffnbench-{cfg['name']}", run_dir=run_dir,
                        bin_dir=os.path.dirname(launcher.cli_command()[0]), mpi=options["mpi"],
                        cpu_bind=options["cpu_bind"])
    path = os.path.join(run_dir, "job.sh")
    with open(path, "w") as f:
        f.write(script)
    output = os.path.join(run_dir, "job-%j.out")
    # singleton: one job of this name (this sweep's) at a time, so runs sharing nodes are timed apart
    serial = ["--dependency=singleton"] if options["one_at_a_time"] else []
    return _slurm("sbatch", "--parsable", f"--output={output}", f"--chdir={run_dir}", *serial, path).strip().split(";")[0]


def run_sweep_on_slurm(path, out=None, overrides=(), options=None):
    """Submit every unfinished run of a sweep as a Slurm job, wait for them (each within the walltime),
    and record how each ended. Returns (sweep_dir, number of runs not complete)."""
    from tqdm import tqdm
    sweep, planned, sweep_dir = prepare(path, out, overrides)
    previous = {e["id"]: e for e in (read_json(os.path.join(sweep_dir, "index.json")) or {}).get("runs", [])}
    still = queued({e["job"] for e in previous.values() if e.get("job")})
    entries, jobs = [], {}
    for run in planned:
        run_dir = os.path.join(sweep_dir, run["id"])
        entry = {"id": run["id"], "overrides": run["overrides"], "run_dir": run_dir, "status": "complete",
                 "error": None, "job": previous.get(run["id"], {}).get("job")}
        if not is_complete(run_dir):
            if entry["job"] not in still:  # not queued any more (or never submitted): submit afresh
                run_dir, lock = launcher.make_run_dir(run["config"], run_dir)
                os.remove(lock)  # the job's ranks write the run; no local process holds it
                entry["job"] = submit(run, run_dir, options)
            entry["status"] = "submitted"
            jobs[entry["job"]] = entry
        entries.append(entry)
    write_index(sweep, sweep_dir, entries)
    print(f"sweep {sweep['name']}: {len(planned)} runs in {sweep_dir}; {len(jobs)} Slurm jobs "
          f"({', '.join(sorted(jobs)) or 'none'})", flush=True)
    h, m, s = (int(x) for x in options["walltime"].split(":"))
    deadline = time.time() + 3600 * h + 60 * m + s + 300  # a job ends by its walltime; then the queue's delay
    with tqdm(total=len(planned), initial=len(planned) - len(jobs), desc=sweep["name"], unit="run") as bar:
        waiting = set(jobs)
        while waiting:
            if time.time() > deadline:
                for job in waiting:
                    jobs[job].update(status="failed", error=f"Slurm job {job} still queued or running after "
                                                            f"the walltime {options['walltime']}; not waited for")
                break
            time.sleep(POLL_S)
            for job in waiting - queued(waiting):
                entry = jobs[job]
                summary = read_summary(entry["run_dir"])
                ok = summary.get("status") == "complete"
                entry.update(status="complete" if ok else summary.get("status", "failed"),
                             error=None if ok else summary.get("error") or
                             f"Slurm job {job} ended without a summary; see {entry['run_dir']}/job-{job}.out")
                bar.write(f"{entry['id']}: {'complete' if ok else 'FAILED: ' + entry['error']} (job {job})")
                bar.update(1)
                waiting.discard(job)
                write_index(sweep, sweep_dir, entries)
    write_index(sweep, sweep_dir, entries)
    return sweep_dir, sum(e["status"] != "complete" for e in entries)
