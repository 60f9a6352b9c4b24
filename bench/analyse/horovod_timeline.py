"""Where an all-reduce step's exchange goes, from Horovod's timeline (`strategy_options.timeline: true`
writes RUN_DIR/horovod_timeline.json, a chrome trace of rank 0's view) beside the run's own records.

Per all-reduced tensor, Horovod marks NEGOTIATE_ALLREDUCE (from this rank's request until every rank
has asked and the background thread's cycle has taken it up) and ALLREDUCE, with MPI_ALLREDUCE (the
bytes) and memory copies inside it. What a step's exchange (comm_s, the call's wall time) holds beyond
those is the op's dispatch and the wait for the answer to come back to the training thread.
"""
import json
import os

import numpy as np

TIMELINE = "horovod_timeline.json"


def read_timeline(path):
    """The timeline's events; a file cut short (a run still going, or killed) is closed first."""
    with open(path) as f:
        text = f.read().rstrip().rstrip(",")
    return json.loads(text if text.endswith("]") else text + "]")


def spans(events, tensor_prefix="HorovodAllreduce"):
    """{activity: [milliseconds, ...]} of the all-reduced tensors' begin/end pairs, in order."""
    names = {e["pid"]: e["args"]["name"] for e in events
             if e.get("name") == "process_name" and "name" in e.get("args", {})}
    open_, out = {}, {}
    for e in events:
        if not names.get(e.get("pid"), "").startswith(tensor_prefix):
            continue
        if e["ph"] == "B":
            open_.setdefault(e["pid"], []).append(e)
        elif e["ph"] == "E" and open_.get(e["pid"]):
            begin = open_[e["pid"]].pop()
            out.setdefault(begin["name"], []).append((e["ts"] - begin["ts"]) / 1e3)
    return out


def breakdown(run_dir, skip=20):
    """{'steps': n, 'comm_ms': mean comm_s per step, 'compute_ms', 'step_ms', activity: mean ms per
    step} over the steps after the first `skip` (start-up)."""
    path = os.path.join(run_dir, TIMELINE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no Horovod timeline (run with strategy_options.timeline=true)")
    from ffnbench.bench.analyse.results import read_records
    steps = [r for r in read_records(run_dir).steps if r.step >= skip]
    if not steps:
        raise ValueError(f"{run_dir}: no step records past the first {skip}")
    result = {"steps": len({r.step for r in steps}),
              **{f"{k}_ms": 1e3 * float(np.mean([getattr(r, f"{k}_s") for r in steps]))
                 for k in ("step", "compute", "comm")}}
    for activity, values in spans(read_timeline(path)).items():
        result[activity] = float(np.mean(values[skip:] or values))
    return result


def print_breakdown(result):
    known = {"steps", "step_ms", "compute_ms", "comm_ms"}
    print(f"{result['steps']} steps: {result['step_ms']:.2f} ms each, compute {result['compute_ms']:.2f} ms, "
          f"exchange (comm_s) {result['comm_ms']:.2f} ms; of the exchange, per step (Horovod's timeline, rank 0):")
    for activity in sorted(set(result) - known, key=lambda a: (a != "NEGOTIATE_ALLREDUCE", a != "ALLREDUCE", a)):
        inner = "" if activity in ("NEGOTIATE_ALLREDUCE", "ALLREDUCE") else "  (inside ALLREDUCE)"
        print(f"  {activity:24s} {result[activity]:7.3f} ms{inner}")
    inside = result.get("NEGOTIATE_ALLREDUCE", 0.0) + result.get("ALLREDUCE", 0.0)
    print(f"  {'rest (dispatch, return)':24s} {result['comm_ms'] - inside:7.3f} ms")
