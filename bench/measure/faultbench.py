"""`ffnbench faultbench CONFIG`: what one lost worker process costs, measured.

Runs the config once undisturbed, then again with SIGKILL sent to one worker rank once it has done
`kill_after` steps, and reports the time the failure cost:

- a strategy that survives lost workers (ps_async; allreduce with elastic: true) goes on: the cost
  is the survivors' longest wait between two steps around the failure, less their median step
  (for elastic, that wait holds the detection, the ring's re-forming and the steps redone since
  the last commit), and the lost worker's untrained FOVs;
- a resumable strategy ends as lost_ranks and is resumed from its last checkpoint (`ffnbench resume`):
  the cost is the extra wall time of both attempts over the undisturbed run (detection, restart,
  the steps redone since the checkpoint).
"""
import os
import signal
import subprocess
import time

import numpy as np

from ffnbench.bench.run import context
from ffnbench.bench.run.launcher import cli_command
from ffnbench.bench.analyse.results import COMPLETE, read_records, read_summary, stored_config


def rank_pids(run_dir):
    """{rank: pid} of the live processes training in run_dir (Linux /proc), under mpirun or horovodrun."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if argv[1:4] != [b"-m", b"ffnbench.bench.cli", b"train"] or str(run_dir).encode() not in argv:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().split(") ")[1][0]
        except OSError:
            continue
        if state != "Z":
            found[int(env.get(b"OMPI_COMM_WORLD_RANK") or env.get(b"HOROVOD_RANK") or b"0")] = int(pid)
    return found


def _steps_of(run_dir, rank):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if '"kind": "step"' in line and f'"rank": {rank},' in line)


def survivors_stall(steps, victim, window_s):
    """(the longest wait between two successive steps of a surviving worker that began within
    `window_s` after the victim's last kept step, the median wait): together, what detecting the
    loss, re-forming the ring and redoing the steps since the last commit cost. Rolled-back steps are
    gone from the records (a resume record supersedes them), so their time falls inside that wait;
    all are worker records, on the same training clock."""
    last = max(r.time for r in steps if r.rank == victim)
    gaps, near = [], []
    for rank in sorted({r.rank for r in steps} - {victim}):
        mine = sorted((r for r in steps if r.rank == rank), key=lambda r: r.step)
        for before, after in zip(mine, mine[1:]):
            gaps.append(after.time - before.time)
            if after.time >= last and before.time <= last + window_s:
                near.append(after.time - before.time)
    return max(near, default=0.0), float(np.median(gaps)) if gaps else 0.0


def _timed(argv):
    start = time.time()
    proc = subprocess.run(cli_command(*argv), capture_output=True, text=True)
    return time.time() - start, proc


def measure(config, overrides, out, victim, kill_after, timeout_s=1800):
    """{mode, wall_undisturbed_s, wall_with_failure_s, time_lost_s, ...} of one injected failure."""
    sets = [x for o in overrides for x in ("--set", o)]
    whole, hit = os.path.join(out, "undisturbed"), os.path.join(out, "with_failure")
    wall_a, proc = _timed(["run", config, *sets, "--out", whole])
    if proc.returncode != 0:
        raise RuntimeError(f"the undisturbed run failed: {proc.stderr.strip().splitlines()[-1:]}")
    strategy = read_summary(whole)["strategy"]
    cfg = stored_config(whole)
    layout = context.layout_of(cfg)
    start = time.time()
    os.makedirs(out, exist_ok=True)
    log = open(os.path.join(out, "with_failure.log"), "w")
    job = subprocess.Popen(cli_command("run", config, *sets, "--out", hit), stdout=log, stderr=subprocess.STDOUT)
    while _steps_of(hit, victim) < kill_after:
        if job.poll() is not None or time.time() - start > timeout_s:
            raise RuntimeError(f"rank {victim} never reached step {kill_after}")
        time.sleep(0.05)
    os.kill(rank_pids(hit)[victim], signal.SIGKILL)
    killed_at = time.time()
    job.wait(timeout=timeout_s)
    ended_at = time.time()
    log.close()
    result = {"strategy": strategy, "victim": victim, "kill_after_steps": kill_after,
              "wall_undisturbed_s": wall_a, "job_ended_after_kill_s": ended_at - killed_at}
    if layout.traits.survives_lost_workers:
        summary = read_summary(hit)
        if summary["status"] != COMPLETE or not summary["lost_workers"]:
            raise RuntimeError(f"the run with a killed worker did not go on without it: {summary.get('error')}")
        stall, median = survivors_stall(read_records(hit).steps, victim, cfg["run"]["timeout_s"])
        result.update(mode="elastic: the ring shrinks" if layout.traits.launch == "horovodrun_elastic"
                      else "async: the others go on", status=summary["status"],
                      wall_with_failure_s=ended_at - start, survivors_longest_gap_s=stall,
                      survivors_median_step_s=median, time_lost_s=stall - median,
                      fovs_not_trained=summary["lost_workers"][0]["fovs_not_trained"])
    else:
        wall_resume, proc = _timed(["resume", hit])
        if proc.returncode != 0:
            raise RuntimeError(f"the resume failed: {proc.stderr.strip().splitlines()[-1:]}")
        result.update(mode="restart from the last checkpoint", wall_with_failure_s=ended_at - start + wall_resume,
                      resume_wall_s=wall_resume)
        result["time_lost_s"] = result["wall_with_failure_s"] - wall_a
    return result
