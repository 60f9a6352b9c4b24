import numpy as np
import pytest
import tensorflow as tf

from ffnbench.model.api import Batch, FFNModel, voxel_metrics
from ffnbench.strategies.settings import OptimizerSettings
from ffnbench.model.network import build_convstack_3d, logit, train_flops_per_fov


def test_paper_model_has_638433_parameters():
    net = build_convstack_3d((33, 33, 33), depth=12, features=32)
    assert net.count_params() == 638433
    names = [l.name for l in net.layers if isinstance(l, tf.keras.layers.Conv3D)]
    assert names[:2] == ["conv0_a", "conv0_b"] and names[-1] == "conv_lom" and len(names) == 2 + 2 * 11 + 1


def test_output_is_seed_plus_update_with_fov_shape():
    net = build_convstack_3d((9, 11, 13), depth=2, features=4, init="truncated_normal")
    x = np.random.default_rng(0).normal(size=(2, 9, 11, 13, 2)).astype(np.float32)
    out = net(x).numpy()
    assert out.shape == (2, 9, 11, 13, 1)
    # weights init with stddev 0.01: the update is tiny, the output is close to the seed channel
    assert np.abs(out - x[..., 1:2]).max() < 0.05
    x2 = x.copy()
    x2[..., 1] += 1.0
    np.testing.assert_allclose(net(x2).numpy() - out, 1.0, atol=1e-3)


@pytest.mark.parametrize("init", ["glorot_uniform", "truncated_normal"])
def test_every_layer_draws_its_own_initial_weights(init):
    """google/ffn's default is Glorot-uniform kernels and zero biases; a keras initializer with a seed
    repeats its draw on every call, so each layer needs a seed of its own."""
    net = build_convstack_3d((9, 9, 9), depth=4, features=16, seed=3, init=init)
    convs = [l for l in net.layers if isinstance(l, tf.keras.layers.Conv3D)]
    kernels = [l.kernel.numpy() for l in convs[1:-1]]  # the 27*16 -> 16 ones
    assert all(not np.array_equal(a, b) for i, a in enumerate(kernels) for b in kernels[i + 1:])
    assert all(not l.bias.numpy().any() for l in convs)
    if init == "glorot_uniform":
        bound = np.sqrt(6.0 / (27 * 16 + 27 * 16))
        assert all(np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound for k in kernels)
    else:
        assert all(np.abs(k).max() <= 0.02 for k in kernels)  # truncated at 2 stddev of 0.01
    again = build_convstack_3d((9, 9, 9), depth=4, features=16, seed=3, init=init)
    np.testing.assert_array_equal(again.get_weights()[2], convs[1].kernel.numpy())


def test_paper_training_flops_match_reference():
    assert train_flops_per_fov((33, 33, 33), 12, 32) == pytest.approx(137e9, rel=0.02)


def small_model(**kw):
    return FFNModel((5, 5, 5), depth=2, features=4, **{"optimizer": OptimizerSettings("sgd"), "lr": 1.0, **kw})


def batch(n=2, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    shape = (n, 5, 5, 5, 1)
    return Batch((scale * rng.normal(size=shape)).astype(np.float32),
                 np.full(shape, logit(0.05), np.float32),
                 (rng.random(shape) < 0.5).astype(np.float32) * 0.9 + 0.05)


def test_flat_roundtrip_and_count():
    m = small_model()
    flat = m.get_flat()
    assert flat.dtype == np.float32 and flat.shape == (m.num_params,)
    m.set_flat(flat * 2)
    np.testing.assert_array_equal(m.get_flat(), flat * 2)


def test_gradient_is_clipped_elementwise_when_applied():
    m = small_model(clip=0.7)
    w0 = m.get_flat()
    g = np.linspace(-5, 5, m.num_params).astype(np.float32)
    m.apply_gradients(g)  # sgd, lr 1: w1 = w0 - clip(g)
    np.testing.assert_allclose(w0 - m.get_flat(), np.clip(g, -0.7, 0.7), atol=1e-6)


def test_train_step_equals_gradient_then_apply():
    a, b = small_model(optimizer=OptimizerSettings("adam"), lr=1e-2), small_model(optimizer=OptimizerSettings("adam"), lr=1e-2)
    b.set_flat(a.get_flat())
    x = batch(scale=30.0)
    for _ in range(3):
        a.train_step(x)
        g, _, _ = b.flat_gradients(x)
        b.apply_gradients(g)
    np.testing.assert_allclose(a.get_flat(), b.get_flat(), atol=1e-6)


def test_voxel_metrics():
    labels = np.array([0.95, 0.95, 0.05, 0.05])
    logits = np.array([3.0, -3.0, 3.0, -3.0])
    m = voxel_metrics(logits, labels)
    assert m == {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5}
