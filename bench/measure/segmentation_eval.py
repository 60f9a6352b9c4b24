"""`ffnbench evaluate RUN_DIR`: flood-fill a held-out volume with the run's trained FFN and score
the segmentation (ARE, VOI) against ground truth, next to two trivial segmentations.

Named apart from the model's held-out voxel metrics (FFNModel.evaluate): this scores whole
segmentations. The CLI draws the figure from what it returns."""
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import yaml
from skimage.filters import threshold_otsu
from skimage.measure import label as connected_components

from ffnbench.bench.config import ConfigError, load
from ffnbench.bench.run.summary import write_json_atomic

@dataclass
class Segmentation:
    """A segmentation next to its image and ground truth, for the figure."""
    image: np.ndarray
    gt: np.ndarray
    seg: np.ndarray
    title: str
    reference: np.ndarray = None
    reference_name: str = ""


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


def evaluate(run_dir, volume_spec=None, overrides=(), progress=True, reference=None):
    """Segment the volume with the run's final checkpoint, score it, write RUN_DIR/eval.json and
    RUN_DIR/segmentation.h5.

    Returns:
        (result as written to eval.json, Segmentation to draw).
    """
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config_path):
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
    with open(config_path) as f:
        cfg = load(base=yaml.safe_load(f), overrides=overrides)
    weights = checked_weights(cfg, os.path.join(run_dir, "checkpoints"))
    return evaluate_weights(cfg, weights, run_dir, read_volumes(cfg, volume_spec, reference), progress)


def evaluate_checkpoint(checkpoint, config_path, out=None, volume_spec=None, overrides=(), progress=True,
                        reference=None):
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
    volumes = read_volumes(cfg, volume_spec, reference)  # before anything is written
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create the directory ({e.strerror})")
    # what was evaluated, with which settings (not config.yaml: this is no training run)
    with open(os.path.join(out, "evaluated.yaml"), "w") as f:
        yaml.safe_dump({**cfg, "model": {**cfg["model"], "init_from": os.path.abspath(checkpoint)}}, f, sort_keys=False)
    result, drawn = evaluate_weights(cfg, weights, out, volumes, progress)
    return result, drawn, out


def checked_weights(cfg, checkpoint):
    """(weights, format, prefix) of `checkpoint`, or one ConfigError line naming what does not fit."""
    from ffnbench.model import ffn_checkpoint as fc
    m = cfg["model"]
    try:
        return fc.read_checked(checkpoint, m["depth"], m["features"], m["fov"])
    except fc.CheckpointMismatch as e:
        raise ConfigError(str(e))


def read_volumes(cfg, volume_spec, reference_spec):
    """((image, labels, source), reference segmentation or None, reference_spec), each checked."""
    from ffnbench.model.synthetic import read_h5_dataset
    image, gt, source = load_eval_volume(cfg, volume_spec)
    if not reference_spec:
        return (image, gt, source), None, None
    try:
        reference = read_h5_dataset(reference_spec)
    except (ValueError, OSError, KeyError) as e:  # OSError: h5py's "not an HDF5 file"
        raise ConfigError(f"--reference: {str(e).strip(chr(34))}")
    if not np.issubdtype(reference.dtype, np.integer):
        raise ConfigError(f"--reference {reference_spec}: a segmentation holds integer ids, not {reference.dtype}")
    if reference.size and reference.min() < 0:  # e.g. google/ffn's -1 markers, which its runner removes
        raise ConfigError(f"--reference {reference_spec}: holds negative ids ({reference.min()}); 0 is unsegmented")
    if reference.shape != image.shape:
        raise ConfigError(f"--reference {reference_spec}: shape {reference.shape} differs from the volume's "
                          f"{image.shape}")
    return (image, gt, source), reference, reference_spec


def short(spec):
    """`dir/a.h5:raw,dir/a.h5:labels` as `a.h5:raw,a.h5:labels`, for titles."""
    return ",".join(os.path.basename(part) for part in spec.split(","))


def write_segmentation(path, seg, attrs):
    """The segmentation as HDF5 (dataset `segmentation`, uint64, z y x, 0 = unsegmented), written to a
    temporary name and renamed, so a reader never sees half of it."""
    from ffnbench.model.synthetic import atomic_h5
    with atomic_h5(path) as f:
        ds = f.create_dataset("segmentation", data=seg.astype(np.uint64), compression="gzip", chunks=True)
        for key, value in attrs.items():
            ds.attrs[key] = value
    return path


