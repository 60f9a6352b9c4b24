"""Orthogonal slices through image, ground truth and FFN segmentation, side by side."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402


def label_colours(labels, seed=0):
    """Random bright colours per label id, black for 0 (unassigned / boundary)."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.25, 1.0, size=(int(labels.max()) + 1, 3))
    colours[0] = 0
    return ListedColormap(colours)


def majority_labels(seg, gt):
    """`seg` with each segment replaced by the ground-truth id it overlaps most (0 stays 0), so that
    every panel shares the ground truth's colours."""
    seg, gt = np.asarray(seg).ravel(), np.asarray(gt).ravel()
    ids, inverse = np.unique(seg, return_inverse=True)
    pairs, counts = np.unique(np.stack([inverse, gt.astype(np.int64)]), axis=1, return_counts=True)
    best = np.zeros(len(ids), gt.dtype)
    order = np.argsort(counts, kind="stable")  # the largest overlap of each segment is written last
    best[pairs[0, order]] = pairs[1, order]
    best[ids == 0] = 0
    return best[inverse]


def plot_segmentation(image, gt, seg, path, title, reference=None, reference_name="reference segmentation"):
    """Three orthogonal mid-volume slices of image, ground truth, `reference` (if given) and `seg`;
    black is label 0 (unsegmented, or unlabelled in the ground truth)."""
    z, y, x = (n // 2 for n in image.shape)
    views = [("z-slice (yx)", lambda a: a[z]), ("y-slice (zx)", lambda a: a[:, y]), ("x-slice (zy)", lambda a: a[:, :, x])]
    colours = label_colours(gt)
    panels = [("EM image", image), ("ground truth", gt)]
    if reference is not None:
        panels.append((reference_name, reference))
    panels.append(("FFN segmentation (ours)" if reference is not None else "FFN segmentation", seg))
    fig, axes = plt.subplots(3, len(panels), figsize=(4 * len(panels), 9),
                             gridspec_kw={"height_ratios": [image.shape[1]] + [image.shape[0]] * 2})
    for col, (_, volume) in enumerate(panels):
        shown = volume if col < 2 else majority_labels(volume, gt).reshape(gt.shape)
        for row, (name, cut) in enumerate(views):
            if col == 0:
                axes[row, col].imshow(cut(volume), cmap="gray", interpolation="nearest")
                continue
            rgb = colours(cut(shown) / max(1, int(gt.max())))[..., :3]
            rgb[find_boundaries(cut(volume), mode="inner") & (cut(volume) > 0)] = 1.0  # each segment's outline
            axes[row, col].imshow(rgb, interpolation="nearest")
            axes[row, 0].set_ylabel(name)
    for col, (name, _) in enumerate(panels):
        axes[0, col].set_title(name)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}\nsegments in the colour of the ground-truth body they overlap most, outlined in white; "
                 f"black: unsegmented")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
