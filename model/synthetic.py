"""Embedded synthetic EM-like volume, so benchmarks need no external dataset.

Cells are neurite-like tubes: smooth random-walk centre-lines (mostly along z,
some oblique, some branching) are rasterised as seeds, every voxel goes to its
nearest seed (a Voronoi packing that fills space), the result is smoothly
warped so boundaries are not planar, and boundaries become dark membranes.
"""

import contextlib
import os

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

# Voxels per centre-line at density 1.0; gives ~100 cells in 64x128x128.
_VOXELS_PER_LINE = 10000
# A new line stops this close (Chebyshev, voxels) to another cell's line,
# so no cell gets pinched to nothing between two crossing neighbours.
_CLEARANCE = 4
_MIN_LINE_STEPS = 16
_MAX_LINE_STEPS = 96  # per direction from the start point
_MIN_FRAGMENT = 100   # connected pieces smaller than this are dropped


def _check_args(shape, density):
    try:
        shape = tuple(int(s) for s in shape)
        ok = len(shape) == 3 and all(s >= 16 for s in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"shape must be 3 ints each >= 16, got {shape!r}")
    if not np.isscalar(density) or not float(density) > 0:
        raise ValueError(f"density must be a number > 0, got {density!r}")
    return shape, float(density)


def _unit(v):
    return v / np.linalg.norm(v)


def _random_direction(rng):
    """70% roughly along z (like axons in anisotropic EM), 30% oblique."""
    if rng.random() < 0.7:
        d = np.array([1.0, *rng.normal(0.0, 0.25, 2)])
    else:
        d = rng.normal(0.0, 1.0, 3)
    return _unit(d)


def _walk(start, direction, n_steps, owner, label, rng):
    """Persistent random walk; stops at the edge or near another cell's line."""
    shape = np.array(owner.shape)
    p, d, d0 = start.astype(float), direction.copy(), direction.copy()
    pts = []
    noise = rng.normal(0.0, 0.12, (n_steps, 3))
    for i in range(n_steps):
        q = np.rint(p).astype(int)
        if np.any(q < 0) or np.any(q >= shape):
            break
        o = owner[q[0], q[1], q[2]]
        if o != 0 and o != label:
            break
        pts.append(q)
        d = _unit(0.85 * d + 0.15 * d0 + noise[i])
        p = p + d
    return pts


def _commit(pts, owner, label):
    """Claim a clearance box around each line point for `label`."""
    r = _CLEARANCE
    for z, y, x in pts:
        box = owner[max(z - r, 0):z + r + 1, max(y - r, 0):y + r + 1,
                    max(x - r, 0):x + r + 1]
        box[box == 0] = label


