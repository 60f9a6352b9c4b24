"""google/ffn's checkpoints in and out: its FIB-25 weights give its own graph's logits here, a
mismatched network is refused in one line, and export/import is exact."""
import json
import os

import numpy as np
import pytest

from conftest import ROOT, ffnbench
from ffnbench.model import ffn_checkpoint as fc

FIB25 = os.path.join(ROOT, "tests", "fixtures", "ffn_fib25", "model.ckpt-27465036")
REFERENCE = os.path.join(ROOT, "tests", "fixtures", "ffn_fib25", "fib25_reference_logits.npz")
QUICK = ["--set", "train.steps=2", "--set", "eval.every=0", "--set", "run.progress=false"]


def fib25_model():
    from ffnbench.model.api import FFNModel
    weights, fmt, _ = fc.read_weights(FIB25)
    assert fmt == "google/ffn"
    model = FFNModel((33, 33, 33), 12, 32)
    model.set_flat(fc.flat(weights, [v.name for v in model.variables]))
    return model


def test_fib25_weights_reproduce_google_ffns_logits():
    ref = np.load(REFERENCE)
    logits = fib25_model().predict(ref["image"], ref["seed"])
    assert np.abs(logits - ref["logits"]).max() <= 1e-5
    assert np.abs(ref["logits"] - ref["seed"]).max() > 1.0  # the network changed the seed: not a no-op


@pytest.mark.parametrize("overrides, tensor", [
    ([], "seed_update/conv0_a/weights has shape (3, 3, 3, 2, 32), the config (depth 2, features 8) needs (3, 3, 3, 2, 8)"),
    (["--set", "model.features=32"], "has seed_update/conv2_a, which the config's depth 2 lacks (the checkpoint has depth 12)"),
    (["--set", "model.features=32", "--set", "model.depth=13"], "has no seed_update/conv12_a (the config's depth 13 needs it"),
])
def test_a_mismatched_network_is_refused_in_one_line(tmp_path, overrides, tensor):
    r = ffnbench("run", "configs/smoke.yaml", "--set", f"model.init_from={FIB25}", *overrides, *QUICK,
                 "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and tensor in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()  # refused before any rank started


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("source") / "run"
    r = ffnbench("run", "configs/smoke.yaml", *QUICK, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
def test_export_then_import_is_exact(smoke_run, tmp_path):
    r = ffnbench("export", str(smoke_run), "--format", "ffn", "--out", str(tmp_path / "model.ckpt-2"))
    assert r.returncode == 0, r.stderr
    own, fmt_own, _ = fc.read_weights(str(smoke_run))
    exported, fmt_exported, _ = fc.read_weights(str(tmp_path / "model.ckpt-2"))
    assert (fmt_own, fmt_exported) == ("ffnbench", "google/ffn")
    assert sorted(own) == sorted(exported) == sorted(fc.layer_names(2))
    for layer in own:
        assert np.array_equal(own[layer][0], exported[layer][0]) and np.array_equal(own[layer][1], exported[layer][1])


def test_exporting_fib25_reproduces_the_original_checkpoint(tmp_path):
    import tensorflow as tf
    imported, _, _ = fc.read_weights(FIB25)
    prefix = fc.write_ffn_checkpoint(imported, str(tmp_path / "model.ckpt-27465036"), 27465036)
    original, copy = tf.train.load_checkpoint(FIB25), tf.train.load_checkpoint(prefix)
    assert copy.get_tensor("global_step") == original.get_tensor("global_step") == 27465036
    names = {n for n in original.get_variable_to_shape_map() if n.startswith("seed_update/")}
    assert len(names) == 50 and names == {n for n in copy.get_variable_to_shape_map() if n != "global_step"}
    for name in names:
        assert np.array_equal(original.get_tensor(name), copy.get_tensor(name)), name
    # what the original has beside the weights: its step and input-pipeline counters, not the network
    assert set(original.get_variable_to_shape_map()) - names - {"global_step"} == {
        "filter_coordinates_close_to_boundary/fraction", "filter_out_bounds_coordinates/fraction",
        "filter_out_bounds_coordinates_1/fraction"}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["allreduce", "tf_multiworker"])
def test_data_parallel_strategies_fine_tune_from_imported_weights(smoke_run, tmp_path, strategy):
    r = ffnbench("run", "configs/smoke.yaml", "--set", f"strategy={strategy}", "--set", "ranks=2",
                 "--set", f"model.init_from={smoke_run}", *QUICK, "--out", str(tmp_path / "tuned"))
    assert r.returncode == 0, r.stderr
    source, _, _ = fc.read_weights(str(smoke_run))
    record = json.load(open(tmp_path / "tuned" / "manifest.json"))["init_from"]
    assert record["format"] == "ffnbench" and record["path"] == str(smoke_run)
    from ffnbench.model.api import FFNModel
    names = [v.name for v in FFNModel((9, 9, 9), 2, 8).variables]
    assert record["sha256"] == fc.digest(fc.flat(source, names))
    tuned, _, _ = fc.read_weights(str(tmp_path / "tuned"))
    assert not np.array_equal(tuned["conv0_a"][0], source["conv0_a"][0])  # and then it trained


def test_an_unreadable_checkpoint_is_one_line(tmp_path):
    for suffix in (".index", ".data-00000-of-00001"):
        with open(FIB25 + suffix, "rb") as src, open(tmp_path / f"model.ckpt-1{suffix}", "wb") as dst:
            dst.write(src.read() if suffix == ".index" else src.read()[:1000])  # a truncated data shard
    r = ffnbench("evaluate", "--checkpoint", str(tmp_path / "model.ckpt-1"), "--config", "configs/ffn_fib25.yaml",
                 "--out", str(tmp_path / "eval"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "cannot read the checkpoint" in r.stderr
    assert not (tmp_path / "eval").exists()  # nothing written for a checkpoint that cannot be used


@pytest.mark.slow
def test_a_run_with_another_fov_is_refused(smoke_run, tmp_path):
    r = ffnbench("run", "configs/smoke.yaml", "--set", "model.fov=[11,11,11]", "--set", f"model.init_from={smoke_run}",
                 *QUICK, "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "was trained with model.fov [9, 9, 9], the config has [11, 11, 11]" in r.stderr


@pytest.mark.slow
def test_evaluate_a_checkpoint_without_a_run(smoke_run, tmp_path):
    ffnbench("export", str(smoke_run), "--format", "ffn", "--out", str(tmp_path / "ckpt" / "model.ckpt-2"))
    r = ffnbench("evaluate", "--checkpoint", str(tmp_path / "ckpt" / "model.ckpt-2"), "--config", "configs/smoke.yaml",
                 "--out", str(tmp_path / "eval"))
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip().splitlines()[-1]
    assert path == str(tmp_path / "eval" / "eval.json")
    result = json.load(open(path))
    assert result["checkpoint"]["format"] == "google/ffn" and 0 <= result["are"] <= 1
    assert (tmp_path / "eval" / "segmentation.png").exists()
