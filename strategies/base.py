"""The contract between bench and a strategy: what a strategy is given, what it must do, what it records.

A strategy reads like a page: `setup()` makes every rank start from the same state, `train()` runs
this rank's part of training, `finish()` hands back the final weights. It is given one
`TrainingContext`, which bench builds from the config; it never imports bench. It writes results only
through the context's `Recorder`, whose record kinds are declared here, so the summary, the report
and the plots read exactly the fields that strategies write.

Bench owns everything around training: the progress bar, periodic evaluation and checkpoints (driven
by the records), FOV totals, the summary.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, ContextManager, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from ffnbench.strategies import comm


def _same_kind(default: Any, value: Any) -> bool:
    """Whether an option value has its default's type (an int where a float is expected is fine; an
    option whose default is None is checked by its strategy)."""
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _kind_name(default: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list"}.get(type(default), type(default).__name__)


class LayoutError(ValueError):
    """An impossible rank layout or a bad strategy option; the message names it."""


def check_at_least(options: Dict[str, Any], key: str, minimum: float) -> None:
    """A LayoutError unless strategy_options[key] >= minimum."""
    if options[key] < minimum:
        raise LayoutError(f"config field strategy_options.{key}: must be >= {minimum} (got {options[key]!r})")


def check_choice(options: Dict[str, Any], key: str, choices: Sequence[str]) -> None:
    """A LayoutError unless strategy_options[key] is one of `choices`."""
    if options[key] not in choices:
        raise LayoutError(f"config field strategy_options.{key}: must be one of {', '.join(choices)} "
                          f"(got {options[key]!r})")


# ------------------------------------------------------------------ training settings

LR_SCALING_RULES = ("none", "linear", "sqrt")
OPTIMIZERS = ("sgd", "momentum", "adam")


def lr_scale(rule: str, workers: int) -> float:
    """The factor the base learning rate is multiplied by at `workers` workers.

    Args:
        rule: none | linear | sqrt (Goyal et al. 2017 use linear; Dong et al. 2019 find sqrt better
            beyond 16 nodes).
        workers: workers whose batches make one update.
    Returns:
        1, workers, or sqrt(workers).
    """
    return {"none": 1.0, "linear": float(workers), "sqrt": math.sqrt(workers)}[rule]


def staleness_lr(lr: float, staleness: int, rule: str) -> float:
    """The learning rate for a gradient `staleness` updates old.

    Args:
        rule: none, or divide: lr / tau for tau > 0 (Zhang, Gupta, Lian, Liu, "Staleness-aware
            Async-SGD for Distributed Deep Learning", IJCAI 2016).
    """
    return lr / staleness if rule == "divide" and staleness > 0 else lr


@dataclass(frozen=True)
class OptimizerSettings:
    """One optimizer and its hyperparameters: the single source for the TF model and the numpy copy
    that parameter servers apply."""
    name: str = "adam"
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8


@dataclass(frozen=True)
class TrainingSettings:
    """The resolved training settings a strategy needs (never the raw config)."""
    steps: int               # steps per worker
    batch_size: int          # FOVs per worker step
    lr: float                # base learning rate, before scaling by workers
    lr_scaling: str          # one of LR_SCALING_RULES
    warmup_steps: int        # linear ramp from lr to the scaled lr over these updates
    clip: float              # elementwise gradient clip, applied to the (averaged) gradient
    seed: int                # weights and example streams
    optimizer: OptimizerSettings
    timeout_s: float         # bound on every blocking wait

    def lr_schedule(self, workers: int) -> Callable[[int], float]:
        """The learning rate at each update.

        Args:
            workers: workers whose batches make one update (the layout's logical workers).
        Returns:
            lr(update): the base lr scaled by `lr_scale`, ramped linearly over warmup_steps.
        """
        base, warm = self.lr, self.warmup_steps
        target = base * lr_scale(self.lr_scaling, workers)

        def lr(update: int) -> float:
            if warm and update < warm:
                return base + (target - base) * update / warm
            return target
        return lr


@dataclass(frozen=True)
class Layout:
    """Where a strategy's ranks go: a role per rank, and the (logical) workers behind one update."""
    strategy: str
    ranks: int
    options: Dict[str, Any]
    roles: Tuple[str, ...]
    workers: int
    launch: str = "mpirun"               # how its ranks start (one of LAUNCHES)
    resumable: bool = False              # see Strategy.resumable
    survives_lost_workers: bool = False  # see Strategy.survives_lost_workers

    @property
    def worker_ranks(self) -> List[int]:
        """Ranks whose role is 'worker', in rank order."""
        return [r for r, role in enumerate(self.roles) if role == "worker"]

    def role_counts(self) -> Dict[str, int]:
        """{role: ranks with it}, e.g. {'server': 1, 'worker': 2}."""
        return {r: self.roles.count(r) for r in sorted(set(self.roles))}


# ------------------------------------------------------------------ records

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
class ResumeRecord:
    """Training continued from the state after `step` steps: a resumed run's checkpoint, or an elastic
    job's last commit after a lost worker. Records of later steps written before it are superseded."""
    kind: ClassVar[str] = "resume"
    step: int
    time: float


RECORD_TYPES = {cls.kind: cls for cls in (StepRecord, UpdateRecord, ServerRecord, EvalRecord, LostRecord,
                                          ResumeRecord)}


class Recorder(Protocol):
    """What a strategy records. Bench implements it (bench/recorder.py) and reacts to the records:
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

    def resume(self, step: int) -> None:
        """Record that training continues from the state after `step` steps (ResumeRecord)."""


# ------------------------------------------------------------------ what a strategy is given

class Batch(Protocol):
    def __len__(self) -> int: ...


class ExampleStream(Protocol):
    """A worker's training FOVs. FFN's recurrence: logits go back into each example's seed."""

    def next_batch(self) -> Batch: ...

    def feedback(self, logits: np.ndarray) -> None: ...


class ModelAPI(Protocol):
    """The FFN model as strategies use it (model/api.py): gradients and weights as flat float32
    vectors in one fixed order, or per-variable tensors for in-graph collectives."""
    num_params: int
    variables: Sequence[Any]

    def set_lr(self, lr: float) -> None: ...

    def gradients(self, batch: Batch) -> Tuple[List[Any], Any, Any]: ...

    def flat_gradients(self, batch: Batch) -> Tuple[np.ndarray, float, np.ndarray]: ...

    def apply_gradients(self, grads: Any) -> None: ...

    def train_step(self, batch: Batch) -> Tuple[float, np.ndarray]: ...

    def get_flat(self) -> np.ndarray: ...

    def set_flat(self, flat: np.ndarray) -> None: ...


@dataclass
class TrainingContext:
    """Everything a strategy sees. Bench builds it; `model` is set inside `Strategy.model_scope()`
    and `stream` exists on workers only."""
    settings: TrainingSettings
    layout: Layout
    rank: int
    comm: Any                       # the job's mpi4py communicator (launch "mpirun"; None otherwise)
    recorder: Recorder
    run_dir: str                    # for artefacts a strategy owns (e.g. Horovod's timeline)
    make_stream: Callable[[int], ExampleStream]   # the example stream of logical worker w
    model: Optional[ModelAPI] = None
    stream: Optional[ExampleStream] = None
    start_step: int = 0             # steps already done when a resumable strategy resumes
    #: save_state(step, arrays): this rank's part of the checkpoint after `step` steps, for state the
    #: strategy holds beyond the model and stream (a parameter server's shard); see Strategy.snapshot
    save_state: Callable[[int, Dict[str, np.ndarray]], None] = lambda step, arrays: None
    lr: Callable[[int], float] = field(init=False)

    def __post_init__(self):
        self.lr = self.settings.lr_schedule(self.layout.workers)

    @property
    def role(self) -> str:
        return self.layout.roles[self.rank]

    @property
    def options(self) -> Dict[str, Any]:
        return self.layout.options


@dataclass
class Final:
    """What `finish()` returns: on rank 0 the final flat weights and the updates they hold, and the
    ranks the job went on without (their processes are gone: bench must not wait for them)."""
    weights: Optional[np.ndarray]
    model_version: Optional[int]
    lost_ranks: Tuple[int, ...] = ()


# ------------------------------------------------------------------ the strategy

#: how a strategy's ranks are started: by mpirun (or srun, aprun) as one MPI job, or by horovodrun as
#: an elastic Horovod job over Gloo, whose ring shrinks when a worker is lost (strategies/comm.py)
LAUNCHES = ("mpirun", "horovodrun_elastic")
SIMULATOR_MODELS = ("ring_allreduce", "async_ps", "sync_ps")   # bench/simulator.py


class Strategy:
    """Base class. Subclasses set `name` and decorate themselves with @register."""
    name: ClassVar[str] = ""
    #: strategy_options this strategy accepts, with their defaults, and what each one means
    options: ClassVar[Dict[str, Any]] = {}
    option_docs: ClassVar[Dict[str, str]] = {}
    #: N workers emulated inside one process (its records say so)
    emulated: ClassVar[bool] = False
    #: how its ranks are started: one of LAUNCHES
    launch: ClassVar[str] = "mpirun"
    #: the simulator model that predicts its throughput at scale (one of SIMULATOR_MODELS), or None
    simulator_model: ClassVar[Optional[str]] = None
    #: bench checkpoints and resumes it: each worker's model and stream, plus what snapshot() has the
    #: other ranks save, are the whole training state, and train() starts at ctx.start_step
    resumable: ClassVar[bool] = False
    #: training goes on when a worker process dies (the launcher asks MPI not to end the job then)
    survives_lost_workers: ClassVar[bool] = False
    #: its colour in every figure (None: a spare one is picked)
    color: ClassVar[Optional[str]] = None
    #: position in tables and legends (simplest first); ties by name
    order: ClassVar[int] = 100

    # ---- the layout, checked before any rank starts
    @classmethod
    def layout(cls, ranks: int, user_options: Dict[str, Any]) -> Layout:
        """Resolve options and roles for `ranks` ranks.

        Args:
            ranks: ranks in the job.
            user_options: the config's strategy_options.
        Returns:
            The Layout.
        Raises:
            LayoutError: an unknown option, a bad option value, or an impossible layout.
        """
        unknown = sorted(set(user_options) - set(cls.options))
        if unknown:
            raise LayoutError(f"config field strategy_options.{unknown[0]}: not an option of strategy {cls.name} "
                              f"(options: {', '.join(sorted(cls.options)) or 'none'})")
        for key, value in user_options.items():
            default = cls.options[key]
            if not _same_kind(default, value):
                raise LayoutError(f"config field strategy_options.{key}: must be {_kind_name(default)} like its "
                                  f"default {default!r} (got {value!r})")
        options = {**cls.options, **user_options}
        roles = tuple(cls.roles(ranks, options))
        return Layout(cls.name, ranks, options, roles, cls.logical_workers(roles, options),
                      **cls.traits(options))

    @classmethod
    def traits(cls, options: Dict[str, Any]) -> Dict[str, Any]:
        """{launch, resumable, survives_lost_workers} with these options: the class's by default (an
        option may change how the ranks start and what a fault does, e.g. allreduce's elastic)."""
        return {"launch": cls.launch, "resumable": cls.resumable, "survives_lost_workers": cls.survives_lost_workers}

    @classmethod
    def launch_environment(cls, layout: Layout) -> Dict[str, str]:
        """Environment variables the launcher gives every rank of the job, set before any starts
        (e.g. a TensorFlow cluster spec): none by default."""
        return {}

    @classmethod
    def roles(cls, ranks: int, options: Dict[str, Any]) -> List[str]:
        """The role of each rank.

        Args:
            ranks: ranks in the job; options: the resolved strategy_options.
        Returns:
            'worker' or 'server' per rank.
        Raises:
            LayoutError: the layout or an option value is impossible.
        """
        return ["worker"] * ranks

    @classmethod
    def logical_workers(cls, roles: Sequence[str], options: Dict[str, Any]) -> int:
        """Workers whose batches make one update's worth of data (lr scaling uses it).

        Returns:
            The worker ranks by default; emulated strategies return their logical workers.
        """
        return list(roles).count("worker")

    @classmethod
    def fovs_per_update(cls, layout: Layout, batch_size: int) -> int:
        """FOVs behind one model update (bench's FOV totals: updates x this).

        Returns:
            workers x batch by default: a synchronous update averages every worker's batch.
        """
        return layout.workers * batch_size

    @classmethod
    def measure_costs(cls, settings: TrainingSettings, params: int) -> Dict[str, float]:
        """Costs of this strategy's own machinery that the simulator needs (`ffnbench calibrate`).

        Args:
            settings: the training settings (optimizer, clip); params: the model's parameter count.
        Returns:
            {SimInputs field: value}, e.g. server_apply_s_per_byte; empty by default.
        """
        return {}

    # ---- one rank's life
    def __init__(self, ctx: TrainingContext):
        self.ctx = ctx

    @property
    def model(self) -> ModelAPI:
        return self.ctx.model

    @property
    def comm(self):
        return self.ctx.comm

    @property
    def opts(self) -> Dict[str, Any]:
        return self.ctx.options

    def model_scope(self) -> ContextManager[None]:
        """Bench builds the model inside this (e.g. a tf.distribute strategy's scope)."""
        return contextlib.nullcontext()

    def setup(self) -> None:
        """Make every rank start from the same state."""

    def train(self) -> None:
        """This rank's part of training."""
        raise NotImplementedError

    def snapshot(self, step: int) -> None:
        """On every worker at a checkpoint after `step` steps, its own state saved: return once every
        rank's part is saved (the workers', and what other ranks hold, through ctx.save_state),
        consistent with each other. Only then does bench commit the checkpoint."""
        raise NotImplementedError(f"strategy {self.name} is resumable but has no snapshot()")

    def load_state(self, arrays: Dict[str, np.ndarray]) -> None:
        """On resume, after setup(): take back what this rank saved with ctx.save_state."""

    def finish(self) -> Final:
        """The final weights and the updates they hold, on rank 0 (Final(None, None) elsewhere)."""
        if self.ctx.rank != 0:
            return Final(None, None)
        return Final(self.model.get_flat(), self.ctx.settings.steps)


class SyncDataParallel(Strategy):
    """Each worker computes a gradient on its own batch; `average` turns them into one mean gradient
    (the only communication); every worker applies the same update."""
    simulator_model = "ring_allreduce"
    resumable = True

    def gradients(self, batch):
        """(gradient, loss, logits) for this worker's batch."""
        return self.model.flat_gradients(batch)

    def average(self, grads):
        raise NotImplementedError

    def update(self, batch):
        """One update from this worker's batch: (loss, logits)."""
        rec = self.ctx.recorder
        with rec.phase("compute"):
            grads, loss, logits = self.gradients(batch)
        with rec.phase("comm"):
            grads = self.average(grads)
        with rec.phase("compute"):
            self.model.apply_gradients(grads)
        return float(loss), np.asarray(logits)

    def train(self):
        for step in range(self.ctx.start_step, self.ctx.settings.steps):
            self.step(step, self.ctx.lr(step))

    def snapshot(self, step):
        """Every rank is a worker in lockstep: the checkpoint is whole once all have saved."""
        comm.barrier(self.comm, self.ctx.settings.timeout_s, "every rank to save its checkpoint")

    def step(self, step, lr):
        """Update `step` at learning rate `lr`, from this worker's next batch; record it."""
        ctx, rec = self.ctx, self.ctx.recorder
        self.model.set_lr(lr)
        with rec.phase("data"):
            batch = ctx.stream.next_batch()
        loss, logits = self.update(batch)
        with rec.phase("compute"):
            ctx.stream.feedback(logits)
        rec.step(step, len(batch), loss, model_version=step + 1)


REGISTRY: Dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a strategy known by its name.

    Raises:
        LayoutError: a missing or taken name, an unknown launch or simulator model, or an option
            without a line in option_docs.
    """
    if not cls.name or cls.name in REGISTRY:
        raise LayoutError(f"strategy {cls.__name__}: needs a unique name (got {cls.name!r})")
    if cls.launch not in LAUNCHES or cls.simulator_model not in SIMULATOR_MODELS + (None,):
        raise LayoutError(f"strategy {cls.name}: launch must be one of {LAUNCHES} and simulator_model one of "
                          f"{SIMULATOR_MODELS} or None")
    undocumented = sorted(set(cls.options) - set(cls.option_docs))
    if undocumented:
        raise LayoutError(f"strategy {cls.name}: option {undocumented[0]} has no entry in option_docs")
    REGISTRY[cls.name] = cls
    return cls
