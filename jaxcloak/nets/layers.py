"""Inference-only building blocks whose parameter names mirror ``torch.nn``.

Every layer here stores its arrays under the attribute names torch uses (``weight``, ``bias``,
``running_mean``, ``running_var``), so a torch state-dict key such as ``layer1.0.bn1.weight`` is
literally the NNX state path ``('layer1', 0, 'bn1', 'weight')``; conversion is then a string
mapping plus a per-kind transpose (see :mod:`jaxcloak.convert.torch`). Tensors are channel-last
(NHWC), the layout XLA prefers on every backend, so convolution kernels are HWIO and linear
weights are (in, out), the transposes of torch's OIHW and (out, in).

Nothing here trains: BatchNorm always uses its running statistics and there is no dropout.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..ops.conv import DEPTHWISE_MAX_TAPS, conv2d, depthwise_conv2d, depthwise_fits

__all__ = [
    "DEPTHWISE_MAX_TAPS",
    "BatchNorm",
    "Conv2d",
    "GroupNorm",
    "Linear",
    "PReLU",
    "depthwise_conv2d",
    "max_pool2d",
    "unit_rows",
]

Pair = int | tuple[int, int]


def _pair(v: Pair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


# No precision of our own: every matmul and convolution here takes JAX's default matmul
# precision, which the one precision policy (jaxcloak.precision) sets for Flax ports and
# converted graphs alike (float32 = true FP32; parity tests run under it).


class Conv2d(nnx.Module):
    """``torch.nn.Conv2d`` on NHWC input; ``weight`` is HWIO (torch: OIHW).

    Args:
      in_channels: input channels.
      out_channels: output channels.
      kernel_size: kernel side, or (height, width) as torch accepts.
      stride: stride, or (height, width).
      padding: symmetric zero padding per spatial side, or (height, width) (torch's ``padding``).
      groups: torch's ``groups``; ``groups == in_channels`` is a depthwise convolution.
        The HWIO kernel then has ``in_channels // groups`` input channels, exactly as torch's
        OIHW kernel does.
      bias: whether to add a per-channel bias.
      rngs: key source for the (throwaway) initial weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Pair,
        *,
        stride: Pair = 1,
        padding: Pair = 0,
        groups: int = 1,
        bias: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: channels {in_channels}->{out_channels} not divisible by groups {groups}"
            )
        kh, kw = _pair(kernel_size)
        shape = (kh, kw, in_channels // groups, out_channels)
        self.weight = nnx.Param(jax.nn.initializers.he_normal()(rngs.params(), shape))
        self.bias = nnx.Param(jnp.zeros((out_channels,))) if bias else None
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.groups = groups

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, C_in) -> (N, H', W', C_out)."""
        ph, pw = self.padding
        w = self.weight[...]
        kh, kw, _, c_out = w.shape
        pads = ((ph, ph), (pw, pw))
        if (
            1 < self.groups == x.shape[-1] == c_out
            and jax.default_backend() == "cpu"
            and depthwise_fits((kh, kw), self.stride, (1, 1), x.shape[1:3], pads)
        ):
            # Depthwise on CPU: XLA's grouped-conv path is several times slower than the
            # shifted-slices form (exact in the operands' dtype: no matmul precision involved).
            y = depthwise_conv2d(x, w[:, :, 0, :], self.stride, (1, 1), pads)
        else:
            y = conv2d(x, w, self.stride, pads, groups=self.groups)
        return y if self.bias is None else y + self.bias[...]


class Linear(nnx.Module):
    """``torch.nn.Linear``; ``weight`` is (in, out) (torch: (out, in)).

    Args:
      in_features: input width.
      out_features: output width.
      bias: whether to add a bias.
      rngs: key source for the (throwaway) initial weights.
    """

    def __init__(
        self, in_features: int, out_features: int, *, bias: bool = True, rngs: nnx.Rngs
    ) -> None:
        shape = (in_features, out_features)
        self.weight = nnx.Param(jax.nn.initializers.lecun_normal()(rngs.params(), shape))
        self.bias = nnx.Param(jnp.zeros((out_features,))) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., in) -> (..., out)."""
        y = jnp.matmul(x, self.weight[...])
        return y if self.bias is None else y + self.bias[...]


