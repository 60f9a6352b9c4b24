import numpy as np
import pytest
from scipy import ndimage

from ffnbench.model.inference import InferenceOptions, logit, seed_peaks, segment_volume

SHAPE = (30, 40, 40)
TUBE_LABEL = 99
INSIDE, OUTSIDE = logit(0.95), logit(0.05)


def make_volume():
    """12 boxes cut by 1-voxel membranes (label 0), also on the volume's faces, so that each box has
    its distance peak inside (google/ffn seeds only where a full FOV fits), plus a thin tube along z."""
    labels = np.zeros(SHAPE, np.int32)
    cuts = [(0, 15, 30), (0, 20, 40), (0, 13, 27, 40)]
    zz, yy, xx = np.indices(SHAPE)
    cell = [np.searchsorted(c[1:-1], idx, side="right") for c, idx in zip(cuts, (zz, yy, xx))]
    labels[:] = 1 + cell[0] * 6 + cell[1] * 3 + cell[2]
    for axis, c in enumerate(cuts):
        for cut in c[1:-1]:
            labels[(slice(None),) * axis + (cut,)] = 0
    for axis in range(3):
        labels[(slice(None),) * axis + ([0, -1],)] = 0
    radius2 = (yy - 9) ** 2 + (xx - 20) ** 2
    labels[radius2 <= 16] = 0
    labels[radius2 <= 6] = TUBE_LABEL
    rng = np.random.default_rng(0)
    image = np.where(labels > 0, 200.0, 40.0) + rng.normal(0, 5, SHAPE)
    return np.clip(image, 0, 255).astype(np.uint8), labels


class Oracle:
    """Perfect local predictor: fills the membrane-bounded components under the seed."""

    def __init__(self):
        self.calls = 0
        self.fovs = 0

    def __call__(self, images, seeds):
        self.calls += 1
        self.fovs += len(images)
        out = np.full(seeds.shape, OUTSIDE, np.float32)
        for image, seed, result in zip(images[..., 0], seeds[..., 0], out[..., 0]):
            cells, _ = ndimage.label(image > 0)  # normalised: membranes are negative
            ids = np.unique(cells[(seed > 0) & (cells > 0)])
            result[np.isin(cells, ids)] = INSIDE
        return out


def options(**kw):
    return InferenceOptions(**{"fov": (9, 9, 9), "deltas": (3, 3, 3), "image_mean": 128.0, "image_stddev": 33.0,
                               "min_segment_size": 200, **kw})


@pytest.fixture(scope="module")
def volume():
    return make_volume()


def test_seed_peaks_are_inside_margin_in_coordinate_order(volume):
    image, labels = volume
    seeds = seed_peaks(image, margin=(4, 4, 4))
    assert len(seeds) > 0
    assert np.all(seeds >= 4) and np.all(seeds < np.array(SHAPE) - 4)
    assert np.all(labels[tuple(seeds.T)] > 0)  # no seed on a membrane
    assert [tuple(s) for s in seeds] == sorted(tuple(s) for s in seeds)  # google/ffn's PolicyPeaks order


@pytest.mark.parametrize("batch_size", [1, 8])
def test_oracle_segments_every_object_once_and_merges_none(volume, batch_size):
    """With a perfect predictor every object gets one segment and no segment crosses a membrane;
    voxels near the volume edge that no FOV centre within the volume reaches stay unsegmented."""
    image, labels = volume
    seg, stats = segment_volume(image, Oracle(), options(batch_size=batch_size), progress=False)
    assert stats["segments"] == 13 and stats["fov_predictions"] > 0
    assert all(len(np.unique(labels[seg == s])) == 1 for s in range(1, 14))  # no merge
    # a flat map's face maximum is its first voxel (a corner), so floods wander and the edge
    # cells, whose FOV centres must stay 4 voxels inside the volume, are covered in part
    coverage = [np.mean(seg[labels == k] > 0) for k in np.unique(labels[labels > 0])]
    assert min(coverage) > 0.3 and np.median(coverage) > 0.6, coverage
    assert seg.dtype == np.int32 and seg.shape == SHAPE


def test_seeds_in_segmented_voxels_are_skipped(volume):
    image, labels = volume
    first, same_object = (7, 10, 6), (8, 12, 6)
    assert labels[first] == labels[same_object] != 0
    alone = Oracle()
    segment_volume(image, alone, options(), progress=False, seeds=[first])
    oracle = Oracle()
    seg, stats = segment_volume(image, oracle, options(), progress=False,
                                seeds=[first, same_object, first])
    assert stats["seeds"] == 2 and stats["seeds_tried"] == 1 and stats["seeds_skipped"] == 1
    assert stats["segments"] == 1 and oracle.fovs == alone.fovs
    assert np.all(labels[seg > 0] == labels[first]) and np.mean(seg[labels == labels[first]] > 0) > 0.3


