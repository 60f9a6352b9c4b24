"""convstack_3d weights in and out of checkpoints: google/ffn's TF1 checkpoints and this toolkit's own.

google/ffn saves its network's variables by name, `seed_update/<layer>/weights` and `/biases`
(ffn/training/models/convstack_3d.py builds the layers under the `seed_update` scope), with kernels
laid out (kz, ky, kx, in, out) as Keras' Conv3D keeps them. ffnbench's run checkpoints are
TensorFlow object checkpoints of the Keras model, whose layers with weights are numbered in build
order. Both are read here into one map, layer name -> (kernel, bias), checked against the
network a config builds, and loaded into it.
"""
import hashlib
import os
from typing import Dict, List, Tuple

import numpy as np

FFN_SCOPE = "seed_update"


class CheckpointMismatch(ValueError):
    """A checkpoint's weights do not fit the configured network; the message names the first tensor."""


def layer_names(depth: int) -> List[str]:
    """convstack_3d's layers with weights, in build order."""
    return ["conv0_a", "conv0_b"] + [f"conv{i}_{ab}" for i in range(1, depth) for ab in "ab"] + ["conv_lom"]


def expected_shapes(depth: int, features: int) -> Dict[str, Tuple[tuple, tuple]]:
    """layer -> (kernel shape, bias shape) of convstack_3d at this depth and width."""
    shapes = {name: ((3, 3, 3, features, features), (features,)) for name in layer_names(depth)}
    shapes["conv0_a"] = ((3, 3, 3, 2, features), (features,))
    shapes["conv_lom"] = ((1, 1, 1, features, 1), (1,))
    return shapes


def checkpoint_prefix(path: str) -> str:
    """A checkpoint prefix from a prefix, a run directory or its checkpoints/ directory (newest)."""
    import tensorflow as tf
    for directory in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(directory):
            newest = tf.train.latest_checkpoint(directory)
            if newest:
                return newest
    if os.path.isfile(path + ".index"):
        return path
    if os.path.isdir(path) or os.path.basename(path) == "checkpoints":  # a run's checkpoints/, made or not
        raise FileNotFoundError(f"no checkpoint in {path}")
    raise FileNotFoundError(f"{path}: no checkpoint there (a prefix with a .index file, or a run directory)")


