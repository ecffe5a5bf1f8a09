"""ONNX op semantics in JAX, one function per op, dispatched by :mod:`.graph`.

Each handler takes a :class:`Node` (attributes, resolved op version, the array module to
use) and the node's input values, and returns one value or a tuple of values.

Values are either NumPy arrays (static: known while tracing, e.g. shapes) or JAX arrays.
When every input of a node is static the graph runner passes ``node.xp = numpy`` so shape
arithmetic stays exact in int64 (JAX without x64 would truncate INT64_MAX slice ends) and
stays foldable; otherwise ``node.xp = jax.numpy``. Ops that only make sense on traced data
(convolutions, pooling) always use ``jax.numpy``/``lax``; the runner turns their output
back into NumPy when it was folding.

Inputs that must be known at trace time (a Reshape's shape, a Slice's starts) are listed
in ``OpSpec.static_inputs``: they are never turned into trainable params, and a traced
value there raises a clear :class:`ConversionError` instead of a tracer error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from onnx import helper as onnx_helper

from ...ops.conv import conv2d, depthwise_conv2d, depthwise_fits
from .errors import ConversionError, UnsupportedOpError

Value = Any  # np.ndarray (static) or jax.Array (traced)

# Highest op version (since_version) whose semantics we implement; newer versions of an
# op raise instead of being run with possibly different semantics.
MAX_OP_VERSION = 21


@dataclass
class Node:
    """What a handler needs to know about the node it runs."""

    op_type: str
    name: str
    opset: int
    version: int  # the op's since_version resolved for this opset
    attrs: dict[str, Any]
    n_outputs: int
    xp: Any = np

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def unsupported(self, detail: str) -> UnsupportedOpError:
        return UnsupportedOpError(self.op_type, self.name, self.opset, detail)


@dataclass(frozen=True)
class OpSpec:
    fn: Callable[..., Any]
    min_version: int = 1
    static_inputs: frozenset[int] = field(default_factory=frozenset)


OPS: dict[str, OpSpec] = {}


def op(name: str, *, min_version: int = 1, static: Sequence[int] = ()) -> Callable:
    """Register a handler for ``name``."""

    def register(fn: Callable) -> Callable:
        OPS[name] = OpSpec(fn, min_version, frozenset(static))
        return fn

    return register


def is_static(x: Value) -> bool:
    return isinstance(x, np.ndarray | np.generic)


def static(node: Node, x: Value, what: str) -> np.ndarray:
    """Return ``x`` as NumPy, or raise if it is only known at run time."""
    if x is None or is_static(x):
        return x
    raise ConversionError(
        f"{node.op_type} node {node.name!r} (opset {node.opset}): {what} must be a constant "
        "known at conversion/trace time, but it depends on the graph's runtime inputs"
    )


def _ints(x: Any) -> list[int]:
    return [int(v) for v in np.asarray(x).reshape(-1)]


def _bcast_channel(v: Value, rank: int) -> Value:
    """Reshape a per-channel vector (C,) to broadcast against NC... data of ``rank``."""
    return v.reshape((1, -1) + (1,) * (rank - 2))


def np_dtype(onnx_type: int) -> np.dtype:
    dt = np.dtype(onnx_helper.tensor_dtype_to_np_dtype(onnx_type))
    if dt.kind in "OSU":
        raise ConversionError(f"string tensors (ONNX type {onnx_type}) are not supported")
    return dt


def _cast(node: Node, x: Value, dt: np.dtype) -> Value:
    if is_static(x):
        return np.asarray(x).astype(dt)
    return x.astype(jax.dtypes.canonicalize_dtype(dt))


# --------------------------------------------------------------------------- elementwise


def _unary(name: str, fn_name: str, min_version: int = 1) -> None:
    @op(name, min_version=min_version)
    def handler(node: Node, x: Value) -> Value:
        return getattr(node.xp, fn_name)(x)


for _name, _fn in [
    ("Sqrt", "sqrt"),
    ("Neg", "negative"),
    ("Exp", "exp"),
    ("Abs", "abs"),
    ("Log", "log"),
    ("Floor", "floor"),
    ("Ceil", "ceil"),
    ("Sin", "sin"),
    ("Cos", "cos"),
    ("Not", "logical_not"),
    ("Sign", "sign"),
]:
    _unary(_name, _fn)


def _binary(name: str, fn_name: str) -> None:
    @op(name, min_version=7)
    def handler(node: Node, a: Value, b: Value) -> Value:
        return getattr(node.xp, fn_name)(a, b)


for _name, _fn in [
    ("Add", "add"),
    ("Sub", "subtract"),
    ("Mul", "multiply"),
    ("Equal", "equal"),
    ("Less", "less"),
    ("Greater", "greater"),
    ("LessOrEqual", "less_equal"),
    ("GreaterOrEqual", "greater_equal"),
    ("And", "logical_and"),
    ("Or", "logical_or"),
]:
    _binary(_name, _fn)


@op("Div", min_version=7)
def div(node: Node, a: Value, b: Value) -> Value:
    xp = node.xp
    if np.issubdtype(np.dtype(a.dtype), np.integer):
        # ONNX integer division truncates toward zero (C semantics), NumPy's floors.
        q = xp.abs(a) // xp.abs(b)
        return (q * xp.sign(a) * xp.sign(b)).astype(a.dtype)
    return xp.divide(a, b)


@op("Pow", min_version=7)
def pow_(node: Node, a: Value, b: Value) -> Value:
    # The result has the base's type whatever the exponent's type.
    return node.xp.power(a, b.astype(a.dtype)).astype(a.dtype)


@op("Reciprocal")
def reciprocal(node: Node, x: Value) -> Value:
    return 1 / x


def _variadic(name: str, fn: Callable[[Any, list[Value]], Value]) -> None:
    @op(name, min_version=8)
    def handler(node: Node, *xs: Value) -> Value:
        return fn(node.xp, list(xs))


_variadic("Max", lambda xp, xs: _fold(xp.maximum, xs))
_variadic("Min", lambda xp, xs: _fold(xp.minimum, xs))
_variadic("Sum", lambda xp, xs: _fold(xp.add, xs))
_variadic("Mean", lambda xp, xs: _fold(xp.add, xs) / len(xs))


def _fold(fn: Callable, xs: list[Value]) -> Value:
    out = xs[0]
    for x in xs[1:]:
        out = fn(out, x)
    return out


@op("Where", min_version=9)
def where(node: Node, c: Value, a: Value, b: Value) -> Value:
    return node.xp.where(c, a, b)


@op("Relu")
def relu(node: Node, x: Value) -> Value:
    return jnp.maximum(x, 0).astype(x.dtype)


@op("LeakyRelu")
def leaky_relu(node: Node, x: Value) -> Value:
    return jnp.where(x >= 0, x, x * node.attr("alpha", 0.01))


@op("PRelu", min_version=7)
def prelu(node: Node, x: Value, slope: Value) -> Value:
    return jnp.where(x >= 0, x, x * slope)


@op("Sigmoid")
def sigmoid(node: Node, x: Value) -> Value:
    return jax.nn.sigmoid(x)


@op("Tanh")
def tanh(node: Node, x: Value) -> Value:
    return jnp.tanh(x)


@op("HardSigmoid")
def hard_sigmoid(node: Node, x: Value) -> Value:
    return jnp.clip(node.attr("alpha", 0.2) * x + node.attr("beta", 0.5), 0, 1)


@op("HardSwish", min_version=14)
def hard_swish(node: Node, x: Value) -> Value:
    return x * jnp.clip(x / 6 + 0.5, 0, 1)


@op("Softplus")
def softplus(node: Node, x: Value) -> Value:
    return jax.nn.softplus(x)


@op("Elu", min_version=6)
def elu(node: Node, x: Value) -> Value:
    return jax.nn.elu(x, node.attr("alpha", 1.0))


@op("Erf", min_version=9)
def erf(node: Node, x: Value) -> Value:
    return jax.scipy.special.erf(x)


@op("Clip", min_version=6)
def clip(node: Node, x: Value, lo: Value = None, hi: Value = None) -> Value:
    if node.version < 11:  # min/max were attributes before opset 11
        lo, hi = node.attr("min"), node.attr("max")
    out = x
    if lo is not None:
        out = node.xp.maximum(out, lo)
    if hi is not None:
        out = node.xp.minimum(out, hi)
    return out.astype(x.dtype)


@op("Cast", min_version=6)
def cast(node: Node, x: Value) -> Value:
    return _cast(node, x, np_dtype(node.attr("to")))


@op("CastLike", min_version=15)
def cast_like(node: Node, x: Value, like: Value) -> Value:
    return _cast(node, x, np.dtype(like.dtype))


@op("Identity")
def identity(node: Node, x: Value) -> Value:
    return x


@op("Dropout", min_version=7, static=(1, 2))
def dropout(node: Node, x: Value, ratio: Value = None, training: Value = None) -> Value:
    if training is not None and bool(static(node, training, "training_mode")):
        raise node.unsupported(
            "training_mode=1 (random masks) is not supported; export in eval mode"
        )
    if node.n_outputs > 1:
        return x, node.xp.ones(x.shape, dtype=bool)
    return x


# --------------------------------------------------------------------------- constants, shapes


@op("Constant")
def constant(node: Node) -> Value:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            v = node.attrs[key]
            if key.startswith("value_float"):
                return np.asarray(v, dtype=np.float32)
            if key.startswith("value_int"):
                return np.asarray(v, dtype=np.int64)
            return v
    raise node.unsupported(f"only numeric Constant values are supported, got {sorted(node.attrs)}")


@op("ConstantOfShape", min_version=9, static=(0,))
def constant_of_shape(node: Node, shape: Value) -> Value:
    value = node.attr("value", np.zeros(1, np.float32))
    return np.full(_ints(static(node, shape, "shape")), value.reshape(-1)[0], dtype=value.dtype)


@op("Shape")
def shape_(node: Node, x: Value) -> Value:
    dims = np.asarray(x.shape, dtype=np.int64)
    start, end = node.attr("start", 0), node.attr("end")
    return dims[start:end]


@op("Size")
def size_(node: Node, x: Value) -> Value:
    return np.asarray(math.prod(x.shape), dtype=np.int64)


@op("Range", min_version=11)
def range_(node: Node, start: Value, limit: Value, delta: Value) -> Value:
    return node.xp.arange(start, limit, delta).astype(np.asarray(start).dtype)


@op("Gather", min_version=11)
def gather(node: Node, data: Value, idx: Value) -> Value:
    axis = node.attr("axis", 0)
    dim = data.shape[axis]
    idx = node.xp.where(idx < 0, idx + dim, idx)
    return node.xp.take(data, idx, axis=axis)


@op("Reshape", min_version=5, static=(1,))
def reshape(node: Node, x: Value, shape: Value) -> Value:
    target = _ints(static(node, shape, "the target shape"))
    if not node.attr("allowzero", 0):
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return node.xp.reshape(x, target)


@op("Flatten", min_version=1)
def flatten(node: Node, x: Value) -> Value:
    axis = node.attr("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return node.xp.reshape(x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))


@op("Transpose")
def transpose(node: Node, x: Value) -> Value:
    perm = node.attr("perm")
    return node.xp.transpose(x, perm if perm is None else list(perm))


def _axes_input_or_attr(node: Node, axes: Value, since: int) -> list[int] | None:
    """Axes moved from an attribute to an input at op version ``since``."""
    if node.version >= since:
        return None if axes is None else _ints(static(node, axes, "axes"))
    a = node.attr("axes")
    return None if a is None else list(a)


@op("Squeeze", min_version=1, static=(1,))
def squeeze(node: Node, x: Value, axes: Value = None) -> Value:
    ax = _axes_input_or_attr(node, axes, 13)
    if ax is None:
        ax = [i for i, d in enumerate(x.shape) if d == 1]
    return node.xp.squeeze(x, axis=tuple(a % x.ndim for a in ax))


@op("Unsqueeze", min_version=1, static=(1,))
def unsqueeze(node: Node, x: Value, axes: Value = None) -> Value:
    ax = _axes_input_or_attr(node, axes, 13)
    rank = x.ndim + len(ax)
    return node.xp.expand_dims(x, tuple(sorted(a % rank for a in ax)))


@op("Concat", min_version=4)
def concat(node: Node, *xs: Value) -> Value:
    xs = [x for x in xs if x is not None]
    return node.xp.concatenate(xs, axis=node.attr("axis"))


@op("Split", min_version=2, static=(1,))
def split(node: Node, x: Value, sizes: Value = None) -> tuple[Value, ...]:
    axis = node.attr("axis", 0) % x.ndim
    dim = x.shape[axis]
    if node.version < 13:
        sizes = node.attr("split")
    elif sizes is not None:
        sizes = static(node, sizes, "split sizes")
    if sizes is None:
        n = node.attr("num_outputs", node.n_outputs)
        chunk = -(-dim // n)  # ceil: the last chunk is smaller when dim % n != 0
        sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    bounds = np.cumsum(_ints(sizes))[:-1]
    return tuple(node.xp.split(x, bounds, axis=axis))


@op("Slice", min_version=10, static=(1, 2, 3, 4))
def slice_(
    node: Node, x: Value, starts: Value, ends: Value, axes: Value = None, steps: Value = None
) -> Value:
    starts = _ints(static(node, starts, "starts"))
    ends = _ints(static(node, ends, "ends"))
    axes = list(range(len(starts))) if axes is None else _ints(static(node, axes, "axes"))
    steps = [1] * len(starts) if steps is None else _ints(static(node, steps, "steps"))
    index = [slice(None)] * x.ndim
    # Python slices clamp out-of-range bounds exactly as the ONNX spec describes.
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        index[a % x.ndim] = slice(s, e, st)
    return x[tuple(index)]


@op("Expand", min_version=8, static=(1,))
def expand(node: Node, x: Value, shape: Value) -> Value:
    shape = _ints(static(node, shape, "shape"))
    out = np.broadcast_shapes(tuple(x.shape), tuple(shape))
    return node.xp.broadcast_to(x, out)


@op("Tile", min_version=6, static=(1,))
def tile(node: Node, x: Value, repeats: Value) -> Value:
    return node.xp.tile(x, _ints(static(node, repeats, "repeats")))


# --------------------------------------------------------------------------- reductions, softmax


def _reduce(name: str, fn: Callable[[Any, Value, tuple | None, bool], Value], since: int) -> None:
    @op(name, min_version=1, static=(1,))
    def handler(node: Node, x: Value, axes: Value = None) -> Value:
        ax = _axes_input_or_attr(node, axes, since)
        if not ax:
            # noop_with_empty_axes: reduce over no axes, so ReduceL2 still gives |x|.
            ax = [] if node.attr("noop_with_empty_axes", 0) else None
        keep = bool(node.attr("keepdims", 1))
        return fn(node.xp, x, None if ax is None else tuple(a % x.ndim for a in ax), keep)


_reduce("ReduceSum", lambda xp, x, a, k: xp.sum(x, axis=a, keepdims=k), 13)
_reduce("ReduceMean", lambda xp, x, a, k: xp.mean(x, axis=a, keepdims=k), 18)
_reduce("ReduceMax", lambda xp, x, a, k: xp.max(x, axis=a, keepdims=k), 18)
_reduce("ReduceMin", lambda xp, x, a, k: xp.min(x, axis=a, keepdims=k), 18)
_reduce("ReduceProd", lambda xp, x, a, k: xp.prod(x, axis=a, keepdims=k), 18)
_reduce("ReduceL2", lambda xp, x, a, k: xp.sqrt(xp.sum(x * x, axis=a, keepdims=k)), 18)
_reduce("ReduceL1", lambda xp, x, a, k: xp.sum(xp.abs(x), axis=a, keepdims=k), 18)
_reduce("ReduceSumSquare", lambda xp, x, a, k: xp.sum(x * x, axis=a, keepdims=k), 18)


def _softmax_like(name: str, fn: Callable[[Value, int], Value]) -> None:
    @op(name, min_version=1)
    def handler(node: Node, x: Value) -> Value:
        if node.version >= 13:
            return fn(x, node.attr("axis", -1))
        # Before opset 13 the input is coerced to 2-D at `axis` and normalised over dim 1.
        axis = node.attr("axis", 1) % x.ndim
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return fn(flat, 1).reshape(x.shape)


_softmax_like("Softmax", lambda x, a: jax.nn.softmax(x, axis=a))
_softmax_like("LogSoftmax", lambda x, a: jax.nn.log_softmax(x, axis=a))


# --------------------------------------------------------------------------- linear algebra


@op("MatMul")
def matmul(node: Node, a: Value, b: Value) -> Value:
    return jnp.matmul(a, b)


@op("Gemm", min_version=7)
def gemm(node: Node, a: Value, b: Value, c: Value = None) -> Value:
    a = a.T if node.attr("transA", 0) else a
    b = b.T if node.attr("transB", 0) else b
    out = node.attr("alpha", 1.0) * jnp.matmul(a, b)
    if c is not None:
        out = out + node.attr("beta", 1.0) * c
    return out


# --------------------------------------------------------------------------- normalisation


@op("BatchNormalization", min_version=9)
def batch_norm(
    node: Node, x: Value, scale: Value, bias: Value, mean: Value, var: Value, *_: Value
) -> Value:
    if node.attr("training_mode", 0):
        raise node.unsupported("training_mode=1 is not supported; export the model in eval mode")
    inv = scale * lax.rsqrt(var + node.attr("epsilon", 1e-5))
    rank = x.ndim
    out = (x - _bcast_channel(mean, rank)) * _bcast_channel(inv, rank) + _bcast_channel(bias, rank)
    return out


@op("InstanceNormalization", min_version=6)
def instance_norm(node: Node, x: Value, scale: Value, bias: Value) -> Value:
    axes = tuple(range(2, x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    y = (x - mean) * lax.rsqrt(var + node.attr("epsilon", 1e-5))
    return y * _bcast_channel(scale, x.ndim) + _bcast_channel(bias, x.ndim)


@op("LayerNormalization", min_version=17)
def layer_norm(node: Node, x: Value, scale: Value, bias: Value = None) -> Value:
    axis = node.attr("axis", -1) % x.ndim
    axes = tuple(range(axis, x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    inv = lax.rsqrt(var + node.attr("epsilon", 1e-5))
    y = (x - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return (y, mean, inv)[: node.n_outputs] if node.n_outputs > 1 else y


# --------------------------------------------------------------------------- conv and pooling


def _spatial_pads(
    node: Node,
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[tuple[int, int]]:
    """Per-spatial-dim (begin, end) padding from ``pads`` or ``auto_pad``."""
    n = len(in_sizes)
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(node.attr("pads", [0] * 2 * n))
        return list(zip(pads[:n], pads[n:], strict=True))
    if auto == "VALID":
        return [(0, 0)] * n
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise node.unsupported(f"auto_pad={auto!r}")
    return same_pads(auto, in_sizes, kernel, strides, dilations)


def same_pads(
    auto: str,
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[tuple[int, int]]:
    """(begin, end) pads of ``auto_pad`` SAME_UPPER / SAME_LOWER: output size ceil(size /
    stride); the odd pixel goes at the end (UPPER) or the beginning (LOWER)."""
    out = []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        out.append((small, big) if auto == "SAME_UPPER" else (big, small))
    return out


def _conv_dims(n_spatial: int) -> tuple[str, str, str]:
    sp = "DHW"[-n_spatial:] if n_spatial <= 3 else None
    if sp is None:
        raise ConversionError("convolutions with more than 3 spatial dimensions are not supported")
    return "NC" + sp, "OI" + sp, "NC" + sp


def _conv_geometry(node: Node, x_spatial: Sequence[int], w: Value):
    n = len(x_spatial)
    kernel = node.attr("kernel_shape", w.shape[2:])
    strides = node.attr("strides", [1] * n)
    dil = node.attr("dilations", [1] * n)
    pads = _spatial_pads(node, x_spatial, kernel, strides, dil)
    return kernel, strides, dil, pads, node.attr("group", 1)


def conv_channel_last(node: Node, x: jax.Array, w: Value, b: Value = None) -> jax.Array:
    """A 2-D ONNX Conv on channel-last data: NHWC ``x``, the ONNX OIHW ``w``; NHWC out.

    What :mod:`.layout` runs on CPU: XLA:CPU's fast convolutions (and the project's
    custom input gradient, :mod:`jaxcloak.ops.conv`) are channel-last, and channel-first
    convolutions inside while loops (every ``lax.scan`` attack) take a slow path.
    """
    kernel, strides, dil, pads, g = _conv_geometry(node, x.shape[1:3], w)
    # OIHW -> HWIO for both paths; with a prepared (HWIO) kernel (OnnxFunction.prepare) XLA
    # cancels this transpose with the inverse one the function applied.
    hwio = jnp.transpose(w, (2, 3, 1, 0))
    if (
        g > 1
        and g == x.shape[-1] == w.shape[0]
        and w.shape[1] == 1
        and depthwise_fits(kernel, strides, dil, x.shape[1:3], pads)
    ):
        # XLA:CPU's grouped-conv path is slow; the shifted-slices form made SFace's forward
        # about 3x and its backward about 2x faster on CPU (benchmarks/bench_convert.py).
        y = depthwise_conv2d(x, hwio[:, :, 0, :], strides, dil, pads)  # taps (kh, kw, C)
    else:
        y = conv2d(x, hwio, strides, pads, dil, g)
    return y if b is None else y + b


def _conv_nchw(
    x: Value,
    w: Value,
    b: Value,
    *,
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int],
    groups: int,
) -> Value:
    """``lax.conv_general_dilated`` on channel-first operands, then the optional bias ``b``."""
    y = lax.conv_general_dilated(
        x,
        w,
        window_strides=strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=_conv_dims(x.ndim - 2),
        feature_group_count=groups,
    )
    return y if b is None else y + _bcast_channel(b, y.ndim)


@op("Conv")
def conv(node: Node, x: Value, w: Value, b: Value = None) -> Value:
    n = x.ndim - 2
    if n == 2 and jax.default_backend() == "cpu":
        y = conv_channel_last(node, jnp.transpose(x, (0, 2, 3, 1)), w, b)
        return jnp.transpose(y, (0, 3, 1, 2))
    _, strides, dil, pads, g = _conv_geometry(node, x.shape[2:], w)
    return _conv_nchw(x, w, b, strides=strides, padding=pads, rhs_dilation=dil, groups=g)


@op("ConvTranspose")
def conv_transpose(node: Node, x: Value, w: Value, b: Value = None) -> Value:
    n = x.ndim - 2
    g = node.attr("group", 1)
    kernel = list(node.attr("kernel_shape", w.shape[2:]))
    strides = list(node.attr("strides", [1] * n))
    dil = list(node.attr("dilations", [1] * n))
    out_pad = list(node.attr("output_padding", [0] * n))
    in_sizes = x.shape[2:]
    eff_k = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
    full = [
        s * (i - 1) + op_ + k
        for s, i, op_, k in zip(strides, in_sizes, out_pad, eff_k, strict=True)
    ]
    auto = node.attr("auto_pad", "NOTSET")
    out_shape = node.attr("output_shape")
    if out_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = (
            list(out_shape)[-n:]
            if out_shape is not None
            else [i * s for i, s in zip(in_sizes, strides, strict=True)]
        )
        pads = []
        for f, t in zip(full, target, strict=True):
            total = f - t
            # The spec's split: SAME_UPPER puts the odd cell at the end, otherwise at the start
            # (floor division, so a negative total grows the end, as ONNX Runtime does).
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads.append((lo, total - lo))
    elif auto == "VALID":
        pads = [(0, 0)] * n
    else:
        p = list(node.attr("pads", [0] * 2 * n))
        pads = list(zip(p[:n], p[n:], strict=True))
    # A transposed conv is a conv of the stride-dilated input with the flipped kernel; the
    # torch/ONNX weight is (C_in, C_out/g, k...) and becomes (C_out, C_in/g, k...).
    cin, cout_g = w.shape[0], w.shape[1]
    wk = w.reshape((g, cin // g, cout_g, *w.shape[2:]))
    wk = jnp.swapaxes(wk, 1, 2).reshape((g * cout_g, cin // g, *w.shape[2:]))
    wk = jnp.flip(wk, axis=tuple(range(2, 2 + n)))
    conv_pads = [
        (ek - 1 - lo, ek - 1 - hi + op_)
        for ek, (lo, hi), op_ in zip(eff_k, pads, out_pad, strict=True)
    ]
    return _conv_nchw(
        x,
        wk,
        b,
        strides=[1] * n,
        padding=conv_pads,
        lhs_dilation=strides,
        rhs_dilation=dil,
        groups=g,
    )


def _pool_geometry(
    node: Node, spatial: Sequence[int]
) -> tuple[list[int], list[int], list[int], list]:
    n = len(spatial)
    kernel = list(node.attr("kernel_shape"))
    strides = list(node.attr("strides", [1] * n))
    dil = list(node.attr("dilations", [1] * n))
    pads = _spatial_pads(node, spatial, kernel, strides, dil)
    # ceil_mode adds end padding so the last partial window is kept, unless that window
    # would start inside the end padding (the rule torch and ONNX Runtime apply).
    extra = []
    for size, k, s, d, (lo, hi) in zip(spatial, kernel, strides, dil, pads, strict=True):
        span = size + lo + hi - ((k - 1) * d + 1)
        out = (-(-span // s) if node.attr("ceil_mode", 0) else span // s) + 1
        if node.attr("ceil_mode", 0) and (out - 1) * s >= size + lo:
            out -= 1
        extra.append(max(0, (out - 1) * s + (k - 1) * d + 1 - (size + lo + hi)))
    return kernel, strides, dil, [(lo, hi, e) for (lo, hi), e in zip(pads, extra, strict=True)]


def _spatial_axes(x: Value, channel_last: bool) -> tuple[int, ...]:
    return tuple(range(1, x.ndim - 1)) if channel_last else tuple(range(2, x.ndim))


def _window(channel_last: bool, spatial: Sequence[Any], fill: Any) -> tuple:
    """A per-axis tuple for ``reduce_window``: ``spatial`` on the spatial axes, ``fill`` on
    batch and channel (NC... or N...C)."""
    return (fill, *spatial, fill) if channel_last else (fill, fill, *spatial)


@op("MaxPool", min_version=8)
def max_pool(node: Node, x: Value, *, channel_last: bool = False) -> Value:
    """``channel_last``: ``x`` is N...C (:mod:`.layout`); the result is laid out alike."""
    if node.n_outputs > 1:
        raise node.unsupported("the Indices output of MaxPool is not supported")
    spatial = [x.shape[a] for a in _spatial_axes(x, channel_last)]
    kernel, strides, dil, pads = _pool_geometry(node, spatial)
    return lax.reduce_window(
        x,
        jnp.array(-jnp.inf, x.dtype),
        lax.max,
        _window(channel_last, kernel, 1),
        _window(channel_last, strides, 1),
        _window(channel_last, [(lo, hi + e) for lo, hi, e in pads], (0, 0)),
        window_dilation=_window(channel_last, dil, 1),
    )


@op("AveragePool", min_version=7)
def average_pool(node: Node, x: Value, *, channel_last: bool = False) -> Value:
    """``channel_last``: ``x`` is N...C (:mod:`.layout`); the result is laid out alike."""
    spatial = [x.shape[a] for a in _spatial_axes(x, channel_last)]
    kernel, strides, dil, pads = _pool_geometry(node, spatial)
    pad_cfg = _window(channel_last, [(lo, hi + e) for lo, hi, e in pads], (0, 0))
    dims, strd = _window(channel_last, kernel, 1), _window(channel_last, strides, 1)
    total = lax.reduce_window(
        x,
        jnp.array(0, x.dtype),
        lax.add,
        dims,
        strd,
        pad_cfg,
        window_dilation=_window(channel_last, dil, 1),
    )
    # Count of the cells each window covers: explicit pads count only with
    # count_include_pad=1; the ceil_mode extra never counts.
    if node.attr("count_include_pad", 0):
        ones = np.ones(
            [s + lo + hi for s, (lo, hi, _) in zip(spatial, pads, strict=True)], np.float32
        )
        ones_pad = [(0, e) for _, _, e in pads]
    else:
        ones = np.ones(spatial, np.float32)
        ones_pad = [(lo, hi + e) for lo, hi, e in pads]
    count = lax.reduce_window(
        jnp.asarray(ones),
        0.0,
        lax.add,
        tuple(kernel),
        tuple(strides),
        ones_pad,
        window_dilation=tuple(dil),
    )
    if channel_last:
        count = count[..., None]
    return total / count.astype(x.dtype)


@op("GlobalAveragePool")
def global_average_pool(node: Node, x: Value, *, channel_last: bool = False) -> Value:
    return jnp.mean(x, axis=_spatial_axes(x, channel_last), keepdims=True)


@op("GlobalMaxPool")
def global_max_pool(node: Node, x: Value, *, channel_last: bool = False) -> Value:
    return jnp.max(x, axis=_spatial_axes(x, channel_last), keepdims=True)


@op("Pad", min_version=11, static=(1, 3))
def pad(node: Node, x: Value, pads: Value, value: Value = None, axes: Value = None) -> Value:
    mode = node.attr("mode", "constant")
    p = _ints(static(node, pads, "pads"))
    ax = (
        list(range(x.ndim))
        if axes is None
        else [a % x.ndim for a in _ints(static(node, axes, "axes"))]
    )
    k = len(ax)
    width = [(0, 0)] * x.ndim
    for i, a in enumerate(ax):
        width[a] = (p[i], p[i + k])
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise node.unsupported(f"mode={mode!r}")
    # Negative pads crop, before padding (what ONNX Runtime does for wrap/reflect/edge).
    x = x[
        tuple(
            slice(-lo if lo < 0 else 0, (x.shape[i] + hi) if hi < 0 else None)
            for i, (lo, hi) in enumerate(width)
        )
    ]
    grow = [(max(lo, 0), max(hi, 0)) for lo, hi in width]
    kw = {}
    if mode == "constant":
        kw["constant_values"] = 0 if value is None or np.size(value) == 0 else value.reshape(())
    return node.xp.pad(x, grow, mode=mode, **kw)


# --------------------------------------------------------------------------- resize


def _resize_source_coords(
    mode: str, out: int, size: int, scale: float, roi: tuple[float, float] | None
) -> np.ndarray:
    """Source coordinate of each output index along one axis (ONNX Resize spec).

    Computed in float32 like ONNX Runtime and torch: in float64, 3 / 0.6f is 4.9999998 and
    floors to a different nearest neighbour than their 5.0.
    """
    x = np.arange(out, dtype=np.float32)
    scale, size, out = np.float32(scale), np.float32(size), np.float32(out)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adj = out / (scale * size)
        center = size / 2
        return center * (1 - adj) + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return np.zeros_like(x) if out == 1 else x * (size - 1) / (out - 1)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if out > 1:
            return start * (size - 1) + x * (end - start) * (size - 1) / (out - 1)
        return np.full_like(x, 0.5 * (start + end) * (size - 1))
    raise ConversionError(f"unknown coordinate_transformation_mode {mode!r}")


def _nearest_index(src: np.ndarray, mode: str) -> np.ndarray:
    if mode == "round_prefer_floor":
        return np.where(src - np.floor(src) == 0.5, np.floor(src), np.round(src))
    if mode == "round_prefer_ceil":
        return np.where(src - np.floor(src) == 0.5, np.ceil(src), np.round(src))
    if mode == "floor":
        return np.floor(src)
    if mode == "ceil":
        return np.ceil(src)
    raise ConversionError(f"unknown nearest_mode {mode!r}")


def _antialias_matrix(src: np.ndarray, size: int, scale: float) -> np.ndarray:
    """(out, in) weights of ONNX's antialiased linear filter: a triangle widened by 1/scale.

    Each output takes the ``n`` source pixels nearest its coordinate (edge-clamped), the
    left one preferred on ties, exactly as the ONNX reference's ``_get_neighbor`` picks them.
    """
    start = int(np.floor(-1 / scale) + 1)
    n = 2 - 2 * start
    m = np.zeros((len(src), size), np.float32)
    for o, x in enumerate(src.astype(np.float64)):
        left = np.floor(x) if x != np.floor(x) else x - 1  # ratio in (0, 1]
        coeffs = np.clip(1 - np.abs((np.arange(start, start + n) - (x - left)) * scale), 0, 1)
        idx = np.clip(int(left) - n // 2 + 1 + np.arange(n), 0, size - 1)
        np.add.at(m[o], idx, coeffs / coeffs.sum())
    return m


def _resize_axis(
    x: Value,
    axis: int,
    out: int,
    scale: float,
    node: Node,
    coord_mode: str,
    mode: str,
    roi: tuple[float, float] | None,
) -> Value:
    size = x.shape[axis]
    src = _resize_source_coords(coord_mode, out, size, scale, roi)
    outside = (src < 0) | (src > size - 1)
    if mode == "linear" and node.attr("antialias", 0) and scale < 1:
        m = jnp.asarray(_antialias_matrix(src, size, float(scale)))
        y = jnp.moveaxis(jnp.tensordot(jnp.moveaxis(x, axis, -1), m, axes=([-1], [1])), -1, axis)
    elif mode == "nearest":
        idx = np.clip(
            _nearest_index(src, node.attr("nearest_mode", "round_prefer_floor")), 0, size - 1
        ).astype(np.int32)
        y = jnp.take(x, idx, axis=axis)
    else:
        s = np.clip(src, 0, size - 1)
        i0 = np.floor(s).astype(np.int32)
        i1 = np.minimum(i0 + 1, size - 1)
        shape = [1] * x.ndim
        shape[axis] = out
        w = (s - i0).astype(np.float32).reshape(shape)
        y = jnp.take(x, i0, axis=axis) * (1 - w) + jnp.take(x, i1, axis=axis) * w
    if coord_mode == "tf_crop_and_resize" and outside.any():
        shape = [1] * x.ndim
        shape[axis] = out
        y = jnp.where(outside.reshape(shape), node.attr("extrapolation_value", 0.0), y)
    return y


def _resize(node: Node, x: Value, roi: Value, scales: Value, sizes: Value) -> Value:
    mode = node.attr("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise node.unsupported(f"mode={mode!r} (nearest and linear are supported)")
    coord_mode = node.attr("coordinate_transformation_mode", "half_pixel")
    axes = node.attr("axes")
    axes = list(range(x.ndim)) if axes is None else [a % x.ndim for a in axes]
    in_sizes = [x.shape[a] for a in axes]
    if sizes is not None and np.size(sizes):
        sizes = _ints(static(node, sizes, "sizes"))
        policy = node.attr("keep_aspect_ratio_policy", "stretch")
        scl = [np.float32(o) / np.float32(i) for o, i in zip(sizes, in_sizes, strict=True)]
        if policy != "stretch":
            s = min(scl) if policy == "not_larger" else max(scl)
            scl = [s] * len(axes)
            sizes = [math.floor(s * i + 0.5) for i in in_sizes]
        outs = sizes
    else:
        scl = [np.float32(v) for v in np.asarray(static(node, scales, "scales")).reshape(-1)]
        outs = [math.floor(np.float32(i) * s) for i, s in zip(in_sizes, scl, strict=True)]
    r = (
        None
        if roi is None or np.size(roi) == 0
        else np.asarray(static(node, roi, "roi"), np.float32).reshape(-1)
    )
    y = x
    for k, (a, o, s) in enumerate(zip(axes, outs, scl, strict=True)):
        axis_roi = None
        if coord_mode == "tf_crop_and_resize":
            if r is None:
                raise node.unsupported("tf_crop_and_resize needs an roi input")
            axis_roi = (float(r[k]), float(r[k + len(axes)]))
        elif o == x.shape[a] and s == 1.0:
            continue  # every other coordinate mode is the identity at scale 1
        y = _resize_axis(y, a, o, s, node, coord_mode, mode, axis_roi)
    return y


@op("Resize", min_version=10, static=(1, 2, 3))
def resize(
    node: Node, x: Value, roi: Value = None, scales: Value = None, sizes: Value = None
) -> Value:
    if node.version == 10:  # Resize-10 takes (X, scales) and behaves like asymmetric Upsample
        node.attrs.setdefault("coordinate_transformation_mode", "asymmetric")
        node.attrs.setdefault("nearest_mode", "floor")
        return _resize(node, x, None, roi, None)
    return _resize(node, x, roi, scales, sizes)


@op("Upsample", min_version=7, static=(1,))
def upsample(node: Node, x: Value, scales: Value = None) -> Value:
    # Upsample (deprecated at opset 10) is Resize with asymmetric coordinates; nearest
    # rounds down as in the original kernels.
    node.attrs.setdefault("coordinate_transformation_mode", "asymmetric")
    node.attrs.setdefault("nearest_mode", "floor")
    if node.version < 9:
        scales = np.asarray(node.attr("scales"), np.float32)
    if node.attr("mode", "nearest") == "bilinear":
        node.attrs["mode"] = "linear"
    return _resize(node, x, None, scales, None)


# --------------------------------------------------------------------------- quantisation


def _q_params_broadcast(node: Node, x: Value, p: Value) -> Value:
    """Shape a scale/zero point for per-tensor, per-axis or blocked quantisation."""
    xp = node.xp if is_static(p) else jnp
    if p.ndim == 0 or p.size == 1:
        return p.reshape(())
    axis = node.attr("axis", 1) % x.ndim
    block = node.attr("block_size", 0)
    if block:
        # Blocked (opset 21): p has x's rank and ceil(D / block) entries along `axis`.
        return xp.repeat(p, block, axis=axis)[(slice(None),) * axis + (slice(0, x.shape[axis]),)]
    shape = [1] * x.ndim
    shape[axis] = -1
    return p.reshape(shape)


@op("DequantizeLinear", min_version=10)
def dequantize_linear(node: Node, x: Value, scale: Value, zero_point: Value = None) -> Value:
    s = _q_params_broadcast(node, x, scale)
    y = x.astype(np.float32)
    if zero_point is not None:
        y = y - _q_params_broadcast(node, x, zero_point).astype(np.float32)
    return (y * s).astype(scale.dtype)


@op("QuantizeLinear", min_version=10)
def quantize_linear(node: Node, x: Value, scale: Value, zero_point: Value = None) -> Value:
    # Exact forward semantics: round half to even, saturate. The gradient through round is
    # zero, as in the graph itself; attacks that need one should use an STE surrogate.
    out_type = node.attr("output_dtype", 0)
    dt = (
        np.dtype(zero_point.dtype)
        if zero_point is not None
        else (np_dtype(out_type) if out_type else np.dtype(np.uint8))
    )
    if dt.kind not in "iu":
        raise node.unsupported(f"quantising to {dt} is not supported (integer types only)")
    xp = node.xp
    y = xp.round(x / _q_params_broadcast(node, x, scale))
    if zero_point is not None:
        y = y + _q_params_broadcast(node, x, zero_point).astype(y.dtype)
    info = np.iinfo(dt)
    return xp.clip(y, info.min, info.max).astype(dt)
