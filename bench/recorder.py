"""Per-rank records: JSON lines appended to RUN_DIR/metrics.jsonl, and a chrome trace of step phases.

Each record is one os.write on an O_APPEND descriptor, so ranks can share the file without locks.
"""
import json
import os
import time
from contextlib import contextmanager


class Recorder:
    def __init__(self, run_dir, rank, t0):
        self.run_dir, self.rank, self.t0 = run_dir, rank, t0
        self.fd = os.open(os.path.join(run_dir, "metrics.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.phases = {}
        self.trace = []

    def now(self):
        return time.time() - self.t0

    def write(self, record):
        os.write(self.fd, (json.dumps(record) + "\n").encode())

    @contextmanager
    def phase(self, name):
        """Time one phase of the current step (data, compute, comm, wait); traced too."""
        start = time.time()
        try:
            yield
        finally:
            end = time.time()
            self.phases[name] = self.phases.get(name, 0.0) + end - start
            self.trace.append({"name": name, "ph": "X", "pid": self.rank, "tid": 0,
                               "ts": (start - self.t0) * 1e6, "dur": (end - start) * 1e6})

    def step(self, step, fovs, loss, **extra):
        """A worker step record carrying the phases timed since the previous step."""
        p = self.phases
        record = {"kind": "step", "rank": self.rank, "step": step, "time": self.now(), "fovs": fovs,
                  "loss": loss, "compute_s": p.get("compute", 0.0), "comm_s": p.get("comm", 0.0),
                  "data_s": p.get("data", 0.0), "wait_s": p.get("wait", 0.0),
                  "step_s": sum(p.values()), **extra}
        self.phases = {}
        self.write(record)

    def eval(self, step, fovs_total, metrics):
        self.write({"kind": "eval", "step": step, "time": self.now(), "fovs_total": fovs_total, **metrics})

    def close(self):
        os.close(self.fd)
        with open(os.path.join(self.run_dir, f"trace.rank{self.rank}.json"), "w") as f:
            json.dump({"traceEvents": self.trace, "displayTimeUnit": "ms"}, f)
