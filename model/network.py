"""FFN convstack_3d (google/ffn, ffn/training/models/convstack_3d.py) in tf.keras: the one network
every strategy trains, and its size and cost arithmetic (which needs no TensorFlow)."""
import zlib

import numpy as np

#: train.precision: float32, or convolutions in bfloat16 with float32 weights, optimizer and loss
PRECISIONS = ("float32", "mixed_bfloat16")

#: model.init: google/ffn's convstack_3d takes tf-slim's default (Glorot-uniform kernels, zero biases);
#: a comment there says the published models were trained with a truncated normal of stddev 0.01
INITS = ("glorot_uniform", "truncated_normal")

#: CPU flags (Linux /proc/cpuinfo) of instructions that compute bfloat16 natively: oneDNN uses them
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def logit(p):
    """Probability -> logit: seeds, canvases and thresholds work in logits, as in google/ffn."""
    return float(np.log(p / (1.0 - p)))


def bf16_flags(cpuinfo="/proc/cpuinfo"):
    """The BF16_FLAGS this CPU has (empty where it has none, or /proc/cpuinfo cannot be read)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in BF16_FLAGS if flag in flags]


def build_convstack_3d(fov, depth=12, features=32, seed=0, init="glorot_uniform", init_stddev=0.01,
                       precision="float32"):
    """Input (B, z, y, x, 2) = [image, seed logits]; output new seed logits = seed + update.

    With precision mixed_bfloat16 the 3x3x3 convolutions compute in bfloat16 (keras' policy keeps
    their weights float32); the residual stream, the 1x1 logit update and the seed it is added to stay
    float32: logits near the 0.9/0.95 thresholds need more than bfloat16's 8 bits of mantissa, and a
    stream summed in bfloat16 over the modules loses each module's small correction to rounding.
    """
    import tensorflow as tf

    def kernel_init(name):
        # a seeded keras initializer draws the same values on every call: one seed per layer
        layer_seed = zlib.crc32(f"{seed}/{name}".encode()) & 0x7FFFFFFF
        if init == "glorot_uniform":
            return tf.keras.initializers.GlorotUniform(seed=layer_seed)
        return tf.keras.initializers.TruncatedNormal(stddev=init_stddev, seed=layer_seed)

    def conv(name, activation=None, size=3, filters=features, dtype=precision):
        return tf.keras.layers.Conv3D(filters, size, padding="same", activation=activation, dtype=dtype,
                                      kernel_initializer=kernel_init(name), bias_initializer="zeros", name=name)

    inputs = tf.keras.Input(shape=(*fov, 2), name="image_and_seed")
    seed_logits = inputs[..., 1:2]
    x = conv("conv0_a", "relu")(inputs)
    x = conv("conv0_b")(x)
    for i in range(1, depth):
        y = tf.nn.relu(x)
        y = conv(f"conv{i}_a", "relu")(y)
        y = conv(f"conv{i}_b")(y)
        # x - (-y) is x + y bit for bit. Written `x + y`, Grappler's remapper (with oneDNN on) tries
        # to fuse conv+bias+add along the residual stream, fails ("Mutation::Apply error") and drops
        # every fusion of that graph; the arithmetic optimizer turns this back into an add after the
        # remapper has fused conv+bias(+relu). One Lambda keeps the layer and weight lists unchanged.
        x = tf.keras.layers.Lambda(lambda t: t[0] - (-t[1]), name=f"residual{i}", dtype="float32")([x, y])
    update = conv("conv_lom", size=1, filters=1, dtype="float32")(tf.nn.relu(x))
    return tf.keras.Model(inputs, seed_logits + update, name="convstack_3d")


def param_count(depth, features):
    """Trainable parameters of convstack_3d, without building it (638,433 at depth 12 x 32)."""
    conv = 27 * features * features + features
    return (27 * 2 * features + features) + conv * (1 + 2 * (depth - 1)) + (features + 1)


def weights_per_voxel(depth, features):
    """Multiply-accumulates per output voxel of one forward pass (biases ignored)."""
    return 27 * 2 * features + 27 * features * features * (1 + 2 * (depth - 1)) + features


def forward_flops_per_fov(fov, depth, features):
    """FLOPs of one prediction: 2 * voxels * MACs per voxel (45.8 GFLOP for FIB-25's 33^3 x 12 x 32)."""
    return 2 * int(np.prod(fov)) * weights_per_voxel(depth, features)


def train_flops_per_fov(fov, depth, features):
    """Training FLOPs per FOV: the forward pass times 3 for forward plus backward (the backward pass
    costs about twice the forward: gradients for activations and for weights)."""
    return 3 * forward_flops_per_fov(fov, depth, features)
