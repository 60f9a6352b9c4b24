"""Training and held-out FOVs: volumes, balanced coordinates and FFN's stateful FOV policy.

Each batch slot is an independent example with its own RNG seeded by (train.seed, slot). A worker
owns slots [w*b, (w+1)*b), so N workers at batch b see exactly the examples one worker at batch
N*b sees: the basis of the sync-equals-single tests, and independent streams per rank.
"""
import itertools
from dataclasses import dataclass

import numpy as np

from ffnbench.model.api import Batch
from ffnbench.model.network import logit
from ffnbench.model.partitions import CoordinateSampler, compute_partitions
from ffnbench.model.synthetic import make_volume, read_h5_dataset

SOFT_FALSE, SOFT_TRUE = 0.05, 0.95


@dataclass
class Volume:
    image: np.ndarray   # float32 (z, y, x), normalised
    labels: np.ndarray  # int (z, y, x), 0 = boundary


def load_volumes(data_cfg):
    """(training volume, held-out volume) as the config describes."""
    mean, std = data_cfg["image_mean"], data_cfg["image_stddev"]
    if data_cfg["source"] == "synthetic":
        shape, density = tuple(data_cfg["shape"]), data_cfg["density"]
        pairs = [make_volume(shape, seed=data_cfg["seed"] + k, density=density) for k in (0, 1)]
    else:
        image = read_h5_dataset(data_cfg["image"])
        labels = read_h5_dataset(data_cfg["labels"])
        if image.shape != labels.shape:
            raise ValueError(f"data.image {data_cfg['image']} has shape {image.shape} but data.labels "
                             f"{data_cfg['labels']} has shape {labels.shape}")
        split = int(round(image.shape[0] * (1 - data_cfg["holdout_fraction"])))
        pairs = [(image[:split], labels[:split]), (image[split:], labels[split:])]
    return [Volume(((img.astype(np.float32) - mean) / std), lab.astype(np.int32)) for img, lab in pairs]


_PARTITIONS = {}


def partitions_for(volume, fov, deltas, min_size):
    """FFN partitions with lom_radius = fov//2 + deltas, which is also the sampling margin (cached)."""
    key = (id(volume), tuple(fov), tuple(deltas), min_size)
    if key not in _PARTITIONS:  # holding the volume keeps its id from being reused
        _PARTITIONS[key] = (volume, _compute_partitions(volume, fov, deltas, min_size))
    return _PARTITIONS[key][1]


def _compute_partitions(volume, fov, deltas, min_size):
    radius = tuple(f // 2 + d for f, d in zip(fov, deltas))
    for axis, (n, r) in enumerate(zip(volume.labels.shape, radius)):
        if n < 2 * r + 1:
            raise ValueError(f"volume is {volume.labels.shape}: axis {'zyx'[axis]} needs at least "
                             f"{2 * r + 1} voxels for fov {list(fov)} with deltas {list(deltas)}")
    return compute_partitions(volume.labels, lom_radius=radius, min_size=min_size), radius


def fov_shifts(deltas):
    """The 26 neighbours at +-delta (fixed policy), without the centre."""
    steps = [(-d, 0, d) if d else (0,) for d in deltas]
    return [s for s in itertools.product(*steps) if any(s)]


def _crop(array, centre, size):
    return array[tuple(slice(c - s // 2, c - s // 2 + s) for c, s in zip(centre, size))]


class _Example:
    """One example: a subvolume of FOV + 2*deltas, its stateful seed, and the fixed-policy walk."""

    def __init__(self, volume, sampler, rng, fov, deltas, augment, move_threshold, label_moves):
        self.fov, self.deltas, self.rng = fov, deltas, rng
        size = tuple(f + 2 * d for f, d in zip(fov, deltas))
        centre = tuple(int(c) for c in sampler.sample())
        image, labels = _crop(volume.image, centre, size), _crop(volume.labels, centre, size)
        if augment:
            image, labels = self._augment(image, labels)
        self.image = image
        mid = tuple(s // 2 for s in size)
        self.label = np.where(labels == labels[mid], SOFT_TRUE, SOFT_FALSE).astype(np.float32)
        self.seed = np.full(size, logit(SOFT_FALSE), np.float32)
        self.seed[mid] = logit(SOFT_TRUE)
        self.mid = mid
        shifts = fov_shifts(deltas)
        self.moves = [(0, 0, 0)] + [shifts[i] for i in rng.permutation(len(shifts))]
        self.threshold = logit(move_threshold)
        self.label_moves = label_moves
        self.offset = None

    def _augment(self, image, labels):
        if self.rng.random() < 0.5:  # permute y and x
            image, labels = image.transpose(0, 2, 1), labels.transpose(0, 2, 1)
        for axis in range(3):
            if self.rng.random() < 0.5:
                image, labels = np.flip(image, axis), np.flip(labels, axis)
        return image, labels

    def allowed(self, offset):
        point = tuple(m + o for m, o in zip(self.mid, offset))
        return self.seed[point] >= self.threshold or (self.label_moves and self.label[point] > 0.5)

    def next_fov(self):
        """Advance to the next allowed move; None when the walk is over."""
        while self.moves:
            offset = self.moves.pop(0)
            if self.allowed(offset):
                self.offset = offset
                return tuple(self._window(a) for a in (self.image, self.seed, self.label))
        return None

    def _window(self, array):
        return _crop(array, tuple(m + o for m, o in zip(self.mid, self.offset)), self.fov)

    def write_back(self, logits):
        self._window(self.seed)[...] = logits


class ExampleStream:
    """Batches of training FOVs for a range of global slots; call feedback() after each step."""

    def __init__(self, volume, fov, deltas, slots, seed, min_size, augment=True, move_threshold=0.9,
                 label_moves=True):
        self.fov, self.deltas = tuple(fov), tuple(deltas)
        self.rngs = [np.random.default_rng([seed, slot]) for slot in slots]
        partitions, margin = partitions_for(volume, fov, deltas, min_size)
        self.samplers = [CoordinateSampler(partitions, margin=margin, rng=rng) for rng in self.rngs]
        self.volume = volume
        self.options = dict(augment=augment, move_threshold=move_threshold, label_moves=label_moves)
        self.examples = [None] * len(self.rngs)

    def next_batch(self):
        fovs = []
        for i, ex in enumerate(self.examples):
            fov = ex.next_fov() if ex is not None else None
            while fov is None:
                ex = self.examples[i] = _Example(self.volume, self.samplers[i], self.rngs[i], self.fov,
                                                 self.deltas, **self.options)
                fov = ex.next_fov()
            fovs.append(fov)
        return Batch(*(np.stack([f[k] for f in fovs])[..., None] for k in range(3)))

    def feedback(self, logits):
        """Write the model's predicted logits back into each example's seed (FFN's recurrence)."""
        for ex, lg in zip(self.examples, logits):
            ex.write_back(lg[..., 0])


def heldout_batch(volume, fov, deltas, n, seed, min_size):
    """A fixed set of n held-out FOVs at balanced coordinates, each with its initial seed."""
    rng = np.random.default_rng([seed, 2 ** 31 - 1])
    partitions, margin = partitions_for(volume, fov, deltas, min_size)
    sampler = CoordinateSampler(partitions, margin=margin, rng=rng)
    fovs = []
    for _ in range(n):
        ex = _Example(volume, sampler, rng, tuple(fov), (0, 0, 0), False, 0.9, False)
        fovs.append(ex.next_fov())
    return Batch(*(np.stack([f[k] for f in fovs])[..., None] for k in range(3)))