def test_small_segments_are_rejected(volume):
    image, labels = volume
    tube_size = int((labels == TUBE_LABEL).sum())
    seed_in_tube, seed_in_box = (15, 9, 20), (7, 16, 20)
    assert labels[seed_in_tube] == TUBE_LABEL and (labels == labels[seed_in_box]).sum() > 2 * tube_size
    seg, stats = segment_volume(image, Oracle(), options(min_segment_size=tube_size + 1), progress=False,
                                seeds=[seed_in_tube, seed_in_box])
    assert stats["seeds_tried"] == 2 and stats["rejected"] == 1 and stats["segments"] == 1
    assert not seg[labels == TUBE_LABEL].any()
    assert np.all(labels[seg == 1] == labels[seed_in_box])


@pytest.mark.parametrize("image, opts, match", [
    (np.zeros((20, 20), np.uint8), options(), "3-D"),
    (np.zeros((8, 20, 20), np.uint8), options(), "smaller than the fov"),
    (np.zeros((20, 20, 20), np.uint8), options(fov=(8, 9, 9)), "odd"),
    (np.zeros((20, 20, 20), np.uint8), options(deltas=(5, 3, 3)), "deltas"),
    (np.zeros((20, 20, 20), np.uint8), options(move_threshold=1.5), r"move_threshold must be in \(0, 1\)"),
    (np.zeros((20, 20, 20), np.uint8), options(batch_size=0), "batch_size must be >= 1"),
])
def test_bad_inputs_raise_value_error(image, opts, match):
    with pytest.raises(ValueError, match=match):
        segment_volume(image, Oracle(), opts, progress=False)


def test_bad_seeds_raise_value_error(volume):
    image, _ = volume
    for seeds, match in (([(1, 2)], r"\(n, 3\)"), ([(7, 10, 99)], "inside the image")):
        with pytest.raises(ValueError, match=match):
            segment_volume(image, Oracle(), options(), progress=False, seeds=seeds)


def test_featureless_image_has_no_seed():
    """google/ffn's PolicyPeaks: without an edge every distance is infinite, and it seeds nowhere."""
    seg, stats = segment_volume(np.full((12, 12, 12), 200, np.uint8), Oracle(), options(), progress=False)
    assert stats["seeds"] == 0 and stats["segments"] == 0 and not seg.any()


def test_predictor_with_wrong_output_shape_raises(volume):
    image, _ = volume
    with pytest.raises(ValueError, match="predictor returned shape"):
        segment_volume(image, lambda images, seeds: seeds[..., 0], options(), progress=False,
                       seeds=[(7, 10, 6)])


def x_ramp(shape):
    """An image that tells a predictor where it is: each voxel holds 10 * its x."""
    return np.broadcast_to(10 * np.arange(shape[2], dtype=np.uint8), shape).copy()


def voxel_x(images):
    return np.rint((images * 33.0 + 128.0) / 10.0)  # undo the default normalisation


