"""facenet-pytorch ``InceptionResnetV1`` (``models/inception_resnet_v1.py``) in Flax NNX.

This is the FaceNet used by AMT-GAN, CLIP2Protect and DiffAM as
``InceptionResnetV1(num_classes=8631)`` with ``classify=False``: 160x160 RGB in, the 512-d
``last_bn`` output L2-normalised out.

Attribute names mirror the torch module tree, so every torch state-dict key is an NNX state path:
``conv2d_{1a,2a,2b,3b,4a,4b}.{conv,bn}``, ``repeat_1[i]`` (Block35), ``mixed_6a``, ``repeat_2[i]``
(Block17), ``mixed_7a``, ``repeat_3[i]`` (Block8), ``block8``, ``last_linear``, ``last_bn`` and,
when the variant has classes, ``logits``. Inside a block, ``branchK`` is one BasicConv2d or a list
of them (torch's ``nn.Sequential``, keys ``branchK.J.conv.weight``) and ``conv2d`` is the biased
1x1 up-projection. Pools, ReLUs, dropout and softmax have no weights and are functions here;
dropout is the identity at inference.

Layout is NHWC throughout. Unlike IResNet's ``fc``, no weight needs permuting: ``avgpool_1a``
reduces the map to 1x1 before the flatten, so NCHW and NHWC flatten to the same vector and
``last_linear`` is a plain transpose (the generic converter rule, hence no ``torch_overrides``).
Branch outputs are concatenated on the channel axis in torch's order, so ``conv2d`` weights
also convert unchanged.

Typical use (weights are arguments, the network is a definition)::

    params = convert_state_dict(load_checkpoint("20180402-114759-vggface2.pt"),
                                "facenet", "vggface2")
    embed = make_embed("vggface2")              # EmbedFn: embed(params, images)
    emb = jax.jit(embed)(params, images)        # (N, 160, 160, 3) RGB [0, 1] -> (N, 512)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from ..typing import Image, Params
from .common import Architecture, StagedNet, face_input
from .layers import BatchNorm, Conv2d, Linear, Pair, max_pool2d

__all__ = [
    "INPUT_SIZE",
    "STAGES",
    "VARIANTS",
    "BasicConv2d",
    "Block8",
    "Block17",
    "Block35",
    "FaceNetConfig",
    "InceptionResnetV1",
    "Mixed_6a",
    "Mixed_7a",
    "build",
    "get_config",
    "init",
    "make_embed",
    "make_logits",
    "preprocess",
]

INPUT_SIZE = (160, 160)

# The TensorFlow-trained weights (davidsandberg/facenet) were ported with TF's BN epsilon.
BN_EPS = 1e-3

# The body after the stem, in execution order; each name is an attribute of the network.
STAGES = ("repeat_1", "mixed_6a", "repeat_2", "mixed_7a", "repeat_3", "block8")


@dataclass(frozen=True)
class FaceNetConfig:
    """Depth and classifier size of one InceptionResnetV1; the widths are fixed by the design.

    Attributes:
      repeats: Block35, Block17 and Block8 counts in ``repeat_1..3`` (released models: 5, 10, 5).
      num_classes: rows of the ``logits`` classifier the checkpoint carries (VGGFace2: 8631,
        CASIA-WebFace: 10575), or None for a checkpoint without one.
      input_size: square input side the preprocessing insists on (160, as the weights expect).
    """

    repeats: tuple[int, int, int] = (5, 10, 5)
    num_classes: int | None = None
    input_size: int = INPUT_SIZE[0]

    @property
    def num_features(self) -> int:
        """Embedding length (``last_linear``/``last_bn`` width), fixed by the design."""
        return 512


VARIANTS: dict[str, FaceNetConfig] = {
    # Not a released model: one block per repeat and a small classifier, for fast tests.
    "tiny": FaceNetConfig(repeats=(1, 1, 1), num_classes=16),
    "vggface2": FaceNetConfig(num_classes=8631),
    "casia-webface": FaceNetConfig(num_classes=10575),
    # A backbone saved without its classifier (facenet-pytorch built with classify=False and
    # no pretrained weights has no logits.* keys).
    "features": FaceNetConfig(num_classes=None),
}


class BasicConv2d(nnx.Module):
    """Unbiased convolution, BatchNorm (eps 1e-3), ReLU: facenet-pytorch's ``BasicConv2d``."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: Pair,
        stride: Pair = 1,
        padding: Pair = 0,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        self.conv = Conv2d(
            in_planes, out_planes, kernel_size, stride=stride, padding=padding, rngs=rngs
        )
        self.bn = BatchNorm(out_planes, eps=BN_EPS)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, C_in) -> (N, H', W', C_out)."""
        return jax.nn.relu(self.bn(self.conv(x)))


def _chain(layers: nnx.List, x: jax.Array) -> jax.Array:
    for layer in layers:
        x = layer(x)
    return x


class _Residual(nnx.Module):
    """Shared tail of Block35/17/8: concat branches, biased 1x1 ``conv2d``, scaled residual."""

    scale: float
    relu: bool

    def _merge(self, x: jax.Array, branches: list[jax.Array]) -> jax.Array:
        out = self.conv2d(jnp.concatenate(branches, axis=-1))
        out = out * self.scale + x  # torch's order of operations, for rounding parity
        return jax.nn.relu(out) if self.relu else out


class Block35(_Residual):
    """Inception-ResNet-A on the 35x35-grid stage (17x17 here at 160 input), 256 channels."""

    def __init__(self, scale: float = 1.0, *, rngs: nnx.Rngs) -> None:
        self.scale, self.relu = scale, True
        self.branch0 = BasicConv2d(256, 32, 1, rngs=rngs)
        self.branch1 = nnx.List(
            [BasicConv2d(256, 32, 1, rngs=rngs), BasicConv2d(32, 32, 3, padding=1, rngs=rngs)]
        )
        self.branch2 = nnx.List(
            [
                BasicConv2d(256, 32, 1, rngs=rngs),
                BasicConv2d(32, 32, 3, padding=1, rngs=rngs),
                BasicConv2d(32, 32, 3, padding=1, rngs=rngs),
            ]
        )
        self.conv2d = Conv2d(96, 256, 1, bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, 256) -> (N, H, W, 256)."""
        branches = [self.branch0(x), _chain(self.branch1, x), _chain(self.branch2, x)]
        return self._merge(x, branches)


