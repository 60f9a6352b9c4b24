import re

import pytest

from ffnbench.bench.config import ConfigError, load

BAD = [
    ("train.batch_size=0", "train.batch_size"),
    ("train.bogus=1", "train.bogus"),
    ("model.fov=[9,9,9]", None),  # fine
    ("model.deltas=[5,5,5]", "model.fov"),
    ("train.lr='fast'", "train.lr"),
    ("train.optimizer=lbfgs", "train.optimizer"),
    ("data.source=hdf5", "data.image"),
    ("model=3", "model"),
]


@pytest.mark.parametrize("override,field", BAD)
def test_bad_fields_name_the_field(override, field):
    if field is None:
        load("configs/smoke.yaml", [override])
        return
    with pytest.raises(ConfigError) as e:
        load("configs/smoke.yaml", [override])
    assert field in str(e.value) and "\n" not in str(e.value)


def test_overrides_and_defaults():
    cfg = load("configs/smoke.yaml", ["train.lr=0.5", "strategy=ps_async", "ranks=3", "strategy_options.servers=2"])
    assert cfg["train"]["lr"] == 0.5 and cfg["strategy_options"] == {"servers": 2}
    assert cfg["run"]["timeout_s"] == 60 and cfg["eval"]["fovs"] == 8


def test_missing_file():
    with pytest.raises(ConfigError, match="nope.yaml"):
        load("nope.yaml")


@pytest.mark.parametrize("args,needle", [
    (["run", "configs/smoke.yaml", "--set", "train.batch_size=0"], "train.batch_size"),
    (["run", "configs/missing.yaml"], "missing.yaml"),
    (["run", "configs/smoke.yaml", "--set", "strategy=warp"], "unknown strategy"),
    (["run", "configs/smoke.yaml", "--set", "strategy=ps_async", "--set", "ranks=1"], "ranks > servers"),
    (["run", "configs/smoke.yaml", "--set", "strategy=ps_async", "--set", "ranks=3",
      "--set", "strategy_options.servers=0"], "servers"),
    (["run", "configs/smoke.yaml", "--set", "strategy=allreduce", "--set", "strategy_options.servers=1"],
     "strategy_options.servers"),
    (["run", "configs/smoke.yaml", "--set", "data.source=hdf5", "--set", "data.image=none.h5:image",
      "--set", "data.labels=none.h5:labels"], "none.h5"),
])
def test_cli_bad_input_is_one_line_exit_2(run_cli, args, needle):
    r = run_cli(*args, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("ffnbench: error:") and needle in lines[0], r.stderr


def test_strategy_options_are_checked_with_the_config():
    with pytest.raises(ConfigError, match="strategy_options.servers: not an option of strategy single"):
        load("configs/smoke.yaml", ["strategy_options.servers=2"])


def test_configs_readme_is_generated_from_the_schema():
    """configs/README.md is `ffnbench config --doc`: regenerate it when a field or option changes."""
    from ffnbench.bench.config import describe
    with open("configs/README.md") as f:
        assert f.read() == describe(), "configs/README.md is stale: run `ffnbench config --doc > configs/README.md`"


def test_the_defaults_are_google_ffns_except_the_listed_deviations():
    """google/ffn's train.py flags and its sample inference config; the README lists what differs
    (train.optimizer adam, after Dong et al.; data.min_object_size for small volumes)."""
    from ffnbench.bench.config import defaults
    cfg = defaults()
    assert (cfg["model"]["fov"], cfg["model"]["deltas"], cfg["model"]["depth"]) == ([33] * 3, [8] * 3, 12)
    assert cfg["model"]["init"] == "glorot_uniform"
    assert (cfg["data"]["image_mean"], cfg["data"]["image_stddev"]) == (128.0, 33.0)
    train = cfg["train"]
    assert (train["batch_size"], train["lr"], train["clip"]) == (4, 1e-3, 0.7)
    assert (train["label_moves"], train["sample_background"], train["move_order"]) == (False, True, "run")
    inference = cfg["inference"]
    assert {k: inference[k] for k in ("init_activation", "pad_value", "move_threshold", "segment_threshold",
                                      "min_segment_size", "min_boundary_dist", "disco_seed_threshold",
                                      "batch_size")} == \
        {"init_activation": 0.95, "pad_value": 0.05, "move_threshold": 0.9, "segment_threshold": 0.6,
         "min_segment_size": 1000, "min_boundary_dist": [1, 1, 1], "disco_seed_threshold": 0.0, "batch_size": 1}


def test_each_section_is_one_dataclass_whose_fields_carry_type_default_and_range():
    from ffnbench.bench.config import ConfigError, load, typed
    from ffnbench.model.inference import InferenceOptions
    cfg = load("configs/smoke.yaml", ["inference.batch_size=4"])
    sections = typed(cfg)
    inference = sections["inference"]
    assert isinstance(inference, InferenceOptions) and inference.batch_size == 4
    assert inference.fov == tuple(cfg["model"]["fov"]) and inference.image_stddev == cfg["data"]["image_stddev"]
    assert sections["train"].lr == cfg["train"]["lr"] and sections[None].strategy == cfg["strategy"]
    for override, message in (("inference.move_threshold=1.5", "inference.move_threshold: must be in (0, 1)"),
                              ("train.momentum=1", "train.momentum: must be in [0, 1)"),
                              ("eval.every=-1", "eval.every: must be >= 0"),
                              ("train.lr=0", "train.lr: must be > 0"),
                              ("train.optimizer=rmsprop", "train.optimizer: must be one of sgd, momentum, adam"),
                              ("inference.min_boundary_dist=[1,1]", "must be a list of 3 integers")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load("configs/smoke.yaml", [override])
