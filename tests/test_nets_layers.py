"""The torch-mirroring layers against torch itself: grouped/rectangular convs and max pooling."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxcloak.nets import layers  # noqa: E402
from jaxcloak.nets.layers import Conv2d, depthwise_conv2d, max_pool2d  # noqa: E402

RTOL = 2e-6


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "padding", "groups"),
    [
        (8, 16, 3, 2, 1, 1),
        (8, 8, 3, 1, 1, 8),  # depthwise
        (8, 12, 1, 1, 0, 4),  # grouped 1x1
        (6, 10, (1, 7), 1, (0, 3), 1),  # FaceNet Block17's 1x7
        (6, 10, (3, 1), (2, 1), (1, 0), 2),
    ],
)
def test_conv2d_matches_torch(cin, cout, kernel, stride, padding, groups) -> None:
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=True)
    x = torch.randn(2, cin, 15, 13)
    ours = Conv2d(
        cin,
        cout,
        kernel,
        stride=stride,
        padding=padding,
        groups=groups,
        bias=True,
        rngs=nnx.Rngs(0),
    )
    ours.weight[...] = jnp.asarray(ref.weight.detach().numpy().transpose(2, 3, 1, 0))
    ours.bias[...] = jnp.asarray(ref.bias.detach().numpy())
    got = np.asarray(ours(jnp.asarray(_nhwc(x))))
    want = _nhwc(ref(x))
    assert got.shape == want.shape
    assert np.abs(got - want).max() / np.abs(want).max() < RTOL


def test_conv2d_rejects_indivisible_groups() -> None:
    with pytest.raises(ValueError, match="groups"):
        Conv2d(6, 8, 3, groups=4, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"), [(3, 2, 0), (1, 2, 0), (3, 2, 1), (2, None, 0), (3, 1, 1)]
)
def test_max_pool_matches_torch(kernel, stride, padding) -> None:
    x = torch.randn(2, 5, 15, 12) - 3.0  # mostly negative: a zero-padded max would show
    want = _nhwc(torch.nn.functional.max_pool2d(x, kernel, stride, padding))
    got = np.asarray(max_pool2d(jnp.asarray(_nhwc(x)), kernel, stride, padding))
    np.testing.assert_array_equal(got, want)


def _rel(got: jax.Array, want: jax.Array) -> float:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    return float(np.abs(got - want).max() / np.abs(want).max())


_DW_CASES = pytest.mark.parametrize(
    ("kernel", "stride", "padding"),
    [
        ((3, 3), 1, 0),
        ((3, 3), 1, 1),
        ((3, 3), 2, 0),
        ((3, 3), 2, 1),
        ((1, 3), 1, 0),
        ((1, 3), 1, 1),
        ((1, 3), 2, 0),
        ((1, 3), 2, 1),
    ],
)


@_DW_CASES
@pytest.mark.parametrize("channels_last", [True, False])
def test_depthwise_conv2d_matches_grouped_lax_conv(kernel, stride, padding, channels_last) -> None:
    """The shifted-slices fast path against XLA's grouped convolution, forward and input grad."""
    c = 6
    kx, kt, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 15, 13, c))  # NHWC
    taps = jax.random.normal(kt, (*kernel, c))
    strides, pads = (stride, stride), ((padding, padding), (padding, padding))
    layout = ("NHWC", "HWIO", "NHWC") if channels_last else ("NCHW", "HWIO", "NCHW")
    if not channels_last:
        x = jnp.transpose(x, (0, 3, 1, 2))

    def fast(x):
        return depthwise_conv2d(x, taps, strides, (1, 1), pads, channels_last=channels_last)

    def slow(x):
        return jax.lax.conv_general_dilated(
            x,
            taps[:, :, None, :],
            window_strides=strides,
            padding=pads,
            dimension_numbers=layout,
            feature_group_count=c,
            precision=jax.lax.Precision.HIGHEST,
        )

    want = slow(x)
    assert _rel(fast(x), want) <= 1e-6
    cot = jax.random.normal(kg, want.shape)
    g_fast = jax.grad(lambda x: jnp.sum(fast(x) * cot))(x)
    g_slow = jax.grad(lambda x: jnp.sum(slow(x) * cot))(x)
    assert _rel(g_fast, g_slow) <= 1e-6


@_DW_CASES
def test_conv2d_depthwise_fast_path_matches_lax(kernel, stride, padding, monkeypatch) -> None:
    """``Conv2d`` routes depthwise convs through the fast path on CPU; same values and grads."""
    if jax.default_backend() != "cpu":
        pytest.skip("the fast path is CPU-only")
    c = 8
    conv = Conv2d(
        c, c, kernel, stride=stride, padding=padding, groups=c, bias=True, rngs=nnx.Rngs(0)
    )
    conv.bias[...] = jax.random.normal(jax.random.key(1), (c,))
    x = jax.random.normal(jax.random.key(2), (2, 14, 11, c))
    w = conv.weight[...]

    def slow(x):
        y = jax.lax.conv_general_dilated(
            x,
            w,
            window_strides=(stride, stride),
            padding=((padding, padding), (padding, padding)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=c,
            precision=jax.lax.Precision.HIGHEST,
        )
        return y + conv.bias[...]

    calls = []
    real = layers.depthwise_conv2d
    monkeypatch.setattr(
        layers, "depthwise_conv2d", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    want = slow(x)
    assert _rel(conv(x), want) <= 1e-6
    assert calls, "Conv2d did not take the depthwise fast path"
    cot = jax.random.normal(jax.random.key(3), want.shape)
    g_fast = jax.grad(lambda x: jnp.sum(conv(x) * cot))(x)
    g_slow = jax.grad(lambda x: jnp.sum(slow(x) * cot))(x)
    assert _rel(g_fast, g_slow) <= 1e-6
