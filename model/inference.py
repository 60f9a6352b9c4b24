"""Flood-filling inference of a whole volume, as google/ffn's ffn/inference (inference.py's Canvas,
movement.py's FaceMaxMovementPolicy, seed.py's PolicyPeaks) does it.

One object at a time: seed a logit canvas, let the predictor grow the object FOV by FOV, then
threshold the canvas into a segment. Each rule is google/ffn's, named after the code it follows:

* Seeds (PolicyPeaks.init_coords): Sobel gradient magnitude of the normalised image, thresholded
  against its own Gaussian blur (sigma 49/6); Euclidean distance to the nearest edge; its local
  maxima at least 3 apart (peak_local_max with a RandomState(42) jitter of 1e-4, thresholds 0, its
  default border exclusion), in (z, y, x) order, without those lacking a full FOV inside the volume
  (BaseSeedPolicy.__next__).
* A seed is skipped if its FOV does not fit, if it is already segmented, or if a segment lies
  within min_boundary_dist of it (Canvas.segment_all).
* A flood (Canvas.segment_at) stops when its seed voxel falls below move_threshold; such a flood
  is rejected as a weak seed.
* Moves (get_scored_move_offsets): the first maximum, in C order, of each face of the FOV's
  logits as written to the canvas, if >= move_threshold; each FOV's moves are queued by score,
  best first (ties: the larger offset first).
* A queued centre is taken only if its node of the deltas lattice anchored at the seed
  (quantize_pos) has not been predicted yet, and if is_valid_pos holds then: the canvas there is
  not below move_threshold, the FOV fits inside the volume, and the voxel is not segmented.
* disco_seed_threshold (google/ffn's default 0; negative turns it off): once more than that
  fraction of a FOV is >= move_threshold, voxels already below 0.5 may not rise (update_at).
* The canvas is NaN (fed to the network as pad_value) until predicted, and cleared between
  floods. A segment is the voxels >= segment_threshold in the box the flood's FOVs covered that
  no earlier segment holds, if there are at least min_segment_size of them.

One setting goes beyond google/ffn: ``batch_size > 1`` sends up to that many queued FOVs of the
same object to one predictor call; they all see the canvas as it was before the call.
"""
import time
from collections import deque
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from tqdm import tqdm

from ffnbench.model.network import logit
from ffnbench.model.typed import declared, problem, setting


@dataclass(frozen=True)
class InferenceOptions:
    """The flood fill's settings: google/ffn's (its inference.proto's defaults), and the config's
    `inference` section, which is the fields made with `setting`. The first four come from the
    model's and data's sections."""
    fov: Tuple[int, int, int]
    deltas: Tuple[int, int, int]
    image_mean: float
    image_stddev: float
    init_activation: float = setting(0.95, "flood fill: seed probability at the seed voxel", above=0, below=1)
    pad_value: float = setting(0.05, "flood fill: canvas probability before prediction", above=0, below=1)
    move_threshold: float = setting(0.9, "flood fill: move to a face's max point if its probability >= this when "
                                         "the move is taken; a flood whose seed falls below it stops and is rejected",
                                    above=0, below=1)
    segment_threshold: float = setting(0.6, "flood fill: voxels >= this probability join the segment",
                                       above=0, below=1)
    min_segment_size: int = setting(1000, "flood fill: smaller segments are rejected", at_least=0)
    min_boundary_dist: Tuple[int, int, int] = setting((1, 1, 1), "flood fill: seeds this close to a segment are "
                                                                 "skipped", at_least=0)
    disco_seed_threshold: float = setting(0.0, "flood fill: once more than this fraction of a FOV is >= "
                                               "move_threshold, voxels below 0.5 may not rise (FFN; negative: off)")
    batch_size: int = setting(1, "flood fill: FOVs per predictor call (FFN: 1; more see an older canvas)", at_least=1)


#: PolicyPeaks' blur of the edge map, in voxels (google/ffn ffn/inference/seed.py)
EDGE_SIGMA = 49.0 / 6.0


def normalise(image, options):
    """google/ffn's Runner.make_canvas: (image - image_mean) / image_stddev in float32."""
    return (np.asarray(image).astype(np.float32) - options.image_mean) / options.image_stddev


