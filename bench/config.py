"""Experiment config: one schema with defaults, strict validation, dotted overrides.

Every error is a ConfigError naming one field, so the CLI can print one line and exit 2.
"""
import copy
import os
import re

import yaml

from ffnbench import strategies
from ffnbench.model.network import BF16_FLAGS, INITS, PRECISIONS, bf16_flags
from ffnbench.strategies.settings import LR_SCALING_RULES, OPTIMIZERS, OptimizerSettings

_OPTIMIZER = OptimizerSettings()


class ConfigError(ValueError):
    """A bad config: the message names the field."""


def _int3(v):
    return isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


# field: (default, type-check, description). Types are checked, then cross-field rules below.
SCHEMA = {
    "name": ("ffn", str, "run name, used in the run directory name"),
    "strategy": (strategies.reference(), str, "training strategy (see `ffnbench strategies`)"),
    "ranks": (1, int, "MPI ranks in total (servers + workers for ps strategies)"),
    "strategy_options": ({}, dict, "strategy-specific options (see README, Strategies)"),
    "model.fov": ([33, 33, 33], _int3, "field of view z,y,x in voxels"),
    "model.deltas": ([8, 8, 8], _int3, "FOV movement step z,y,x"),
    "model.depth": (12, int, "number of conv modules (1 + depth-1 residual)"),
    "model.features": (32, int, "channels per conv"),
    "model.init": ("glorot_uniform", str, "glorot_uniform (google/ffn's code: tf-slim's default, zero biases) | "
                   "truncated_normal (stddev model.init_stddev)"),
    "model.init_from": ("", str, "start from these weights (fresh optimizer, step 0): a google/ffn TF1 checkpoint "
                        "prefix, or an ffnbench run directory or checkpoint"),
    "model.init_stddev": (0.01, float, "stddev of init truncated_normal (google/ffn's published models: 0.01)"),
    "data.source": ("synthetic", str, "synthetic | hdf5"),
    "data.seed": (0, int, "seed of the synthetic training volume (held-out volume uses seed+1)"),
    "data.shape": ([64, 128, 128], _int3, "synthetic volume shape z,y,x"),
    "data.density": (1.0, float, "synthetic neurite density (more = thinner cells)"),
    "data.image": ("", str, "hdf5 image as file.h5:dataset"),
    "data.labels": ("", str, "hdf5 labels as file.h5:dataset"),
    "data.holdout_fraction": (0.25, float, "hdf5: last fraction of z held out for evaluation"),
    "data.image_mean": (128.0, float, "image normalisation mean"),
    "data.image_stddev": (33.0, float, "image normalisation stddev"),
    "data.min_object_size": (1000, int, "smaller objects are sampled as background (FFN's min_size; it uses "
                                        "10000 on full-size volumes, too many for a 64x128x128 one)"),
    "train.batch_size": (4, int, "FOVs per worker step"),
    "train.optimizer": (_OPTIMIZER.name, str, " | ".join(OPTIMIZERS)),
    "train.momentum": (_OPTIMIZER.momentum, float, "momentum optimizer: momentum (keras SGD's)"),
    "train.adam_beta1": (_OPTIMIZER.beta1, float, "adam: beta_1"),
    "train.adam_beta2": (_OPTIMIZER.beta2, float, "adam: beta_2"),
    "train.adam_epsilon": (_OPTIMIZER.epsilon, float, "adam: epsilon (google/ffn's default 1e-8; keras' is 1e-7)"),
    "train.lr": (1e-3, float, "base learning rate"),
    "train.lr_scaling": ("none", str, f"{' | '.join(LR_SCALING_RULES)}: multiply lr by 1, workers or sqrt(workers)"),
    "train.warmup_steps": (0, int, "linear lr ramp from base to scaled lr over these steps"),
    "train.steps": (100, int, "steps per worker"),
    "train.seed": (0, int, "seed of weights init and example streams"),
    "train.clip": (0.7, float, "elementwise gradient clip (max_gradient_entry_mag)"),
    "train.move_threshold": (0.9, float, "training FOV policy: move where seed >= logit(this)"),
    "train.label_moves": (False, bool, "training FOV policy: also move where the label is the object (not FFN: "
                          "FFN moves only where the predicted seed is >= move_threshold)"),
    "train.sample_background": (True, bool, "sample FOVs centred on background (label 0) as a partition of its "
                                "own, as FFN does (their target is empty); false: objects only"),
    "train.move_order": ("run", str, "run: the 26 moves in one shuffled order per run, as FFN; example: "
                         "shuffled per example"),
    "train.augment": (True, bool, "permute y/x and reflect z/y/x"),
    "train.precision": ("float32", str, "float32 | mixed_bfloat16: convolutions in bfloat16; weights, optimizer, "
                        "loss, residual stream, logit update and exchanged gradients stay float32"),
    "train.force_precision": (False, bool, "run mixed_bfloat16 on a CPU without bfloat16 instructions (emulated "
                              "and slow; recorded in the manifest)"),
    "eval.every": (50, int, "evaluate every this many steps (0 = only at the end)"),
    "eval.fovs": (64, int, "held-out FOVs per evaluation"),
    "inference.init_activation": (0.95, float, "flood fill: seed probability at the seed voxel"),
    "inference.pad_value": (0.05, float, "flood fill: canvas probability before prediction"),
    "inference.move_threshold": (0.9, float, "flood fill: move to a face's max point if its probability >= "
                                  "this when the move is taken; a flood whose seed falls below it stops and is rejected"),
    "inference.segment_threshold": (0.6, float, "flood fill: voxels >= this probability join the segment"),
    "inference.min_segment_size": (1000, int, "flood fill: smaller segments are rejected"),
    "inference.min_boundary_dist": ([1, 1, 1], _int3, "flood fill: seeds this close to a segment are skipped"),
    "inference.disco_seed_threshold": (0.0, float, "flood fill: once more than this fraction of a FOV is >= "
                                       "move_threshold, voxels below 0.5 may not rise (FFN; negative: off)"),
    "inference.batch_size": (1, int, "flood fill: FOVs per predictor call (FFN: 1; more see an older canvas)"),
    "run.threads_per_rank": (0, int, "TF intra-op threads per rank (0 = cores / compute ranks)"),
    "run.out": ("results", str, "results directory; each run gets a subdirectory"),
    "run.timeout_s": (300.0, float, "bound on every blocking MPI wait"),
    "run.timing_warmup_steps": (5, int, "first steps excluded from FOVs/sec"),
    "run.progress": (True, bool, "progress bar on rank 0"),
    "run.checkpoint_every": (0, int, "also checkpoint every this many steps (0 = final only)"),
}

