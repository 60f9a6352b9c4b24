"""Resumable checkpoints: RUN_DIR/checkpoints/step-K/ holds every rank's training state.

Each rank writes rank{r}.npz (weights, optimizer variables, its example stream part-way through its
FOV moves; numpy arrays only, no pickle) into step-K.partial/; once every rank's file is in, rank 0
writes state.json and renames the directory, so a checkpoint either is complete or does not exist.
The last KEEP are kept.
"""
import json
import os
import shutil

import numpy as np

KEEP = 2
PREFIX = "step-"


def root(run_dir):
    return os.path.join(run_dir, "checkpoints")


def _partial(run_dir, step):
    return os.path.join(root(run_dir), f"{PREFIX}{step:09d}.partial")


def save_rank(run_dir, step, rank, arrays):
    """This rank's part of the checkpoint after `step` steps (atomic within the partial directory)."""
    where = _partial(run_dir, step)
    os.makedirs(where, exist_ok=True)
    tmp = os.path.join(where, f"rank{rank}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, os.path.join(where, f"rank{rank}.npz"))


def commit(run_dir, step, meta):
    """Rank 0, once every rank has saved: make the checkpoint of `step` complete, drop old ones."""
    where = _partial(run_dir, step)
    with open(os.path.join(where, "state.json"), "w") as f:
        json.dump({"step": step, **meta}, f, indent=2)
    final = where[:-len(".partial")]
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(where, final)
    for old in complete(run_dir)[:-KEEP]:
        shutil.rmtree(old)


def complete(run_dir):
    """Complete checkpoint directories, oldest first."""
    base = root(run_dir)
    if not os.path.isdir(base):
        return []
    names = sorted(n for n in os.listdir(base) if n.startswith(PREFIX) and not n.endswith(".partial")
                   and os.path.exists(os.path.join(base, n, "state.json")))
    return [os.path.join(base, n) for n in names]


def latest(run_dir):
    """The newest complete checkpoint directory, or None."""
    found = complete(run_dir)
    return found[-1] if found else None


def read_meta(directory):
    """The checkpoint's state.json: step, train_time (training seconds before it), ranks, strategy."""
    with open(os.path.join(directory, "state.json")) as f:
        return json.load(f)


def load_rank(directory, rank):
    """{name: array} that rank `rank` saved."""
    with np.load(os.path.join(directory, f"rank{rank}.npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def split(arrays, prefix):
    """The arrays saved under `prefix.`, without it."""
    return {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def join(**parts):
    """{part.name: array} of several {name: array}."""
    return {f"{part}.{k}": v for part, arrays in parts.items() for k, v in arrays.items()}
