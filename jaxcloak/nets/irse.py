"""IR / IR-SE ResNets ("Backbone" of TreB1eN InsightFace_Pytorch and face.evoLVe) in Flax NNX.

The same layout is shipped as AdvCloak's surrogate (``model_irse.py:IR_50``), AMT-GAN / DiffAM's
``ir152.IR_152`` and ``irse.Backbone(50, 0.6, 'ir_se')``, and pSp's ID-loss network.

Attribute names mirror the torch module tree, so every torch state-dict key is an NNX state path:

* ``input_layer.{0: conv, 1: bn, 2: prelu}``;
* ``body.<i>`` for every unit, flattened over the four stages (IR-50: ``body.0`` .. ``body.23``),
  each ``shortcut_layer.{0: conv, 1: bn}`` (absent when it is ``MaxPool2d(1, stride)``) and
  ``res_layer.{0: bn, 1: conv, 2: prelu, 3: conv(stride), 4: bn[, 5: SEModule(fc1, fc2)]}``;
* ``output_layer.{0: bn2d, 3: linear, 4: bn1d}``; indices 1 (Dropout) and 2 (Flatten) hold no
  weights and are ``None`` placeholders, so the surviving indices line up with torch's.

Layout is NHWC throughout. As in :mod:`jaxcloak.nets.iresnet`, torch flattens an NCHW map before
``output_layer.3``; conversion permutes that layer's rows once
(:func:`jaxcloak.nets.iresnet.fc_rows_from_torch`) instead of transposing activations per call.

Unlike arcface_torch's IResNet, the stride sits on the *second* 3x3 conv of the residual branch
and a unit whose channels do not change subsamples its shortcut with ``MaxPool2d(1, stride)``,
i.e. plain strided picking (stage 1's first unit, 64 -> 64 at stride 2).

Typical use (weights are arguments, the network is a definition)::

    params = convert_state_dict(load_checkpoint("model_ir_se50.pth"), "irse", "irse50")
    embed = make_embed("irse50")                # EmbedFn: embed(params, images)
    emb = jax.jit(embed)(params, images)        # (N, 112, 112, 3) RGB [0, 1] -> (N, 512)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..typing import Image
from .common import Architecture, StagedNet, face_input, stride2_side
from .iresnet import fc_rows_from_torch
from .layers import BatchNorm, Conv2d, Linear, PReLU, max_pool2d

__all__ = [
    "INPUT_SIZE",
    "SE_REDUCTION",
    "STAGE_UNITS",
    "VARIANTS",
    "Backbone",
    "BottleneckIR",
    "IRSEConfig",
    "SEModule",
    "build",
    "get_config",
    "init",
    "make_embed",
    "preprocess",
    "torch_overrides",
]

INPUT_SIZE = (112, 112)

# Channel reduction of every SEModule (hard-coded in the originals).
SE_REDUCTION = 16

# ``num_layers`` -> units per stage, as in the originals' ``get_blocks``.
STAGE_UNITS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}


@dataclass(frozen=True)
class IRSEConfig:
    """Depth, width and unit type of one IR / IR-SE backbone.

    Attributes:
      layers: units per stage (four stages, each starting with a stride-2 unit).
      widths: channels per stage (originals: 64, 128, 256, 512); ``widths[0]`` is also the
        width of ``input_layer``, so stage 1's first unit keeps its channels.
      mode: ``"ir"`` (plain units) or ``"ir_se"`` (units ending in a squeeze-excitation).
      num_features: embedding length (the width of ``output_layer.3`` and ``.4``).
      input_size: square input side; fixes the ``output_layer.3`` input (7x7 for 112).
    """

    layers: tuple[int, int, int, int]
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    mode: Literal["ir", "ir_se"] = "ir"
    num_features: int = 512
    input_size: int = INPUT_SIZE[0]

    def __post_init__(self) -> None:
        if self.mode not in ("ir", "ir_se"):
            raise ValueError(f"mode must be 'ir' or 'ir_se', got {self.mode!r}")
        if self.mode == "ir_se" and min(self.widths) < SE_REDUCTION:
            raise ValueError(f"IR-SE widths must be >= {SE_REDUCTION}, got {self.widths}")

    @property
    def final_side(self) -> int:
        """Spatial side entering ``output_layer``: four stride-2 units (3x3/pad 1 or 1x1)."""
        return stride2_side(self.input_size)

    def units(self) -> list[tuple[int, int, int]]:
        """``(in_channel, depth, stride)`` of every ``body`` unit, in order (``get_blocks``)."""
        out = []
        in_channel = self.widths[0]
        for depth, count in zip(self.widths, self.layers, strict=True):
            out.append((in_channel, depth, 2))
            out += [(depth, depth, 1)] * (count - 1)
            in_channel = depth
        return out


VARIANTS: dict[str, IRSEConfig] = {
    # Not released models: narrow, one-unit-per-stage nets for fast tests. Widths are multiples
    # of 16 so the SE bottleneck (channels // 16) keeps at least one channel.
    "ir_tiny": IRSEConfig(layers=(1, 1, 1, 1), widths=(16, 32, 48, 64), num_features=128),
    "irse_tiny": IRSEConfig(
        layers=(1, 1, 1, 1), widths=(16, 32, 48, 64), mode="ir_se", num_features=128
    ),
    "ir50": IRSEConfig(layers=STAGE_UNITS[50]),
    "ir100": IRSEConfig(layers=STAGE_UNITS[100]),
    "ir152": IRSEConfig(layers=STAGE_UNITS[152]),
    "irse50": IRSEConfig(layers=STAGE_UNITS[50], mode="ir_se"),
    "irse100": IRSEConfig(layers=STAGE_UNITS[100], mode="ir_se"),
    "irse152": IRSEConfig(layers=STAGE_UNITS[152], mode="ir_se"),
}


class SEModule(nnx.Module):
    """Squeeze-excitation: ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))``; fc1/fc2 are 1x1 convs.

    Kept as convolutions (not linears) so the weights are 4-d, as in torch, and convert with the
    generic OIHW -> HWIO rule.
    """

    def __init__(self, channels: int, reduction: int = SE_REDUCTION, *, rngs: nnx.Rngs) -> None:
        self.fc1 = Conv2d(channels, channels // reduction, 1, rngs=rngs)
        self.fc2 = Conv2d(channels // reduction, channels, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, C) -> (N, H, W, C)."""
        s = jnp.mean(x, axis=(1, 2), keepdims=True)  # AdaptiveAvgPool2d(1): (N, 1, 1, C)
        return x * jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(s))))


