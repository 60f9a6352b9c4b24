"""Orthogonal slices through image, ground truth and FFN segmentation, side by side."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402


def label_colours(labels, seed=0):
    """Random bright colours per label id, black for 0 (unassigned / boundary)."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.25, 1.0, size=(int(labels.max()) + 1, 3))
    colours[0] = 0
    return ListedColormap(colours)


def plot_segmentation(image, gt, seg, path, title):
    z, y, x = (n // 2 for n in image.shape)
    views = [("z-slice (yx)", lambda a: a[z]), ("y-slice (zx)", lambda a: a[:, y]), ("x-slice (zy)", lambda a: a[:, :, x])]
    fig, axes = plt.subplots(3, 3, figsize=(12, 9), gridspec_kw={"height_ratios": [image.shape[1]] + [image.shape[0]] * 2})
    for row, (name, cut) in enumerate(views):
        axes[row, 0].imshow(cut(image), cmap="gray", interpolation="nearest")
        axes[row, 1].imshow(cut(gt), cmap=label_colours(gt), interpolation="nearest", vmin=0, vmax=gt.max())
        axes[row, 2].imshow(cut(seg), cmap=label_colours(seg, 1), interpolation="nearest", vmin=0, vmax=max(1, seg.max()))
        axes[row, 0].set_ylabel(name)
    for col, name in enumerate(["EM image", "ground truth", "FFN segmentation"]):
        axes[0, col].set_title(name)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
