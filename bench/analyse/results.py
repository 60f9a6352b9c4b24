"""The results layer: runs on disk, their records, and which runs belong together.

`ffnbench report`, `ffnbench plot` and the summary read runs only through here. A run directory holds
config.yaml, manifest.json, metrics.jsonl (records of the kinds declared in strategies/records.py),
summary.json once it is complete, and eval.json after a segmentation evaluation. Runs that differ
only by repeat are one experiment; runs that differ only in fields that do not change per-worker
throughput share a 1-worker baseline.
"""
import contextlib
import json
import os
import socket
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import yaml

from ffnbench import strategies
from ffnbench.bench.config import flatten
from ffnbench.strategies.records import (RECORD_TYPES, CommitRecord, EvalRecord, LostRecord, ResumeRecord,
                                         ServerRecord, StepRecord, UpdateRecord)
from ffnbench.strategies.settings import lr_scale

#: the status of a finished run in summary.json (anything else is not a result)
COMPLETE = "complete"
#: held-out F1 a run must reach for `time to target` (a sweep's report.target_f1 overrides it)
DEFAULT_TARGET_F1 = 0.8
#: fields that never change a result: repeats of one experiment may differ in these
#: (train.seed too: a sweep's repeats are the same experiment from different seeds)
NOT_THE_EXPERIMENT = ("name", "run.out", "run.progress", "run.timeout_s", "run.checkpoint_every", "train.seed")
#: fields that do not change per-worker throughput: the 1-worker baseline may differ in these
NOT_THROUGHPUT = NOT_THE_EXPERIMENT + ("strategy", "ranks", "strategy_options", "train.steps", "train.lr",
                                       "train.lr_scaling", "train.warmup_steps", "eval.")


# ---------------------------------------------------------------- records

class Records(NamedTuple):
    """A run's records by kind, each list in file order, without those a resume superseded."""
    steps: List[StepRecord]
    updates: List[UpdateRecord]
    servers: List[ServerRecord]
    evals: List[EvalRecord]
    lost: List[LostRecord]
    resumes: List[ResumeRecord]


def read_records(run_dir: str) -> Records:
    """The records of RUN_DIR/metrics.jsonl as the dataclasses of strategies/records.py.

    The resume rule, applied here only: when a rank resumes from its state after step K (a resumed
    run, or an elastic ring re-formed), what that rank recorded after its commit of step K is
    superseded (it is done again). A line cut short by an interruption is skipped.

    Args:
        run_dir: a run directory (no metrics.jsonl: no records).
    Returns:
        Records(steps, updates, servers, evals, lost, resumes).
    Raises:
        ValueError: a record of an unknown kind, or one whose fields are not its kind's (written by
            another version of ffnbench).
    """
    kept: List[Any] = []  # records in file order; None where superseded
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(path) if os.path.isfile(path) else contextlib.nullcontext([]) as f:
        lines = [line.strip() for line in f if line.strip()]
    for line in lines:
        if not line.endswith("}"):
            continue  # cut short by an interruption
        d = json.loads(line)
        kind = d.get("kind")
        if kind not in RECORD_TYPES:
            raise ValueError(f"{path}: record of unknown kind {kind!r} (kinds: {', '.join(RECORD_TYPES)})")
        try:
            record = RECORD_TYPES[kind](**{k: v for k, v in d.items() if k != "kind"})
        except TypeError:
            raise ValueError(f"{path}: a {kind} record whose fields are not those of this version of "
                             f"ffnbench (strategies/records.py); re-run it") from None
        if kind == ResumeRecord.kind:
            _supersede(kept, record)
        kept.append(record)
    by_kind: Dict[str, list] = {kind: [] for kind in RECORD_TYPES}
    for record in filter(None, kept):
        by_kind[record.kind].append(record)
    return Records(steps=by_kind[StepRecord.kind], updates=by_kind[UpdateRecord.kind],
                   servers=by_kind[ServerRecord.kind], evals=by_kind[EvalRecord.kind],
                   lost=by_kind[LostRecord.kind], resumes=by_kind[ResumeRecord.kind])


