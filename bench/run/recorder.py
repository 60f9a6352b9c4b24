"""Per-rank records: JSON lines appended to RUN_DIR/metrics.jsonl, and a chrome trace of step phases.

Implements the `Recorder` of strategies/records.py, whose record classes are the schema. Each record is
one os.write on an O_APPEND descriptor, so ranks can share the file without locks. Bench reacts to
what strategies record through listeners (progress bar, periodic evaluation, checkpoints), so a
strategy only trains.
"""
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict
from typing import Callable, Dict, List, Optional

from ffnbench.bench.analyse.results import strict_json
from ffnbench.strategies.records import (PAUSES, PHASES, CommitRecord, EvalRecord, LostRecord, ResumeRecord,
                                         ServerRecord, StepRecord, UpdateRecord)


class Recorder:
    def __init__(self, run_dir: str, rank: int, compute: str = "real"):
        """compute: train.compute, which every step record carries."""
        self.run_dir, self.rank, self.compute = run_dir, rank, compute
        self.t0 = time.time()
        self.paused = 0.0  # seconds of evaluation and checkpoints, left out of every record's time
        self.fd = os.open(os.path.join(run_dir, "metrics.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.phases: Dict[str, float] = {}
        self.trace: List[dict] = []
        self.on_step: List[Callable[[StepRecord], None]] = []
        self.on_update: List[Callable[[UpdateRecord], None]] = []
        self.on_eval: List[Callable[[EvalRecord], None]] = []
        self.on_close: List[Callable[[], None]] = []

    def start_clock(self, t0: float) -> None:
        """Times are seconds since `t0`, the job's common start (rank 0's clock)."""
        self.t0 = t0

    def now(self) -> float:
        """Training time: seconds since the start, less this rank's pauses."""
        return time.time() - self.t0 - self.paused

    def write(self, record) -> None:
        """Append one record (a dataclass of strategies/records.py) as a JSON line."""
        os.write(self.fd, (strict_json({"kind": record.kind, **asdict(record)}) + "\n").encode())

    @contextmanager
    def _timed(self, name: str, allowed, add):
        """Time a block named `name` (one of `allowed`), trace it, and pass its seconds to `add`."""
        if name not in allowed:
            raise ValueError(f"unknown interval {name!r}; known: {', '.join(allowed)}")
        start = time.time()
        try:
            yield
        finally:
            end = time.time()
            self.trace.append({"name": name, "ph": "X", "pid": self.rank, "tid": 0,
                               "ts": (start - self.t0) * 1e6, "dur": (end - start) * 1e6})
            add(end - start)

    def phase(self, name: str):
        """Time one phase of the current step (one of PHASES); traced too."""
        return self._timed(name, PHASES, lambda s: self.phases.__setitem__(name, self.phases.get(name, 0.0) + s))

    def pause(self, name: str):
        """Time spent on one of PAUSES: traced, and left out of training time and of every step."""
        def add(seconds):
            self.paused += seconds
        return self._timed(name, PAUSES, add)

    def step(self, step: int, fovs: int, loss: float, model_version: int, emulated: bool = False) -> None:
        """A worker step carrying the phases timed since the previous step; then the listeners.
        Args as strategies.records.Recorder.step."""
        p = self.phases
        record = StepRecord(rank=self.rank, step=step, time=self.now(), fovs=int(fovs), loss=float(loss),
                            model_version=int(model_version), compute_s=p.get("compute", 0.0),
                            comm_s=p.get("comm", 0.0), data_s=p.get("data", 0.0), wait_s=p.get("wait", 0.0),
                            step_s=sum(p.values()), emulated=emulated, compute=self.compute)
        self.phases = {}
        self.write(record)
        for listener in self.on_step:
            listener(record)

    def update(self, worker: int, read: int, version: int, lr: Optional[float] = None,
               emulated: bool = False) -> None:
        """A gradient computed on version `read`, applied on `version`; then the listeners.
        Args as strategies.records.Recorder.update."""
        record = UpdateRecord(rank=self.rank, time=self.now(), worker=int(worker), version=int(version),
                              read=int(read), staleness=int(version - read),
                              lr=None if lr is None else float(lr), emulated=emulated)
        self.write(record)
        for listener in self.on_update:
            listener(record)

    def server(self, updates: int, dropped: int, wall_s: float, cpu_s: float) -> None:
        """A server's totals (Args as strategies.records.Recorder.server)."""
        self.write(ServerRecord(rank=self.rank, time=self.now(), updates=int(updates), dropped=int(dropped),
                                wall_s=wall_s, cpu_s=cpu_s, cpu_share=cpu_s / wall_s if wall_s else 0.0))

    def eval(self, step: int, fovs_total: int, metrics: Dict[str, float], eval_s: float) -> EvalRecord:
        """A held-out evaluation (bench's, not a strategy's).

        Args:
            step: updates in the evaluated weights; fovs_total: FOVs behind them;
            metrics: FFNModel.evaluate's {loss, loss_sem, accuracy, precision, recall, f1};
            eval_s: seconds the evaluation took.
        Returns:
            The record written.
        """
        record = EvalRecord(step=int(step), time=self.now(), fovs_total=int(fovs_total), eval_s=eval_s,
                            rank=self.rank, **metrics)
        self.write(record)
        for listener in self.on_eval:
            listener(record)
        return record

    def lost(self, worker: int, pushes: int) -> None:
        """A server goes on without `worker` (strategies.records.Recorder.lost)."""
        self.write(LostRecord(rank=self.rank, time=self.now(), worker=int(worker), pushes=int(pushes)))

    def commit(self, step: int) -> None:
        """This rank's state after `step` steps is saved (strategies.records.Recorder.commit)."""
        self.write(CommitRecord(rank=self.rank, step=int(step), time=self.now()))

    def resume(self, step: int, rank: Optional[int] = None) -> None:
        """A rank goes back to its state after `step` steps (strategies.records.Recorder.resume)."""
        self.write(ResumeRecord(rank=self.rank if rank is None else int(rank), step=int(step), time=self.now()))

    def close(self) -> None:
        for listener in self.on_close:
            listener()
        os.close(self.fd)
        with open(os.path.join(self.run_dir, f"trace.rank{self.rank}.json"), "w") as f:
            json.dump({"traceEvents": self.trace, "displayTimeUnit": "ms"}, f)
