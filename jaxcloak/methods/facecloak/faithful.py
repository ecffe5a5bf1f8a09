"""FaceCloak stage 2 as the reference ships it (``afog_cloak_multi``), for one identity.

T passes over the V views in list order, one batch-1 step per view, the attention step with
the 0.01 std guard, a sign step on rho, no projection inside the loop, the final
``clip(alpha * rho, +-eps)`` truncated like the reference's ``int16``, the mask scaled by 255,
stickers and high-pass added after the loop. What this keeps on purpose, and what
:mod:`.fixed` corrects: docs/facecloak.md, "Two modes" and "Defects of the reference".
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ...objectives import facecloak as obj
from ...typing import EmbedFn, Params, PRNGKey
from .config import CloakConfig
from .stage2 import CloakResult, stage2


def make_faithful_cloak(
    embed: EmbedFn, config: CloakConfig, size: int = 112
) -> Callable[..., CloakResult]:
    """The faithful stage 2 for ONE identity; the signature is :func:`.attack.make_cloak`'s."""
    cfg = config
    eps_ref = cfg.eps * cfg.to_ref
    # Host constants stay NumPy (baked into the traced program); jnp.asarray here would
    # compile a staging program per shape when the cloak is built.
    boxes = np.asarray(obj.sticker_boxes(size), np.float32)
    s2 = stage2(embed, cfg, cfg.step * cfg.to_ref)

    def cloak(params: Params, views, e_similar, e_distant, highpass, taps, *, key: PRNGKey):
        views_ref = 2.0 * jnp.asarray(views, jnp.float32) - 1.0
        n_views = views_ref.shape[0]
        e_clean = jax.lax.stop_gradient(s2.surrogate(params, views_ref))  # (V, D)
        state = s2.init(views_ref, eps_ref, key)
        budget = jnp.full_like(state.rho, eps_ref)
        loss_terms = s2.loss_terms(params, e_similar, e_distant, e_clean)

        def body(state, k):
            x = views_ref[k] + state.alpha * state.rho  # no clip of any kind, as the reference
            (loss, aux), g = jax.value_and_grad(
                lambda x: loss_terms(x[None], k[None]), has_aux=True
            )(x)
            new = s2.update(state, g, budget)
            p = new.alpha * new.rho
            # What the surrogate sees next step: the raw alpha * rho.
            stats = s2.stats(new, jnp.clip(p, -budget, budget), p)
            return new, {"loss": loss, **aux, **stats}

        order = jnp.tile(jnp.arange(n_views), cfg.passes)  # synthetic views, then real
        state, trace = jax.lax.scan(body, state, order)
        p = state.alpha * state.rho
        # int16(M) in the reference: truncation toward zero, then the regions' extras.
        mask = jnp.trunc(jnp.clip(p, -budget, budget) * cfg.mask_scale)
        if cfg.stickers or cfg.highpass:
            extra = obj.faithful_region_mask(
                p,
                boxes if cfg.stickers else jnp.zeros_like(boxes),
                highpass if cfg.highpass else None,
            )
            mask = mask + extra
        return CloakResult(mask.astype(jnp.float32), state.alpha, state.rho, trace)

    return cloak
