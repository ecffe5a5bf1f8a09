"""Channel-last execution of channel-first ONNX graphs on CPU.

ONNX image models are NCHW; XLA:CPU's fast convolutions are NHWC. Converting each Conv on its
own means a transpose into NHWC before it and one back after it, and in a conv net those
transposes (and the copies around the elementwise ops between them) took most of a SFace
gradient step. Instead, while the graph runs, a 4-D activation that a convolution produced
stays channel-last, wrapped in :class:`ChannelLast`, through every op that does not care
about the axis order, or whose axes can be renamed: elementwise ops (their other operands are
re-broadcast to NHWC), BatchNormalization, Dropout, max/average/global pooling, and Concat
(its axis moved to the NHWC position). Anything else receives the ordinary NCHW array (one
transpose, where the graph leaves the conv trunk, e.g. at Flatten: permuting the following
Gemm's weights instead would cost more than that one activation transpose at small batch,
and would leave ``params`` no longer laid out as the ONNX tensors they are named after).
Graph outputs are always NCHW, so the converted function computes exactly what the ONNX graph
specifies.

Only traced values are ever wrapped; constant folding never sees a :class:`ChannelLast`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .ops import conv_channel_last

__all__ = [
    "ELEMENTWISE",
    "POOLING",
    "ChannelLast",
    "nchw",
    "run_channel_last",
    "to_channel_last",
]

# Ops whose handler takes ``channel_last=True`` for N...C data.
POOLING = frozenset({"AveragePool", "GlobalAveragePool", "GlobalMaxPool", "MaxPool"})

# Where each NCHW axis sits in NHWC.
_NHWC_AXIS = (0, 3, 1, 2)

# Ops applied entry by entry with ONNX (NumPy-style) broadcasting, whose meaning does not
# depend on axis order once every operand is laid out the same way.
ELEMENTWISE = frozenset(
    {
        "Abs", "Add", "Ceil", "Clip", "Cos", "Div", "Elu", "Erf", "Exp", "Floor",
        "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "Log", "Max", "Mean", "Min",
        "Mul", "Neg", "Pow", "PRelu", "Reciprocal", "Relu", "Sigmoid", "Sign", "Sin",
        "Softplus", "Sqrt", "Sub", "Sum", "Tanh",
    }
)  # fmt: skip


class ChannelLast:
    """A 4-D activation the graph means as NCHW, held as the NHWC array ``a``."""

    __slots__ = ("a",)

    def __init__(self, a: jax.Array) -> None:
        self.a = a

    @property
    def shape(self) -> tuple[int, ...]:
        """The NCHW shape the graph sees."""
        n, h, w, c = self.a.shape
        return (n, c, h, w)

    @property
    def ndim(self) -> int:
        return 4

    @property
    def dtype(self) -> Any:
        return self.a.dtype


def nchw(v: Any) -> Any:
    """The graph's NCHW view of a value (a transpose for :class:`ChannelLast`, else as is)."""
    return jnp.transpose(v.a, (0, 3, 1, 2)) if isinstance(v, ChannelLast) else v


def to_channel_last(v: Any) -> Any:
    """An operand broadcasting against NCHW data, re-laid to broadcast against NHWC data.

    ``None`` stays ``None``; rank > 4 is not an operand of a 4-D elementwise op."""
    if v is None:
        return None
    if isinstance(v, ChannelLast):
        return v.a
    xp = np if isinstance(v, np.ndarray | np.generic) else jnp
    v = xp.asarray(v)
    if v.ndim == 0:
        return v
    v = v.reshape((1,) * (4 - v.ndim) + v.shape)
    return xp.transpose(v, (0, 2, 3, 1))


def _laid_out_alike(args: list[Any]) -> bool:
    """Whether an elementwise op can run channel-last: some input is channel-last and no
    operand has a rank that cannot broadcast against 4-D data."""
    wrapped = any(isinstance(a, ChannelLast) for a in args)
    return wrapped and all(a is None or isinstance(a, ChannelLast) or np.ndim(a) <= 4 for a in args)


def run_channel_last(
    op_type: str, handler: Callable[..., Any], node: Any, args: list[Any]
) -> tuple | None:
    """Run an op on channel-last inputs if its meaning allows; ``None`` means "not here"
    (the caller then hands the op NCHW arrays).

    Args:
      op_type: the ONNX op.
      handler: its ordinary (NCHW) handler from :mod:`.ops`.
      node: the handler's node.
      args: the op's input values, some possibly :class:`ChannelLast`.
    """
    if op_type in ELEMENTWISE and _laid_out_alike(args):
        out = handler(node, *[to_channel_last(a) for a in args])
        return (ChannelLast(out),)
    if (
        op_type == "Conv"
        and np.ndim(args[0]) == 4
        and all(not isinstance(a, ChannelLast) for a in args[1:])
    ):
        x = args[0].a if isinstance(args[0], ChannelLast) else jnp.transpose(args[0], (0, 2, 3, 1))
        return (ChannelLast(conv_channel_last(node, x, *args[1:])),)
    if op_type == "Dropout" and isinstance(args[0], ChannelLast) and node.n_outputs == 1:
        return (ChannelLast(handler(node, args[0].a, *args[1:])),)
    if op_type in POOLING and isinstance(args[0], ChannelLast) and node.n_outputs == 1:
        return (ChannelLast(handler(node, args[0].a, channel_last=True)),)
    if op_type == "Concat" and all(isinstance(a, ChannelLast) for a in args if a is not None):
        if not -4 <= node.attr("axis") < 4:
            return None  # the handler raises its own error
        axis = _NHWC_AXIS[node.attr("axis") % 4]
        xs = [a.a for a in args if a is not None]
        if not xs:
            return None
        return (ChannelLast(jnp.concatenate(xs, axis=axis)),)
    if op_type == "BatchNormalization" and isinstance(args[0], ChannelLast) and len(args) >= 5:
        if node.attr("training_mode", 0):
            return None  # the handler raises its own clear error
        x, scale, bias, mean, var = args[0].a, *args[1:5]
        inv = scale * jax.lax.rsqrt(var + node.attr("epsilon", 1e-5))
        return (ChannelLast((x - mean) * inv + bias),)
    return None
