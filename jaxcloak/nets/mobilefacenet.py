"""MobileFaceNet as in TreB1eN InsightFace_Pytorch ``model.py`` (AMT-GAN/DiffAM ``irse.py``).

AMT-GAN and DiffAM load ``irse.MobileFaceNet(512)``, TreB1eN's network unchanged. Attribute
names mirror its torch module tree, so every state-dict key is an NNX state path::

    conv1, conv2_dw                               Conv_block: conv, bn, prelu
    conv_23, conv_34, conv_45                     Depth_Wise: conv, conv_dw (Conv_block),
                                                  project (Linear_block: conv, bn)
    conv_3, conv_4, conv_5                        Residual: model[i] (residual Depth_Wise)
    conv_6_sep (Conv_block), conv_6_dw (Linear_block), linear (no bias), bn (BatchNorm1d)

e.g. ``conv_3.model.0.conv_dw.conv.weight``. ``conv_6_flatten`` has no weights and is left out.

Layout is NHWC throughout. Unlike IResNet, no weight needs permuting: ``conv_6_dw`` (the
"global depthwise convolution", GDC) has a kernel as large as its 7x7 input, so it pools to
1x1 and the flatten before ``linear`` sees a ``(N, 1, 1, C)`` map, whose NHWC and NCHW flatten
orders coincide. :meth:`MobileFaceNet.head` checks that the map is 1x1.

The torch ``forward`` ends in ``l2_norm``; here ``__call__`` returns the raw ``bn`` output (like
:mod:`jaxcloak.nets.iresnet`) and :func:`make_embed` normalises it.

Typical use (weights are arguments, the network is a definition)::

    graphdef, params = build("mobilefacenet")   # abstract params: shapes only
    params = convert_state_dict(load_checkpoint("mobile_face.pth"), "mobilefacenet",
                                "mobilefacenet")
    embed = make_embed("mobilefacenet")         # EmbedFn: embed(params, images)
    emb = jax.jit(embed)(params, images)        # (N, 112, 112, 3) RGB [0, 1] -> (N, 512)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
from flax import nnx

from ..typing import Image
from .common import Architecture, StagedNet, face_input, stride2_side
from .layers import BatchNorm, Conv2d, Linear, PReLU

__all__ = [
    "INPUT_SIZE",
    "STAGES",
    "VARIANTS",
    "ConvBlock",
    "DepthWise",
    "LinearBlock",
    "MobileFaceNet",
    "MobileFaceNetConfig",
    "Residual",
    "build",
    "get_config",
    "init",
    "make_embed",
    "preprocess",
]

INPUT_SIZE = (112, 112)

# The six body pieces between the stem and the head, in order; the argument of ``stage``.
STAGES = ("conv_23", "conv_3", "conv_34", "conv_4", "conv_45", "conv_5")

Pair = int | tuple[int, int]


@dataclass(frozen=True)
class MobileFaceNetConfig:
    """Widths and depths of one MobileFaceNet (defaults: TreB1eN's ``MobileFaceNet(512)``).

    The body has three levels; level ``i`` is a stride-2 ``Depth_Wise`` (``conv_23``,
    ``conv_34``, ``conv_45``) followed by a ``Residual`` stack (``conv_3``, ``conv_4``,
    ``conv_5``). As in the original, a block's ``groups`` is its expanded width: the 1x1
    ``conv`` widens to it, the depthwise ``conv_dw`` runs at it, ``project`` narrows back.

    Attributes:
      stem_width: channels of ``conv1`` and ``conv2_dw`` (64).
      widths: output channels of each level (64, 128, 128).
      down_groups: expanded width of ``conv_23``, ``conv_34``, ``conv_45`` (128, 256, 512).
      res_groups: expanded width of the blocks of ``conv_3``, ``conv_4``, ``conv_5``
        (128, 256, 256).
      blocks: residual blocks in ``conv_3``, ``conv_4``, ``conv_5`` (4, 6, 2).
      sep_width: channels of ``conv_6_sep`` and the GDC ``conv_6_dw`` (512).
      embedding_size: output length (the width of ``linear`` and ``bn``).
      input_size: square input side; fixes the GDC kernel (7x7 for 112).
    """

    stem_width: int = 64
    widths: tuple[int, int, int] = (64, 128, 128)
    down_groups: tuple[int, int, int] = (128, 256, 512)
    res_groups: tuple[int, int, int] = (128, 256, 256)
    blocks: tuple[int, int, int] = (4, 6, 2)
    sep_width: int = 512
    embedding_size: int = 512
    input_size: int = INPUT_SIZE[0]

    @property
    def final_side(self) -> int:
        """Spatial side entering ``conv_6_dw``: four 3x3/stride-2/pad-1 convolutions."""
        return stride2_side(self.input_size)  # conv1, conv_23, conv_34, conv_45


VARIANTS: dict[str, MobileFaceNetConfig] = {
    # Not a released model: narrow, one block per Residual, every width distinct so that a
    # mixed-up channel axis shows up as a shape error. Still 112x112 in, 7x7 GDC.
    "tiny": MobileFaceNetConfig(
        stem_width=8,
        widths=(16, 24, 32),
        down_groups=(32, 48, 96),
        res_groups=(40, 56, 64),
        blocks=(1, 1, 1),
        sep_width=72,
        embedding_size=48,
    ),
    # AMT-GAN / DiffAM ``irse.MobileFaceNet(512)`` (TreB1eN InsightFace_Pytorch).
    "mobilefacenet": MobileFaceNetConfig(),
}


class LinearBlock(nnx.Module):
    """TreB1eN ``Linear_block``: bias-free conv then BatchNorm, no activation."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: Pair = 1,
        *,
        stride: Pair = 1,
        padding: Pair = 0,
        groups: int = 1,
        rngs: nnx.Rngs,
    ) -> None:
        self.conv = Conv2d(
            in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, rngs=rngs
        )
        self.bn = BatchNorm(out_c)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, in_c) -> (N, H', W', out_c)."""
        return self.bn(self.conv(x))


class ConvBlock(LinearBlock):
    """TreB1eN ``Conv_block``: a :class:`LinearBlock` followed by a per-channel PReLU.

    Takes :class:`LinearBlock`'s arguments (``stride``, ``padding``, ``groups``, ``rngs`` as
    keywords).
    """

    def __init__(self, in_c: int, out_c: int, kernel: Pair = 1, **conv: Any) -> None:
        super().__init__(in_c, out_c, kernel, **conv)
        self.prelu = PReLU(out_c)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, in_c) -> (N, H', W', out_c)."""
        return self.prelu(super().__call__(x))