def _supersede(kept: List[Any], resume: ResumeRecord) -> None:
    """Blank out what `resume`'s rank recorded after its last commit of the step it resumes from. A
    rank that never committed that step (a worker lost before it) recorded nothing beyond it."""
    mine = [i for i, r in enumerate(kept) if r is not None and r.rank == resume.rank]
    commits = [i for i in mine if isinstance(kept[i], CommitRecord) and kept[i].step == resume.step]
    for i in mine:
        if commits and i > commits[-1]:
            kept[i] = None


def staleness_values(records: Records) -> List[int]:
    """The staleness of every gradient as the first server rank recorded it.

    With several servers each gradient is recorded once per server (shard); one shard's view counts
    each gradient once.

    Args:
        records: a run's records.
    Returns:
        Staleness values in file order; empty for runs without update records.
    """
    first_server = min((u.rank for u in records.updates), default=None)
    return [u.staleness for u in records.updates if u.rank == first_server]


# ---------------------------------------------------------------- loading runs

@dataclass
class RunData:
    """One run directory; complete only if its summary.json says so."""
    run_dir: str
    run_id: str
    status: str = "incomplete"
    error: Optional[str] = None
    summary: Optional[dict] = None
    manifest: Optional[dict] = None
    config: Optional[dict] = None
    seg: Optional[dict] = None  # eval.json (ARE, VOI), written by segmentation evaluation when run
    fields: Dict[str, Any] = field(default_factory=dict)  # flattened config

    @property
    def complete(self) -> bool:
        return (self.summary or {}).get("status") == COMPLETE

    @cached_property
    def records(self) -> Records:
        return read_records(self.run_dir)

    @cached_property
    def evals(self) -> List[EvalRecord]:
        """Held-out evaluations in time order; none for emulated compute (its weights do not learn,
        so no convergence figure may come from it)."""
        if self.compute_emulated:
            return []
        return sorted(self.records.evals, key=lambda r: r.time)

    @property
    def compute_emulated(self) -> bool:
        """Its workers' passes were timed waits (train.compute emulated)."""
        return (self.fields.get("train.compute") or "real") == "emulated"

    @cached_property
    def emulated(self) -> bool:
        """N logical workers in one process: its FOVs/s is one process's, not N workers'."""
        return bool((self.manifest or {}).get("emulated") or any(r.emulated for r in self.records.steps))

    @property
    def strategy(self) -> str:
        return self.summary["strategy"] if self.complete else self.fields.get("strategy", "?")

    @property
    def workers(self) -> int:
        return self.summary["workers"]


def effective_lr(run: RunData) -> float:
    """The learning rate a run trained at after warm-up: train.lr times its scaling factor.

    Args:
        run: a complete run.
    Returns:
        train.lr * lr_scale(train.lr_scaling, workers).
    """
    return run.fields["train.lr"] * lr_scale(run.fields.get("train.lr_scaling") or "none", run.workers)


def read_json(path):
    """A JSON file, or None where there is none."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def flat_fields(cfg: Optional[dict]) -> Dict[str, Any]:
    """A config flattened to dotted keys, with strategy_options spread out as strategy_options.KEY.

    Args:
        cfg: a run's config (None: empty).
    Returns:
        {dotted key: value}.
    """
    flat = flatten(cfg or {})
    for key, value in (flat.pop("strategy_options", None) or {}).items():
        flat[f"strategy_options.{key}"] = value
    return flat


def strict_json(value: Any, **kwargs) -> str:
    """JSON that every parser reads: NaN and infinities (a diverged loss) become null."""
    def finite(v):
        if isinstance(v, float) and not np.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def read_summary(run_dir: str) -> dict:
    """The run's summary.json ({} when it has none yet)."""
    return read_json(os.path.join(run_dir, "summary.json")) or {}


def is_complete(run_dir: str) -> bool:
    """Whether the run finished: its summary.json says status complete (written only after every
    rank's records are in)."""
    return read_summary(run_dir).get("status") == COMPLETE