CHOICES = {
    "data.source": ("synthetic", "hdf5"),
    "train.optimizer": OPTIMIZERS,
    "train.lr_scaling": LR_SCALING_RULES,
    "train.precision": PRECISIONS,
    "train.move_order": ("run", "example"),
    "model.init": INITS,
}


def defaults():
    cfg = {}
    for key, (default, _, _) in SCHEMA.items():
        set_dotted(cfg, key, copy.deepcopy(default))
    return cfg


def set_dotted(cfg, key, value):
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config field {key}: parent {p} is not a section")
    node[leaf] = value


SECTIONS = {key.split(".")[0] for key in SCHEMA if "." in key}


def flatten(cfg):
    """{'train': {'lr': 1}} -> {'train.lr': 1}; strategy_options stays one mapping."""
    out = {}
    for k, v in cfg.items():
        if k in SECTIONS:
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


def _type_ok(check, value):
    if check is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if check is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(check, type):
        return isinstance(value, check)
    return check(value)


#: YAML 1.1 (PyYAML) reads 1e-3 as a string; YAML 1.2 and everyone writing learning rates read a number
_YAML12_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")

#: run names become directory names: no separators, no leading dot
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,+=-]*$")


def validate(cfg):
    """Check every field (ConfigError naming the first bad one); numbers written 1e-3 become floats."""
    flat = flatten(cfg)
    for key, value in flat.items():
        if key not in SCHEMA:
            raise ConfigError(f"config field {key}: unknown field")
        check = SCHEMA[key][1]
        if check is float and isinstance(value, str) and _YAML12_FLOAT.match(value.strip()):
            value = float(value)
            set_dotted(cfg, key, value)
            flat[key] = value
        if not _type_ok(check, value):
            want = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                    dict: "a mapping"}.get(check, "a list of 3 integers [z, y, x]")
            raise ConfigError(f"config field {key}: must be {want} (got {value!r})")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"config field {key}: must be one of {', '.join(CHOICES[key])} (got {value!r})")
    if not _NAME.match(cfg["name"]) or len(cfg["name"]) > 100:
        raise ConfigError(f"config field name: must be letters, digits and _.,+=- (no path separators, at "
                          f"most 100 characters; got {cfg['name']!r})")
    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    positive = ["ranks", "model.depth", "model.features", "train.batch_size", "train.steps", "eval.fovs"]
    for key in positive:
        if flat[key] < 1:
            raise ConfigError(f"config field {key}: must be >= 1 (got {flat[key]})")
    for key in ["train.lr", "model.init_stddev", "data.image_stddev", "data.density", "run.timeout_s", "train.clip",
                "train.adam_epsilon"]:
        if flat[key] <= 0:
            raise ConfigError(f"config field {key}: must be > 0 (got {flat[key]})")
    for key in ["train.warmup_steps", "eval.every", "run.threads_per_rank", "run.timing_warmup_steps",
                "run.checkpoint_every", "data.min_object_size"]:
        if flat[key] < 0:
            raise ConfigError(f"config field {key}: must be >= 0 (got {flat[key]})")
    for i, axis in enumerate("zyx"):
        if m["deltas"][i] < 0:
            raise ConfigError(f"config field model.deltas: must be >= 0 (got {m['deltas']})")
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
    for key in ("init_activation", "pad_value", "move_threshold", "segment_threshold"):
        if not 0 < cfg["inference"][key] < 1:
            raise ConfigError(f"config field inference.{key}: must be a probability in (0, 1) "
                              f"(got {cfg['inference'][key]})")
    if cfg["inference"]["batch_size"] < 1 or cfg["inference"]["min_segment_size"] < 0:
        raise ConfigError("config field inference.batch_size: must be >= 1 (and min_segment_size >= 0)")
    for key in ("momentum", "adam_beta1", "adam_beta2"):
        if not 0 <= t[key] < 1:
            raise ConfigError(f"config field train.{key}: must be in [0, 1) (got {t[key]})")
    if not 0 < t["move_threshold"] < 1:
        raise ConfigError(f"config field train.move_threshold: must be in (0, 1) (got {t['move_threshold']})")
    if not 0 < d["holdout_fraction"] < 1:
        raise ConfigError(f"config field data.holdout_fraction: must be in (0, 1) (got {d['holdout_fraction']})")
    if t["precision"] == "mixed_bfloat16" and not t["force_precision"] and not bf16_flags():
        raise ConfigError(f"config field train.precision: mixed_bfloat16 needs a CPU with {' or '.join(BF16_FLAGS)} "
                          f"and this one has neither; set train.force_precision=true to run it emulated")
    if d["source"] == "hdf5":
        for key in ("image", "labels"):
            if ":" not in d[key]:
                raise ConfigError(f"config field data.{key}: must be file.h5:dataset for data.source hdf5 "
                                  f"(got {d[key]!r})")
    if not isinstance(cfg["strategy_options"], dict):
        raise ConfigError("config field strategy_options: must be a mapping")
    try:
        strategies.layout(cfg["strategy"], cfg["ranks"], cfg["strategy_options"])
    except strategies.LayoutError as e:
        raise ConfigError(str(e) if str(e).startswith("config field") else f"config field strategy: {e}")


