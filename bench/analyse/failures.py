"""Goodput under node failures: the share of its failure-free throughput that a long job keeps when
nodes fail, for the three ways this toolkit's strategies survive a failure.

Nodes fail independently with exponential lifetimes (mean `mtbf_node_h` each), so a job on n nodes
sees failures at rate n / MTBF. Each trial plays one job of `work_h` failure-free hours through
random failures (Monte Carlo, like bench/analyse/simulator.py); goodput = work_h / the wall time it took.

- restart (sync all-reduce, restarted from its last checkpoint): checkpoints every tau seconds at
  Young's optimum tau = sqrt(2 C MTBF_job) (J. W. Young, "A first order approximation to the optimum
  checkpoint interval", CACM 17(9), 1974), each costing C; a failure loses the work since the last
  checkpoint plus the restart R, and the job goes on at full size (a spare node replaces the lost one).
- elastic (Horovod elastic all-reduce): a failure loses the work since the last commit plus a
  re-rendezvous, and the ring goes on one node smaller (throughput proportional to the nodes left).
- async (parameter server): a lost worker costs only its last, unpushed gradient (one step of one
  worker); the others never wait for it, so the job goes on with capacity proportional to the workers
  left (the servers' detection of it only frees its slot); a lost server is a restart from the
  checkpoint, as above.

The inputs are measured where they can be (restart, checkpoint and detection on this machine, see the
README) and are otherwise stated assumptions, printed with the table.
"""
import math
from dataclasses import dataclass

import numpy as np

MODES = ("restart", "elastic", "async")


@dataclass(frozen=True)
class FailureInputs:
    mtbf_node_h: float = 43_800.0   # 5 years per node: an assumption, set the target machine's
    work_h: float = 6.0             # the job's failure-free length
    checkpoint_s: float = 30.0      # C: one checkpoint
    restart_s: float = 120.0        # R: relaunch, reload the checkpoint, first step
    commit_every_s: float = 60.0    # elastic: state committed in memory this often
    rendezvous_s: float = 30.0      # elastic: detection (Gloo's timeout) + re-rendezvous
    step_s: float = 1.5             # async: one worker step (its unpushed gradient is what a loss costs)
    servers: int = 1                # async: server nodes (their failure is a restart)

    def __post_init__(self):
        if min(self.mtbf_node_h, self.work_h) <= 0 or min(self.checkpoint_s, self.restart_s, self.commit_every_s,
                                                           self.rendezvous_s, self.step_s) < 0:
            raise ValueError("failure inputs: MTBF and work must be > 0, costs >= 0")


def young_interval(checkpoint_s, mtbf_job_s):
    """Young's optimal seconds of work between checkpoints."""
    return math.sqrt(2.0 * max(checkpoint_s, 1e-9) * mtbf_job_s)


def _restart(nodes, fi, rng, work_s):
    mtbf = fi.mtbf_node_h * 3600 / nodes
    tau = young_interval(fi.checkpoint_s, mtbf)
    t = done = 0.0
    next_failure = rng.exponential(mtbf)
    while done < work_s:
        segment = min(tau, work_s - done)
        cost = segment + (fi.checkpoint_s if done + segment < work_s else 0.0)
        if t + cost <= next_failure:
            t += cost
            done += segment
        else:  # the segment is lost: restart from the last checkpoint
            t = next_failure + fi.restart_s
            next_failure = t + rng.exponential(mtbf)
    return t


def _shrinking(nodes, fi, rng, work_s, lost_s, fatal_rate_nodes, capacity_nodes):
    """A job whose `capacity_nodes` do the work and shrink by one per failure (costing lost_s() of
    the whole job's time); failures of the other `fatal_rate_nodes` are restarts."""
    t = done = 0.0
    alive = capacity_nodes
    while done < work_s:
        if alive < 1:
            return math.inf
        rate = (alive + fatal_rate_nodes) / (fi.mtbf_node_h * 3600)
        gap = rng.exponential(1 / rate)
        speed = alive / capacity_nodes
        if done + gap * speed >= work_s:
            return t + (work_s - done) / speed
        t += gap
        done += gap * speed
        if rng.random() < fatal_rate_nodes / (alive + fatal_rate_nodes):
            tau = young_interval(fi.checkpoint_s, fi.mtbf_node_h * 3600 / nodes)
            lost = rng.uniform(0, tau)  # work since the last checkpoint (checkpoint cost ignored here)
            done = max(0.0, done - lost * speed)
            t += fi.restart_s
        else:
            done = max(0.0, done - lost_s(rng) * speed)
            alive -= 1
    return t


def job_seconds(mode, nodes, fi, rng):
    """Wall seconds one job of fi.work_h needs on `nodes` nodes in `mode` (one random trial)."""
    work_s = fi.work_h * 3600
    if mode == "restart":
        return _restart(nodes, fi, rng, work_s)
    if mode == "elastic":
        return _shrinking(nodes, fi, rng, work_s, lambda r: r.uniform(0, fi.commit_every_s) + fi.rendezvous_s,
                          0, nodes)
    if mode == "async":
        workers = nodes - fi.servers
        return _shrinking(nodes, fi, rng, work_s, lambda r: fi.step_s / workers, fi.servers, workers)
    raise ValueError(f"failure mode {mode!r}: one of {', '.join(MODES)}")


def goodput(mode, nodes, fi, trials=400, seed=0):
    """{mode, nodes, failures_expected, mean, p5, p95} of goodput = work / wall time over trials."""
    rng = np.random.default_rng(seed)
    values = np.array([fi.work_h * 3600 / job_seconds(mode, nodes, fi, rng) for _ in range(trials)])
    return {"mode": mode, "nodes": nodes, "failures_expected": nodes * fi.work_h / fi.mtbf_node_h,
            "mean": float(values.mean()), "p5": float(np.percentile(values, 5)),
            "p95": float(np.percentile(values, 95))}


def format_goodput(rows, fi):
    lines = [f"Goodput under node failures (Monte Carlo, {len(MODES)} recovery modes): MTBF {fi.mtbf_node_h:g} h per "
             f"node, a {fi.work_h:g} h job; checkpoint {fi.checkpoint_s:g} s, restart {fi.restart_s:g} s, elastic "
             f"commit every {fi.commit_every_s:g} s + re-rendezvous {fi.rendezvous_s:g} s, async step "
             f"{fi.step_s:g} s with {fi.servers} server node(s).", "",
             "| nodes | expected failures | mode | goodput mean | 5th-95th percentile |", "|---|---|---|---|---|"]
    lines += [f"| {r['nodes']} | {r['failures_expected']:.2f} | {r['mode']} | {r['mean']:.3f} | "
              f"{r['p5']:.3f}-{r['p95']:.3f} |" for r in rows]
    return "\n".join(lines)