def seed_peaks(image, margin=(0, 0, 0), min_distance=3):
    """PolicyPeaks' seeds of ``image`` (google/ffn passes the normalised image), in (z, y, x)
    order, without those closer than ``margin`` to the volume edge. Returns int (n, 3)."""
    image = np.asarray(image, dtype=np.float32)
    magnitude = ndimage.generic_gradient_magnitude(image, ndimage.sobel)
    blurred = np.zeros(magnitude.shape, dtype=np.float32)
    ndimage.gaussian_filter(magnitude, EDGE_SIGMA, output=blurred, mode="reflect")
    edges = magnitude > blurred
    if edges.all() or not edges.any():  # no distance peaks (google/ffn: every distance is inf, or 0)
        return np.zeros((0, 3), dtype=np.int64)
    dist = ndimage.distance_transform_edt(~edges).astype(np.float32)
    jitter = np.random.RandomState(seed=42).rand(*dist.shape) * 1e-4
    peaks = peak_local_max(dist + jitter, min_distance=min_distance, threshold_abs=0, threshold_rel=0)
    peaks = np.array(sorted(tuple(p) for p in peaks), dtype=np.int64).reshape(-1, 3)
    margin = np.asarray(margin)
    inside = np.all((peaks - margin >= 0) & (peaks + margin < image.shape), axis=1)
    return peaks[inside]


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
    for f in declared(InferenceOptions):
        why = problem(f, getattr(options, f.name))
        if why:
            raise ValueError(f"{f.name} {why}")