class BatchNorm(nnx.Module):
    """Inference ``torch.nn.BatchNorm{1,2}d`` over the last axis, using running statistics.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, evaluated in that order
    (not folded into one scale and shift) so rounding follows torch's CPU kernel closely.

    Args:
      num_features: channels (the last axis of the input).
      eps: torch's default 1e-5; checkpoints do not store it.
      rngs: unused; accepted so every layer has the same constructor shape.
    """

    def __init__(
        self, num_features: int, *, eps: float = 1e-5, rngs: nnx.Rngs | None = None
    ) -> None:
        del rngs
        self.weight = nnx.Param(jnp.ones((num_features,)))
        self.bias = nnx.Param(jnp.zeros((num_features,)))
        # BatchStat, not Param: they are buffers in torch and should be filtered out of any
        # optimiser that ever fine-tunes these weights.
        self.running_mean = nnx.BatchStat(jnp.zeros((num_features,)))
        self.running_var = nnx.BatchStat(jnp.ones((num_features,)))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., C) -> (..., C)."""
        inv = jax.lax.rsqrt(self.running_var[...] + self.eps)
        return (x - self.running_mean[...]) * inv * self.weight[...] + self.bias[...]


class PReLU(nnx.Module):
    """``torch.nn.PReLU(num_parameters)``: a learnt negative slope per channel (last axis).

    Args:
      num_features: channels; torch's ``PReLU()`` with one shared slope is ``num_features=1``.
      init: initial slope (torch's default 0.25).
      rngs: unused; accepted so every layer has the same constructor shape.
    """

    def __init__(
        self, num_features: int, *, init: float = 0.25, rngs: nnx.Rngs | None = None
    ) -> None:
        del rngs
        self.weight = nnx.Param(jnp.full((num_features,), init))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., C) -> (..., C)."""
        return jnp.where(x >= 0, x, self.weight[...] * x)


def max_pool2d(
    x: jax.Array, kernel_size: Pair, stride: Pair | None = None, padding: Pair = 0
) -> jax.Array:
    """``torch.nn.functional.max_pool2d`` (floor mode, no dilation) on NHWC input.

    Padding is with -inf, as in torch, so a padded border never wins the max.
    ``kernel_size=1`` with a stride is the IR networks' "MaxPool2d(1, s)" subsampling shortcut.
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride if stride is not None else kernel_size)
    ph, pw = _pair(padding)
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        window_dimensions=(1, kh, kw, 1),
        window_strides=(1, sh, sw, 1),
        padding=((0, 0), (ph, ph), (pw, pw), (0, 0)),
    )


class GroupNorm(nnx.Module):
    """``torch.nn.GroupNorm`` (affine) over the last (channel) axis of NHWC input.

    Per sample and group, mean and biased variance over every non-batch axis of the group's
    channels (H, W and C/G for images), as torch does; statistics and normalisation run in
    float32 whatever the input dtype (torch's CPU/GPU kernels accumulate in float32 too) and the
    result is cast back to the input dtype.

    Args:
      num_groups: G; must divide ``num_channels``.
      num_channels: C (the last axis of the input).
      eps: added to the variance; torch's default 1e-5 (the DDPM UNet uses 1e-6).
      rngs: unused; accepted so every layer has the same constructor shape.
    """

    def __init__(
        self, num_groups: int, num_channels: int, *, eps: float = 1e-5, rngs: nnx.Rngs | None = None
    ) -> None:
        del rngs
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels not divisible by {num_groups}")
        self.weight = nnx.Param(jnp.ones((num_channels,)))
        self.bias = nnx.Param(jnp.zeros((num_channels,)))
        self.num_groups = num_groups
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, ..., C) -> (N, ..., C)."""
        n, c, g = x.shape[0], x.shape[-1], self.num_groups
        xf = x.astype(jnp.float32).reshape(n, -1, g, c // g)  # (N, S, G, C/G)
        # One pass: sum and sum of squares in one reduction (XLA fuses them), instead of a
        # mean pass then a variance pass. Taken about one element of each group, so the
        # difference of squares does not cancel when the mean is large against the spread;
        # the result does not depend on the shift mathematically, hence no gradient through it.
        shift = jax.lax.stop_gradient(xf[:, :1, :, :1])
        d = xf - shift
        m1 = jnp.mean(d, axis=(1, 3), keepdims=True)
        m2 = jnp.mean(jnp.square(d), axis=(1, 3), keepdims=True)
        var = jnp.maximum(m2 - jnp.square(m1), 0.0)
        y = ((d - m1) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        return (y * self.weight[...] + self.bias[...]).astype(x.dtype)


def unit_rows(raw: jax.Array) -> jax.Array:
    """L2-normalise the last axis; the norm is floored at 1e-12 so an all-zero embedding
    stays finite and differentiable (every recogniser's ``embed`` ends with this)."""
    return raw / jnp.maximum(jnp.linalg.norm(raw, axis=-1, keepdims=True), 1e-12)


class LayerNorm(nnx.Module):
    """``torch.nn.LayerNorm`` over the last axis (affine; statistics in float32, as torch).

    Args:
      dim: width of the last axis.
      eps: added to the biased variance.
      rngs: unused; accepted so every layer has the same constructor shape.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, rngs: nnx.Rngs | None = None) -> None:
        del rngs
        self.weight = nnx.Param(jnp.ones((dim,)))
        self.bias = nnx.Param(jnp.zeros((dim,)))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., D) -> (..., D)."""
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        centred = xf - mean
        var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + self.eps)
        return (y * self.weight[...] + self.bias[...]).astype(x.dtype)


def host_init(abstract, seed: int, *, embedding_std: float | None = None):
    """Concrete random (untrained) params for an abstract NNX state, drawn with NumPy.

    Conv kernels (4-D) ~ N(0, 2 / fan_in) (He), other matrices ~ N(0, 1 / fan_in) (LeCun),
    except tables of modules named ``*_embedding`` ~ N(0, embedding_std^2) when given
    (transformers' CLIP init); every other ``weight`` (norm scales) 1, everything else 0.
    NumPy because compiling one JAX random draw per leaf takes 10-20 s on CPU for a UNet;
    call it eagerly (under ``jit`` the values would become constants).
    """
    rng = np.random.default_rng(seed)

    def draw(keypath: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in keypath]
        if names[-1] == "value":
            names = names[:-1]
        shape = tuple(leaf.shape)
        if names[-1] == "weight" and len(shape) >= 2:
            if embedding_std is not None and len(names) > 1 and names[-2].endswith("_embedding"):
                scale = np.float32(embedding_std)
            else:
                gain = 2.0 if len(shape) == 4 else 1.0
                scale = np.float32(math.sqrt(gain / math.prod(shape[:-1])))  # HWIO / (in, out)
            arr = rng.standard_normal(shape, dtype=np.float32) * scale
        else:
            arr = np.full(shape, 1.0 if names[-1] == "weight" else 0.0, np.float32)
        return jnp.asarray(arr, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)
