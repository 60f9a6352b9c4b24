"""From a validated config, and what the launcher handed over, to what a strategy is given:
settings, layout, model, data, context.

Strategies see only what this builds (resolved values, never the raw config); rank.py also reads the
model section for FLOPs and the steps for the final checkpoint.
"""
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

from ffnbench import strategies
from ffnbench.strategies.settings import OptimizerSettings, TrainingSettings

#: what the launcher hands every rank beside config.yaml (no environment variables)
HANDOFF = "launch.json"


@dataclass(frozen=True)
class Handoff:
    """What the launcher decided before any rank started. resume_from: the checkpoint directory a
    resumed run continues from; synthetic_npz: volumes made once (a sweep's); node_peak: the matmul
    peak measured before the ranks started; strategy: the strategy's launch_info()."""
    resume_from: Optional[str] = None
    synthetic_npz: Optional[str] = None
    node_peak: Optional[Dict[str, Any]] = None
    strategy: Dict[str, Any] = field(default_factory=dict)


def write_handoff(run_dir, handoff):
    with open(os.path.join(run_dir, HANDOFF), "w") as f:
        json.dump(asdict(handoff), f, indent=2)


def read_handoff(run_dir):
    """The launcher's Handoff; an empty one for ranks started by another launcher (srun, aprun)."""
    path = os.path.join(run_dir, HANDOFF)
    if not os.path.exists(path):
        return Handoff()
    with open(path) as f:
        return Handoff(**json.load(f))


def optimizer_settings(cfg) -> OptimizerSettings:
    t = cfg["train"]
    return OptimizerSettings(name=t["optimizer"], momentum=t["momentum"], beta1=t["adam_beta1"],
                             beta2=t["adam_beta2"], epsilon=t["adam_epsilon"])


def training_settings(cfg) -> TrainingSettings:
    t = cfg["train"]
    return TrainingSettings(steps=t["steps"], batch_size=t["batch_size"], lr=t["lr"], lr_scaling=t["lr_scaling"],
                            warmup_steps=t["warmup_steps"], clip=t["clip"], seed=t["seed"],
                            optimizer=optimizer_settings(cfg), timeout_s=cfg["run"]["timeout_s"])


def layout_of(cfg):
    """The strategy's Layout for this config (LayoutError when impossible)."""
    return strategies.layout(cfg["strategy"], cfg["ranks"], cfg["strategy_options"])


def fovs_per_update(cfg, layout):
    return strategies.get(layout.strategy).fovs_per_update(layout, cfg["train"]["batch_size"])


def build_model(cfg, rank=0):
    """The FFN of the config, with the config's optimizer; with train.compute emulated, its passes
    are timed waits, drawn with a seed of this rank's own."""
    from ffnbench.model.api import FFNModel
    m, t = cfg["model"], cfg["train"]
    args = (m["fov"], m["depth"], m["features"], optimizer_settings(cfg), t["lr"], t["clip"], t["seed"],
            m["init"], m["init_stddev"], t["precision"])
    if t["compute"] == "real":
        return FFNModel(*args)
    from ffnbench.model.timed import StepTimes, TimedComputeFFN
    measured = measured_compute_s(t["compute_from"], cfg) if t["compute_from"] else None
    return TimedComputeFFN(*args, step_times=StepTimes(t["compute_mean_s"], t["compute_cv"], 1009 * t["seed"] + rank,
                                                       measured))


def measured_compute_s(run_dir, cfg):
    """The compute seconds of every worker step of a real run of the same model (past its timing
    warm-up): what emulated compute resamples."""
    from ffnbench.bench.analyse.results import load_run
    from ffnbench.bench.config import ConfigError
    from ffnbench.model.network import param_count
    run = load_run(run_dir)
    if not run.complete:
        raise ConfigError(f"config field train.compute_from: {run_dir} holds no complete run")
    if run.manifest.get("params") != param_count(cfg["model"]["depth"], cfg["model"]["features"]):
        raise ConfigError(f"config field train.compute_from: {run_dir} trained another model "
                          f"({run.manifest.get('params')} parameters)")
    if (run.manifest.get("compute") or {}).get("mode", "real") != "real":
        raise ConfigError(f"config field train.compute_from: {run_dir} did not compute for real")
    warmup = run.config["run"]["timing_warmup_steps"]
    return [s.compute_s for s in run.records.steps if s.step >= warmup]


def initial_weights(cfg):
    """The weights of model.init_from, checked against the config's network.

    Returns:
        ({layer: (kernel, bias)}, the manifest's record of their source).
    Raises:
        ConfigError: a missing checkpoint, or the first tensor that does not fit (one line).
    """
    from ffnbench.bench.config import ConfigError
    from ffnbench.model import ffn_checkpoint as fc
    m, path = cfg["model"], cfg["model"]["init_from"]
    field = "config field model.init_from"
    try:
        weights, fmt, prefix = fc.read_checked(path, m["depth"], m["features"], m["fov"])
    except (fc.CheckpointMismatch, FileNotFoundError) as e:
        raise ConfigError(f"{field}: {e}")
    return weights, {"path": path, "checkpoint": prefix, "format": fmt}


def load_initial_weights(cfg, model, resuming):
    """Overwrite the model's fresh weights with model.init_from's; returns the manifest's record
    (with the sha256 of the weights as loaded), or None without init_from. A resumed run takes its
    own checkpoint instead, so its source need not exist any more."""
    if not cfg["model"]["init_from"]:
        return None
    if resuming:
        return {"path": cfg["model"]["init_from"], "loaded": "at the start of the run (this attempt resumed)"}
    from ffnbench.model import ffn_checkpoint as fc
    weights, record = initial_weights(cfg)
    flat = fc.flat(weights, [v.name for v in model.variables])
    model.set_flat(flat)
    return {**record, "sha256": fc.digest(flat)}


class Data:
    """The training volume, the example streams of (logical) workers, and the fixed held-out FOVs."""

    def __init__(self, cfg, synthetic_npz=None):
        from ffnbench.model.data import heldout_batch, load_volumes
        self.cfg = cfg
        m, d = cfg["model"], cfg["data"]
        self.train_volume, heldout_volume = load_volumes(d, synthetic_npz)
        self.heldout = heldout_batch(heldout_volume, m["fov"], m["deltas"], cfg["eval"]["fovs"], d["seed"],
                                     d["min_object_size"], cfg["train"]["sample_background"])

    def stream(self, worker_index):
        """The example stream of (logical) worker w: global slots [w*b, (w+1)*b)."""
        from ffnbench.model.data import ExampleStream
        m, t, d = self.cfg["model"], self.cfg["train"], self.cfg["data"]
        b = t["batch_size"]
        return ExampleStream(self.train_volume, m["fov"], m["deltas"], range(worker_index * b, (worker_index + 1) * b),
                             t["seed"], d["min_object_size"], t["augment"], t["move_threshold"], t["label_moves"],
                             t["sample_background"], t["move_order"])
