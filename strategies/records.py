"""What a strategy records, and the Recorder it records through: the schema that the summary, the
report and the plots read, written once here.

Bench implements the Recorder (bench/run/recorder.py) and reacts to the records: a step record advances
the progress bar and may trigger an evaluation or a checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, ContextManager, Optional, Protocol

PHASES = ("data", "compute", "comm", "wait")
#: what pauses training on every worker alike, outside any step (bench's duties, not a strategy's)
PAUSES = ("eval", "checkpoint")


@dataclass
class StepRecord:
    """One worker step. Every record's `time` is training time: seconds since the common start, less
    this rank's pauses for evaluation and checkpoints. `fovs`: the FOVs this record stands for. `model_version`: the updates in the
    weights this rank's model holds after the step, which an evaluation right after it would see."""
    kind: ClassVar[str] = "step"
    rank: int
    step: int
    time: float
    fovs: int
    loss: float
    model_version: int
    compute_s: float
    comm_s: float
    data_s: float
    wait_s: float
    step_s: float
    emulated: bool = False
    compute: str = "real"  # "emulated": the pass was a timed wait (train.compute), apart from `emulated` workers


@dataclass
class UpdateRecord:
    """One gradient applied by a server (or an emulated one). `version`: the server's version the
    gradient is applied on (before it); `read`: the version it was computed on; `staleness` =
    version - read, the updates applied in between."""
    kind: ClassVar[str] = "update"
    rank: int
    time: float
    worker: int
    version: int
    read: int
    staleness: int
    lr: Optional[float] = None
    emulated: bool = False


@dataclass
class ServerRecord:
    """A parameter server's totals, written once when it stops."""
    kind: ClassVar[str] = "server"
    rank: int
    time: float
    updates: int
    dropped: int
    wall_s: float
    cpu_s: float
    cpu_share: float


@dataclass
class EvalRecord:
    """A held-out evaluation of the weights after `step` updates, which took `fovs_total` FOVs.
    `loss_sem`: the standard error of `loss` over the held-out FOVs; `eval_s`: what it took."""
    kind: ClassVar[str] = "eval"
    step: int
    time: float
    fovs_total: int
    loss: float
    loss_sem: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    eval_s: float
    rank: int = 0  # the rank that evaluated (runs recorded before it was kept: 0)


@dataclass
class LostRecord:
    """The job went on without `worker`: a server stopped waiting for it (silent for the run's timeout),
    or an elastic ring shrank. `pushes`: its gradients the training kept."""
    kind: ClassVar[str] = "lost"
    rank: int
    time: float
    worker: int
    pushes: int


@dataclass
class CommitRecord:
    """This rank's training state after `step` steps is saved (its part of a checkpoint, or an
    elastic job's commit in memory): training may come back to it."""
    kind: ClassVar[str] = "commit"
    rank: int
    step: int
    time: float


@dataclass
class ResumeRecord:
    """Training continued from the state after `step` steps: a resumed run's checkpoint, or an elastic
    job's last commit after a lost worker. What each rank recorded after its commit of that step is
    superseded (bench/analyse/results.py read_records, the one place that rule is applied)."""
    kind: ClassVar[str] = "resume"
    rank: int
    step: int
    time: float


RECORD_TYPES = {cls.kind: cls for cls in (StepRecord, UpdateRecord, ServerRecord, EvalRecord, LostRecord,
                                          CommitRecord, ResumeRecord)}


class Recorder(Protocol):
    """What a strategy records. Bench implements it (bench/run/recorder.py) and reacts to the records:
    a step record advances the progress bar and may trigger an evaluation or a checkpoint."""

    def phase(self, name: str) -> ContextManager[None]:
        """Time one phase (one of PHASES) of the current step; the next step record carries it."""

    def step(self, step: int, fovs: int, loss: float, model_version: int, emulated: bool = False) -> None:
        """Record a finished worker step.

        Args:
            step: this worker's step index, from 0.
            fovs: FOVs this record stands for (an emulated round: all its logical workers').
            loss: training loss of the step.
            model_version: updates in the weights the model holds now (an evaluation may follow).
            emulated: N logical workers in one process.
        """

    def update(self, worker: int, read: int, version: int, lr: Optional[float] = None,
               emulated: bool = False) -> None:
        """Record one gradient, before it is applied.

        Args:
            worker: the rank (or logical worker) that computed it.
            read: the version of the parameters it was computed on.
            version: the version it is applied on; staleness = version - read.
            lr: the learning rate it is applied with.
            emulated: an emulated server.
        """

    def server(self, updates: int, dropped: int, wall_s: float, cpu_s: float) -> None:
        """Record a server's totals, once, when it stops.

        Args:
            updates: updates applied to its shard; dropped: gradients it did not apply;
            wall_s, cpu_s: its wall-clock and CPU seconds (their ratio is its CPU share).
        """

    def lost(self, worker: int, pushes: int) -> None:
        """Record that training goes on without `worker` (Args as LostRecord)."""

    def commit(self, step: int) -> None:
        """Record that this rank's state after `step` steps is saved (CommitRecord)."""

    def resume(self, step: int, rank: Optional[int] = None) -> None:
        """Record that training continues from the state after `step` steps (ResumeRecord): this
        rank's, or `rank`'s (a lost worker whose uncommitted work an elastic ring rolled back too)."""
