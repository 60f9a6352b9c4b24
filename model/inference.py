"""Flood-filling inference of a whole volume, as google/ffn's ffn/inference (inference.py,
movement.py, seed.py) does it with its sample config.

One object at a time: seed a logit canvas, let the predictor grow the object
FOV by FOV, moving by the face-max policy, then threshold the canvas into a
segment. FFN's rules, each an option where FFN has one:

* Seeds (PolicyPeaks): Sobel gradient magnitude, thresholded against its own
  Gaussian blur (sigma 49/6), distance transform, peaks at least 3 apart,
  visited in coordinate (z, y, x) order.
* A flood stops when its seed voxel falls below move_threshold, and a flood
  whose seed ends there is rejected (FFN's weak seed).
* A move is checked when it is taken, not when it is queued: the canvas at
  the new centre must still be >= move_threshold, and the centre must not be
  in an earlier segment (FFN's Canvas.is_valid_pos), so a flood cannot travel
  through segmented objects.
* disco_seed_threshold (FFN's default 0; negative turns it off): once more
  than that fraction of a FOV is predicted >= move_threshold, voxels already
  below 0.5 may not rise, which keeps a flood from reconnecting through
  voxels it has given up.
* Moves (FaceMaxMovementPolicy): the maximum of each face of the FOV's logits as
  written to the canvas (after the disco rule), if >= move_threshold; each FOV's
  moves are queued best first. A centre is skipped when taken if a FOV was
  already predicted at its node of the deltas lattice anchored at the flood's
  first centre (FFN's quantize_pos and done_rounded_coords).
* The canvas is unvisited (NaN, fed to the network as pad_value) until
  predicted, and one FOV is predicted at a time (batch_size 1).

Deviations from google/ffn, chosen for speed or coverage:

* ``batch_size > 1`` sends up to that many queued FOVs of the same object to
  one predictor call; they all see the canvas as it was before the call, and
  results are written back in queue order (later FOVs win where they overlap).
* Face-max ties are broken towards the face centre, so a flat probability map
  moves straight along the axis instead of drifting to one corner.
* A move whose FOV would leave the volume is clamped inside it rather than
  dropped, so objects are filled up to the volume edge.
* Centres clamped against the volume edge get their own revisit key on that
  axis, so clamping never hides a position that would cover the last voxels.
* The volume's margin (fov // 2) counts as edge for the seeds, where FFN drops
  seeds without a full FOV around them, so objects cut by the volume edge get
  a seed; and no seed lies on an edge (FFN's peak threshold 0 lets its jitter
  make peaks inside thick membranes, floods its network then refuses).
"""
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from tqdm import tqdm

from ffnbench.model.network import logit

EDGE_KEY = 1 << 40  # lattice-key component of a centre clamped at a volume edge


@dataclass
class InferenceOptions:
    fov: tuple = (33, 33, 33)
    deltas: tuple = (8, 8, 8)
    init_activation: float = 0.95
    pad_value: float = 0.05
    move_threshold: float = 0.9
    segment_threshold: float = 0.6
    min_segment_size: int = 1000
    min_boundary_dist: tuple = (1, 1, 1)
    disco_seed_threshold: float = 0.0
    batch_size: int = 1
    max_steps_per_segment: int = 2000
    image_mean: float = 128.0
    image_stddev: float = 33.0


#: PolicyPeaks' blur of the edge map, in voxels (google/ffn ffn/inference/seed.py)
EDGE_SIGMA = 49.0 / 6.0


def seed_peaks(image, margin=(0, 0, 0), min_distance=3):
    """PolicyPeaks: seeds at the centres of edge-free regions, in coordinate order.

    An edge is a voxel whose Sobel gradient magnitude exceeds the Gaussian-blurred
    magnitude around it (a local threshold, which follows the image's contrast).
    Everything closer than ``margin`` to the volume edge also counts as edge (not
    FFN, which drops seeds there), so an object cut by the volume edge keeps a
    peak where a full FOV fits. Peaks of the distance to the nearest edge, broken
    from plateaus by a fixed-seed jitter far below the distance resolution, at
    least ``min_distance`` apart. Returns int (n, 3) coordinates sorted by (z, y, x).
    """
    image = np.asarray(image, dtype=np.float32)
    magnitude = ndimage.generic_gradient_magnitude(image, ndimage.sobel)
    edges = magnitude > ndimage.gaussian_filter(magnitude, EDGE_SIGMA, mode="reflect")
    inside = tuple(slice(m, s - m) for m, s in zip(margin, image.shape))
    outside = np.ones(image.shape, bool)
    outside[inside] = False
    edges |= outside
    if edges.all():
        return np.zeros((0, 3), dtype=np.int64)
    dist = ndimage.distance_transform_edt(~edges)
    dist += np.random.default_rng(42).random(dist.shape) * 1e-4
    # every voxel off an edge is at least 1 away from one: edges themselves are never peaks
    peaks = peak_local_max(dist, min_distance=min_distance, threshold_abs=0.5, exclude_border=False)
    return peaks[np.lexsort(peaks.T[::-1])].astype(np.int64).reshape(-1, 3)