def read_weights(path: str) -> Tuple[Dict[str, Tuple[np.ndarray, np.ndarray]], str, str]:
    """The convstack_3d weights of a checkpoint.

    Returns:
        ({layer: (kernel, bias)}, "google/ffn" or "ffnbench", the checkpoint prefix read).
    Raises:
        FileNotFoundError: no checkpoint at `path`; CheckpointMismatch: unreadable or not convstack_3d.
    """
    import tensorflow as tf
    prefix = checkpoint_prefix(path)
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = reader.get_variable_to_shape_map()
        if any(n.startswith(FFN_SCOPE + "/") for n in names):
            layers = sorted({n.split("/")[1] for n in names if n.startswith(FFN_SCOPE + "/")})
            tensor = "{}/{}/{}".format
            return ({layer: (reader.get_tensor(tensor(FFN_SCOPE, layer, "weights")),
                             reader.get_tensor(tensor(FFN_SCOPE, layer, "biases"))) for layer in layers},
                    "google/ffn", prefix)
        numbered = sorted({int(n.split("/")[1].rsplit("-", 1)[1]) for n in names
                           if n.startswith("model/layer_with_weights-")})
        if not numbered:
            raise CheckpointMismatch(f"{prefix}: neither google/ffn's ({FFN_SCOPE}/...) nor an ffnbench checkpoint")
        attr = "model/layer_with_weights-{}/{}/.ATTRIBUTES/VARIABLE_VALUE"
        return ({layer: (reader.get_tensor(attr.format(i, "kernel")), reader.get_tensor(attr.format(i, "bias")))
                 for i, layer in enumerate(layer_names((len(numbered) - 1) // 2))}, "ffnbench", prefix)
    except (tf.errors.OpError, IndexError) as e:  # a missing shard or tensor; a truncated shard (IndexError)
        message = getattr(e, "message", None) or str(e)
        raise CheckpointMismatch(f"{prefix}: cannot read the checkpoint ({message.splitlines()[0]})")


def trained_fov(prefix: str):
    """The FOV an ffnbench run trained this checkpoint with (its config.yaml), or None (google/ffn's
    checkpoints do not record it: the convolutions fit any FOV)."""
    import yaml
    directory = os.path.dirname(os.path.abspath(prefix))
    run_config = os.path.join(os.path.dirname(directory), "config.yaml")
    if os.path.basename(directory) != "checkpoints" or not os.path.isfile(run_config):
        return None
    try:
        with open(run_config) as f:
            return list(yaml.safe_load(f)["model"]["fov"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise CheckpointMismatch(f"{run_config}: cannot read the run's model.fov ({e})")


def check_fits(weights, depth: int, features: int, source: str) -> None:
    """CheckpointMismatch naming the first tensor (in build order) the network would not take as is."""
    expected = expected_shapes(depth, features)
    for layer, (kernel_shape, bias_shape) in expected.items():
        if layer not in weights:
            raise CheckpointMismatch(f"{source}: has no {FFN_SCOPE}/{layer} (the config's depth {depth} needs it; "
                                     f"the checkpoint has depth {checkpoint_depth(weights)})")
        for kind, shape, array in (("weights", kernel_shape, weights[layer][0]), ("biases", bias_shape, weights[layer][1])):
            if tuple(array.shape) != shape:
                raise CheckpointMismatch(f"{source}: {FFN_SCOPE}/{layer}/{kind} has shape {tuple(array.shape)}, the "
                                         f"config (depth {depth}, features {features}) needs {shape}")
    extra = [layer for layer in layer_names(checkpoint_depth(weights)) if layer not in expected]
    if extra:
        raise CheckpointMismatch(f"{source}: has {FFN_SCOPE}/{extra[0]}, which the config's depth {depth} "
                                 f"lacks (the checkpoint has depth {checkpoint_depth(weights)})")


def read_checked(path: str, depth: int, features: int, fov):
    """read_weights, then check_fits and the source run's FOV (when it records one): what every
    caller that loads weights into a configured network needs. Raises CheckpointMismatch or
    FileNotFoundError, naming `path`."""
    weights, fmt, prefix = read_weights(path)
    check_fits(weights, depth, features, path)
    trained = trained_fov(prefix)
    if trained is not None and trained != list(fov):
        raise CheckpointMismatch(f"{path} was trained with model.fov {trained}, the config has {list(fov)}")
    return weights, fmt, prefix


def checkpoint_depth(weights) -> int:
    return sum(1 for layer in weights if layer.endswith("_a"))


def flat(weights, variable_names: List[str]) -> np.ndarray:
    """The weights as one float32 vector in the order of a network's variables ('conv0_a/kernel:0', ...)."""
    parts = []
    for name in variable_names:
        layer, kind = name.split(":")[0].split("/")[-2:]
        parts.append(weights[layer][0 if kind == "kernel" else 1].astype(np.float32).ravel())
    return np.concatenate(parts)


def digest(flat_weights: np.ndarray) -> str:
    """sha256 of the float32 weights in the network's variable order (the manifest's record of them)."""
    return hashlib.sha256(np.ascontiguousarray(flat_weights, np.float32).tobytes()).hexdigest()


def write_ffn_checkpoint(weights, prefix: str, global_step: int) -> str:
    """A TF1 name-based checkpoint with google/ffn's variable names, readable by its inference.

    Returns the prefix written (PREFIX.index and PREFIX.data-00000-of-00001)."""
    import tensorflow as tf
    names, tensors = ["global_step"], [tf.constant(global_step, tf.int32)]
    for layer in sorted(weights):
        kernel, bias = weights[layer]
        names += [f"{FFN_SCOPE}/{layer}/biases", f"{FFN_SCOPE}/{layer}/weights"]
        tensors += [tf.constant(bias, tf.float32), tf.constant(kernel, tf.float32)]
    try:
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    except (OSError, tf.errors.OpError) as e:
        raise CheckpointMismatch(f"cannot write {prefix} ({getattr(e, 'message', None) or e})")
    return prefix
