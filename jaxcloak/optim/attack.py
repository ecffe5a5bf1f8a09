"""FaceCloak's update rules as optax transformations (docs/facecloak.md, "Stage 2: the mask").

optax descends (``params + updates``), so each transformation returns minus its step and the
attack objective is written to be minimised.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def afog_attention(
    learning_rate: float, guard: float, ddof: int = 1
) -> optax.GradientTransformation:
    """AFOG's attention-map step: ``-lr * (g - mean g) / (std g + guard)`` per leaf.

    Mean and std run over every entry of the leaf (the reference: all 37,632 of a
    112x112x3 map), the std unbiased (``ddof=1``) as ``torch.std``. The reference's
    ``guard=0.01`` dominates the std of typical face-network gradients (docs/facecloak.md,
    "Defect: attention std guard"), so its step is really ``~lr/0.01 * (g - mean g)``; the
    fixed mode uses ``guard=1e-12``.

    Args:
      learning_rate: lambda_alpha (10 in the reference).
      guard: added to the std before dividing.
      ddof: delta degrees of freedom of the std.
    """

    def update_fn(updates, state, params=None):
        del params

        def step(g):
            g = jnp.asarray(g)
            std = jnp.std(g, ddof=ddof)
            return -learning_rate * (g - jnp.mean(g)) / (std + guard)

        return jax.tree.map(step, updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def sign_step(learning_rate: float | optax.Schedule) -> optax.GradientTransformation:
    """``-lr * sign(g)`` with ``sign(0) = 0`` (``jnp.sign``, like ``torch.sign``)."""
    return optax.sign_sgd(learning_rate)


def project_linf(x: jax.Array, bound: jax.Array | float) -> jax.Array:
    """Clip to ``[-bound, bound]`` elementwise; ``bound`` may be a per-pixel budget map."""
    return jnp.clip(x, -bound, bound)


def l1_normalized(g: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``g / mean|g|``: a direction whose scale no longer depends on the loss's."""
    return g / (jnp.mean(jnp.abs(g)) + eps)


def l1_normalize(eps: float = 1e-12) -> optax.GradientTransformation:
    """``g / mean|g|`` per leaf: MI-FGSM's normalisation, so momentum weighs steps equally."""

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: l1_normalized(g, eps), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def momentum_sign_step(
    learning_rate: float | optax.Schedule, decay: float, nesterov: bool = False
) -> optax.GradientTransformation:
    """MI-FGSM: ``m <- decay * m + g / mean|g|``, step ``-lr * sign(m)``.

    With ``nesterov`` the step uses ``g / mean|g| + decay * m`` (optax's Nesterov form of
    :func:`optax.trace`), a look-ahead along the accumulated direction.
    """
    return optax.chain(
        l1_normalize(), optax.trace(decay=decay, nesterov=nesterov), optax.sign_sgd(learning_rate)
    )


def gaussian_kernel(sigma: float) -> jax.Array:
    """(2r + 1, 2r + 1) normalised Gaussian, r = ceil(3 sigma)."""
    r = max(1, math.ceil(3 * sigma))
    t = jnp.arange(-r, r + 1, dtype=jnp.float32)
    k = jnp.exp(-0.5 * (t / sigma) ** 2)
    k2 = jnp.outer(k, k)
    return k2 / jnp.sum(k2)


def smooth_gradient(g: jax.Array, sigma: float) -> jax.Array:
    """Translation-invariant attack (TI): the (H, W, C) gradient convolved per channel with a
    Gaussian of ``sigma`` pixels, zero-padded to the same size. The step then moves every
    nearby shift of the face together, which transfers better to other networks."""
    k = gaussian_kernel(sigma)
    c = g.shape[-1]
    w = jnp.broadcast_to(k[:, :, None, None], (*k.shape, 1, c))
    y = jax.lax.conv_general_dilated(
        g[None],
        w.astype(g.dtype),
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
        # the attack's own arithmetic stays float32 under every network precision policy
        precision=jax.lax.Precision.HIGHEST,
    )
    return y[0]


def neighbourhood_gradient(
    grad_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x: jax.Array,
    key: jax.Array,
    n: int,
    radius: float,
) -> jax.Array:
    """Mean of ``grad_fn(x + r_i, k_i)`` over ``n`` points ``r_i ~ U[-radius, radius]^d``.

    Variance tuning (VT) adds the gap between this and the gradient at ``x`` to the next
    step's gradient, so the attack follows the neighbourhood rather than one point's
    gradient; each neighbour gets its own key (fresh transforms as well). Sequential
    (``lax.map``): one neighbour's activations are alive at a time.
    """

    def one(k):
        r = jax.random.uniform(k, x.shape, x.dtype, minval=-radius, maxval=radius)
        return grad_fn(x + r, k)

    return jnp.mean(jax.lax.map(one, jax.random.split(key, n)), axis=0)
