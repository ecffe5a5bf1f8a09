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

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["BatchNorm", "Conv2d", "Linear", "PReLU"]

# Full fp32 accuracy on GPU/TPU too (the default would use TF32/bf16 passes); it costs nothing
# on CPU and keeps the torch-parity tolerances meaningful everywhere.
_PRECISION = jax.lax.Precision.HIGHEST


class Conv2d(nnx.Module):
    """``torch.nn.Conv2d`` on NHWC input; ``weight`` is HWIO (torch: OIHW).

    Args:
      in_channels: input channels.
      out_channels: output channels.
      kernel_size: square kernel side.
      stride: square stride.
      padding: symmetric zero padding on each spatial side (torch's integer ``padding``).
      bias: whether to add a per-channel bias.
      rngs: key source for the (throwaway) initial weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        self.weight = nnx.Param(jax.nn.initializers.he_normal()(rngs.params(), shape))
        self.bias = nnx.Param(jnp.zeros((out_channels,))) if bias else None
        self.stride = stride
        self.padding = padding

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, C_in) -> (N, H', W', C_out)."""
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x,
            self.weight[...],
            window_strides=(self.stride, self.stride),
            padding=((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=_PRECISION,
        )
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
        y = jnp.matmul(x, self.weight[...], precision=_PRECISION)
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
