"""Experiment config: one typed section per dataclass (each field's type, default, meaning and
valid values declared once), strict validation, dotted overrides.

A loaded config is the nested dict of its YAML (what the run directory keeps); `typed(cfg)` gives the
same values as the section dataclasses. Every error is a ConfigError naming one field, so the CLI can
print one line and exit 2.
"""
import copy
import os
import re
from dataclasses import dataclass
from typing import List

import yaml

from ffnbench import strategies
from ffnbench.model.inference import InferenceOptions
from ffnbench.model.network import BF16_FLAGS, INITS, PRECISIONS, bf16_flags
from ffnbench.model.typed import declared, default_of, problem, setting
from ffnbench.strategies.settings import LR_SCALING_RULES, OPTIMIZERS, OptimizerSettings


class ConfigError(ValueError):
    """A bad config: the message names the field."""


@dataclass
class Job:
    """The top level: which job this is."""
    name: str = setting("ffn", "run name, used in the run directory name")
    strategy: str = setting(strategies.reference(), "training strategy (see `ffnbench strategies`)")
    ranks: int = setting(1, "MPI ranks in total (servers + workers for ps strategies)", at_least=1)
    strategy_options: dict = setting({}, "strategy-specific options (see the table below)", kind="mapping")


@dataclass
class Model:
    fov: List[int] = setting([33, 33, 33], "field of view z,y,x in voxels", at_least=1)
    deltas: List[int] = setting([8, 8, 8], "FOV movement step z,y,x", at_least=0)
    depth: int = setting(12, "number of conv modules (1 + depth-1 residual)", at_least=1)
    features: int = setting(32, "channels per conv", at_least=1)
    init: str = setting("glorot_uniform", "glorot_uniform (google/ffn's code: tf-slim's default, zero biases) | "
                        "truncated_normal (stddev model.init_stddev)", choices=INITS)
    init_from: str = setting("", "start from these weights (fresh optimizer, step 0): a google/ffn TF1 checkpoint "
                             "prefix, or an ffnbench run directory or checkpoint")
    init_stddev: float = setting(0.01, "stddev of init truncated_normal (google/ffn's published models: 0.01)",
                                 above=0)


@dataclass
class Data:
    source: str = setting("synthetic", "synthetic | hdf5", choices=("synthetic", "hdf5"))
    seed: int = setting(0, "seed of the synthetic training volume (held-out volume uses seed+1)")
    shape: List[int] = setting([64, 128, 128], "synthetic volume shape z,y,x", at_least=1)
    density: float = setting(1.0, "synthetic neurite density (more = thinner cells)", above=0)
    image: str = setting("", "hdf5 image as file.h5:dataset")
    labels: str = setting("", "hdf5 labels as file.h5:dataset")
    holdout_fraction: float = setting(0.25, "hdf5: last fraction of z held out for evaluation", above=0, below=1)
    image_mean: float = setting(128.0, "image normalisation mean")
    image_stddev: float = setting(33.0, "image normalisation stddev", above=0)
    min_object_size: int = setting(1000, "smaller objects are sampled as background (FFN's min_size; it uses "
                                   "10000 on full-size volumes, too many for a 64x128x128 one)", at_least=0)


_OPTIMIZER = OptimizerSettings()