def scored_moves(logits, deltas, threshold):
    """get_scored_move_offsets, sorted as FaceMaxMovementPolicy.update sorts them: (score, offset
    from the FOV centre) for the first maximum of each face at +-deltas, if >= threshold."""
    centre = np.asarray(logits.shape) // 2
    box = [slice(c - d, c + d + 1) for c, d in zip(centre, deltas)]
    found = set()
    for axis, delta in enumerate(deltas):
        if delta == 0:
            continue
        for offset in (-delta, delta):
            sel = list(box)
            sel[axis] = centre[axis] + offset
            face = logits[tuple(sel)]
            at = np.unravel_index(face.argmax(), face.shape)
            if face[at] < threshold:
                continue
            relative = [at[0] - face.shape[0] // 2, at[1] - face.shape[1] // 2]
            relative.insert(axis, offset)
            found.add((face[at], tuple(int(r) for r in relative)))
    return sorted(found, reverse=True)


class _Canvas:
    """google/ffn's Canvas for one volume: the logit canvas of the current flood, the
    segmentation, and the counters."""

    def __init__(self, image, predict, options, on_predict=None):
        self.o = options
        self.on_predict = on_predict or (lambda: None)
        self.predict = predict
        self.image = normalise(image, options)
        self.shape = np.asarray(image.shape)
        self.margin = np.asarray(options.fov) // 2
        self.deltas = np.asarray(options.deltas)
        # google/ffn keeps its thresholds in a proto's float32 fields, as probabilities for the
        # movement policy (score_threshold, float64 logit) and as logits for the canvas
        self.move_score = logit(float(np.float32(options.move_threshold)))
        self.move_logit, self.pad_logit, self.init_logit, self.segment_logit = (
            np.float32(logit(float(np.float32(p)))) for p in (
                options.move_threshold, options.pad_value, options.init_activation, options.segment_threshold))
        self.canvas = np.full(image.shape, np.nan, dtype=np.float32)
        self.seg = np.zeros(image.shape, dtype=np.int32)
        self.fov_predictions = 0
        self.predict_calls = 0
        self.predict_seconds = 0.0  # inside the predictor (google/ffn's predict-time-ms)

    def fov_slices(self, centre):
        return tuple(slice(c - r, c + r + 1) for c, r in zip(centre, self.margin))

    def fits(self, pos):
        return bool(np.all(pos - self.margin >= 0) and np.all(pos + self.margin < self.shape))

    def is_valid_pos(self, pos, ignore_move_threshold=False):
        """Canvas.is_valid_pos (a NaN canvas value, as there, is not below the threshold)."""
        if not ignore_move_threshold and self.canvas[pos] < self.move_logit:
            return False
        return self.fits(np.asarray(pos)) and self.seg[pos] <= 0

    def quantize(self, pos, start):
        """FaceMaxMovementPolicy.quantize_pos: the node of the deltas lattice anchored at ``start``."""
        node = (np.asarray(pos) - start + self.deltas // 2) // np.maximum(self.deltas, 1)
        return tuple(int(k) for k in node)

    def write(self, sel, logits):
        """update_at: put a FOV's prediction on the canvas, with the disconnected-seed rule, and
        return what was written (the moves are chosen from it)."""
        disco = self.o.disco_seed_threshold
        if disco >= 0 and np.mean(logits >= self.move_logit) > disco:
            old = self.canvas[sel]
            with np.errstate(invalid="ignore"):
                frozen = (old < 0.0) & (logits > old)  # logit(0.5) = 0; NaN (unvisited) never freezes
            logits = np.where(frozen, old, logits)
        self.canvas[sel] = logits
        return logits

    def flood(self, start):
        """segment_at: grow one object from ``start``. Returns (FOVs predicted, lowest and highest
        FOV centre)."""
        self.canvas[start] = self.init_logit
        queue = deque([start])
        done = set()  # lattice nodes predicted at (done_rounded_coords)
        lo, hi = np.asarray(start), np.asarray(start)
        iters = 0
        while True:
            centres = []
            while queue and len(centres) < self.o.batch_size:
                pos = queue.popleft()
                key = self.quantize(pos, start)
                if key not in done and self.is_valid_pos(pos):
                    done.add(key)
                    centres.append(pos)
            if not centres or self.canvas[start] < self.move_logit:
                break  # nothing left to visit, or the seed got too weak
            slices = [self.fov_slices(c) for c in centres]
            images = np.stack([self.image[s] for s in slices])[..., None]
            seeds = np.stack([self.canvas[s] for s in slices])[..., None]
            seeds[np.isnan(seeds)] = self.pad_logit
            t = time.perf_counter()
            out = np.asarray(self.predict(images, seeds), dtype=np.float32)
            self.predict_seconds += time.perf_counter() - t
            if out.shape != seeds.shape:
                raise ValueError(f"predictor returned shape {out.shape}, expected {seeds.shape}")
            self.predict_calls += 1
            self.on_predict()
            iters += len(centres)
            for centre, sel, logits in zip(centres, slices, out[..., 0]):
                written = self.write(sel, logits)
                lo, hi = np.minimum(lo, centre), np.maximum(hi, centre)
                for _, offset in scored_moves(written, self.deltas, self.move_score):
                    queue.append(tuple(int(c + o) for c, o in zip(centre, offset)))
        self.fov_predictions += iters
        return iters, lo, hi

    def near_segment(self, seed):
        m = np.asarray(self.o.min_boundary_dist)
        box = tuple(slice(max(c - d, 0), c + d + 1) for c, d in zip(seed, m))
        return bool((self.seg[box] > 0).any())


def segment_volume(image, predict, options, progress=True, seeds=None):
    """Flood-fill segmentation of ``image`` (z, y, x) with ``predict`` (images, seed logits ->
    logits, each (B, z, y, x, 1)), as google/ffn's Canvas.segment_all.

    ``seeds`` defaults to ``seed_peaks`` of the normalised image; each distinct seed is tried at
    most once, in the order given. Returns (int32 segmentation, 0 = unsegmented; stats dict).
    """
    _validate(image, options)
    t0 = time.perf_counter()
    shown = [time.perf_counter()]

    def show_fovs():  # one object can take minutes: the bar also counts FOVs, every 2 s
        if progress and time.perf_counter() - shown[0] > 2.0:
            shown[0] = time.perf_counter()
            bar.set_postfix(fovs=c.fov_predictions, refresh=True)

    c = _Canvas(image, predict, options, show_fovs)
    if seeds is None:
        seeds = seed_peaks(c.image, margin=tuple(c.margin))
    seeds = np.asarray(seeds, dtype=np.int64)
    if seeds.ndim != 2 or seeds.shape[1] != 3:
        raise ValueError(f"seeds must be an (n, 3) array of (z, y, x) voxels, got shape {seeds.shape}")
    if np.any(seeds < 0) or np.any(seeds >= c.shape):
        raise ValueError(f"seeds must lie inside the image of shape {image.shape}")
    _, first = np.unique(seeds, axis=0, return_index=True)
    seeds = seeds[np.sort(first)]
    half_fov = c.margin
    tried = rejected = weak = segments = 0
    bar = tqdm(seeds, desc="seeds", unit="seed", disable=not progress)
    for seed in bar:
        seed = tuple(int(s) for s in seed)
        if not c.is_valid_pos(seed, ignore_move_threshold=True) or c.near_segment(seed):
            continue
        tried += 1
        iters, lo, hi = c.flood(seed)
        box = tuple(slice(max(a, 0), b + 1) for a, b in zip(lo - half_fov, hi + half_fov))
        if iters and c.canvas[seed] < c.move_logit:
            weak += 1  # google/ffn rejects a flood whose own seed it no longer believes in
        elif iters:
            mask = (c.canvas[box] >= c.segment_logit) & (c.seg[box] <= 0)
            if mask.sum() >= options.min_segment_size:
                segments += 1
                c.seg[box][mask] = segments
            else:
                rejected += 1
        c.canvas[box] = np.nan
    stats = {
        "seeds": int(len(seeds)),
        "seeds_tried": tried,
        "seeds_skipped": int(len(seeds)) - tried,
        "segments": segments,
        "rejected": rejected,
        "weak_seeds": weak,
        "fov_predictions": c.fov_predictions,
        "predict_calls": c.predict_calls,
        "predict_seconds": c.predict_seconds,
        "seconds": time.perf_counter() - t0,
    }
    return c.seg, stats