class BottleneckIR(nnx.Module):
    """``bottleneck_IR`` (``se=False``) or ``bottleneck_IR_SE`` (``se=True``).

    ``res_layer``: BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN [-> SE]; ``shortcut_layer``:
    ``MaxPool2d(1, stride)`` when ``in_channel == depth`` (stored as ``None``: no weights), else
    conv1x1(stride) -> BN. Output ``res + shortcut``.
    """

    def __init__(
        self, in_channel: int, depth: int, stride: int, *, se: bool = False, rngs: nnx.Rngs
    ) -> None:
        self.stride = stride
        # Lists, like torch's nn.Sequential, so the keys are shortcut_layer.0 / res_layer.3 etc.
        self.shortcut_layer = (
            None
            if in_channel == depth
            else nnx.List(
                [Conv2d(in_channel, depth, 1, stride=stride, rngs=rngs), BatchNorm(depth)]
            )
        )
        res = [
            BatchNorm(in_channel),
            Conv2d(in_channel, depth, 3, padding=1, rngs=rngs),
            PReLU(depth),
            Conv2d(depth, depth, 3, stride=stride, padding=1, rngs=rngs),
            BatchNorm(depth),
        ]
        if se:
            res.append(SEModule(depth, rngs=rngs))
        self.res_layer = nnx.List(res)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, in_channel) -> (N, ceil(H/stride), ceil(W/stride), depth)."""
        if self.shortcut_layer is None:
            shortcut = max_pool2d(x, 1, self.stride) if self.stride != 1 else x
        else:
            conv, bn = self.shortcut_layer
            shortcut = bn(conv(x))
        res = x
        for layer in self.res_layer:
            res = layer(res)
        return res + shortcut


class Backbone(StagedNet):
    """The IR / IR-SE backbone; ``__call__`` returns the raw (un-normalised) BN1d output.

    TreB1eN's ``Backbone.forward`` L2-normalises that output, face.evoLVe's and AMT-GAN's
    ``IR_152`` do not; :func:`make_embed` always does. ``stem``, ``stage`` and ``head`` expose the
    pieces so parity can be checked layer by layer.

    Args:
      config: depth, widths and unit type (see :data:`VARIANTS`).
      rngs: key source for the throwaway initial weights (real ones come from conversion).
    """

    def __init__(self, config: IRSEConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        w = config.widths
        self.input_layer = nnx.List(
            [Conv2d(3, w[0], 3, padding=1, rngs=rngs), BatchNorm(w[0]), PReLU(w[0])]
        )
        se = config.mode == "ir_se"
        self.body = nnx.List(
            [BottleneckIR(i, d, s, se=se, rngs=rngs) for i, d, s in config.units()]
        )
        # Dropout (1) and Flatten (2) have no weights; None keeps torch's indices 3 and 4.
        self.output_layer = nnx.List(
            [
                BatchNorm(w[3]),
                None,
                None,
                Linear(w[3] * config.final_side**2, config.num_features, rngs=rngs),
                BatchNorm(config.num_features),
            ]
        )

    def stem(self, x: jax.Array) -> jax.Array:
        """``input_layer``: (N, H, W, 3) normalised input -> (N, H, W, widths[0])."""
        for layer in self.input_layer:
            x = layer(x)
        return x

    def stage(self, index: int, x: jax.Array) -> jax.Array:
        """Run the ``body`` units of stage ``index`` (1..4): halves H and W."""
        start = sum(self.config.layers[: index - 1])
        for i in range(start, start + self.config.layers[index - 1]):
            x = self.body[i](x)
        return x

    def head(self, x: jax.Array) -> jax.Array:
        """``output_layer``: (N, 7, 7, widths[3]) -> (N, num_features); flattens NHWC."""
        bn2d, _, _, fc, bn1d = self.output_layer
        x = bn2d(x)
        x = x.reshape(x.shape[0], -1)  # Dropout is the identity at inference
        return bn1d(fc(x))


def preprocess(images: Image, input_size: int = INPUT_SIZE[0]) -> jax.Array:
    """RGB [0, 1] -> [-1, 1] as ``(x * 255 - 127.5) / 127.5`` (AMT-GAN / DiffAM / FaceCloak).

    AdvCloak trained its IR-50 surrogates with ``(x * 255 - 127.5) / 128``; the difference is a
    0.4 % input scale, which we do not model.

    Args:
      images: (N, S, S, 3) RGB faces in [0, 1].
      input_size: the expected side S.
    """
    return face_input(images, input_size, "IR/IR-SE")


ARCH = Architecture("IR/IR-SE", Backbone, IRSEConfig, VARIANTS, preprocess=preprocess)
get_config, build, init, make_embed = ARCH.get_config, ARCH.build, ARCH.init, ARCH.make_embed


def torch_overrides(variant: str | IRSEConfig) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Conversion rules beyond the generic ones: ``output_layer.3.weight`` rows to NHWC order."""
    config = get_config(variant)
    return {"output_layer.3.weight": fc_rows_from_torch(config.widths[3], config.final_side)}