def _validate(image, options):
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise ValueError(f"image must be a 3-D (z, y, x) numpy array, got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    fov, deltas = np.asarray(options.fov), np.asarray(options.deltas)
    if fov.shape != (3,) or deltas.shape != (3,):
        raise ValueError(f"fov and deltas must have 3 entries (z, y, x), got {options.fov}, {options.deltas}")
    if np.any(fov < 1) or np.any(fov % 2 == 0):
        raise ValueError(f"fov must be odd and positive so it has a centre voxel, got {options.fov}")
    if np.any(deltas < 0) or np.any(deltas > fov // 2):
        raise ValueError(f"deltas must be within 0..fov//2 ({tuple(fov // 2)}), got {options.deltas}")
    if np.any(np.asarray(image.shape) < fov):
        raise ValueError(f"image shape {image.shape} is smaller than the fov {options.fov}")
    for name in ("init_activation", "pad_value", "move_threshold", "segment_threshold"):
        if not 0.0 < getattr(options, name) < 1.0:
            raise ValueError(f"{name} must be a probability in (0, 1), got {getattr(options, name)}")
    if options.batch_size < 1 or options.max_steps_per_segment < 1:
        raise ValueError("batch_size and max_steps_per_segment must be >= 1")


class _Filler:
    """State shared by all floods of one volume: canvas, segmentation, counters."""

    def __init__(self, image, predict, options):
        self.o = options
        self.predict = predict
        self.image = (image.astype(np.float32) - options.image_mean) / options.image_stddev
        self.shape = np.asarray(image.shape)
        self.radius = np.asarray(options.fov) // 2
        self.deltas = np.asarray(options.deltas)
        self.pad_logit = logit(options.pad_value)
        self.move_logit = logit(options.move_threshold)
        self.canvas = np.full(image.shape, np.nan, dtype=np.float32)  # NaN: not predicted in this flood
        self.seg = np.zeros(image.shape, dtype=np.int32)
        self.fov_predictions = 0
        self.predict_calls = 0
        self.truncated = 0
        self.weak = 0
        self.face_order = [self._face_order(axis) for axis in range(3)]

    def _face_order(self, axis):
        """Face voxel indices sorted by distance from the face centre (tie-break)."""
        dims = [2 * d + 1 for i, d in enumerate(self.deltas) if i != axis]
        grid = np.indices(dims).reshape(2, -1) - np.array([d // 2 for d in dims])[:, None]
        return np.argsort((grid ** 2).sum(0), kind="stable")

    def fov_slices(self, centre):
        return tuple(slice(c - r, c + r + 1) for c, r in zip(centre, self.radius))

    def lattice_key(self, centre, start):
        """Visited-set key of a FOV centre: FFN's quantize_pos, (centre - start + deltas // 2) // deltas
        (see module docstring for centres clamped at the volume edge)."""
        centre = np.asarray(centre)
        node = (centre - start + self.deltas // 2) // np.maximum(self.deltas, 1)
        node[centre == self.radius] = -EDGE_KEY
        node[centre == self.shape - 1 - self.radius] = EDGE_KEY
        return tuple(int(k) for k in node)

    def moves(self, centre, logits):
        """FOV centres to visit next, best first (FFN sorts each FOV's moves by score): the face maxima
        of the logits as written to the canvas, clamped into the volume."""
        r, d = self.radius, self.deltas
        box = [slice(ri - di, ri + di + 1) for ri, di in zip(r, d)]
        scored = []
        for axis in range(3):
            if d[axis] == 0:
                continue
            for step in (-d[axis], d[axis]):
                sel = list(box)
                sel[axis] = r[axis] + step
                face = logits[tuple(sel)]
                flat, order = face.ravel(), self.face_order[axis]
                best = order[np.argmax(flat[order])]
                if flat[best] < self.move_logit:
                    continue
                offset = list(np.unravel_index(best, face.shape) - np.delete(d, axis))
                offset.insert(axis, step)
                point = np.clip(np.asarray(centre) + offset, r, self.shape - 1 - r)
                scored.append((-float(flat[best]), len(scored), tuple(int(c) for c in point)))
        return [point for _, _, point in sorted(scored)]

    def valid_move(self, centre):
        """FFN's Canvas.is_valid_pos when a move is taken: still confident there, and not already
        part of a segment."""
        return bool(self.canvas[centre] >= self.move_logit) and self.seg[centre] == 0

    def write(self, sel, logits):
        """Put a FOV's prediction on the canvas and return what was written: with disco_seed_threshold
        >= 0 (FFN's disconnected seed rule), voxels already below 0.5 may not rise once the FOV is
        confident enough, and the moves are chosen from those frozen values, as in FFN."""
        disco = self.o.disco_seed_threshold
        if disco >= 0 and np.mean(logits >= self.move_logit) > disco:
            old = self.canvas[sel]
            frozen = (old < 0.0) & (logits > old)  # logit(0.5) = 0; unvisited (NaN) is never frozen
            logits = np.where(frozen, old, logits)
        self.canvas[sel] = logits
        return logits

    def flood(self, seed):
        """Grow one object from ``seed``; return the bounding box of the FOVs touched."""
        seed = tuple(int(c) for c in seed)
        self.canvas[seed] = logit(self.o.init_activation)
        start = tuple(int(c) for c in np.clip(seed, self.radius, self.shape - 1 - self.radius))
        queue = deque([start])
        done = set()  # lattice nodes a FOV was predicted at (FFN's done_rounded_coords)
        lo, hi = np.asarray(seed), np.asarray(seed) + 1
        steps = 0
        while queue and steps < self.o.max_steps_per_segment:
            if not self.canvas[seed] >= self.move_logit:
                break  # the seed got too weak: this flood is over (and will be rejected)
            n = min(self.o.batch_size, self.o.max_steps_per_segment - steps)
            centres = []
            while queue and len(centres) < n:
                centre = queue.popleft()
                key = self.lattice_key(centre, start)
                if key not in done and (centre == start or self.valid_move(centre)):
                    done.add(key)
                    centres.append(centre)
            if not centres:
                break
            slices = [self.fov_slices(c) for c in centres]
            images = np.stack([self.image[s] for s in slices])[..., None]
            seeds = np.stack([self.canvas[s] for s in slices])[..., None]
            seeds[np.isnan(seeds)] = self.pad_logit
            out = np.asarray(self.predict(images, seeds), dtype=np.float32)
            if out.shape != seeds.shape:
                raise ValueError(f"predictor returned shape {out.shape}, expected {seeds.shape}")
            self.predict_calls += 1
            steps += len(centres)
            for centre, sel, logits in zip(centres, slices, out[..., 0]):
                written = self.write(sel, logits)
                lo = np.minimum(lo, [s.start for s in sel])
                hi = np.maximum(hi, [s.stop for s in sel])
                queue.extend(c for c in self.moves(centre, written) if self.lattice_key(c, start) not in done)
        if queue and steps >= self.o.max_steps_per_segment:
            self.truncated += 1
        self.fov_predictions += steps
        return tuple(slice(a, b) for a, b in zip(lo, hi))

    def near_segment(self, seed):
        m = np.asarray(self.o.min_boundary_dist)
        box = tuple(slice(max(c - d, 0), c + d + 1) for c, d in zip(seed, m))
        return bool(self.seg[box].any())


def segment_volume(image, predict, options, progress=True, seeds=None):
    """Flood-fill segmentation of ``image`` (z, y, x) with ``predict``.

    ``seeds`` defaults to ``seed_peaks`` with a fov//2 margin, in its
    coordinate order. Each distinct seed is tried at most once, so a rejected
    (too small or weak) object is not regrown from the same seed. Returns
    (int32 segmentation with 0 = unassigned, stats dict).
    """
    _validate(image, options)
    t0 = time.perf_counter()
    filler = _Filler(image, predict, options)
    if seeds is None:
        seeds = seed_peaks(image, margin=tuple(filler.radius))
    seeds = np.asarray(seeds, dtype=np.int64)
    if seeds.ndim != 2 or seeds.shape[1] != 3:
        raise ValueError(f"seeds must be an (n, 3) array of (z, y, x) voxels, got shape {seeds.shape}")
    if np.any(seeds < 0) or np.any(seeds >= filler.shape):
        raise ValueError(f"seeds must lie inside the image of shape {image.shape}")
    _, first = np.unique(seeds, axis=0, return_index=True)
    seeds = seeds[np.sort(first)]
    seg_logit = logit(options.segment_threshold)
    tried = rejected = weak = segments = 0
    for seed in tqdm(seeds, desc="seeds", unit="seed", disable=not progress):
        if filler.near_segment(seed):
            continue
        tried += 1
        box = filler.flood(seed)
        mask = (filler.canvas[box] >= seg_logit) & (filler.seg[box] == 0)
        if not filler.canvas[tuple(seed)] >= filler.move_logit:
            weak += 1  # FFN rejects a flood whose own seed it no longer believes in
        elif mask.sum() >= options.min_segment_size:
            segments += 1
            filler.seg[box][mask] = segments
        else:
            rejected += 1
        filler.canvas[box] = np.nan
    stats = {
        "seeds": int(len(seeds)),
        "seeds_tried": tried,
        "seeds_skipped": int(len(seeds)) - tried,
        "segments": segments,
        "rejected": rejected,
        "weak_seeds": weak,
        "truncated": filler.truncated,
        "fov_predictions": filler.fov_predictions,
        "predict_calls": filler.predict_calls,
        "seconds": time.perf_counter() - t0,
    }
    return filler.seg, stats
