"""Training and held-out FOVs: volumes, balanced coordinates and FFN's stateful FOV policy.

Each batch slot is an independent example with its own RNG seeded by (train.seed, slot). A worker
owns slots [w*b, (w+1)*b), so N workers at batch b see exactly the examples one worker at batch
N*b sees: the basis of the sync-equals-single tests, and independent streams per rank. The order of
the 26 moves is drawn once per run from train.seed (google/ffn's train.py shuffles it once per
process), so every worker of a run walks its examples in the same order.
"""
import itertools
import json
import os
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


def synthetic_pairs(data_cfg):
    """The synthetic (image, labels) of the training volume (data.seed) and the held-out one (seed + 1)."""
    shape, density = tuple(data_cfg["shape"]), data_cfg["density"]
    return [make_volume(shape, seed=data_cfg["seed"] + k, density=density) for k in (0, 1)]


def save_synthetic(data_cfg, path):
    """Write synthetic_pairs(data_cfg) to an .npz (atomically), so a job's ranks load instead of remaking it."""
    (image0, labels0), (image1, labels1) = synthetic_pairs(data_cfg)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, image0=image0, labels0=labels0, image1=image1, labels1=labels1)
    os.replace(tmp, path)


def load_volumes(data_cfg, synthetic_npz=None):
    """(training volume, held-out volume) as the config describes; synthetic ones from `synthetic_npz`
    when given (written by save_synthetic for the same data section)."""
    mean, std = data_cfg["image_mean"], data_cfg["image_stddev"]
    if data_cfg["source"] == "synthetic" and synthetic_npz:
        with np.load(synthetic_npz, allow_pickle=False) as z:
            pairs = [(z[f"image{k}"], z[f"labels{k}"]) for k in (0, 1)]
    elif data_cfg["source"] == "synthetic":
        pairs = synthetic_pairs(data_cfg)
    else:
        image = read_h5_dataset(data_cfg["image"])
        labels = read_h5_dataset(data_cfg["labels"])
        if image.shape != labels.shape:
            raise ValueError(f"data.image {data_cfg['image']} has shape {image.shape} but data.labels "
                             f"{data_cfg['labels']} has shape {labels.shape}")
        split = int(round(image.shape[0] * (1 - data_cfg["holdout_fraction"])))
        pairs = [(image[:split], labels[:split]), (image[split:], labels[split:])]
    return [Volume(((img.astype(np.float32) - mean) / std), lab.astype(np.int32)) for img, lab in pairs]


def check_hdf5(data_cfg, fov, deltas):
    """ValueError (one line) unless data.image and data.labels are 3-D HDF5 datasets of one shape whose
    training and held-out parts each fit a FOV moved by its deltas; reads metadata only."""
    import h5py
    shapes = {}
    for key in ("image", "labels"):
        spec = data_cfg[key]
        path, _, name = spec.rpartition(":")
        try:
            with h5py.File(path, "r") as f:
                if name not in f or not isinstance(f[name], h5py.Dataset):
                    raise ValueError(f"config field data.{key}: {path} has no dataset {name!r} "
                                     f"(it has: {', '.join(sorted(f.keys())) or 'nothing'})")
                shapes[key] = f[name].shape
        except OSError as e:
            raise ValueError(f"config field data.{key}: {path} is not a readable HDF5 file ({e})")
        if len(shapes[key]) != 3:
            raise ValueError(f"config field data.{key}: {spec} is {len(shapes[key])}-D with shape {shapes[key]}; "
                             f"a 3-D (z, y, x) volume is needed")
    if shapes["image"] != shapes["labels"]:
        raise ValueError(f"config field data.labels: shape {shapes['labels']} differs from data.image's "
                         f"{shapes['image']}")
    z, y, x = shapes["image"]
    split = int(round(z * (1 - data_cfg["holdout_fraction"])))
    need = [f + 2 * d for f, d in zip(fov, deltas)]
    for part, shape in (("training", (split, y, x)), ("held-out", (z - split, y, x))):
        if any(n < m for n, m in zip(shape, need)):
            raise ValueError(f"config field data.image: its {part} part is {shape} (data.holdout_fraction "
                             f"{data_cfg['holdout_fraction']}), smaller than a FOV with its moves {tuple(need)}")


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


#: RNG stream ids beside the slots' (0, 1, ...): the held-out FOVs', and the run's move order
HELDOUT_STREAM, RUN_STREAM = 2 ** 31 - 1, 2 ** 31 - 2


def shuffled_shifts(deltas, rng):
    shifts = fov_shifts(deltas)
    return [shifts[i] for i in rng.permutation(len(shifts))]


def fov_shifts(deltas):
    """The 26 neighbours at +-delta (fixed policy), without the centre."""
    steps = [(-d, 0, d) if d else (0,) for d in deltas]
    return [s for s in itertools.product(*steps) if any(s)]