@dataclass
class Train:
    batch_size: int = setting(4, "FOVs per worker step", at_least=1)
    optimizer: str = setting(_OPTIMIZER.name, " | ".join(OPTIMIZERS), choices=OPTIMIZERS)
    momentum: float = setting(_OPTIMIZER.momentum, "momentum optimizer: momentum (keras SGD's)", at_least=0, below=1)
    adam_beta1: float = setting(_OPTIMIZER.beta1, "adam: beta_1", at_least=0, below=1)
    adam_beta2: float = setting(_OPTIMIZER.beta2, "adam: beta_2", at_least=0, below=1)
    adam_epsilon: float = setting(_OPTIMIZER.epsilon, "adam: epsilon (google/ffn's default 1e-8; keras' is 1e-7)",
                                  above=0)
    lr: float = setting(1e-3, "base learning rate", above=0)
    lr_scaling: str = setting("none", f"{' | '.join(LR_SCALING_RULES)}: multiply lr by 1, workers or sqrt(workers)",
                              choices=LR_SCALING_RULES)
    warmup_steps: int = setting(0, "linear lr ramp from base to scaled lr over these steps", at_least=0)
    steps: int = setting(100, "steps per worker", at_least=1)
    seed: int = setting(0, "seed of weights init and example streams")
    clip: float = setting(0.7, "elementwise gradient clip (max_gradient_entry_mag)", above=0)
    move_threshold: float = setting(0.9, "training FOV policy: move where seed >= logit(this)", above=0, below=1)
    label_moves: bool = setting(False, "training FOV policy: also move where the label is the object (not FFN: "
                                "FFN moves only where the predicted seed is >= move_threshold)")
    sample_background: bool = setting(True, "sample FOVs centred on background (label 0) as a partition of its "
                                      "own, as FFN does (their target is empty); false: objects only")
    move_order: str = setting("run", "run: the 26 moves in one shuffled order per run, as FFN; example: "
                              "shuffled per example", choices=("run", "example"))
    augment: bool = setting(True, "permute y/x and reflect z/y/x")
    precision: str = setting("float32", "float32 | mixed_bfloat16: convolutions in bfloat16; weights, optimizer, "
                             "loss, residual stream, logit update and exchanged gradients stay float32",
                             choices=PRECISIONS)
    force_precision: bool = setting(False, "run mixed_bfloat16 on a CPU without bfloat16 instructions (emulated "
                                    "and slow; recorded in the manifest)")
    compute: str = setting("real", "real | emulated: each worker's forward and backward pass replaced by a timed "
                           "wait (the real exchange, updates and gradient sizes; no convergence figures)",
                           choices=("real", "emulated"))
    compute_mean_s: float = setting(0.0, "compute emulated: mean seconds of a pass (the model's own measured step "
                                    "time), unless compute_from is given", at_least=0)
    compute_cv: float = setting(0.1, "compute emulated: coefficient of variation of the waits (lognormal, as the simulator draws them)",
                                at_least=0)
    compute_from: str = setting("", "compute emulated: a real run's directory whose workers' compute times are "
                                "resampled instead (it must be of the same model)")


@dataclass
class Eval:
    every: int = setting(50, "evaluate every this many steps (0 = only at the end)", at_least=0)
    fovs: int = setting(64, "held-out FOVs per evaluation", at_least=1)


@dataclass
class Run:
    threads_per_rank: int = setting(0, "TF intra-op threads per rank (0 = cores / compute ranks)", at_least=0)
    out: str = setting("results", "results directory; each run gets a subdirectory")
    timeout_s: float = setting(300.0, "bound on every blocking MPI wait", above=0)
    timing_warmup_steps: int = setting(5, "first steps excluded from FOVs/sec", at_least=0)
    progress: bool = setting(True, "progress bar on rank 0")
    checkpoint_every: int = setting(0, "also checkpoint every this many steps (0 = final only)", at_least=0)
    nodes: int = setting(1, "emulated nodes on this machine: network namespaces on a bridge, TCP between them "
                            "(1 = none; needs root); ranks are spread over them evenly, in rank order", at_least=1)
    link: str = setting("", "each emulated node's link rate, each way: e.g. 100mbit, 1gbit ('' = unshaped)")
    server_nodes: int = setting(0, "emulated nodes that hold the parameter servers alone (0 = servers share nodes "
                                   "with workers)", at_least=0)


#: the config's sections, in the order configs/README.md lists them (None: the top level)
SECTIONS = {None: Job, "model": Model, "data": Data, "train": Train, "eval": Eval, "inference": InferenceOptions,
            "run": Run}
#: every field: dotted key -> its dataclass field (type, default, meaning, valid values)
FIELDS = {(f"{section}.{f.name}" if section else f.name): f for section, cls in SECTIONS.items() for f in declared(cls)}