def _draw_centrelines(shape, n_lines, rng):
    """Seed volume: each line (plus its branches) carries one label."""
    seeds = np.zeros(shape, np.int32)
    owner = np.zeros(shape, np.int32)
    label = 0
    for _ in range(n_lines * 3):  # retries for starts landing in claimed space
        if label >= n_lines:
            break
        start = rng.integers(0, shape)
        if owner[tuple(start)] != 0:
            continue
        d = _random_direction(rng)
        fwd = _walk(start, d, _MAX_LINE_STEPS, owner, label + 1, rng)
        back = _walk(start, -d, _MAX_LINE_STEPS, owner, label + 1, rng)
        pts = back[::-1] + fwd[1:]
        if len(pts) < _MIN_LINE_STEPS:
            continue
        label += 1
        _commit(pts, owner, label)
        # Branches leave the parent at ~30-60 degrees and keep its label.
        for _ in range(rng.binomial(2, 0.25)):
            at = pts[rng.integers(len(pts))]
            bd = _unit(d + _unit(rng.normal(0.0, 1.0, 3)) * rng.uniform(0.6, 1.2))
            branch = _walk(at, bd, _MAX_LINE_STEPS // 2, owner, label, rng)
            if len(branch) >= _MIN_LINE_STEPS // 2:
                _commit(branch, owner, label)
                pts += branch
        idx = np.array(pts).T
        seeds[idx[0], idx[1], idx[2]] = label
    if label == 0:  # pathological tiny/dense case: one straight z line
        seeds[:, shape[1] // 2, shape[2] // 2] = 1
    return seeds


def _smooth_field(shape, sigma, amplitude, rng):
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return f * (amplitude / (f.std() + 1e-12))


def _warped_voronoi(seeds, rng):
    """Nearest-seed labels sampled at smoothly displaced coordinates."""
    _, ind = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    vor = seeds[ind[0], ind[1], ind[2]]
    del ind
    # Displacement varies slower along z than in-plane: anisotropic warping.
    coords = np.indices(seeds.shape, dtype=np.float32)
    for ax, sig in enumerate([(6, 3, 3), (6, 3, 3), (6, 3, 3)]):
        coords[ax] += _smooth_field(seeds.shape, sig, 1.5, rng)
    return ndimage.map_coordinates(vor, coords, order=0, mode="nearest")


def _components(labels):
    """Split every label into 6-connected pieces; drop small ones to 0."""
    comp, n = ndimage.label(labels > 0)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    keep = sizes >= _MIN_FRAGMENT
    keep[0] = False
    new_id = np.zeros(n + 1, np.int32)
    new_id[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    return new_id[comp]


def _merge_fragments(vor):
    """Give each label only its largest piece; reassign the rest by proximity."""
    out = np.zeros_like(vor)
    for lab, sl in enumerate(ndimage.find_objects(vor), start=1):
        if sl is None:
            continue
        m = vor[sl] == lab
        comp, n = ndimage.label(m)
        if n > 1:
            m = comp == np.argmax(np.bincount(comp.ravel())[1:]) + 1
        out[sl][m] = lab
    holes = out == 0
    if holes.any():
        _, ind = ndimage.distance_transform_edt(holes, return_indices=True)
        out = out[ind[0], ind[1], ind[2]]
    return out


def _render(labels, rng):
    """Mid-grey textured cells, dark membranes and vesicles, blur, noise."""
    shape = labels.shape
    cell = labels > 0
    n = int(labels.max())
    tone = np.concatenate([[40.0], rng.normal(155.0, 8.0, n)]).astype(np.float32)
    img = tone[labels]
    img += _smooth_field(shape, 2.0, 6.0, rng) * cell
    # Small dark vesicles, only well inside cells.
    inner = ndimage.binary_erosion(cell, iterations=2)
    spots = (rng.random(shape) < 0.0015) & inner
    ves = ndimage.gaussian_filter(spots.astype(np.float32), 0.9)
    img -= ves * (70.0 / max(float(ves.max()), 1e-6))
    img = ndimage.gaussian_filter(img, 0.8)
    img += rng.normal(0.0, 10.0, shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_volume(shape=(64, 128, 128), seed=0, density=1.0):
    """Return (image uint8, labels int32) of shape (z, y, x); label 0 = membrane.

    Deterministic in `seed`; `density` scales the number of cells, so higher
    density gives thinner neurites.
    """
    shape, density = _check_args(shape, density)
    rng = np.random.default_rng(seed)
    n_lines = max(2, int(round(density * np.prod(shape) / _VOXELS_PER_LINE)))
    seeds = _draw_centrelines(shape, n_lines, rng)
    vor = _merge_fragments(_warped_voronoi(seeds, rng))
    labels = np.where(find_boundaries(vor, connectivity=1, mode="inner"), 0, vor)
    labels = _components(labels.astype(np.int32))
    return _render(labels, rng), labels


def write_h5(path, image, labels, image_ds="image", labels_ds="labels"):
    """Write image and labels as two datasets of one HDF5 file."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset(image_ds, data=image, compression="gzip")
        f.create_dataset(labels_ds, data=labels, compression="gzip")


@contextlib.contextmanager
def atomic_h5(path):
    """An h5py file written under a temporary name and renamed to `path` when the block ends
    without error, so no reader sees half of it; on an error the temporary file is removed."""
    import h5py
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_h5_dataset(spec):
    """Load `"file.h5:dataset"` into memory (FFN-style volume spec)."""
    import h5py

    path, sep, ds = str(spec).rpartition(":")
    if not sep or not path or not ds:
        raise ValueError(f"volume spec must be 'file.h5:dataset', got {spec!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"HDF5 file not found: {path} (dataset {ds!r})")
    with h5py.File(path, "r") as f:
        if ds not in f or not isinstance(f[ds], h5py.Dataset):
            raise KeyError(f"dataset {ds!r} not found in HDF5 file {path}")
        return f[ds][()]