def peaked(inside):
    """Logits that are `inside` (bool (z, y, x), or with a batch axis first), highest at the FOV centre, so each
    face's maximum is its centre and moves go straight along the axes."""
    r2 = sum((np.arange(n) - n // 2).reshape([-1 if i == a else 1 for i in range(3)]) ** 2
             for a, n in enumerate(inside.shape[-3:]))
    return np.where(inside, INSIDE - 1e-3 * r2, OUTSIDE).astype(np.float32)


class Scripted:
    """A predictor that fills a FOV as `rule(flood, call in flood, x)` says (True: inside). A new
    flood is a seed FOV with one voxel above the pad value."""

    def __init__(self, rule):
        self.rule, self.flood, self.call = rule, -1, 0

    def __call__(self, images, seeds):
        if np.sum(seeds > logit(0.05) + 1e-3) == 1:
            self.flood, self.call = self.flood + 1, 0
        self.call += 1
        return peaked(self.rule(self.flood, self.call, voxel_x(images))[..., 0])[..., None]


def test_a_flood_whose_seed_turns_weak_stops_and_is_rejected():
    """google/ffn: a flood stops once its seed voxel is below move_threshold, and is not a segment."""
    image = x_ramp((9, 9, 21))
    predictor = Scripted(lambda flood, call, x: np.full(x.shape, call == 1))  # then: nothing is object
    seg, stats = segment_volume(image, predictor, options(min_segment_size=10), progress=False, seeds=[(4, 4, 10)])
    assert stats["weak_seeds"] == 1 and stats["segments"] == 0 and not seg.any()
    assert predictor.call == 2  # the second FOV covered the seed and lost it: no third


@pytest.mark.parametrize("disco", [0.0, -1.0])
def test_disconnected_voxels_stay_out_unless_disco_is_off(disco):
    """The first FOV (y 0..8) gives up x = 8; the next, at y 7, is confident everywhere. With FFN's
    disco_seed_threshold the given-up voxels it also covers (y 3..8) may not rise, so they stay out."""
    image = x_ramp((9, 15, 9))
    predictor = Scripted(lambda flood, call, x: (x < 8) | (call > 1))
    seg, _ = segment_volume(image, predictor, options(min_segment_size=10, disco_seed_threshold=disco),
                            progress=False, seeds=[(4, 4, 4)])
    assert seg[:, :, :8].all()
    given_up = seg[:, 3:9, 8]
    assert not given_up.any() if disco >= 0 else given_up.all()


def test_a_flood_does_not_travel_through_an_earlier_segment():
    """google/ffn's is_valid_pos at dequeue: a move into a segmented voxel is refused, so a leaky
    second flood cannot cross the first object and claim what lies beyond it."""
    image = x_ramp((9, 9, 30))
    first_object = lambda x: (x >= 10) & (x <= 17)  # noqa: E731
    predictor = Scripted(lambda flood, call, x: first_object(x) if flood == 0 else np.ones(x.shape, bool))
    seg, stats = segment_volume(image, predictor, options(min_segment_size=10), progress=False,
                                seeds=[(4, 4, 13), (4, 4, 4)])
    assert stats["segments"] == 2
    assert np.all(seg[..., 10:18] == 1) and np.all(seg[..., :10] == 2)
    assert not seg[..., 18:].any()  # beyond the first object: never reached


class Located:
    """A predictor that knows where each FOV is (the image holds 100 * y + x) and fills it as
    `rule(call, y, x)` says (True: inside); it records the (y, x) of every FOV centre."""

    def __init__(self, rule):
        self.rule, self.centres = rule, []

    def __call__(self, images, seeds):
        value = np.rint(images[..., 0] * 33.0 + 128.0)  # undo the default normalisation
        y, x = value // 100, value % 100
        out = []
        for yy, xx in zip(y, x):
            centre = tuple(int(a[tuple(np.asarray(a.shape) // 2)]) for a in (yy, xx))
            self.centres.append(centre)
            out.append(peaked(self.rule(len(self.centres), yy, xx)))
        return np.asarray(out, np.float32)[..., None]


def yx_image(shape):
    z, y, x = np.indices(shape)
    return (100 * y + x).astype(np.float32)


def test_a_move_is_refused_where_the_canvas_fell_below_move_threshold_since_it_was_queued():
    """google/ffn's is_valid_pos at dequeue: the first FOV queues a move to x = 11; the second
    gives up x >= 10 before that move is taken, so no FOV is ever centred there."""
    predictor = Located(lambda call, y, x: np.full(x.shape, True) if call == 1 else x < 10)
    segment_volume(yx_image((9, 16, 16)), predictor, options(min_segment_size=10), progress=False,
                   seeds=[(4, 8, 8)])
    assert predictor.centres[0] == (8, 8) and (5, 8) in predictor.centres
    assert all(x < 10 for _, x in predictor.centres)


def test_moves_are_chosen_from_the_logits_the_disco_rule_froze():
    """google/ffn's movement policy reads the canvas after the disconnected-seed rule. The first FOV
    (centre y 12, x 8) gives up x >= 11; the second (y 15, the larger of two equal moves) is confident
    everywhere, but its x = 11 face is frozen at y 12..16, so its best x move is the nearest unfrozen
    face voxel, y 17, not the face centre y 15 (which the raw prediction would pick)."""
    predictor = Located(lambda call, y, x: x < 11 if call == 1 else np.full(x.shape, True))
    segment_volume(yx_image((9, 24, 24)), predictor, options(min_segment_size=10), progress=False,
                   seeds=[(4, 12, 8)])
    assert predictor.centres[:2] == [(12, 8), (15, 8)]
    assert (17, 11) in predictor.centres and (15, 11) not in predictor.centres


@pytest.mark.parametrize("distance, tried", [((1, 1, 1), 1), ((0, 0, 0), 2)])
def test_a_seed_within_min_boundary_dist_of_a_segment_is_skipped(distance, tried):
    """google/ffn's segment_all: a seed with a segmented voxel within min_boundary_dist is not tried.
    The first flood segments x <= 10; the second seed, at x = 11, touches it."""
    image = x_ramp((9, 9, 30))
    predictor = Scripted(lambda flood, call, x: x <= 10 if flood == 0 else x >= 11)
    _, stats = segment_volume(image, predictor, options(min_segment_size=10, min_boundary_dist=distance),
                              progress=False, seeds=[(4, 4, 6), (4, 4, 11)])
    assert stats["seeds_tried"] == tried


def test_one_fov_per_node_of_the_deltas_lattice_anchored_at_the_seed():
    """FaceMaxMovementPolicy.quantize_pos: a move into a lattice node that was already predicted is
    skipped, so a flood over a uniform object predicts each node at most once."""
    predictor = Located(lambda call, y, x: np.full(x.shape, True))
    segment_volume(yx_image((9, 30, 30)), predictor, options(min_segment_size=10), progress=False,
                   seeds=[(4, 13, 13)])
    nodes = [((y - 13 + 1) // 3, (x - 13 + 1) // 3) for y, x in predictor.centres]
    assert len(predictor.centres) > 4 and len(set(nodes)) == len(nodes)