def defaults():
    cfg = {}
    for key, f in FIELDS.items():
        value = default_of(f)
        set_dotted(cfg, key, list(value) if isinstance(value, tuple) else value)
    return cfg


def set_dotted(cfg, key, value):
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config field {key}: parent {p} is not a section")
    node[leaf] = value


def flatten(cfg):
    """{'train': {'lr': 1}} -> {'train.lr': 1}; strategy_options stays one mapping."""
    out = {}
    for k, v in cfg.items():
        if k in SECTIONS and k is not None:
            if not isinstance(v, dict):
                raise ConfigError(f"config field {k}: must be a mapping of fields")
            out.update({f"{k}.{k2}": v2 for k2, v2 in v.items()})
        else:
            out[k] = v
    return out


def parse_override(text):
    """'train.lr=1e-3' -> ('train.lr', 0.001); values are YAML scalars or lists."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text}: the value is not valid YAML ({str(e).splitlines()[0]})")


def read_mapping(path, kind="config file"):
    """A YAML file whose top level is a mapping (safe_load only), or one ConfigError line."""
    if os.path.isdir(path):
        raise ConfigError(f"{kind} {path}: is a directory, not a YAML file")
    if not os.path.isfile(path):
        raise ConfigError(f"{kind} {path}: not found")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{kind} {path}: not valid YAML ({str(e).splitlines()[0]})")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{kind} {path}: cannot be read ({e})")
    if data is None:
        raise ConfigError(f"{kind} {path}: is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} {path}: top level must be a mapping")
    return data


def load(path=None, overrides=(), base=None):
    """Merge defaults <- file <- overrides, then validate. Returns a nested dict."""
    cfg = defaults()
    if path is not None:
        merge(cfg, read_mapping(path))
    if base is not None:
        merge(cfg, base)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        set_dotted(cfg, key, value)
    validate(cfg)
    return cfg


def merge(cfg, data):
    for key, value in flatten(data).items():
        if key == "strategy_options" and isinstance(value, dict):
            cfg["strategy_options"].update(copy.deepcopy(value))
        else:
            set_dotted(cfg, key, copy.deepcopy(value))


#: YAML 1.1 (PyYAML) reads 1e-3 as a string; YAML 1.2 and everyone writing learning rates read a number
_YAML12_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")

#: run names become directory names: no separators, no leading dot
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,+=-]*$")


def validate(cfg):
    """Check every field (ConfigError naming the first bad one); numbers written 1e-3 become floats."""
    flat = flatten(cfg)
    for key, value in flat.items():
        if key not in FIELDS:
            raise ConfigError(f"config field {key}: unknown field")
        if FIELDS[key].metadata["kind"] == "float" and isinstance(value, str) and _YAML12_FLOAT.match(value.strip()):
            value = float(value)
            set_dotted(cfg, key, value)
            flat[key] = value
        why = problem(FIELDS[key], value)
        if why:
            raise ConfigError(f"config field {key}: {why}")
    if not _NAME.match(cfg["name"]) or len(cfg["name"]) > 100:
        raise ConfigError(f"config field name: must be letters, digits and _.,+=- (no path separators, at "
                          f"most 100 characters; got {cfg['name']!r})")
    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    for i, axis in enumerate("zyx"):
        if m["fov"][i] < 2 * m["deltas"][i] + 1:
            raise ConfigError(f"config field model.fov: {axis} size {m['fov'][i]} must be >= 2*deltas+1 "
                              f"= {2 * m['deltas'][i] + 1}")
        if m["fov"][i] % 2 == 0:
            raise ConfigError(f"config field model.fov: must be odd so the FOV has a centre voxel (got {m['fov']})")
    if d["source"] == "synthetic":
        need = [f + 2 * delta for f, delta in zip(m["fov"], m["deltas"])]
        if any(n < k for n, k in zip(d["shape"], need)):
            raise ConfigError(f"config field data.shape: {d['shape']} is smaller than a FOV moved by its deltas "
                              f"({need} for model.fov {m['fov']}, model.deltas {m['deltas']})")
    if m["init_from"]:
        m["init_from"] = os.path.abspath(m["init_from"])
    for key in ("image", "labels"):  # FILE:DATASET; jobs run from other directories than the config's
        if d[key] and ":" in d[key]:
            path, dataset = d[key].rsplit(":", 1)
            d[key] = f"{os.path.abspath(path)}:{dataset}"  # the ranks and the manifest see one file
    if t["precision"] == "mixed_bfloat16" and not t["force_precision"] and not bf16_flags():
        raise ConfigError(f"config field train.precision: mixed_bfloat16 needs a CPU with {' or '.join(BF16_FLAGS)} "
                          f"and this one has neither; set train.force_precision=true to run it emulated")
    if d["source"] == "hdf5":
        for key in ("image", "labels"):
            if ":" not in d[key]:
                raise ConfigError(f"config field data.{key}: must be file.h5:dataset for data.source hdf5 "
                                  f"(got {d[key]!r})")
    if t["compute"] == "emulated":
        if not t["compute_mean_s"] and not t["compute_from"]:
            raise ConfigError("config field train.compute_mean_s: compute emulated needs the mean seconds of a pass "
                              "(or train.compute_from, a real run to resample)")
        if cfg["eval"]["every"]:
            raise ConfigError("config field eval.every: must be 0 with train.compute emulated (the weights do not "
                              "learn, so evaluations would measure nothing)")
    if t["compute_from"]:
        t["compute_from"] = os.path.abspath(t["compute_from"])
    try:
        strategies.layout(cfg["strategy"], cfg["ranks"], cfg["strategy_options"])
    except strategies.LayoutError as e:
        raise ConfigError(str(e) if str(e).startswith("config field") else f"config field strategy: {e}")


DOC_HEADER = """# Config fields