class Block17(_Residual):
    """Inception-ResNet-B, 896 channels, with factorised 1x7 / 7x1 convolutions."""

    def __init__(self, scale: float = 1.0, *, rngs: nnx.Rngs) -> None:
        self.scale, self.relu = scale, True
        self.branch0 = BasicConv2d(896, 128, 1, rngs=rngs)
        self.branch1 = nnx.List(
            [
                BasicConv2d(896, 128, 1, rngs=rngs),
                BasicConv2d(128, 128, (1, 7), padding=(0, 3), rngs=rngs),
                BasicConv2d(128, 128, (7, 1), padding=(3, 0), rngs=rngs),
            ]
        )
        self.conv2d = Conv2d(256, 896, 1, bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, 896) -> (N, H, W, 896)."""
        return self._merge(x, [self.branch0(x), _chain(self.branch1, x)])


class Block8(_Residual):
    """Inception-ResNet-C, 1792 channels, 1x3 / 3x1 convolutions.

    ``no_relu`` is torch's ``noReLU``: the final ``block8`` leaves its sum un-rectified.
    """

    def __init__(self, scale: float = 1.0, no_relu: bool = False, *, rngs: nnx.Rngs) -> None:
        self.scale, self.relu = scale, not no_relu
        self.branch0 = BasicConv2d(1792, 192, 1, rngs=rngs)
        self.branch1 = nnx.List(
            [
                BasicConv2d(1792, 192, 1, rngs=rngs),
                BasicConv2d(192, 192, (1, 3), padding=(0, 1), rngs=rngs),
                BasicConv2d(192, 192, (3, 1), padding=(1, 0), rngs=rngs),
            ]
        )
        self.conv2d = Conv2d(384, 1792, 1, bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, 1792) -> (N, H, W, 1792)."""
        return self._merge(x, [self.branch0(x), _chain(self.branch1, x)])


class Mixed_6a(nnx.Module):
    """Reduction-A: 256 -> 896 channels (384 + 256 + 256 pooled), halves the grid."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.branch0 = BasicConv2d(256, 384, 3, stride=2, rngs=rngs)
        self.branch1 = nnx.List(
            [
                BasicConv2d(256, 192, 1, rngs=rngs),
                BasicConv2d(192, 192, 3, padding=1, rngs=rngs),
                BasicConv2d(192, 256, 3, stride=2, rngs=rngs),
            ]
        )
        # branch2 is a weightless MaxPool2d(3, stride=2).

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, 256) -> (N, (H-3)//2+1, (W-3)//2+1, 896)."""
        branches = [self.branch0(x), _chain(self.branch1, x), max_pool2d(x, 3, 2)]
        return jnp.concatenate(branches, axis=-1)


class Mixed_7a(nnx.Module):
    """Reduction-B: 896 -> 1792 channels (384 + 256 + 256 + 896 pooled), halves the grid."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.branch0 = nnx.List(
            [BasicConv2d(896, 256, 1, rngs=rngs), BasicConv2d(256, 384, 3, stride=2, rngs=rngs)]
        )
        self.branch1 = nnx.List(
            [BasicConv2d(896, 256, 1, rngs=rngs), BasicConv2d(256, 256, 3, stride=2, rngs=rngs)]
        )
        self.branch2 = nnx.List(
            [
                BasicConv2d(896, 256, 1, rngs=rngs),
                BasicConv2d(256, 256, 3, padding=1, rngs=rngs),
                BasicConv2d(256, 256, 3, stride=2, rngs=rngs),
            ]
        )
        # branch3 is a weightless MaxPool2d(3, stride=2).

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, 896) -> (N, (H-3)//2+1, (W-3)//2+1, 1792)."""
        branches = [
            _chain(self.branch0, x),
            _chain(self.branch1, x),
            _chain(self.branch2, x),
            max_pool2d(x, 3, 2),
        ]
        return jnp.concatenate(branches, axis=-1)


