"""FlyEM's published volume layout (janelia-flyem/neuroproof_examples) as ffnbench's HDF5 volume.

A FlyEM sample directory holds `grayscale_maps/*.png`, one z slice per file in name order, and
`groundtruth.h5.gz` (or `groundtruth.h5`) with `stack`, supervoxel ids (z, y, x), and
`transforms`, an (N, 2) table from supervoxel to body. The bodies are the ground truth.
"""
import gzip
import io
import os
import re

import numpy as np

GROUNDTRUTH = ("groundtruth.h5.gz", "groundtruth.h5")


def read_grayscale(directory):
    """The PNG stack as uint8 (z, y, x), slices in name order; a gap in the slices' numbers is an error."""
    from skimage.io import imread
    folder = os.path.join(directory, "grayscale_maps")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".png")) if os.path.isdir(folder) else []
    if not names:
        raise ValueError(f"{folder}: no PNG slices (FlyEM's layout: grayscale_maps/*.png)")
    numbers = [int(m.group(1)) if (m := re.search(r"(\d+)\.png$", n, re.I)) else None for n in names]
    if None not in numbers:
        if numbers != sorted(numbers):
            raise ValueError(f"{folder}: the slices' name order is not their numeric order (unpadded numbers?), "
                             f"e.g. {names[0]} .. {names[-1]}")
        gaps = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        if gaps:
            raise ValueError(f"{folder}: {len(gaps)} slice(s) missing between {names[0]} and {names[-1]}, "
                             f"the first numbered {gaps[0]}")
    slices = []
    for name in names:
        try:
            image = imread(os.path.join(folder, name))
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder}/{name}: not a readable PNG ({(str(e).splitlines() or ['?'])[0]})")
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"{folder}/{name}: expected an 8-bit grayscale slice, got {image.dtype} {image.shape}")
        if slices and image.shape != slices[0].shape:
            raise ValueError(f"{folder}/{name}: shape {image.shape} differs from {names[0]}'s {slices[0].shape}")
        slices.append(image)
    return np.stack(slices)


def read_bodies(directory):
    """Ground-truth bodies (uint64, z y x): `stack` mapped through `transforms`; supervoxel 0 stays 0."""
    import h5py
    path = next((os.path.join(directory, n) for n in GROUNDTRUTH if os.path.isfile(os.path.join(directory, n))), None)
    if path is None:
        raise ValueError(f"{directory}: no {' or '.join(GROUNDTRUTH)}")
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                handle = io.BytesIO(f.read())
        else:
            handle = path
        with h5py.File(handle, "r") as f:
            missing = [k for k in ("stack", "transforms") if k not in f]
            if missing:
                raise ValueError(f"{path}: no dataset {missing[0]!r} (FlyEM's layout has stack and transforms)")
            stack, transforms = f["stack"][()], f["transforms"][()]
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable (gzipped) HDF5 file ({e})")
    if stack.ndim != 3 or transforms.ndim != 2 or transforms.shape[1] != 2:
        raise ValueError(f"{path}: expected a 3-D stack and an (N, 2) transforms table, got {stack.shape} and "
                         f"{transforms.shape}")
    supervoxels, bodies = transforms[:, 0].astype(np.int64), transforms[:, 1].astype(np.uint64)
    listed, first = np.unique(supervoxels, return_index=True)
    if len(listed) < len(supervoxels):
        twice = np.setdiff1d(np.arange(len(supervoxels)), first)[0]
        raise ValueError(f"{path}: supervoxel {supervoxels[twice]} is listed more than once in transforms")
    if 0 not in supervoxels:
        supervoxels, bodies = np.append(supervoxels, 0), np.append(bodies, np.uint64(0))
    order = np.argsort(supervoxels)
    supervoxels, bodies = supervoxels[order], bodies[order]
    ids, inverse = np.unique(stack.astype(np.int64), return_inverse=True)
    at = np.clip(np.searchsorted(supervoxels, ids), 0, len(supervoxels) - 1)
    unknown = ids[supervoxels[at] != ids]
    if len(unknown):
        raise ValueError(f"{path}: {len(unknown)} supervoxel id(s) of stack are not in transforms, e.g. {unknown[0]}")
    return bodies[at][inverse].reshape(stack.shape)


def import_flyem(directory, out):
    """Write FlyEM's sample at `directory` to `out` as HDF5 `raw` (uint8) and `labels` (uint64), z y x.
    Nothing is written unless every check passes; the file appears in one rename."""
    from ffnbench.model.synthetic import atomic_h5
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory")
    raw, labels = read_grayscale(directory), read_bodies(directory)
    if raw.shape != labels.shape:
        raise ValueError(f"{directory}: the PNG stack is {raw.shape} (z, y, x) but groundtruth's stack is "
                         f"{labels.shape}")
    with atomic_h5(out) as f:
        f.create_dataset("raw", data=raw, compression="gzip", chunks=True)
        f.create_dataset("labels", data=labels, compression="gzip", chunks=True)
        f.attrs["axes"] = "zyx"
        f.attrs["source"] = f"FlyEM layout at {os.path.abspath(directory)} (grayscale_maps/*.png; groundtruth " \
                            f"stack mapped through transforms)"
    return raw, labels
