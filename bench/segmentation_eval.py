"""`ffnbench evaluate RUN_DIR`: flood-fill a held-out volume with the run's trained FFN and score
the segmentation (ARE, VOI) against ground truth, next to two trivial segmentations.

Named apart from the model's held-out voxel metrics (FFNModel.evaluate): this scores whole
segmentations. The CLI draws the figure from what it returns."""
import os
import time
from dataclasses import dataclass

import numpy as np
import yaml
from skimage.filters import threshold_otsu
from skimage.measure import label as connected_components

from ffnbench.bench.config import ConfigError, load
from ffnbench.bench.summary import write_json_atomic

@dataclass
class Segmentation:
    """A segmentation next to its image and ground truth, for the figure."""
    image: np.ndarray
    gt: np.ndarray
    seg: np.ndarray
    title: str


FIELDS = ("are", "voi", "voi_split", "voi_merge", "rand_precision", "rand_recall", "segments", "gt_segments")


def load_eval_volume(cfg, volume_spec):
    """Raw (uint8-range) image and labels: --volume image,labels, else the run's held-out volume."""
    from ffnbench.model.synthetic import make_volume, read_h5_dataset
    if volume_spec:
        parts = volume_spec.split(",")
        if len(parts) != 2:
            raise ConfigError(f"--volume {volume_spec}: expected file.h5:image,file.h5:labels")
        image, labels = (read_h5_dataset(p) for p in parts)
        source = volume_spec
    elif cfg["data"]["source"] == "synthetic":
        d = cfg["data"]
        image, labels = make_volume(tuple(d["shape"]), seed=d["seed"] + 1, density=d["density"])
        source = f"synthetic seed {d['seed'] + 1} (training used {d['seed']})"
    else:
        image, labels = (read_h5_dataset(cfg["data"][k]) for k in ("image", "labels"))
        split = int(round(image.shape[0] * (1 - cfg["data"]["holdout_fraction"])))
        image, labels, source = image[split:], labels[split:], f"{cfg['data']['image']} held-out z >= {split}"
    if image.shape != labels.shape:
        raise ConfigError(f"--volume: image shape {image.shape} differs from labels shape {labels.shape}")
    return image, labels.astype(np.int64), source


def inner(array, margin):
    """Score only where a full FOV can be centred: seeds never start within fov//2 of the edge."""
    return array[tuple(slice(m, n - m) for m, n in zip(margin, array.shape))]


def trivial_segmentations(image, gt):
    """The two baselines a trained FFN must beat: one segment, and components of the thresholded image."""
    one = np.ones_like(gt)
    cells = image > threshold_otsu(image)
    return {"one_segment": one, "threshold_components": connected_components(cells, connectivity=1)}


def evaluate(run_dir, volume_spec=None, overrides=(), progress=True):
    """Segment the volume with the run's final checkpoint, score it, write RUN_DIR/eval.json.

    Returns:
        (result as written to eval.json, Segmentation to draw).
    """
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config_path):
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
    with open(config_path) as f:
        cfg = load(base=yaml.safe_load(f), overrides=overrides)
    return evaluate_weights(cfg, checked_weights(cfg, os.path.join(run_dir, "checkpoints")), run_dir, volume_spec,
                            progress)


def evaluate_checkpoint(checkpoint, config_path, out=None, volume_spec=None, overrides=(), progress=True):
    """As evaluate, for a checkpoint without a training run (e.g. google/ffn's): the network and the
    inference settings come from `config_path`; eval.json goes to `out` (new or empty), else to a new
    directory under run.out. Returns (result, Segmentation, the directory written)."""
    cfg = load(config_path, overrides)
    weights = checked_weights(cfg, checkpoint)  # before anything is written
    if out is None:
        base = os.path.join(cfg["run"]["out"], f"{cfg['name']}-evaluate-{time.strftime('%Y%m%d-%H%M%S')}")
        out = next(f"{base}-{k}" if k else base for k in range(1000) if not os.path.exists(f"{base}-{k}" if k else base))
    if os.path.isdir(out) and os.listdir(out):
        raise ConfigError(f"--out {out}: not empty; evaluating a checkpoint writes into a new or empty directory")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create the directory ({e.strerror})")
    # what was evaluated, with which settings (not config.yaml: this is no training run)
    with open(os.path.join(out, "evaluated.yaml"), "w") as f:
        yaml.safe_dump({**cfg, "model": {**cfg["model"], "init_from": os.path.abspath(checkpoint)}}, f, sort_keys=False)
    result, drawn = evaluate_weights(cfg, weights, out, volume_spec, progress)
    return result, drawn, out


def checked_weights(cfg, checkpoint):
    """(weights, format, prefix) of `checkpoint`, or one ConfigError line naming what does not fit."""
    from ffnbench.model import ffn_checkpoint as fc
    m = cfg["model"]
    try:
        return fc.read_checked(checkpoint, m["depth"], m["features"], m["fov"])
    except fc.CheckpointMismatch as e:
        raise ConfigError(str(e))


def evaluate_weights(cfg, checked, out_dir, volume_spec, progress):
    """Flood-fill and score with `checked` weights (checked_weights' result)."""
    from ffnbench.model import ffn_checkpoint as fc
    from ffnbench.model.api import FFNModel
    from ffnbench.model.inference import InferenceOptions, segment_volume
    from ffnbench.model.seg_metrics import segmentation_scores
    weights, fmt, prefix = checked
    m, d = cfg["model"], cfg["data"]
    model = FFNModel(m["fov"], m["depth"], m["features"], precision=cfg["train"]["precision"])
    model.set_flat(fc.flat(weights, [v.name for v in model.variables]))
    image, gt, source = load_eval_volume(cfg, volume_spec)
    opts = InferenceOptions(fov=tuple(m["fov"]), deltas=tuple(m["deltas"]), image_mean=d["image_mean"],
                            image_stddev=d["image_stddev"],
                            **{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg["inference"].items()})
    start = time.time()
    seg, stats = segment_volume(image, model.predict, opts, progress=progress)
    seconds = time.time() - start
    margin = [f // 2 for f in m["fov"]]
    gt_in = inner(gt, margin)
    result = {**segmentation_scores(inner(seg, margin), gt_in), "seconds": seconds, "volume": source,
              "checkpoint": {"path": prefix, "format": fmt},
              "scored_region": "voxels at least fov//2 from every edge", "inference": stats,
              "baselines": {name: segmentation_scores(inner(s, margin), gt_in)
                            for name, s in trivial_segmentations(image, gt).items()}}
    write_json_atomic(os.path.join(out_dir, "eval.json"), result)
    return result, Segmentation(image, gt, seg, f"{cfg['name']} ({fmt} weights): FFN flood fill on {source}")


def table(result):
    rows = ["| segmentation | ARE | VOI | VOI split | VOI merge | segments |", "|---|---|---|---|---|---|"]
    for name, r in [("trained FFN", result), *result["baselines"].items()]:
        rows.append(f"| {name} | {r['are']:.4f} | {r['voi']:.4f} | {r['voi_split']:.4f} | {r['voi_merge']:.4f} "
                    f"| {r['segments']} (gt {r['gt_segments']}) |")
    return "\n".join(rows)
