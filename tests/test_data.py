import numpy as np

from ffnbench.model.data import SOFT_FALSE, SOFT_TRUE, ExampleStream, Volume, _Example, fov_shifts, heldout_batch
from ffnbench.model.network import logit


class FixedSampler:
    def __init__(self, centre):
        self.centre = centre

    def sample(self):
        return np.array(self.centre)


def slab_volume():
    """Object 1 fills z < 10, object 2 the rest; image = label for easy checks."""
    labels = np.ones((20, 20, 20), np.int32)
    labels[10:] = 2
    return Volume(labels.astype(np.float32), labels)


def make_example(label_moves=False, centre=(7, 10, 10), volume=None):
    rng = np.random.default_rng(0)
    return _Example(volume or slab_volume(), FixedSampler(centre), rng, (5, 5, 5), (2, 2, 2), False, 0.9, label_moves,
                    shifts=fov_shifts((2, 2, 2)))


def test_soft_labels_and_initial_seed():
    ex = make_example()
    image, seed, label = ex.next_fov()
    assert ex.offset == (0, 0, 0)
    # centre (z=7) is object 1, which fills the window (z 5..9); object 2 starts at z=10
    assert np.all(label == np.float32(SOFT_TRUE))
    assert np.all(ex.label[ex.mid[0] + 3:] == np.float32(SOFT_FALSE))
    assert seed[2, 2, 2] == np.float32(logit(SOFT_TRUE))
    assert np.sum(seed == np.float32(logit(SOFT_FALSE))) == seed.size - 1


def test_26_shifts():
    s = fov_shifts((2, 3, 4))
    assert len(s) == 26 and (0, 0, 0) not in s and (2, -3, 4) in s


def test_policy_moves_only_where_seed_is_confident_and_writes_back():
    ex = make_example()
    ex.next_fov()
    # the model predicts "object" only at +z shift point, background elsewhere
    logits = np.full((5, 5, 5), -5.0, np.float32)
    logits[4, 2, 2] = 5.0   # seed at offset (+2, 0, 0) relative to the centre
    ex.write_back(logits)
    np.testing.assert_array_equal(ex.seed[2:7, 2:7, 2:7], logits)   # written back into the seed
    visited = []
    while ex.next_fov() is not None:
        visited.append(ex.offset)
        ex.write_back(np.full((5, 5, 5), -5.0, np.float32))
    assert visited == [(2, 0, 0)]


def test_label_moves_follow_the_object():
    ex = make_example(label_moves=True, centre=(10, 10, 10))  # on the interface; object 2 is z >= 10
    ex.next_fov()
    ex.write_back(np.full((5, 5, 5), -5.0, np.float32))
    visited = []
    while ex.next_fov() is not None:
        visited.append(ex.offset)
        ex.write_back(np.full((5, 5, 5), -5.0, np.float32))
    assert visited and all(o[0] >= 0 for o in visited)  # only moves that stay in object 2


def test_streams_of_slots_compose():
    """Slots 0..3 in one stream equal slots 0..1 and 2..3 in two streams (data-parallel basis)."""
    vol = synthetic_volume()
    args = dict(fov=(9, 9, 9), deltas=(2, 2, 2), seed=5, min_size=200)
    whole = ExampleStream(vol, slots=range(4), **args).next_batch()
    a = ExampleStream(vol, slots=range(0, 2), **args).next_batch()
    b = ExampleStream(vol, slots=range(2, 4), **args).next_batch()
    np.testing.assert_array_equal(whole.images, np.concatenate([a.images, b.images]))
    np.testing.assert_array_equal(whole.labels, np.concatenate([a.labels, b.labels]))
    assert not np.array_equal(a.images, b.images)


def test_an_example_centred_on_background_has_an_empty_target():
    """google/ffn's target is labels > 0 and labels == the centre's label: on a membrane, nothing."""
    volume = slab_volume()
    volume.labels[9:11] = 0  # a membrane between the objects
    ex = make_example(centre=(10, 10, 10), volume=volume)
    assert np.all(ex.label == np.float32(SOFT_FALSE))
    assert make_example(centre=(5, 10, 10), volume=volume).label.max() == np.float32(SOFT_TRUE)


def synthetic_volume():
    from ffnbench.model.synthetic import make_volume
    img, lab = make_volume((32, 48, 48), seed=3)
    return Volume(img.astype(np.float32), lab)


def centre_labels(batch):
    return batch.labels[:, 4, 4, 4, 0]


def test_background_is_sampled_unless_switched_off():
    vol, args = synthetic_volume(), dict(fov=(9, 9, 9), deltas=(0, 0, 0), n=200, seed=1, min_size=200)
    # centred on background, the target is empty even at the centre
    assert np.any(centre_labels(heldout_batch(vol, **args)) == np.float32(SOFT_FALSE))
    assert np.all(centre_labels(heldout_batch(vol, **args, background=False)) == np.float32(SOFT_TRUE))


def test_moves_follow_one_order_per_run_or_one_per_example():
    vol, args = synthetic_volume(), dict(fov=(9, 9, 9), deltas=(2, 2, 2), slots=range(4), min_size=200)
    run = ExampleStream(vol, seed=5, **args)
    run.next_batch()
    orders = {tuple(ex.moves) for ex in run.examples}
    assert len(orders) == 1 and len(orders.pop()) == 26  # the centre is taken; the 26 moves are left
    other_run = ExampleStream(vol, seed=6, **args)
    other_run.next_batch()
    assert other_run.examples[0].moves != run.examples[0].moves
    per_example = ExampleStream(vol, seed=5, move_order="example", **args)
    per_example.next_batch()
    assert len({tuple(ex.moves) for ex in per_example.examples}) == 4
