"""The torch-mirroring layers against torch itself: grouped/rectangular convs and max pooling."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxcloak.nets.layers import Conv2d, max_pool2d  # noqa: E402

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
