"""The custom-gradient convolutions against autodiff of ``lax.conv_general_dilated``.

Forward values and both gradients (input and weight) must agree to 1e-5 relative across the
strides, paddings (symmetric, asymmetric, and the negative crop an input-gradient padding
can need), dilations and group counts the project uses; also inside a ``lax.scan``, where the
custom input gradient exists to be used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcloak.ops.conv import conv2d, depthwise_conv2d, depthwise_fits

TOL = 1e-5
HIGHEST = jax.lax.Precision.HIGHEST


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))


def _reference(x, w, strides, padding, dilation, groups):
    return jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=strides,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=HIGHEST,
    )


def _check(ours, ref, x, w, key) -> None:
    want = ref(x, w)
    assert ours(x, w).shape == want.shape
    assert _rel(ours(x, w), want) <= TOL
    cot = jax.random.normal(key, want.shape)
    g_ours = jax.grad(lambda x, w: jnp.sum(ours(x, w) * cot), argnums=(0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: jnp.sum(ref(x, w) * cot), argnums=(0, 1))(x, w)
    assert _rel(g_ours[0], g_ref[0]) <= TOL, "input gradient"
    assert _rel(g_ours[1], g_ref[1]) <= TOL, "weight gradient"


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "padding", "dilation", "groups"),
    [
        (4, 6, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
        (4, 6, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),  # even/odd sizes, stride 2
        (4, 6, (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
        (4, 6, (1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1), 1),  # strided 1x1 (downsample)
        (4, 6, (5, 5), (3, 2), ((2, 1), (0, 2)), (1, 1), 1),  # asymmetric pads, odd stride
        (4, 6, (3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2), 1),  # dilation
        (4, 6, (3, 3), (2, 1), ((0, 0), (1, 1)), (2, 1), 2),  # dilation + stride + groups
        (8, 8, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 8),  # depthwise
        (8, 12, (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1), 4),  # grouped 1x1
        (6, 10, (1, 7), (1, 1), ((0, 0), (3, 3)), (1, 1), 1),  # FaceNet's 1x7
        (4, 4, (7, 7), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),  # kernel wider than the stride
        (4, 4, (4, 4), (4, 4), ((0, 0), (0, 0)), (1, 1), 1),  # patchify; last cells unread
    ],
)
def test_conv2d_matches_autodiff(cin, cout, kernel, stride, padding, dilation, groups) -> None:
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 15, 14, cin))
    w = jax.random.normal(kw, (*kernel, cin // groups, cout))

    def ours(x, w):
        return conv2d(x, w, stride, padding, dilation, groups, HIGHEST)

    def ref(x, w):
        return _reference(x, w, stride, padding, dilation, groups)

    _check(ours, ref, x, w, kg)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "groups", "hw"),
    [
        ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, (4, 5)),  # a ResNet's last stage
        ((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 1, (7, 6)),  # strided, odd/even sizes
        ((3, 2), (2, 1), ((2, 0), (1, 1)), (2, 1), 2, (6, 5)),  # asymmetric, dilated, grouped
    ],
)
def test_conv2d_deep_layers_flip_activations_not_kernel(
    kernel, stride, padding, dilation, groups, hw
) -> None:
    """Where the kernel outweighs the activations, the input gradient flips the activations
    (mirrored pads) instead of the kernel: the same gradients."""
    cin, cout = 24, 32
    kx, kw, kg = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, (1, *hw, cin))
    w = jax.random.normal(kw, (*kernel, cin // groups, cout))

    def ours(x, w):
        return conv2d(x, w, stride, padding, dilation, groups, HIGHEST)

    def ref(x, w):
        return _reference(x, w, stride, padding, dilation, groups)

    assert w.size > ref(x, w).size + x.size  # the branch under test
    _check(ours, ref, x, w, kg)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "size"),
    [
        ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (15, 14)),
        ((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), (15, 14)),
        ((3, 3), (2, 2), ((0, 1), (1, 0)), (1, 1), (16, 13)),  # asymmetric (SAME_UPPER-like)
        ((5, 5), (1, 1), ((2, 2), (2, 2)), (1, 1), (15, 14)),
        ((3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2), (15, 14)),
        ((1, 3), (1, 2), ((0, 0), (1, 1)), (1, 1), (15, 14)),
        ((7, 7), (1, 1), ((0, 0), (0, 0)), (1, 1), (7, 7)),  # MobileFaceNet's global depthwise
        ((7, 7), (1, 1), ((0, 0), (0, 0)), (1, 1), (8, 8)),  # single window, one cell unread
    ],
)
def test_depthwise_matches_grouped_conv_autodiff(kernel, stride, padding, dilation, size) -> None:
    c = 6
    kx, kt, kg = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, (2, *size, c))
    taps = jax.random.normal(kt, (*kernel, c))

    def ours(x, t):
        return depthwise_conv2d(x, t, stride, dilation, padding, channels_last=True)

    def ref(x, t):
        return _reference(x, t[:, :, None, :], stride, padding, dilation, c)

    _check(ours, ref, x, taps, kg)


def test_depthwise_channel_first_is_the_same_function() -> None:
    x = jax.random.normal(jax.random.key(2), (2, 5, 9, 8))  # NCHW
    taps = jax.random.normal(jax.random.key(3), (3, 3, 5))
    pads = ((1, 1), (1, 1))
    first = depthwise_conv2d(x, taps, (2, 2), (1, 1), pads, channels_last=False)
    last = depthwise_conv2d(jnp.transpose(x, (0, 2, 3, 1)), taps, (2, 2), (1, 1), pads)
    np.testing.assert_allclose(first, jnp.transpose(last, (0, 3, 1, 2)), rtol=1e-6, atol=1e-6)


def test_conv2d_input_gradient_inside_scan_matches_autodiff() -> None:
    """The attack shape: a gradient step on the input of a small conv stack, in a scan."""
    ks = jax.random.split(jax.random.key(4), 4)
    ws = [jax.random.normal(k, (3, 3, 4, 4)) * 0.3 for k in ks[:3]]
    x0 = jax.random.normal(ks[3], (3, 12, 12, 4))

    def run(conv):
        def loss(x):
            for w in ws:
                x = jnp.tanh(conv(x, w))
            return jnp.sum(x**2)

        def body(x, _):
            return x - 0.1 * jax.grad(loss)(x), None

        return jax.jit(lambda x: jax.lax.scan(body, x, None, length=4)[0])(x0)

    ours = run(lambda x, w: conv2d(x, w, (1, 1), ((1, 1), (1, 1)), precision=HIGHEST))
    ref = run(lambda x, w: _reference(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1), 1))
    assert _rel(ours, ref) <= TOL


def test_depthwise_fits_covers_small_kernels_and_single_windows() -> None:
    none = ((0, 0), (0, 0))
    assert depthwise_fits((3, 3), (1, 1), (1, 1), (56, 56), ((1, 1), (1, 1)))
    assert depthwise_fits((7, 7), (1, 1), (1, 1), (7, 7), none)
    assert not depthwise_fits((7, 7), (1, 1), (1, 1), (14, 14), none)
    assert not depthwise_fits((7, 7), (1, 1), (2, 2), (7, 7), none)
