"""The project's 2-D convolutions, with backward passes that stay on XLA:CPU's fast path.

Every convolution in jaxcloak (the Flax layers in :mod:`jaxcloak.nets.layers`, the ONNX
converter's Conv, the depthwise fast path) goes through :func:`conv2d` or
:func:`depthwise_conv2d`. Both are ``jax.custom_vjp`` functions whose *input* gradient is an
ordinary forward convolution of the output gradient with the transposed, spatially flipped
kernel, written out explicitly rather than left to autodiff (where the kernel holds more
numbers than the activations, as in a ResNet's deep layers, the flip moves onto the
activations instead: inside a loop the kernel flip is redone on every iteration).

Why: inside ``lax.scan`` / ``while`` (every attack loop), XLA:CPU lowers the backward-input
convolution that autodiff derives (kernel layout ``01oi``) through a slow generic path instead
of the fused kernels forward convolutions get; a small 3x3 stack ran about 5x slower per step
in a scan than outside one (``benchmarks/bench_conv.py``). The same arithmetic phrased as a
forward convolution with an HWIO kernel runs at forward speed. The backward-filter
convolution has the same problem (10-17x slower in a scan), so the *weight* gradient is a
canonical forward convolution, or one matrix product per tap for 1x1 and grouped kernels
(only needed when training, e.g. MAP's score network; XLA removes it when the weights are
constants, as in every FaceCloak attack).

All arrays are channel-last: inputs NHWC, kernels HWIO, depthwise taps (kh, kw, C).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp

__all__ = [
    "DEPTHWISE_MAX_TAPS",
    "conv2d",
    "depthwise_conv2d",
    "depthwise_fits",
    "input_grad_padding",
]

Pads = tuple[tuple[int, int], tuple[int, int]]

# Largest kernel area (kh * kw) the shifted-slice depthwise form unrolls into; beyond it the
# program grows too large to be worth it (a window that covers the whole input, like
# MobileFaceNet's 7x7 global depthwise, is an einsum instead and has no such limit).
DEPTHWISE_MAX_TAPS = 25

_DIMS = ("NHWC", "HWIO", "NHWC")


def _as_pads(padding: Sequence[Sequence[int]]) -> Pads:
    (a, b), (c, d) = padding
    return (int(a), int(b)), (int(c), int(d))


def input_grad_padding(
    in_size: int, out_size: int, kernel: int, stride: int, dilation: int, pad_lo: int
) -> tuple[int, int]:
    """Padding of the (stride-dilated) output gradient for the input-gradient convolution.

    The forward convolution reads ``in_size + pad_lo + pad_hi`` cells with an effective kernel
    ``ek = (kernel - 1) * dilation + 1``; the gradient spreads each output cell back over the
    cells it read, which is a full correlation of the stride-dilated gradient with the flipped
    kernel, cropped to ``in_size``. Either side may come out negative (a crop), which
    ``lax.conv_general_dilated`` accepts.
    """
    ek = (kernel - 1) * dilation + 1
    lo = ek - 1 - pad_lo
    hi = in_size + pad_lo - (out_size - 1) * stride - 1
    return lo, hi


def _transposed_kernel(w: jax.Array, groups: int, flip: bool = True) -> jax.Array:
    """HWIO kernel of the input-gradient convolution: per group, I and O swapped; flipped
    spatially unless ``flip`` is false (the caller then flips the activations instead)."""
    kh, kw, ig, c_out = w.shape
    og = c_out // groups
    wt = w.reshape(kh, kw, ig, groups, og).transpose(0, 1, 4, 3, 2).reshape(kh, kw, og, groups * ig)
    return jnp.flip(wt, axis=(0, 1)) if flip else wt


def _forward(x, w, strides, padding, dilation, groups, precision):
    return jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=strides,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=_DIMS,
        feature_group_count=groups,
        precision=precision,
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv2d(x, w, strides, padding, dilation, groups, precision):
    return _forward(x, w, strides, padding, dilation, groups, precision)


def _conv2d_fwd(x, w, strides, padding, dilation, groups, precision):
    return _forward(x, w, strides, padding, dilation, groups, precision), (x, w)


def _conv2d_bwd(strides, padding, dilation, groups, precision, res, g):
    x, w = res
    kh, kw = w.shape[0], w.shape[1]
    pads = tuple(
        input_grad_padding(
            x.shape[1 + a], g.shape[1 + a], (kh, kw)[a], strides[a], dilation[a], padding[a][0]
        )
        for a in range(2)
    )
    # The spatial flip of the kernel can move onto the activations: correlating with a
    # flipped kernel is flipping input and output and correlating with the kernel as is
    # (pads mirrored). Inside an attack loop the kernel flip is redone on every iteration
    # (XLA does not hoist it), which for the deep layers of a ResNet moves more bytes than
    # the activations: flip whichever is smaller.
    flip_acts = kh * kw > 1 and w.size > g.size + x.size
    g_in = jnp.flip(g, axis=(1, 2)) if flip_acts else g
    if flip_acts:
        pads = tuple((hi, lo) for lo, hi in pads)
    # (Naming the kernel's axes HWOI instead of transposing it sends XLA:CPU down a slow
    # path: IR-50's step took twice as long.)
    dx = jax.lax.conv_general_dilated(
        g_in,
        _transposed_kernel(w, groups, flip=not flip_acts).astype(g.dtype),
        window_strides=(1, 1),
        padding=pads,
        lhs_dilation=strides,
        rhs_dilation=dilation,
        dimension_numbers=_DIMS,
        feature_group_count=groups,
        precision=precision,
    )
    if flip_acts:
        dx = jnp.flip(dx, axis=(1, 2))
    dw = _weight_grad(x, g, (kh, kw), strides, padding, dilation, groups, precision)
    return dx.astype(x.dtype), dw.astype(w.dtype)


def _windows(xp, kernel, strides, dilation, out_hw):
    """Yield ``(i, j, xp[:, h*sh + i*dh, w*sw + j*dw, :])`` for every kernel tap."""
    (sh, sw), (dh, dw), (oh, ow) = strides, dilation, out_hw
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield (
                i,
                j,
                xp[
                    :,
                    i * dh : i * dh + (oh - 1) * sh + 1 : sh,
                    j * dw : j * dw + (ow - 1) * sw + 1 : sw,
                    :,
                ],
            )


def _weight_grad(x, g, kernel, strides, padding, dilation, groups, precision):
    """d(loss)/d(kernel), phrased as forward ops (dead code when the kernel is constant).

    ``dw[i, j] = sum_nhw xpad[n, h*sh + i*dh, w*sw + j*dw, :]^T g[n, h, w, :]`` per group.
    Why: the backward-filter convolution autodiff derives runs 10-17x slower inside
    ``lax.scan`` on XLA:CPU (MAP's DDIM chain trains its score network through one), while a
    canonical forward convolution, or one matrix product per tap (1x1 and grouped kernels),
    runs at full speed in or out of a loop.
    """
    n, oh, ow, c_out = g.shape
    if groups == 1 and kernel != (1, 1):
        # One forward convolution in canonical NHWC/HWIO form: the input with batch and
        # channels swapped, correlated with the output gradient as kernel (its taps spaced by
        # the stride), then cropped to the kernel's extent. A single op keeps unrolled
        # programs (MAP's DDIM chain) small where per-tap products would multiply them.
        out = jax.lax.conv_general_dilated(
            jnp.transpose(x, (3, 1, 2, 0)),
            jnp.transpose(g, (1, 2, 0, 3)).astype(x.dtype),
            window_strides=dilation,
            padding=padding,
            rhs_dilation=strides,
            dimension_numbers=_DIMS,
            precision=precision,
        )
        return jnp.transpose(out[:, : kernel[0], : kernel[1], :], (1, 2, 0, 3))
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    ig, og = x.shape[-1] // groups, c_out // groups
    gg = g.reshape(n, oh, ow, groups, og)
    taps = [
        jnp.einsum(
            "nhwgc,nhwgo->cgo",
            win.reshape(n, oh, ow, groups, ig),
            gg,
            precision=precision,
        ).reshape(ig, c_out)
        for _, _, win in _windows(xp, kernel, strides, dilation, (oh, ow))
    ]
    return jnp.stack(taps).reshape(*kernel, ig, c_out)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d(
    x: jax.Array,
    w: jax.Array,
    strides: Sequence[int] = (1, 1),
    padding: Sequence[Sequence[int]] = ((0, 0), (0, 0)),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
    precision: jax.lax.Precision | None = None,
) -> jax.Array:
    """2-D cross-correlation, NHWC input and HWIO kernel, as ``lax.conv_general_dilated``.

    Args:
      x: (N, H, W, C_in).
      w: (kh, kw, C_in // groups, C_out).
      strides: (sh, sw).
      padding: ((top, bottom), (left, right)) zero padding.
      dilation: (dh, dw) kernel dilation.
      groups: feature groups (``C_in`` and ``C_out`` divisible by it).
      precision: passed to XLA for both the forward and the gradient convolutions.

    Returns:
      (N, H', W', C_out). Differentiable in ``x`` and ``w``; see the module docstring for how.
    """
    return _conv2d(
        x,
        w,
        tuple(int(s) for s in strides),
        _as_pads(padding),
        tuple(int(d) for d in dilation),
        int(groups),
        precision,
    )


def _slices(xp, taps, strides, dilation, out_hw):
    """sum_ij xp[:, h*sh + i*dh, w*sw + j*dw, :] * taps[i, j] over an already padded input."""
    y = None
    for i, j, win in _windows(xp, taps.shape[:2], strides, dilation, out_hw):
        term = win * taps[i, j]
        y = term if y is None else y + term
    return y


def _out_size(size, lo, hi, k, s, d):
    return (size + lo + hi - (k - 1) * d - 1) // s + 1


def _dw_forward(x, taps, strides, padding, dilation):
    kh, kw = taps.shape[0], taps.shape[1]
    oh = _out_size(x.shape[1], *padding[0], kh, strides[0], dilation[0])
    ow = _out_size(x.shape[2], *padding[1], kw, strides[1], dilation[1])
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    if oh == ow == 1 and dilation == (1, 1):
        # One window over (a crop of) the padded input, e.g. a global depthwise: an einsum
        # reduction instead of kh * kw slices.
        return jnp.einsum("nhwc,hwc->nc", xp[:, :kh, :kw, :], taps)[:, None, None, :]
    return _slices(xp, taps, strides, dilation, (oh, ow))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise(x, taps, strides, padding, dilation):
    return _dw_forward(x, taps, strides, padding, dilation)


def _depthwise_fwd(x, taps, strides, padding, dilation):
    return _dw_forward(x, taps, strides, padding, dilation), (x, taps)


def _dilate(g: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """Insert ``s - 1`` zeros between neighbouring cells along H and W."""
    sh, sw = strides
    if sh == sw == 1:
        return g
    n, h, w, c = g.shape
    out = jnp.zeros((n, (h - 1) * sh + 1, (w - 1) * sw + 1, c), g.dtype)
    return out.at[:, ::sh, ::sw, :].set(g)


def _depthwise_bwd(strides, padding, dilation, res, g):
    x, taps = res
    kh, kw = taps.shape[0], taps.shape[1]
    if g.shape[1] == g.shape[2] == 1 and dilation == (1, 1):
        # The single-window einsum: its autodiff gradients are one broadcast product each.
        pull = jax.vjp(lambda x_, t: _dw_forward(x_, t, strides, padding, dilation), x, taps)[1]
        return pull(g)
    (plo_h, phi_h), (plo_w, phi_w) = [
        input_grad_padding(
            x.shape[1 + a], g.shape[1 + a], (kh, kw)[a], strides[a], dilation[a], padding[a][0]
        )
        for a in range(2)
    ]
    gd = _dilate(g, strides)
    # Negative padding is a crop; one pad for the positive parts, one slice for the negative.
    gp = jnp.pad(
        gd, ((0, 0), (max(plo_h, 0), max(phi_h, 0)), (max(plo_w, 0), max(phi_w, 0)), (0, 0))
    )
    gp = gp[
        :,
        max(-plo_h, 0) : gp.shape[1] - max(-phi_h, 0),
        max(-plo_w, 0) : gp.shape[2] - max(-phi_w, 0),
        :,
    ]
    flipped = jnp.flip(taps, axis=(0, 1))
    dx = _slices(gp, flipped.astype(g.dtype), (1, 1), dilation, x.shape[1:3])
    # Taps gradient: one per-channel reduction per tap (dead code when the taps are constant).
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    dtaps = jnp.stack(
        [
            jnp.einsum("nhwc,nhwc->c", win, g)
            for _, _, win in _windows(xp, (kh, kw), strides, dilation, g.shape[1:3])
        ]
    ).reshape(kh, kw, -1)
    return dx.astype(x.dtype), dtaps.astype(taps.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv2d(
    x: jax.Array,
    taps: jax.Array,
    strides: Sequence[int],
    dilation: Sequence[int],
    pads: Sequence[Sequence[int]],
    *,
    channels_last: bool = True,
) -> jax.Array:
    """Depthwise 2-D convolution (channel multiplier 1) as a sum of shifted, strided slices.

    ``y[n, h, w, c] = sum_ij xpad[n, h*sh + i*dh, w*sw + j*dw, c] * taps[i, j, c]``, what
    ``lax.conv_general_dilated`` computes with ``feature_group_count == C``.

    Why: XLA:CPU runs grouped convolutions through a slow generic path; this form fuses into
    one elementwise loop and is several times faster on CPU for small kernels. Its input
    gradient is again a shifted-slice depthwise (one pad of the stride-dilated gradient,
    flipped taps) instead of autodiff's per-slice pads. A single window (output 1x1, e.g. a
    7x7 global depthwise on a 7x7 map) is an einsum. Products accumulate in the input dtype,
    so float32 input gives full float32 accuracy.

    Args:
      x: (N, H, W, C) if ``channels_last`` else (N, C, H, W).
      taps: (kh, kw, C) per-channel filter taps.
      strides: (sh, sw).
      dilation: (dh, dw).
      pads: ((top, bottom), (left, right)) zero padding.
      channels_last: layout of ``x`` and of the result; channel-first input is transposed
        to channel-last and back.

    Returns:
      Same layout as ``x``.
    """
    args = (tuple(int(s) for s in strides), _as_pads(pads), tuple(int(d) for d in dilation))
    if channels_last:
        return _depthwise(x, taps, *args)
    y = _depthwise(jnp.transpose(x, (0, 2, 3, 1)), taps, *args)
    return jnp.transpose(y, (0, 3, 1, 2))


def depthwise_fits(
    kernel: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    in_hw: Sequence[int],
    pads: Sequence[Sequence[int]],
) -> bool:
    """Whether :func:`depthwise_conv2d` beats XLA:CPU's grouped convolution for this shape:
    few taps, or (undilated) a single window over the padded input."""
    if math.prod(kernel) <= DEPTHWISE_MAX_TAPS:
        return True
    return tuple(dilation) == (1, 1) and all(
        _out_size(size, lo, hi, k, s, 1) == 1
        for size, (lo, hi), k, s in zip(in_hw, pads, kernel, strides, strict=True)
    )
