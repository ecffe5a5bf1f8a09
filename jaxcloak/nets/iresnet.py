"""insightface arcface_torch IResNet (``backbones/iresnet.py``) as a Flax NNX definition.

Attribute names mirror the torch module tree, so every torch state-dict key is an NNX state
path: ``conv1, bn1, prelu, layer1..layer4[i].{bn1, conv1, bn2, prelu, conv2, bn3,
downsample[0] (conv), downsample[1] (bn)}, bn2, fc, features``. ``dropout`` has no weights and is
the identity at inference, so it is left out.

Layout is NHWC throughout. The one place that matters is the flatten before ``fc``: torch
flattens an NCHW map (index ``c*H*W + h*W + w``), we flatten NHWC (``(h*W + w)*C + c``). Rather
than transposing activations on every call, :mod:`jaxcloak.convert.torch` permutes the rows of
``fc.weight`` once at conversion (:func:`fc_rows_from_torch`).

Typical use (weights are arguments, the network is a definition)::

    graphdef, params = build("r50")             # abstract params: shapes only
    params = convert_state_dict(load_checkpoint("backbone.pth"), "iresnet", "r50")
    embed = make_embed("r50")                   # EmbedFn: embed(params, images)
    emb = jax.jit(embed)(params, images)        # (N, 112, 112, 3) RGB [0, 1] -> (N, 512)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx

from ..typing import Image
from .common import Architecture, StagedNet, face_input, stride2_side
from .layers import BatchNorm, Conv2d, Linear, PReLU

__all__ = [
    "INPUT_SIZE",
    "VARIANTS",
    "IBasicBlock",
    "IResNet",
    "IResNetConfig",
    "build",
    "fc_rows_from_torch",
    "make_embed",
    "preprocess",
    "torch_overrides",
]

INPUT_SIZE = (112, 112)


@dataclass(frozen=True)
class IResNetConfig:
    """Depth and width of one IResNet.

    Attributes:
      layers: blocks per stage (four stages, each starting with a stride-2 block).
      widths: channels per stage (arcface_torch: 64, 128, 256, 512).
      num_features: embedding length (the width of ``fc`` and ``features``).
      input_size: square input side; fixes the ``fc`` input (7x7 for 112).
    """

    layers: tuple[int, int, int, int]
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    num_features: int = 512
    input_size: int = INPUT_SIZE[0]

    @property
    def final_side(self) -> int:
        """Spatial side entering ``fc``: four 3x3/stride-2/pad-1 convolutions."""
        return stride2_side(self.input_size)


VARIANTS: dict[str, IResNetConfig] = {
    # Not a released model: a narrow, one-block-per-stage net for fast tests.
    "tiny": IResNetConfig(layers=(1, 1, 1, 1), widths=(16, 32, 48, 64), num_features=128),
    "r18": IResNetConfig(layers=(2, 2, 2, 2)),
    "r34": IResNetConfig(layers=(3, 4, 6, 3)),
    "r50": IResNetConfig(layers=(3, 4, 14, 3)),
    "r100": IResNetConfig(layers=(3, 13, 30, 3)),
    "r200": IResNetConfig(layers=(6, 26, 60, 6)),
}


class IBasicBlock(nnx.Module):
    """BN-conv-BN-PReLU-conv(stride)-BN plus an identity or 1x1-conv/BN shortcut.

    As in arcface_torch the stride sits on ``conv2``, not ``conv1``.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs) -> None:
        self.bn1 = BatchNorm(inplanes)
        self.conv1 = Conv2d(inplanes, planes, 3, padding=1, rngs=rngs)
        self.bn2 = BatchNorm(planes)
        self.prelu = PReLU(planes)
        self.conv2 = Conv2d(planes, planes, 3, stride=stride, padding=1, rngs=rngs)
        self.bn3 = BatchNorm(planes)
        # A list, like torch's nn.Sequential, so the keys are downsample.0 / downsample.1.
        self.downsample = (
            nnx.List([Conv2d(inplanes, planes, 1, stride=stride, rngs=rngs), BatchNorm(planes)])
            if stride != 1 or inplanes != planes
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, C_in) -> (N, H/stride, W/stride, C_out)."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x
        if self.downsample is not None:
            conv, bn = self.downsample
            identity = bn(conv(x))
        return out + identity


class IResNet(StagedNet):
    """arcface_torch IResNet; ``__call__`` returns the raw (un-normalised) ``features`` output.

    ``stem``, ``stage`` and ``head`` expose the pieces so parity can be checked layer by layer.

    Args:
      config: depth and widths (see :data:`VARIANTS`).
      rngs: key source for the throwaway initial weights (real ones come from conversion).
    """

    def __init__(self, config: IResNetConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        w = config.widths
        self.conv1 = Conv2d(3, w[0], 3, padding=1, rngs=rngs)
        self.bn1 = BatchNorm(w[0])
        self.prelu = PReLU(w[0])
        inplanes = w[0]
        stages = []
        for planes, blocks in zip(w, config.layers, strict=True):
            stage = [IBasicBlock(inplanes, planes, stride=2, rngs=rngs)]
            stage += [IBasicBlock(planes, planes, rngs=rngs) for _ in range(1, blocks)]
            stages.append(nnx.List(stage))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = BatchNorm(w[3])
        self.fc = Linear(w[3] * config.final_side**2, config.num_features, rngs=rngs)
        self.features = BatchNorm(config.num_features)

    def stem(self, x: jax.Array) -> jax.Array:
        """(N, H, W, 3) normalised input -> (N, H, W, widths[0])."""
        return self.prelu(self.bn1(self.conv1(x)))

    def stage(self, index: int, x: jax.Array) -> jax.Array:
        """Run ``layer{index}`` (1..4): halves H and W."""
        for block in (self.layer1, self.layer2, self.layer3, self.layer4)[index - 1]:
            x = block(x)
        return x

    def head(self, x: jax.Array) -> jax.Array:
        """(N, 7, 7, widths[3]) -> (N, num_features); flattens NHWC (see the module docstring)."""
        x = self.bn2(x)
        x = x.reshape(x.shape[0], -1)
        return self.features(self.fc(x))


def preprocess(images: Image, input_size: int = INPUT_SIZE[0]) -> jax.Array:
    """insightface arcface normalisation: RGB [0, 1] -> ``(x * 255 - 127.5) / 127.5``.

    Args:
      images: (N, S, S, 3) aligned RGB faces in [0, 1].
      input_size: the expected side S.
    """
    return face_input(images, input_size, "IResNet")


ARCH = Architecture("IResNet", IResNet, IResNetConfig, VARIANTS, preprocess=preprocess)
get_config, build, init, make_embed = ARCH.get_config, ARCH.build, ARCH.init, ARCH.make_embed


def fc_rows_from_torch(channels: int, side: int) -> Callable[[np.ndarray], np.ndarray]:
    """Transform torch ``fc.weight`` (out, C*H*W in NCHW order) to ours (H*W*C in NHWC, out).

    Args:
      channels: C, the width of the last stage.
      side: H = W, the spatial side entering ``fc``.
    """

    def transform(weight: np.ndarray) -> np.ndarray:
        out = weight.shape[0]
        w = weight.reshape(out, channels, side, side)  # (O, C, H, W)
        return w.transpose(2, 3, 1, 0).reshape(side * side * channels, out)  # (HWC, O)

    return transform


def torch_overrides(variant: str | IResNetConfig) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Conversion rules beyond the generic ones: ``fc.weight`` rows to NHWC-flatten order."""
    config = get_config(variant)
    return {"fc.weight": fc_rows_from_torch(config.widths[3], config.final_side)}
