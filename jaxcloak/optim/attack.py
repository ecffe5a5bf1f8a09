"""FaceCloak's update rules as optax transformations (spec facecloak.md section 5).

optax descends (``params + updates``), so each transformation returns minus its step and the
attack objective is written to be minimised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def afog_attention(
    learning_rate: float, guard: float, ddof: int = 1
) -> optax.GradientTransformation:
    """AFOG's attention-map step: ``-lr * (g - mean g) / (std g + guard)`` per leaf.

    Mean and std run over every entry of the leaf (the reference: all 37,632 of a
    112x112x3 map), the std unbiased (``ddof=1``) as ``torch.std``. The reference's
    ``guard=0.01`` dominates the std of typical face-network gradients (defect D5), so its
    step is really ``~lr/0.01 * (g - mean g)``; the fixed mode uses ``guard=1e-12``.

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