def inference_speed(stats, model_cfg, precision, peak_flops_per_s):
    """FOVs per second of prediction and of the whole flood fill, and the forward pass's share of the
    matmul peak of the precision it computes in (MFU; above 1 would mean the peak is wrong)."""
    from ffnbench.model.network import forward_flops_per_fov
    flops = forward_flops_per_fov(model_cfg["fov"], model_cfg["depth"], model_cfg["features"])
    per_s = stats["fov_predictions"] / stats["predict_seconds"] if stats["predict_seconds"] else 0.0
    return {"precision": precision, "fov_predictions": stats["fov_predictions"],
            "predict_seconds": stats["predict_seconds"], "fovs_per_s": per_s,
            "fovs_per_s_overall": stats["fov_predictions"] / stats["seconds"] if stats["seconds"] else 0.0,
            "forward_flops_per_fov": flops, "model_flops_per_s": per_s * flops,
            "peak_flops_per_s": peak_flops_per_s, "mfu": per_s * flops / peak_flops_per_s}


def speed_line(speed):
    """tf_cnn_benchmarks-style summary of a flood fill."""
    return (f"inference: {speed['fov_predictions']} FOVs in {speed['predict_seconds']:.1f}s of prediction: "
            f"{speed['fovs_per_s']:.2f} FOVs/sec ({speed['fovs_per_s_overall']:.2f} over the whole flood fill), "
            f"{speed['model_flops_per_s'] / 1e9:.0f} GFLOP/s = {100 * speed['mfu']:.1f}% of the "
            f"{speed['precision']} matmul peak {speed['peak_flops_per_s'] / 1e9:.0f} GFLOP/s (MFU)")


def evaluate_weights(cfg, checked, out_dir, volumes, progress):
    """Flood-fill and score with `checked` weights (checked_weights' result) on `volumes`
    (read_volumes' result)."""
    from ffnbench.bench.run.peak import PEAK_DTYPE, matmul_peak
    from ffnbench.model import ffn_checkpoint as fc
    from ffnbench.model.api import FFNModel
    from ffnbench.bench.config import typed
    from ffnbench.model.inference import segment_volume
    from ffnbench.model.seg_metrics import agreement, segmentation_scores
    (image, gt, source), reference, reference_spec = volumes
    weights, fmt, prefix = checked
    m, precision = cfg["model"], cfg["train"]["precision"]
    model = FFNModel(m["fov"], m["depth"], m["features"], precision=precision)
    model.set_flat(fc.flat(weights, [v.name for v in model.variables]))
    peak_before = matmul_peak(seconds=2.0, dtype=PEAK_DTYPE[precision])  # with the flood fill's threads
    opts = typed(cfg)["inference"]
    start = time.time()
    seg, stats = segment_volume(image, model.predict, opts, progress=progress)
    seconds = time.time() - start
    # and again after: a disturbed measurement only reads low (a 97-min flood fill read 117 % of the
    # peak measured before it alone, 2026-12-06), so the higher of the two bounds the rate
    peak = max(peak_before, matmul_peak(seconds=2.0, dtype=PEAK_DTYPE[precision]))
    seg_path = write_segmentation(os.path.join(out_dir, "segmentation.h5"), seg, {
        "volume": source, "checkpoint": prefix, "inference": json.dumps(cfg["inference"]), "precision": precision})
    margin = [f // 2 for f in m["fov"]]
    gt_in = inner(gt, margin)
    result = {**segmentation_scores(inner(seg, margin), gt_in), "seconds": seconds, "volume": source,
              "checkpoint": {"path": prefix, "format": fmt},
              "scored_region": "voxels at least fov//2 from every edge",
              "whole_volume": segmentation_scores(seg, gt),
              "segmentation": f"{os.path.basename(seg_path)}:segmentation",
              "inference": stats, "speed": inference_speed(stats, m, precision, peak),
              "baselines": {name: segmentation_scores(inner(s, margin), gt_in)
                            for name, s in trivial_segmentations(image, gt).items()}}
    if reference is not None:
        result["reference"] = {"path": reference_spec, **agreement(seg, reference)}
    write_json_atomic(os.path.join(out_dir, "eval.json"), result)
    return result, Segmentation(image, gt, seg, f"{cfg['name']} ({fmt} weights): FFN flood fill on {short(source)}",
                                reference, short(reference_spec or ""))


def table(result):
    rows = ["| segmentation | region | ARE | VOI | VOI split | VOI merge | segments |", "|---|---|---|---|---|---|---|"]
    for name, region, r in [("FFN", "whole volume", result["whole_volume"]), ("FFN", "interior", result),
                            *((n, "interior", b) for n, b in result["baselines"].items())]:
        rows.append(f"| {name} | {region} | {r['are']:.4f} | {r['voi']:.4f} | {r['voi_split']:.4f} | "
                    f"{r['voi_merge']:.4f} | {r['segments']} (gt {r['gt_segments']}) |")
    if "reference" in result:
        r = result["reference"]
        rows.append(f"| FFN against {r['path']} | whole volume | {r['are']:.4f} | {r['voi']:.4f} | "
                    f"{r['voi_split']:.4f} | {r['voi_merge']:.4f} | {r['segments']} (reference "
                    f"{r['reference_segments']}) |")
    return "\n".join(rows)