class DepthWise(nnx.Module):
    """TreB1eN ``Depth_Wise``: 1x1 expand to ``groups``, depthwise conv, linear 1x1 project.

    Args:
      in_c: input channels.
      out_c: output channels.
      residual: add the input to the output (needs ``in_c == out_c`` and stride 1).
      kernel, stride, padding: of the depthwise ``conv_dw``.
      groups: the expanded width (the original's name; ``conv_dw`` is depthwise over it).
      rngs: key source for the throwaway initial weights.
    """

    def __init__(
        self,
        in_c: int,
        out_c: int,
        *,
        residual: bool = False,
        kernel: Pair = 3,
        stride: Pair = 2,
        padding: Pair = 1,
        groups: int,
        rngs: nnx.Rngs,
    ) -> None:
        if residual and (in_c != out_c or stride not in (1, (1, 1))):
            raise ValueError(f"residual Depth_Wise needs in_c == out_c and stride 1 ({in_c=})")
        self.conv = ConvBlock(in_c, groups, 1, rngs=rngs)
        self.conv_dw = ConvBlock(
            groups, groups, kernel, stride=stride, padding=padding, groups=groups, rngs=rngs
        )
        self.project = LinearBlock(groups, out_c, 1, rngs=rngs)
        self.residual = residual

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, in_c) -> (N, H/stride, W/stride, out_c)."""
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nnx.Module):
    """TreB1eN ``Residual``: ``model`` is a list of residual stride-1 :class:`DepthWise`."""

    def __init__(self, c: int, num_block: int, groups: int, *, rngs: nnx.Rngs) -> None:
        # A list, like torch's nn.Sequential, so the keys are model.0, model.1, ...
        self.model = nnx.List(
            [
                DepthWise(c, c, residual=True, stride=1, groups=groups, rngs=rngs)
                for _ in range(num_block)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, c) -> (N, H, W, c)."""
        for block in self.model:
            x = block(x)
        return x


