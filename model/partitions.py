"""FFN training-coordinate machinery (google/ffn's compute_partitions.py / build_coordinates.py).

Voxels are grouped by how much of their neighbourhood belongs to their own
object; sampling every group equally over-represents the rare boundary-like
and thin-process voxels that FFN most needs to learn. As in google/ffn,
background (label 0, and objects below min_size) is a group of its own,
code 0: FFN learns from it to refuse seeds on membranes.
"""

import numpy as np
from scipy import ndimage

DEFAULT_THRESHOLDS = (0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BACKGROUND = 0


def _triple(value, name, minimum):
    try:
        t = tuple(int(v) for v in np.broadcast_to(value, (3,)))
    except (TypeError, ValueError):
        t = None
    if t is None or any(v < minimum for v in t):
        raise ValueError(f"{name} must be 3 ints >= {minimum}, got {value!r}")
    return t


def compute_partitions(labels, thresholds=DEFAULT_THRESHOLDS,
                       lom_radius=(24, 24, 24), min_size=10000):
    """Return a uint8 code per voxel: 1 + number of thresholds <= same-label fraction.

    The fraction is over the (2r+1)^3 box around the voxel; box voxels outside
    the volume count as "not my label". Label 0 and objects smaller than
    `min_size` get BACKGROUND (0), as google/ffn's clear_dust makes them. Work
    is done per object inside its bounding box grown by the radius, which is
    exact and far cheaper than whole-volume filters.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3-D, got shape {labels.shape}")
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim != 1 or len(thr) >= 255 or np.any(np.diff(thr) <= 0):
        raise ValueError("thresholds must be a strictly increasing 1-D sequence")
    rad = _triple(lom_radius, "lom_radius", 0)
    size = tuple(2 * r + 1 for r in rad)
    box_voxels = float(np.prod(size))
    # Compare integer counts, not float fractions, so exact ties are stable.
    thr_counts = thr * box_voxels - 1e-6

    out = np.full(labels.shape, BACKGROUND, np.uint8)
    lab = labels.astype(np.int64, copy=False)
    if lab.min(initial=0) < 0:
        raise ValueError("labels must be non-negative")
    sizes = np.bincount(lab.ravel())
    for obj, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or sizes[obj] < min_size:
            continue
        grown = tuple(slice(max(s.start - r, 0), min(s.stop + r, n))
                      for s, r, n in zip(sl, rad, labels.shape))
        mask = lab[grown] == obj
        frac = ndimage.uniform_filter(mask.astype(np.float32), size=size,
                                      mode="constant", cval=0.0)
        counts = np.rint(frac[mask] * box_voxels)
        out[grown][mask] = 1 + np.searchsorted(thr_counts, counts, side="right")
    return out


class CoordinateSampler:
    """Draw training centres with every partition code equally likely.

    Only voxels at least `margin` (z, y, x) from every edge are eligible, so a
    FOV (plus its moves) centred there stays inside the volume; with
    background=False, BACKGROUND voxels are not either.
    """

    def __init__(self, partitions, margin, rng=None, background=True):
        part = np.asarray(partitions)
        if part.ndim != 3:
            raise ValueError(f"partitions must be 3-D, got shape {part.shape}")
        self.margin = _triple(margin, "margin", 0)
        self.shape = part.shape
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        inner = tuple(slice(m, n - m) for m, n in zip(self.margin, part.shape))
        eligible = np.zeros(part.shape, bool)
        eligible[inner] = True
        if not background:
            eligible &= part != BACKGROUND
        flat_idx = np.flatnonzero(eligible)
        codes = part.ravel()[flat_idx]
        if flat_idx.size == 0:
            raise ValueError(
                f"no eligible training coordinate: margin {self.margin} for volume "
                f"{part.shape} leaves no voxel{'' if background else ' of an object'}")
        order = np.argsort(codes, kind="stable")
        self.codes, starts = np.unique(codes[order], return_index=True)
        self._groups = np.split(flat_idx[order], starts[1:])

    def sample(self):
        """One (z, y, x) coordinate."""
        return self.sample_many(1)[0]

    def sample_many(self, n):
        """An (n, 3) int array: code chosen uniformly, then a voxel within it."""
        which = self.rng.integers(len(self._groups), size=int(n))
        flat = np.empty(int(n), np.int64)
        for g, members in enumerate(self._groups):
            pick = which == g
            k = int(pick.sum())
            if k:
                flat[pick] = members[self.rng.integers(members.size, size=k)]
        return np.stack(np.unravel_index(flat, self.shape), axis=1).astype(np.int64)
