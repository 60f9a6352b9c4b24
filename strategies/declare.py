"""What a strategy declares, checked in one generic place before any rank starts: its options (type,
default, range, meaning), its traits (how its ranks start, what a checkpoint or a lost worker does),
and the Layout they resolve to for a number of ranks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

#: how a strategy's ranks are started: by mpirun (or srun, aprun) as one MPI job, or by horovodrun as
#: an elastic Horovod job over Gloo, whose ring shrinks when a worker is lost
LAUNCHES = ("mpirun", "horovodrun_elastic")
#: the models of bench/analyse/simulator.py that predict a strategy's throughput at scale
SIMULATOR_MODELS = ("ring_allreduce", "async_ps", "sync_ps")


class LayoutError(ValueError):
    """An impossible rank layout or a bad strategy option; the message names it."""


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def _is(kind: type, value: Any) -> bool:
    """isinstance, where a bool is no number and an int is a float."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


@dataclass(frozen=True)
class Option:
    """One strategy option: its default, what it means, and the values it takes.

    kind: the value's type (the default's unless given: needed when the default is None);
    items: a list's element type; choices: the only values allowed; at_least: the smallest number
    (for a list, of each element); nullable: None (YAML null) is allowed too.
    """
    default: Any
    doc: str
    kind: Optional[type] = None
    items: Optional[type] = None
    choices: Tuple[Any, ...] = ()
    at_least: Optional[float] = None
    nullable: bool = False

    def check(self, name: str, value: Any) -> None:
        """LayoutError naming `name` unless `value` is one this option takes."""
        where = f"config field strategy_options.{name}"
        if value is None and (self.nullable or self.default is None):
            return
        kind = self.kind or type(self.default)
        want = _KIND_NAMES.get(kind, kind.__name__) + (" or null" if self.nullable else "")
        if not _is(kind, value):
            raise LayoutError(f"{where}: must be {want} (got {value!r})")
        if self.choices and value not in self.choices:
            raise LayoutError(f"{where}: must be one of {', '.join(map(str, self.choices))} (got {value!r})")
        values = value if kind is list else [value]
        if self.items is not None and not all(_is(self.items, v) for v in values):
            raise LayoutError(f"{where}: must be a list of {_KIND_NAMES[self.items].split()[-1]}s (got {value!r})")
        if self.at_least is not None and any(v < self.at_least for v in values):
            raise LayoutError(f"{where}: must be >= {self.at_least:g}{' each' if kind is list else ''} (got {value!r})")


@dataclass(frozen=True)
class Traits:
    """What bench needs to know to run a strategy, declared rather than discovered.

    launch: one of LAUNCHES. resumable: bench checkpoints and resumes it (each worker's model and
    stream, plus what the other ranks save through ctx.save_state, are the whole training state, and
    train() starts at ctx.start_step). survives_lost_workers: training goes on when a worker dies (the
    launcher asks MPI not to end the job then). emulated: N logical workers in one process (its
    records say so). simulator_model: one of SIMULATOR_MODELS, or None. one_machine: its ranks can only
    reach each other on one machine's loopback (so not across emulated nodes).
    """
    launch: str = "mpirun"
    resumable: bool = False
    survives_lost_workers: bool = False
    emulated: bool = False
    simulator_model: Optional[str] = None
    one_machine: bool = False

    def __post_init__(self):
        if self.launch not in LAUNCHES or self.simulator_model not in SIMULATOR_MODELS + (None,):
            raise LayoutError(f"traits: launch must be one of {LAUNCHES} and simulator_model one of "
                              f"{SIMULATOR_MODELS} or None (got {self.launch!r}, {self.simulator_model!r})")


def resolve(strategy: str, declared: Dict[str, Option], given: Dict[str, Any]) -> Dict[str, Any]:
    """The declared options' defaults overlaid with the config's, each given one checked."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise LayoutError(f"config field strategy_options.{unknown[0]}: not an option of strategy {strategy} "
                          f"(options: {', '.join(sorted(declared)) or 'none'})")
    for name, value in given.items():
        declared[name].check(name, value)
    return {**{name: option.default for name, option in declared.items()}, **given}


@dataclass(frozen=True)
class Layout:
    """Where a strategy's ranks go: a role per rank, the (logical) workers behind one update, the
    resolved options and the traits they give."""
    strategy: str
    ranks: int
    options: Dict[str, Any]
    roles: Tuple[str, ...]
    workers: int
    traits: Traits = field(default_factory=Traits)

    @property
    def worker_ranks(self) -> List[int]:
        """Ranks whose role is 'worker', in rank order."""
        return [r for r, role in enumerate(self.roles) if role == "worker"]

    def role_counts(self) -> Dict[str, int]:
        """{role: ranks with it}, e.g. {'server': 1, 'worker': 2}."""
        return {r: self.roles.count(r) for r in sorted(set(self.roles))}
