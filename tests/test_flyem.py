"""`ffnbench data import-flyem`: FlyEM's published layout (a PNG stack, a gzipped HDF5 of supervoxels
and a supervoxel -> body table) becomes raw/labels HDF5, and bad input is one line with nothing written."""
import gzip
import os
import shutil

import h5py
import numpy as np
import pytest
from skimage.io import imsave

SHAPE = (5, 12, 10)


def make_sample(root, gz=True, drop_slice=None, extra_slice=False, unknown_supervoxel=False, twice=False,
                unpadded=False, bad_png=False):
    """A small sample in FlyEM's layout; returns (raw, bodies) it encodes."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    supervoxels = rng.integers(1, 9, SHAPE).astype(np.int32)
    transforms = np.array([[sv, 1000 + sv // 3] for sv in range(1, 9)] + ([[3, 5]] if twice else []), dtype=np.int64)
    if unknown_supervoxel:
        supervoxels[2, 3, 4] = 77
    os.makedirs(root / "grayscale_maps")
    for z in range(SHAPE[0] + (1 if extra_slice else 0)):
        name = root / "grayscale_maps" / (f"iso.{8 + z}.png" if unpadded else f"iso.{2600 + z}.png")
        if z != drop_slice:
            imsave(name, raw[min(z, SHAPE[0] - 1)], check_contrast=False)
        if bad_png and z == 1:
            name.write_bytes(b"not a png")
    with h5py.File(root / "groundtruth.h5", "w") as f:
        f["stack"], f["transforms"] = supervoxels, transforms
    if gz:
        with open(root / "groundtruth.h5", "rb") as src, gzip.open(root / "groundtruth.h5.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.remove(root / "groundtruth.h5")
    return raw, (1000 + supervoxels // 3).astype(np.uint64)


@pytest.mark.parametrize("gz", [True, False])
def test_import_writes_the_stack_and_the_bodies(run_cli, tmp_path, gz):
    raw, bodies = make_sample(tmp_path / "sample", gz=gz)
    out = tmp_path / "volume.h5"
    r = run_cli("data", "import-flyem", str(tmp_path / "sample"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        assert np.array_equal(f["raw"][()], raw) and f["raw"].dtype == np.uint8
        assert np.array_equal(f["labels"][()], bodies) and f["labels"].dtype == np.uint64
    assert f"{out}:raw" in r.stdout


@pytest.mark.parametrize("fault, match", [
    ({"drop_slice": 2}, "slice(s) missing between iso.2600.png and iso.2604.png, the first numbered 2602"),
    ({"extra_slice": True}, "the PNG stack is (6, 12, 10) (z, y, x) but groundtruth's stack is (5, 12, 10)"),
    ({"unknown_supervoxel": True}, "1 supervoxel id(s) of stack are not in transforms, e.g. 77"),
    ({"twice": True}, "supervoxel 3 is listed more than once in transforms"),
    ({"unpadded": True}, "the slices' name order is not their numeric order"),
    ({"bad_png": True}, "iso.2601.png: not a readable PNG"),
])
def test_bad_input_is_one_line_and_writes_nothing(run_cli, tmp_path, fault, match):
    make_sample(tmp_path / "sample", **fault)
    out = tmp_path / "volume.h5"
    r = run_cli("data", "import-flyem", str(tmp_path / "sample"), "--out", str(out))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and match in lines[0], r.stderr
    assert os.listdir(tmp_path) == ["sample"]
