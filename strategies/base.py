"""The contract between bench and a strategy: what a strategy declares, what it is given, what it does.

A strategy declares its `options` (strategies/declare.py Option: type, default, range, meaning) and
its `traits` (how its ranks start, whether bench may checkpoint it, whether it survives a lost
worker); bench checks and runs it. It reads like a page: `setup()` makes every rank start from the
same state, `train()` runs this rank's part of training, `finish()` hands back the final weights. It
is given one `TrainingContext`, which bench builds once from the config; it never imports bench, and
it writes results only through the context's Recorder (strategies/records.py).

Bench owns everything around training: the progress bar, periodic evaluation and checkpoints (driven
by the records), FOV totals, the summary.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, ContextManager, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from ffnbench.strategies import comm
from ffnbench.strategies.declare import Layout, LayoutError, Option, Traits, resolve
from ffnbench.strategies.records import Recorder
from ffnbench.strategies.settings import TrainingSettings


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


@dataclass(frozen=True)
class TrainingContext:
    """Everything a strategy sees, built once by bench before the strategy exists. `stream` is None
    on ranks that are not workers."""
    settings: TrainingSettings
    layout: Layout
    rank: int
    comm: Any                       # the job's mpi4py communicator (launch "mpirun"; None otherwise)
    recorder: Recorder
    run_dir: str                    # for artefacts a strategy owns (e.g. Horovod's timeline)
    model: ModelAPI
    make_stream: Callable[[int], ExampleStream]   # the example stream of logical worker w
    stream: Optional[ExampleStream] = None
    start_step: int = 0             # steps already done when a resumable strategy resumes
    #: save_state(step, arrays): this rank's part of the checkpoint after `step` steps, for state the
    #: strategy holds beyond the model and stream (a parameter server's shard); see Strategy.snapshot
    save_state: Callable[[int, Dict[str, np.ndarray]], None] = lambda step, arrays: None
    #: what the strategy's launch_info() gave the launcher, read back from the run directory
    launch_info: Dict[str, Any] = field(default_factory=dict)

    @property
    def role(self) -> str:
        return self.layout.roles[self.rank]

    def lr(self, update: int) -> float:
        """The learning rate of `update` at the layout's workers (TrainingSettings.lr_schedule)."""
        return self.settings.lr_schedule(self.layout.workers)(update)


@dataclass
class Final:
    """What `finish()` returns: on rank 0 the final flat weights and the updates they hold, and the
    ranks the job went on without (their processes are gone: bench must not wait for them)."""
    weights: Optional[np.ndarray]
    model_version: Optional[int]
    lost_ranks: Tuple[int, ...] = ()


# ------------------------------------------------------------------ the strategy

class Strategy:
    """Base class. Subclasses set `name`, declare `options` and `traits`, and decorate themselves
    with @register."""
    name: ClassVar[str] = ""
    #: {option: Option}: what strategy_options this strategy takes (checked generically, declare.py)
    options: ClassVar[Dict[str, Option]] = {}
    traits: ClassVar[Traits] = Traits()

    # ---- declared: what bench checks and plans with, before any rank starts
    @classmethod
    def resolve_layout(cls, ranks: int, given: Dict[str, Any]) -> Layout:
        """The Layout for `ranks` ranks and the config's strategy_options; LayoutError when impossible."""
        options = resolve(cls.name, cls.options, given)
        roles = tuple(cls.roles(ranks, options))
        return Layout(cls.name, ranks, options, roles, cls.logical_workers(roles, options), cls.traits_with(options))

    @classmethod
    def traits_with(cls, options: Dict[str, Any]) -> Traits:
        """The traits with these options: the declared ones unless an option changes how the ranks start
        and what a fault does (e.g. allreduce's elastic)."""
        return cls.traits

    @classmethod
    def roles(cls, ranks: int, options: Dict[str, Any]) -> List[str]:
        """'worker' or 'server' per rank; LayoutError when the ranks cannot hold this layout (a rule
        across options or ranks; each option's own values are checked from its declaration)."""
        return ["worker"] * ranks

    @classmethod
    def logical_workers(cls, roles: Sequence[str], options: Dict[str, Any]) -> int:
        """Workers whose batches make one update's worth of data (lr scaling uses it): the worker
        ranks by default; emulated strategies return their logical workers."""
        return list(roles).count("worker")

    @classmethod
    def fovs_per_update(cls, layout: Layout, batch_size: int) -> int:
        """FOVs behind one model update (bench's FOV totals: updates x this): workers x batch by
        default, since a synchronous update averages every worker's batch."""
        return layout.workers * batch_size

    @classmethod
    def launch_info(cls, layout: Layout) -> Dict[str, Any]:
        """What every rank must share before any starts (e.g. a TF cluster's ports), made once by the
        launcher and handed to the ranks through the run directory (ctx.launch_info): none by default."""
        return {}

    @classmethod
    def measure_costs(cls, settings: TrainingSettings, params: int) -> Dict[str, float]:
        """{SimInputs field: value}: costs of this strategy's own machinery that the simulator needs
        (`ffnbench calibrate`), e.g. server_apply_s_per_byte; none by default."""
        return {}

    @classmethod
    def exchange_benchmarks(cls, world, grads) -> Dict[str, Callable[[], Any]]:
        """{way: call}: one exchange of the per-variable `grads` over `world`, built as training builds
        it, for commbench to time; none by default."""
        return {}

    @classmethod
    def model_scope(cls, layout: Layout, rank: int, settings: TrainingSettings,
                    launch_info: Dict[str, Any]) -> ContextManager[None]:
        """Bench builds the model inside this (e.g. after joining a tf.distribute cluster)."""
        return contextlib.nullcontext()

    # ---- one rank's life
    def __init__(self, ctx: TrainingContext):
        self.ctx = ctx

    @property
    def model(self) -> ModelAPI:
        return self.ctx.model

    @property
    def comm(self):
        return self.ctx.comm

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

    def pause_begins(self) -> None:
        """On a worker: it stops for a pause bench takes on every worker (an evaluation or a checkpoint)."""

    def pause_ends(self, led: bool) -> Optional[int]:
        """On a worker whose part of the pause is done (led: it did the pause's work). A strategy that
        can end the pause without waiting on a lost worker does so here: it returns once every live
        worker may go on, with the worker to lead the next pause. None (the default): bench's control
        plane holds the workers until the leader is done."""
        return None

    def load_state(self, arrays: Dict[str, np.ndarray]) -> None:
        """On resume, after setup(): take back what this rank saved with ctx.save_state (bench never
        reads it)."""

    def finish(self) -> Final:
        """The final weights and the updates they hold, on rank 0 (Final(None, None) elsewhere)."""
        if self.ctx.rank != 0:
            return Final(None, None)
        return Final(self.model.get_flat(), self.ctx.settings.steps)


class SyncDataParallel(Strategy):
    """Each worker computes a gradient on its own batch; `average` turns them into one mean gradient
    (the only communication); every worker applies the same update."""
    traits = Traits(resumable=True, simulator_model="ring_allreduce")

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
        LayoutError: a missing or taken name, or options that are not declared with Option.
    """
    if not cls.name or cls.name in REGISTRY:
        raise LayoutError(f"strategy {cls.__name__}: needs a unique name (got {cls.name!r})")
    loose = sorted(k for k, v in cls.options.items() if not isinstance(v, Option))
    if loose:
        raise LayoutError(f"strategy {cls.name}: option {loose[0]} must be declared as an Option (default, meaning)")
    REGISTRY[cls.name] = cls
    return cls