Generated by `ffnbench config --doc` from the section dataclasses in bench/config.py (the inference
section is model/inference.py's InferenceOptions) and the strategies' declared options;
a test fails when this file is stale.

Every field, its default and meaning. Unknown fields, wrong types and impossible values exit 2 with
one line naming the field. Override any field with `--set dotted.key=value` (values use YAML syntax:
`--set model.fov=[17,17,17]`). Only `yaml.safe_load` is used.
"""


def describe():
    """configs/README.md: every field of the schema, then every strategy's options."""
    rows = [DOC_HEADER, "| field | default | meaning |", "|---|---|---|"]
    for key, f in FIELDS.items():
        default = default_of(f)
        meaning = f.metadata["doc"].replace("|", "\\|")
        rows.append(f"| `{key}` | `{list(default) if isinstance(default, tuple) else default!r}` | {meaning} |")
    rows += ["", "## strategy_options", "",
             "Each strategy accepts only its own options; any other key exits 2 naming it.", "",
             "| strategy | option | default | meaning |", "|---|---|---|---|"]
    options = {}  # (option, default, meaning) -> strategies, in registry order
    for name in strategies.names():
        cls = strategies.get(name)
        for option, spec in cls.options.items():
            shown = yaml.safe_dump(spec.default, default_flow_style=True).splitlines()[0]
            options.setdefault((option, shown, spec.doc), []).append(name)
    for (option, default, doc), names in options.items():
        rows.append(f"| {', '.join(names)} | {option} | {default} | {doc} |")
    return "\n".join(rows) + "\n"


def typed(cfg):
    """The sections of a validated config as their dataclasses: {section: instance} (the top level
    under None). InferenceOptions also takes the model's FOV and deltas and the data's normalisation."""
    out = {}
    for section, cls in SECTIONS.items():
        values = {k: v for k, v in (cfg if section is None else cfg[section]).items() if k in
                  {f.name for f in declared(cls)}}
        if cls is InferenceOptions:
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            values.update(fov=tuple(cfg["model"]["fov"]), deltas=tuple(cfg["model"]["deltas"]),
                          image_mean=cfg["data"]["image_mean"], image_stddev=cfg["data"]["image_stddev"])
        out[section] = cls(**values)
    return out