def stored_config(run_dir: str) -> Optional[dict]:
    """RUN_DIR/config.yaml (the resolved config the run was started with), or None."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return yaml.safe_load(f)


class Targets(NamedTuple):
    """What the figures draw as targets: held-out F1, and held-out loss when the sweep names one."""
    f1: Optional[float]
    loss: Optional[float]


def target_f1(index: Optional[dict], override: Optional[float] = None) -> float:
    """The F1 for time to target: `override`, else the sweep's report.target_f1, else the default."""
    if override is not None:
        return override
    return (index or {}).get("report", {}).get("target_f1", DEFAULT_TARGET_F1)


def load_run(run_dir: str, run_id: Optional[str] = None, status: Optional[str] = None,
             error: Optional[str] = None) -> RunData:
    """Read one run directory (its records are read when first used).

    Args:
        run_dir: the run's directory.
        run_id: its name in the report (default: the directory's name).
        status: the sweep's status of it; 'failed' and 'pending' are kept for incomplete runs.
        error: the sweep's error message for it.
    Returns:
        The RunData; complete when its summary.json has status complete.
    """
    run = RunData(run_dir=run_dir, run_id=run_id or os.path.basename(run_dir.rstrip(os.sep)))
    run.summary = read_json(os.path.join(run_dir, "summary.json"))
    run.manifest = read_json(os.path.join(run_dir, "manifest.json"))
    run.seg = read_json(os.path.join(run_dir, "eval.json"))
    run.config = stored_config(run_dir) or (run.manifest or {}).get("config")
    run.fields = flat_fields(run.config)
    run.status = COMPLETE if run.complete else (status if status in ("failed", "pending") else "incomplete")
    run.error = error
    return run


def find_run_dirs(directory: str) -> List[str]:
    """Directories holding a run (config.yaml or summary.json), not looking inside a run.

    Args:
        directory: where to look.
    Returns:
        Run directories in sorted walk order.
    """
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        if "summary.json" in files or "config.yaml" in files:
            found.append(root)
            dirs[:] = []
    return found


def collect_runs(directory: str) -> Tuple[List[RunData], Optional[dict]]:
    """The runs of a sweep (by its index.json, in sweep order), or every run below a directory.

    Args:
        directory: a sweep's output directory or any directory of runs.
    Returns:
        (runs, the sweep's index.json or None).
    Raises:
        ValueError: not a directory, or no runs in it.
    """
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory")
    index = read_json(os.path.join(directory, "index.json"))
    if index is not None:
        runs = [load_run(e["run_dir"] if os.path.isdir(e["run_dir"]) else os.path.join(directory, e["id"]),
                         e["id"], e["status"], e.get("error")) for e in index["runs"]]
    else:
        runs = [load_run(d, os.path.relpath(d, directory)) for d in find_run_dirs(directory)]
    if not runs:
        raise ValueError(f"{directory}: no runs found (no index.json and no run directories below it)")
    return runs, index


def machine(runs: Iterable[RunData]) -> str:
    """The machines the runs ran on, for titles.

    Args:
        runs: runs (their manifests name host and cores).
    Returns:
        'host (CPU model, N cores), ...'; cores from a manifest, else this machine's when it is the host.
    """
    manifests = [r.manifest for r in runs if r.manifest and r.manifest.get("host")]
    here = socket.gethostname()
    described = []
    for host in sorted({m["host"] for m in manifests}):
        cores = next((m["cores"] for m in manifests if m["host"] == host and m.get("cores")), None)
        cores = cores or (os.cpu_count() if host == here else None)
        cpu = next((m["cpu"] for m in manifests if m["host"] == host and m.get("cpu")), None)
        details = ", ".join(filter(None, [cpu, f"{cores} cores" if cores else None]))
        described.append(f"{host} ({details})" if details else host)
    return ", ".join(described) or "unknown host"


# ---------------------------------------------------------------- grouping

