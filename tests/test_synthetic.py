import numpy as np
import pytest
from skimage.measure import regionprops

from ffnbench.model.synthetic import make_volume, read_h5_dataset, write_h5

SMALL = (32, 64, 64)


@pytest.fixture(scope="module")
def default_volume():
    return make_volume()


@pytest.fixture(scope="module")
def small_volume():
    return make_volume(SMALL, seed=3)


def test_dtype_and_shape(default_volume):
    image, labels = default_volume
    assert image.dtype == np.uint8 and labels.dtype == np.int32
    assert image.shape == labels.shape == (64, 128, 128)


def test_deterministic_in_seed(small_volume):
    image, labels = make_volume(SMALL, seed=3)
    np.testing.assert_array_equal(image, small_volume[0])
    np.testing.assert_array_equal(labels, small_volume[1])
    other_image, other_labels = make_volume(SMALL, seed=4)
    assert not np.array_equal(other_labels, labels)
    assert not np.array_equal(other_image, image)


def test_labels_contiguous_and_connected(default_volume):
    from scipy import ndimage

    _, labels = default_volume
    ids = np.unique(labels)
    assert ids[0] == 0
    np.testing.assert_array_equal(ids, np.arange(ids.size))
    assert ids.size > 20
    # Every cell is one 6-connected component.
    _, n_components = ndimage.label(labels > 0)
    assert n_components == ids.size - 1


def test_membranes_dark_and_intensity_stats(default_volume):
    image, labels = default_volume
    membrane = image[labels == 0].mean()
    interior = image[labels > 0].mean()
    assert membrane + 40 < interior
    assert 0.05 < (labels == 0).mean() < 0.4
    assert 105 < image.mean() < 150
    assert 25 < image.std() < 45


def test_objects_are_elongated(default_volume):
    _, labels = default_volume
    props = [p for p in regionprops(labels) if p.area >= 500]
    assert len(props) > 20
    ratios = np.array([p.axis_major_length / max(p.axis_minor_length, 1e-6)
                       for p in props])
    assert np.mean(ratios > 2.0) > 0.6


def test_density_increases_object_count():
    sparse = make_volume(SMALL, seed=1, density=0.5)[1].max()
    dense = make_volume(SMALL, seed=1, density=2.0)[1].max()
    assert dense > 1.5 * sparse


@pytest.mark.parametrize("kwargs, word", [
    (dict(shape=(8, 64, 64)), "shape"),
    (dict(shape=(32, 64)), "shape"),
    (dict(shape=(32, 64, "x")), "shape"),
    (dict(density=0), "density"),
    (dict(density=-1.0), "density"),
])
def test_bad_args(kwargs, word):
    with pytest.raises(ValueError, match=word):
        make_volume(**kwargs)


def test_h5_round_trip_and_errors(tmp_path, small_volume):
    image, labels = small_volume
    path = tmp_path / "vol.h5"
    write_h5(str(path), image, labels, image_ds="raw", labels_ds="seg")
    got_image = read_h5_dataset(f"{path}:raw")
    got_labels = read_h5_dataset(f"{path}:seg")
    assert got_image.dtype == np.uint8 and got_labels.dtype == np.int32
    np.testing.assert_array_equal(got_image, image)
    np.testing.assert_array_equal(got_labels, labels)
    with pytest.raises(KeyError, match="nope"):
        read_h5_dataset(f"{path}:nope")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_h5_dataset(f"{tmp_path / 'missing.h5'}:raw")
