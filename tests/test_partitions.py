import numpy as np
import pytest

from ffnbench.model.partitions import BACKGROUND, CoordinateSampler, compute_partitions

THR = (0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@pytest.fixture
def halves():
    """Two half-spaces split at x=10, plus a tiny cube inside the left one."""
    labels = np.ones((12, 12, 20), np.int32)
    labels[:, :, 10:] = 2
    labels[1:3, 1:3, 1:3] = 3
    return labels


def test_partition_codes_by_hand(halves):
    part = compute_partitions(halves, THR, lom_radius=(2, 2, 2), min_size=20)
    assert part.dtype == np.uint8 and part.shape == halves.shape
    # Codes are 1 + the thresholds at or below the fraction (google/ffn: 0 is background).
    # Deep inside: the whole 5^3 box is the own label -> fraction 1 -> top code.
    assert part[6, 6, 15] == len(THR) + 1
    # At the interface x=9: 3 of 5 columns are label 1 -> 0.6 -> code 10.
    assert part[6, 6, 9] == 10
    # One voxel further in (x=8): 4 of 5 -> 0.8 -> code 12.
    assert part[6, 6, 8] == 12
    # Volume corner: 3x3x3 of the 5^3 box inside the volume -> 0.216 -> code 6.
    assert part[11, 11, 19] == 6
    # Tiny object (8 voxels < min_size) is background, as google/ffn's clear_dust makes it.
    assert np.all(part[1:3, 1:3, 1:3] == BACKGROUND)


def test_label_zero_and_small_objects_are_background(halves):
    labels = halves.copy()
    labels[:, :, 9] = 0
    part = compute_partitions(labels, THR, lom_radius=(1, 1, 1), min_size=20)
    assert np.all(part[:, :, 9] == BACKGROUND)
    assert part[6, 6, 15] == len(THR) + 1
    part = compute_partitions(labels, THR, lom_radius=(1, 1, 1), min_size=10**6)
    assert np.all(part == BACKGROUND)


def test_sampler_balances_codes():
    part = np.zeros((20, 20, 20), np.uint8)
    part[:, :, :10] = 12          # huge partition (4000 voxels)
    part[:, :, 10:] = 3           # medium
    part[5, 5, 15] = BACKGROUND   # single-voxel partition
    sampler = CoordinateSampler(part, (0, 0, 0), np.random.default_rng(0))
    coords = sampler.sample_many(3000)
    codes = part[coords[:, 0], coords[:, 1], coords[:, 2]]
    counts = np.array([(codes == c).sum() for c in (0, 3, 12)])
    expected = 1000.0
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 13.8  # p = 0.001 for 2 degrees of freedom
    assert coords.dtype.kind == "i" and coords.shape == (3000, 3)


def test_sampler_respects_margin_and_skips_background_only_when_told():
    rng = np.random.default_rng(1)
    part = rng.integers(1, 14, (16, 24, 30)).astype(np.uint8)
    part[:, :, 20:] = BACKGROUND
    margin = (3, 5, 2)
    assert BACKGROUND in CoordinateSampler(part, margin, rng).codes
    sampler = CoordinateSampler(part, margin, rng, background=False)
    coords = sampler.sample_many(2000)
    lo = np.array(margin)
    hi = np.array(part.shape) - 1 - lo
    assert np.all(coords >= lo) and np.all(coords <= hi)
    assert np.all(part[tuple(coords.T)] != BACKGROUND)
    z, y, x = sampler.sample()
    assert part[z, y, x] != BACKGROUND
    # Margin-touching voxels are reachable.
    assert coords[:, 0].min() == 3 and coords[:, 0].max() == 12


def test_sampler_errors_when_nothing_eligible():
    part = np.zeros((10, 10, 10), np.uint8)
    with pytest.raises(ValueError, match="no eligible"):
        CoordinateSampler(part, (5, 0, 0), np.random.default_rng(0))
    with pytest.raises(ValueError, match="no eligible"):
        CoordinateSampler(np.zeros((10, 10, 10), np.uint8), (0, 0, 0), 0, background=False)


def test_partitions_on_synthetic_volume_fast():
    import time

    from ffnbench.model.synthetic import make_volume

    _, labels = make_volume()
    t0 = time.perf_counter()
    part = compute_partitions(labels, lom_radius=(8, 16, 16), min_size=1000)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0
    assert np.all(part <= 13)
    assert np.all(part[labels == 0] == BACKGROUND)
    sampler = CoordinateSampler(part, (8, 24, 24), np.random.default_rng(0))
    assert len(sampler.codes) >= 9 and BACKGROUND in sampler.codes