class MobileFaceNet(StagedNet):
    """MobileFaceNet; ``__call__`` returns the raw ``bn`` output (torch then applies l2_norm).

    ``stem``, ``stage`` and ``head`` expose the pieces so parity can be checked layer by layer.

    Args:
      config: widths and depths (see :data:`VARIANTS`).
      rngs: key source for the throwaway initial weights (real ones come from conversion).
    """

    stage_order = STAGES

    def __init__(self, config: MobileFaceNetConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        c = config
        self.conv1 = ConvBlock(3, c.stem_width, 3, stride=2, padding=1, rngs=rngs)
        self.conv2_dw = ConvBlock(
            c.stem_width, c.stem_width, 3, padding=1, groups=c.stem_width, rngs=rngs
        )
        ins = (c.stem_width, *c.widths[:2])
        downs = [
            DepthWise(i, o, groups=g, rngs=rngs)
            for i, o, g in zip(ins, c.widths, c.down_groups, strict=True)
        ]
        res = [
            Residual(o, n, g, rngs=rngs)
            for o, n, g in zip(c.widths, c.blocks, c.res_groups, strict=True)
        ]
        self.conv_23, self.conv_34, self.conv_45 = downs
        self.conv_3, self.conv_4, self.conv_5 = res
        self.conv_6_sep = ConvBlock(c.widths[2], c.sep_width, 1, rngs=rngs)
        # GDC: a linear depthwise conv whose kernel covers the whole final map (7x7 for 112).
        self.conv_6_dw = LinearBlock(
            c.sep_width, c.sep_width, c.final_side, groups=c.sep_width, rngs=rngs
        )
        self.linear = Linear(c.sep_width, c.embedding_size, bias=False, rngs=rngs)
        self.bn = BatchNorm(c.embedding_size)

    def stem(self, x: jax.Array) -> jax.Array:
        """(N, S, S, 3) normalised input -> (N, S/2, S/2, stem_width): ``conv1``, ``conv2_dw``."""
        return self.conv2_dw(self.conv1(x))

    def stage(self, name: str, x: jax.Array) -> jax.Array:
        """Run one body piece by its torch name (one of :data:`STAGES`)."""
        if name not in STAGES:
            raise KeyError(f"unknown MobileFaceNet stage {name!r}; known: {STAGES}")
        return getattr(self, name)(x)

    def head(self, x: jax.Array) -> jax.Array:
        """(N, 7, 7, widths[2]) -> (N, embedding_size): conv_6_sep, GDC, flatten, linear, bn."""
        x = self.conv_6_dw(self.conv_6_sep(x))
        # NHWC and torch's NCHW flatten agree only for a 1x1 map; anything else would need
        # linear's rows permuted as IResNet's fc does.
        if x.shape[1:3] != (1, 1):
            raise ValueError(f"GDC should pool to 1x1, got {x.shape[1:3]}")
        return self.bn(self.linear(x.reshape(x.shape[0], -1)))


def preprocess(images: Image, input_size: int = INPUT_SIZE[0]) -> jax.Array:
    """AMT-GAN/DiffAM input range: RGB [0, 1] -> ``(x * 255 - 127.5) / 127.5`` in [-1, 1].

    TreB1eN's ``(x - 0.5) / 0.5`` on [0, 1] tensors is the same map.

    Args:
      images: (N, S, S, 3) RGB faces in [0, 1].
      input_size: the expected side S.
    """
    return face_input(images, input_size, "MobileFaceNet", aligned=False)


ARCH = Architecture(
    "MobileFaceNet", MobileFaceNet, MobileFaceNetConfig, VARIANTS, preprocess=preprocess
)
get_config, build, init, make_embed = ARCH.get_config, ARCH.build, ARCH.init, ARCH.make_embed
