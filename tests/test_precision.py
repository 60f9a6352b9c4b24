"""train.precision: bfloat16 convolutions around float32 weights, refused on CPUs without bfloat16."""
import json

import numpy as np
import pytest
import tensorflow as tf

from ffnbench.bench import config
from ffnbench.bench.config import ConfigError
from ffnbench.model import network
from ffnbench.model.api import Batch, FFNModel
from ffnbench.strategies.settings import OptimizerSettings

from conftest import ffnbench


def test_bf16_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert network.bf16_flags(str(info)) == ["avx512_bf16", "amx_bf16"]
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    assert network.bf16_flags(str(info)) == []
    assert network.bf16_flags(str(tmp_path / "missing")) == []


def test_mixed_bfloat16_is_refused_without_the_instructions_unless_forced(monkeypatch):
    monkeypatch.setattr(config, "bf16_flags", lambda: [])
    with pytest.raises(ConfigError) as e:
        config.load("configs/smoke.yaml", ["train.precision=mixed_bfloat16"])
    assert "train.precision" in str(e.value) and "force_precision" in str(e.value) and "\n" not in str(e.value)
    assert config.load("configs/smoke.yaml", ["train.precision=mixed_bfloat16", "train.force_precision=true"])
    monkeypatch.setattr(config, "bf16_flags", lambda: ["amx_bf16"])
    assert config.load("configs/smoke.yaml", ["train.precision=mixed_bfloat16"])
    with pytest.raises(ConfigError, match="train.precision"):
        config.load("configs/smoke.yaml", ["train.precision=float16"])


def test_bfloat16_convolutions_keep_float32_weights_gradients_and_logits():
    kw = dict(fov=(7, 7, 7), depth=3, features=8, optimizer=OptimizerSettings("sgd"), lr=0.1, init_stddev=0.05)
    exact, mixed = FFNModel(**kw), FFNModel(**kw, precision="mixed_bfloat16")
    mixed.set_flat(exact.get_flat())
    convs = [layer for layer in mixed.net.layers if isinstance(layer, tf.keras.layers.Conv3D)]
    assert {layer.compute_dtype for layer in convs[:-1]} == {"bfloat16"}
    assert convs[-1].name == "conv_lom" and convs[-1].compute_dtype == "float32"
    residuals = [layer for layer in mixed.net.layers if layer.name.startswith("residual")]
    assert residuals and {layer.compute_dtype for layer in residuals} == {"float32"}
    assert {v.dtype for v in mixed.variables} == {tf.float32}
    rng = np.random.default_rng(0)
    shape = (2, 7, 7, 7, 1)
    batch = Batch(rng.normal(size=shape).astype(np.float32), np.full(shape, network.logit(0.05), np.float32),
                  (rng.random(shape) > 0.5).astype(np.float32))
    g32, loss32, logits32 = exact.flat_gradients(batch)
    g16, loss16, logits16 = mixed.flat_gradients(batch)
    assert g16.dtype == np.float32 and logits16.dtype == np.float32 and g16.shape == g32.shape
    # bfloat16 keeps 8 bits of mantissa: the same step to within a few per cent, not bit for bit
    assert loss16 == pytest.approx(loss32, rel=1e-2)
    assert not np.array_equal(g16, g32)
    assert np.linalg.norm(g16 - g32) < 0.05 * np.linalg.norm(g32)
    np.testing.assert_allclose(logits16, logits32, atol=0.05)


@pytest.mark.slow
def test_a_forced_bfloat16_run_records_it_and_measures_mfu_against_the_bfloat16_peak(tmp_path):
    out = tmp_path / "runs"
    proc = ffnbench("run", "configs/smoke.yaml", "--set", "train.precision=mixed_bfloat16", "--set",
                    "train.force_precision=true", "--set", f"run.out={out}", "--set", "run.progress=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = next(out.iterdir())
    manifest = json.load(open(run / "manifest.json"))
    summary = json.load(open(run / "summary.json"))
    assert manifest["precision"] == {"train": "mixed_bfloat16", "forced": True,
                                     "cpu_bf16_flags": network.bf16_flags()}
    assert summary["peak_dtype"] == "bfloat16"
    assert summary["peak_flops_per_s"] == pytest.approx(manifest["peak"]["flops_per_s"]["bfloat16"])
    assert 0 < summary["mfu"] <= 1
    assert "matmul peak bfloat16" in proc.stdout
