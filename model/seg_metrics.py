"""Segmentation quality against ground truth: adapted Rand error and VOI.

Both come from scikit-image so the numbers match what others report with it.
Conventions (FFN ground truth uses 0 for membrane / unlabelled voxels):

* Ground-truth label 0 is ignored by both scores: nobody annotated those
  voxels, so whatever the segmentation does there is neither right nor wrong.
* Segmentation label 0 (voxels no segment claimed) is an ordinary label, so
  leaving objects unsegmented is penalised as if they were merged together.
* VOI is in bits (scikit-image uses log2).
  ``voi_split`` = H(seg | gt), the over-segmentation term (extra cuts in seg);
  ``voi_merge`` = H(gt | seg), the under-segmentation term (gt objects fused).
  scikit-image's ``variation_of_information(image0=gt, image1=seg)`` returns
  ``[H(seg|gt), H(gt|seg)]``, i.e. ``[split, merge]`` (checked against its
  source, its Returns section and a test).
* Rand precision = pairs together in both / pairs together in seg (merges
  lower it); recall = the same over pairs together in gt (splits lower it).
  scikit-image 0.24's code returns these two swapped relative to its own
  docstring (scikit-image issue #6485), so they are unpacked swapped here.
  The ARE itself (alpha = 0.5) is symmetric and unaffected.
"""
import numpy as np
from skimage.metrics import adapted_rand_error, variation_of_information

IGNORED_GT_LABELS = (0,)


def segmentation_scores(seg, gt):
    """Score a segmentation against ground truth; returns a dict of floats/ints."""
    seg = np.asarray(seg)
    gt = np.asarray(gt)
    if seg.shape != gt.shape:
        raise ValueError(f"segmentation shape {seg.shape} != ground-truth shape {gt.shape}")
    if not np.issubdtype(seg.dtype, np.integer) or not np.issubdtype(gt.dtype, np.integer):
        raise ValueError(f"labels must be integer arrays, got {seg.dtype} and {gt.dtype}")
    if not np.any(gt != 0):
        raise ValueError("ground truth has no labelled (non-zero) voxels to score against")
    are, recall, precision = adapted_rand_error(
        image_true=gt, image_test=seg, ignore_labels=IGNORED_GT_LABELS)
    split, merge = variation_of_information(
        image0=gt, image1=seg, ignore_labels=IGNORED_GT_LABELS)
    return {
        "are": float(are),
        "voi": float(split + merge),
        "voi_split": float(split),
        "voi_merge": float(merge),
        "rand_precision": float(precision),
        "rand_recall": float(recall),
        "segments": int(np.count_nonzero(np.unique(seg))),
        "gt_segments": int(np.count_nonzero(np.unique(gt))),
    }


def agreement(seg, reference):
    """How far two segmentations of one volume differ (e.g. ours and google/ffn's): VOI and ARE with
    every label counted, 0 (unsegmented) included, ``reference`` in the ground truth's place."""
    seg, reference = np.asarray(seg), np.asarray(reference)
    if seg.shape != reference.shape:
        raise ValueError(f"segmentation shape {seg.shape} != reference shape {reference.shape}")
    split, merge = variation_of_information(image0=reference, image1=seg)
    are = adapted_rand_error(image_true=reference, image_test=seg, ignore_labels=())[0]
    return {"voi": float(split + merge), "voi_split": float(split), "voi_merge": float(merge), "are": float(are),
            "segments": int(np.count_nonzero(np.unique(seg))),
            "reference_segments": int(np.count_nonzero(np.unique(reference)))}