class InceptionResnetV1(StagedNet):
    """facenet-pytorch InceptionResnetV1; ``__call__`` returns the raw (un-normalised) ``last_bn``.

    ``stem``, ``stage`` and ``head`` expose the pieces so parity can be checked layer by layer;
    ``classify`` applies the optional ``logits`` classifier.

    Args:
      config: repeat counts and classifier size (see :data:`VARIANTS`).
      rngs: key source for the throwaway initial weights (real ones come from conversion).
    """

    stage_order = STAGES

    def __init__(self, config: FaceNetConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
        self.conv2d_2a = BasicConv2d(32, 32, 3, rngs=rngs)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
        self.conv2d_3b = BasicConv2d(64, 80, 1, rngs=rngs)
        self.conv2d_4a = BasicConv2d(80, 192, 3, rngs=rngs)
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2, rngs=rngs)
        n1, n2, n3 = config.repeats
        self.repeat_1 = nnx.List([Block35(0.17, rngs=rngs) for _ in range(n1)])
        self.mixed_6a = Mixed_6a(rngs=rngs)
        self.repeat_2 = nnx.List([Block17(0.10, rngs=rngs) for _ in range(n2)])
        self.mixed_7a = Mixed_7a(rngs=rngs)
        self.repeat_3 = nnx.List([Block8(0.20, rngs=rngs) for _ in range(n3)])
        self.block8 = Block8(no_relu=True, rngs=rngs)
        self.last_linear = Linear(1792, 512, bias=False, rngs=rngs)
        self.last_bn = BatchNorm(512, eps=BN_EPS)
        # The embedding never uses ``logits``, but the released checkpoints (and AMT-GAN's
        # facenet.pth) carry it, and the converter rejects unused keys rather than dropping them.
        self.logits = (
            Linear(512, config.num_classes, rngs=rngs) if config.num_classes is not None else None
        )

    def stem(self, x: jax.Array) -> jax.Array:
        """(N, 160, 160, 3) normalised input -> (N, 17, 17, 256): conv2d_1a .. conv2d_4b."""
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = max_pool2d(x, 3, 2)  # maxpool_3a
        return self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(x)))

    def stage(self, name: str, x: jax.Array) -> jax.Array:
        """Run one of :data:`STAGES` (a repeat list or a single block) on NHWC ``x``."""
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; known: {STAGES}")
        part = getattr(self, name)
        return _chain(part, x) if isinstance(part, nnx.List) else part(x)

    def head(self, x: jax.Array) -> jax.Array:
        """(N, h, w, 1792) ``block8`` output -> (N, 512) raw ``last_bn`` output.

        ``avgpool_1a`` (AdaptiveAvgPool2d(1)) is a mean over h and w; dropout is the identity.
        """
        return self.last_bn(self.last_linear(jnp.mean(x, axis=(1, 2))))

    def classify(self, x: jax.Array) -> jax.Array:
        """(N, 160, 160, 3) normalised input -> (N, num_classes) logits (no softmax).

        As facenet-pytorch 2.x with ``classify=True``: ``logits`` reads the raw ``last_bn``
        output, not the normalised embedding.
        """
        if self.logits is None:
            raise ValueError("this FaceNet variant has no logits classifier (num_classes=None)")
        return self.logits(self(x))


def preprocess(images: Image, input_size: int = INPUT_SIZE[0]) -> jax.Array:
    """facenet-pytorch ``fixed_image_standardization``: RGB [0, 1] -> ``(x * 255 - 127.5) / 128``.

    Args:
      images: (N, S, S, 3) RGB faces in [0, 1].
      input_size: the expected side S (160 for the released weights).
    """
    hint = f"; resize them to {input_size}x{input_size} first"
    return face_input(images, input_size, "FaceNet", aligned=False, divisor=128.0, hint=hint)


ARCH = Architecture("FaceNet", InceptionResnetV1, FaceNetConfig, VARIANTS, preprocess=preprocess)
get_config, build, init, make_embed = ARCH.get_config, ARCH.build, ARCH.init, ARCH.make_embed


def make_logits(variant: str | FaceNetConfig) -> Callable[[Params, Image], jax.Array]:
    """``logits(params, images)``: (N, 160, 160, 3) RGB [0, 1] -> (N, num_classes), not jitted.

    Raises:
      ValueError: if the variant has no classifier.
    """
    config = get_config(variant)
    if config.num_classes is None:
        raise ValueError("this FaceNet variant has no logits classifier (num_classes=None)")
    graphdef, _ = build(config)

    def logits(params: Params, images: Image) -> jax.Array:
        return nnx.merge(graphdef, params).classify(preprocess(images, config.input_size))

    return logits
