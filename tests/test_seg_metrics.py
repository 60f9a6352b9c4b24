import numpy as np
import pytest

from ffnbench.model.seg_metrics import segmentation_scores


def reference_scores(seg, gt):
    """Independent contingency-table ARE and VOI (bits), ignoring gt == 0."""
    keep = gt.ravel() != 0
    _, g = np.unique(gt.ravel()[keep], return_inverse=True)
    _, s = np.unique(seg.ravel()[keep], return_inverse=True)
    table = np.zeros((g.max() + 1, s.max() + 1))
    np.add.at(table, (g, s), 1.0)
    n = table.sum()

    def entropy(counts):
        p = counts[counts > 0] / n
        return -(p * np.log2(p)).sum()

    h_joint = entropy(table.ravel())
    split = h_joint - entropy(table.sum(axis=1))  # H(seg | gt)
    merge = h_joint - entropy(table.sum(axis=0))  # H(gt | seg)
    same_both = (table ** 2).sum() - n  # ordered pairs together in gt and seg
    precision = same_both / ((table.sum(axis=0) ** 2).sum() - n)
    recall = same_both / ((table.sum(axis=1) ** 2).sum() - n)
    are = 1 - 2 * precision * recall / (precision + recall)
    return {"are": are, "voi_split": split, "voi_merge": merge,
            "rand_precision": precision, "rand_recall": recall}


def test_identical_segmentations_score_perfectly():
    gt = np.random.default_rng(0).integers(1, 6, size=(6, 7, 8)).astype(np.int32)
    scores = segmentation_scores(gt.copy(), gt)
    assert scores["are"] == pytest.approx(0, abs=1e-12)
    assert scores["voi"] == pytest.approx(0, abs=1e-12)
    assert scores["segments"] == scores["gt_segments"] == len(np.unique(gt))


def halves(n=4):
    one = np.ones((2, n, n), np.int32)
    two = one.copy()
    two[1] = 2
    return one, two


def test_split_is_over_segmentation():
    gt, seg = halves()  # gt is one object, seg cuts it into two equal halves
    scores = segmentation_scores(seg, gt)
    assert scores["voi_split"] == pytest.approx(1.0, abs=1e-12)  # one bit
    assert scores["voi_merge"] == pytest.approx(0, abs=1e-12)
    n = gt.size // 2  # voxels per half; pair counts exclude self-pairs
    assert scores["rand_precision"] == pytest.approx(1.0)
    assert scores["rand_recall"] == pytest.approx((2 * n * n - 2 * n) / (4 * n * n - 2 * n))
    assert scores["segments"] == 2 and scores["gt_segments"] == 1


def test_merge_is_under_segmentation():
    seg, gt = halves()  # two gt objects fused into one segment
    scores = segmentation_scores(seg, gt)
    assert scores["voi_merge"] == pytest.approx(1.0, abs=1e-12)
    assert scores["voi_split"] == pytest.approx(0, abs=1e-12)
    assert scores["rand_recall"] == pytest.approx(1.0)
    assert scores["rand_precision"] < 0.6


def test_gt_zero_is_ignored_and_seg_zero_is_a_label():
    gt, seg = halves()
    gt[:, 0, :] = 0
    noisy = seg.copy()
    noisy[:, 0, :] = 7  # whatever seg says where gt is 0 must not matter
    clean, scored = segmentation_scores(seg, gt), segmentation_scores(noisy, gt)
    assert scored["segments"] == 3
    for key in ("are", "voi_split", "voi_merge", "rand_precision", "rand_recall"):
        assert scored[key] == pytest.approx(clean[key], abs=1e-12), key
    unsegmented = np.zeros_like(seg)  # nothing claimed: all gt merged into label 0
    assert segmentation_scores(unsegmented, seg)["voi_merge"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_matches_independent_contingency_table(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 7, size=(5, 9, 11)).astype(np.int32)
    seg = np.where(rng.random(gt.shape) < 0.7, gt * 3 % 5, rng.integers(0, 9, gt.shape))
    scores = segmentation_scores(seg.astype(np.int32), gt)
    for key, value in reference_scores(seg, gt).items():
        assert scores[key] == pytest.approx(value, abs=1e-9), key
    assert scores["voi"] == pytest.approx(scores["voi_split"] + scores["voi_merge"], abs=1e-12)


def test_rejects_mismatched_or_empty_inputs():
    gt, seg = halves()
    with pytest.raises(ValueError, match="shape"):
        segmentation_scores(seg[:1], gt)
    with pytest.raises(ValueError, match="integer"):
        segmentation_scores(seg.astype(float), gt)
    with pytest.raises(ValueError, match="no labelled"):
        segmentation_scores(seg, np.zeros_like(gt))