def ignored(key: str, ignore: Sequence[str]) -> bool:
    """Whether a flattened field is in `ignore` (entries ending in '.' cover a whole section).

    Args:
        key: a dotted field name.
        ignore: field names, or section prefixes ending in '.'.
    Returns:
        True when the field is covered.
    """
    return any(key == i or key.startswith(i if i.endswith(".") else i + ".") for i in ignore)


def _key(run, ignore):
    kept = {k: v for k, v in run.fields.items() if not ignored(k, ignore)}
    return json.dumps(kept, sort_keys=True, default=str)


def experiment_key(run: RunData) -> str:
    """Equal for repeats of one experiment (the config without NOT_THE_EXPERIMENT)."""
    return _key(run, NOT_THE_EXPERIMENT)


def throughput_key(run: RunData) -> str:
    """Equal for runs with the same per-worker throughput (the config without NOT_THROUGHPUT)."""
    return _key(run, NOT_THROUGHPUT)


def varying_fields(runs: Sequence[RunData], exclude: Sequence[str] = ("strategy", "ranks")) -> List[str]:
    """Config fields whose value differs between the runs (what tells experiments apart).

    Args:
        runs: the runs compared.
        exclude: fields (or sections ending in '.') never named; NOT_THE_EXPERIMENT always is.
    Returns:
        Sorted dotted field names.
    """
    keys = sorted({k for r in runs for k in r.fields})
    return [k for k in keys if not ignored(k, tuple(exclude) + NOT_THE_EXPERIMENT)
            and len({json.dumps(r.fields.get(k), sort_keys=True, default=str) for r in runs}) > 1]


def fields_text(run: RunData, keys: Sequence[str]) -> List[str]:
    """The run's values of some fields as text.

    Args:
        run: a run.
        keys: dotted field names.
    Returns:
        e.g. ['batch_size=4', 'lr=0.001']: by leaf name unless two leaves collide.
    """
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    parts = []
    for k, leaf in zip(keys, leaves):
        name, value = (leaf if leaves.count(leaf) == 1 else k), run.fields.get(k)
        parts.append(f"{name}={format(value, 'g') if isinstance(value, float) else value}")
    return parts


def group_runs(runs: Iterable[RunData]) -> List[List[RunData]]:
    """Complete runs grouped by experiment (repeats together).

    Args:
        runs: runs, complete or not.
    Returns:
        Groups in order of first appearance.
    """
    groups: Dict[str, List[RunData]] = {}
    for r in runs:
        if r.complete:
            groups.setdefault(experiment_key(r), []).append(r)
    return list(groups.values())


def aggregate_rates(rates: Sequence[dict]) -> Tuple[float, float]:
    """The FOVs/s of repeats of one experiment.

    Args:
        rates: each repeat's summary fovs_per_s ({mean, uncertainty, ...}).
    Returns:
        (mean over repeats, std over repeats when n > 1 else the single run's uncertainty).
    """
    means = [r["mean"] for r in rates]
    if len(means) == 1:
        return means[0], rates[0]["uncertainty"]
    return float(np.mean(means)), float(np.std(means, ddof=1))


def baseline_rate(group: Sequence[RunData], complete_runs: Sequence[RunData]) -> Tuple[Optional[float], Optional[str]]:
    """The 1-worker rate a group's speed-up is measured against.

    The 1-worker runs with the same throughput-relevant config: of the group's strategy when there
    are some, else of the reference strategy (the first in display order).

    Args:
        group: runs of one experiment.
        complete_runs: every complete run to look for a baseline in.
    Returns:
        (FOVs/s of the baseline, its strategy), or (None, None).
    """
    key = throughput_key(group[0])
    candidates = [r for r in complete_runs if r.workers == 1 and throughput_key(r) == key]
    for wanted in (group[0].strategy, strategies.reference()):
        chosen = [r for r in candidates if r.strategy == wanted]
        if chosen:
            return aggregate_rates([r.summary["fovs_per_s"] for r in chosen])[0], wanted
    return None, None


def sortable(value: Any) -> tuple:
    """Sort key: numbers in numeric order, anything else after them by its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, json.dumps(value, sort_keys=True, default=str))