def _crop(array, centre, size):
    return array[tuple(slice(c - s // 2, c - s // 2 + s) for c, s in zip(centre, size))]


class _Example:
    """One example: a subvolume of FOV + 2*deltas, its stateful seed, and the fixed-policy walk."""

    def __init__(self, volume, sampler, rng, fov, deltas, augment, move_threshold, label_moves, shifts):
        self.fov, self.deltas, self.rng = fov, deltas, rng
        size = tuple(f + 2 * d for f, d in zip(fov, deltas))
        centre = tuple(int(c) for c in sampler.sample())
        image, labels = _crop(volume.image, centre, size), _crop(volume.labels, centre, size)
        if augment:
            image, labels = self._augment(image, labels)
        self.image = image
        mid = tuple(s // 2 for s in size)
        # the object under the centre; centred on background (label 0) the target is empty, as in
        # google/ffn's train.py (labels > 0 and labels == the centre's label)
        is_object = (labels == labels[mid]) & (labels > 0)
        self.label = np.where(is_object, SOFT_TRUE, SOFT_FALSE).astype(np.float32)
        self.seed = np.full(size, logit(SOFT_FALSE), np.float32)
        self.seed[mid] = logit(SOFT_TRUE)
        self.mid = mid
        self.moves = [(0, 0, 0)] + list(shifts)
        self.threshold = logit(move_threshold)
        self.label_moves = label_moves
        self.offset = None

    def state(self):
        return {"image": self.image, "label": self.label, "seed": self.seed,
                "moves": np.array(self.moves, np.int64).reshape(-1, 3),
                "offset": np.array(self.offset if self.offset is not None else [], np.int64)}

    @classmethod
    def from_state(cls, arrays, fov, deltas, rng, augment, move_threshold, label_moves):
        """The example state() described, mid-walk (augment is already applied to its arrays)."""
        ex = cls.__new__(cls)
        ex.fov, ex.deltas, ex.rng = fov, deltas, rng
        ex.image, ex.label, ex.seed = (np.array(arrays[k]) for k in ("image", "label", "seed"))
        ex.mid = tuple(s // 2 for s in ex.image.shape)
        ex.moves = [tuple(int(x) for x in m) for m in arrays["moves"]]
        ex.offset = tuple(int(x) for x in arrays["offset"]) if arrays["offset"].size else None
        ex.threshold, ex.label_moves = logit(move_threshold), label_moves
        return ex

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
                 label_moves=False, background=True, move_order="run"):
        """label_moves: also move where the label is the object (not FFN); background: sample FOVs
        centred on background too (FFN); move_order: "run" (one shuffled order, FFN) or "example"."""
        self.fov, self.deltas = tuple(fov), tuple(deltas)
        self.rngs = [np.random.default_rng([seed, slot]) for slot in slots]
        partitions, margin = partitions_for(volume, fov, deltas, min_size)
        self.samplers = [CoordinateSampler(partitions, margin=margin, rng=rng, background=background)
                         for rng in self.rngs]
        self.volume = volume
        self.options = dict(augment=augment, move_threshold=move_threshold, label_moves=label_moves)
        run_rng = np.random.default_rng([seed, RUN_STREAM])
        self.run_shifts = shuffled_shifts(deltas, run_rng) if move_order == "run" else None
        self.examples = [None] * len(self.rngs)

    def state(self):
        """Each slot's RNG and its example part-way through its FOV moves, as arrays (no pickle)."""
        arrays = {"rngs": np.array(json.dumps([r.bit_generator.state for r in self.rngs]))}
        for i, ex in enumerate(self.examples):
            if ex is not None:
                arrays.update({f"slot{i}_{k}": v for k, v in ex.state().items()})
        return arrays

    def load_state(self, arrays):
        """Continue exactly where state() was taken."""
        for rng, saved in zip(self.rngs, json.loads(str(arrays["rngs"]))):
            rng.bit_generator.state = saved
        self.examples = [_Example.from_state({k.split("_", 1)[1]: v for k, v in arrays.items()
                                              if k.startswith(f"slot{i}_")}, self.fov, self.deltas, rng,
                                             **self.options) if f"slot{i}_image" in arrays else None
                         for i, rng in enumerate(self.rngs)]

    def next_batch(self):
        fovs = []
        for i, ex in enumerate(self.examples):
            fov = ex.next_fov() if ex is not None else None
            while fov is None:
                rng = self.rngs[i]
                shifts = self.run_shifts if self.run_shifts is not None else shuffled_shifts(self.deltas, rng)
                ex = self.examples[i] = _Example(self.volume, self.samplers[i], rng, self.fov, self.deltas,
                                                 **self.options, shifts=shifts)
                fov = ex.next_fov()
            fovs.append(fov)
        return Batch(*(np.stack([f[k] for f in fovs])[..., None] for k in range(3)))

    def feedback(self, logits):
        """Write the model's predicted logits back into each example's seed (FFN's recurrence)."""
        for ex, lg in zip(self.examples, logits):
            ex.write_back(lg[..., 0])


def heldout_batch(volume, fov, deltas, n, seed, min_size, background=True):
    """A fixed set of n held-out FOVs at balanced coordinates (background among them, as in training
    unless `background` is false), each with its initial seed."""
    rng = np.random.default_rng([seed, HELDOUT_STREAM])
    partitions, margin = partitions_for(volume, fov, deltas, min_size)
    sampler = CoordinateSampler(partitions, margin=margin, rng=rng, background=background)
    fovs = []
    for _ in range(n):
        ex = _Example(volume, sampler, rng, tuple(fov), (0, 0, 0), False, 0.9, False, shifts=[])
        fovs.append(ex.next_fov())
    return Batch(*(np.stack([f[k] for f in fovs])[..., None] for k in range(3)))