DOC_HEADER = """# Config fields

Generated by `ffnbench config --doc` from the schema in bench/config.py and the strategies' options;
a test fails when this file is stale.

Every field, its default and meaning. Unknown fields, wrong types and impossible values exit 2 with
one line naming the field. Override any field with `--set dotted.key=value` (values use YAML syntax:
`--set model.fov=[17,17,17]`). Only `yaml.safe_load` is used.
"""


def describe():
    """configs/README.md: every field of the schema, then every strategy's options."""
    rows = [DOC_HEADER, "| field | default | meaning |", "|---|---|---|"]
    for key, (default, _, doc) in SCHEMA.items():
        meaning = doc.replace("|", "\\|")
        rows.append(f"| `{key}` | `{default!r}` | {meaning} |")
    rows += ["", "## strategy_options", "",
             "Each strategy accepts only its own options; any other key exits 2 naming it.", "",
             "| strategy | option | default | meaning |", "|---|---|---|---|"]
    options = {}  # (option, default, meaning) -> strategies, in registry order
    for name in strategies.names():
        cls = strategies.get(name)
        for option, declared in cls.options.items():
            shown = yaml.safe_dump(declared.default, default_flow_style=True).splitlines()[0]
            options.setdefault((option, shown, declared.doc), []).append(name)
    for (option, default, doc), names in options.items():
        rows.append(f"| {', '.join(names)} | {option} | {default} | {doc} |")
    return "\n".join(rows) + "\n"
