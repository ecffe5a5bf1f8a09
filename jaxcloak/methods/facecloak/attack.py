"""FaceCloak stage 2: learn one identity's universal mask as a single ``lax.scan``.

Two algorithms, one file each (docs/facecloak.md, "Two modes" and "Stage 2: the mask"):
:mod:`.faithful`, ``afog_cloak_multi`` as the reference ships it, and :mod:`.fixed`, the
corrected update with the transfer components; :mod:`.stage2` holds what they share.

Write-for-one-identity: :func:`make_cloak` returns a pure function for one identity;
:func:`make_batched_cloak` vmaps it over identities and jits it once per (batch, config).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from ...objectives import facecloak as obj
from ...typing import EmbedFn
from .config import CloakConfig
from .faithful import make_faithful_cloak
from .fixed import make_fixed_cloak
from .stage2 import CloakResult

__all__ = ["highpass_for", "make_batched_cloak", "make_cloak"]


def make_cloak(embed: EmbedFn, config: CloakConfig, size: int = 112) -> Callable[..., CloakResult]:
    """Build the stage-2 optimisation for ONE identity (pure; jit/vmap at the call site).

    The returned ``cloak(params, views, e_similar, e_distant, highpass, taps, *, key)`` takes
      params: the surrogate's weights (never differentiated),
      views: (V, S, S, 3) float32 RGB [0, 1] aligned views, the real face last,
      e_similar, e_distant: (D,) unit anchor embeddings e+ and e-,
      highpass: (S, S, 3) high-pass mask F of the real face (zeros when unused),
      taps: ``(pos, w)`` of :func:`jaxcloak.faces.chain.paste_realign_taps` for the real
        face's photo: in the fixed mode the real view sees the delta exactly as it will be
        after paste-back and re-alignment (``identity_taps`` when there is no photo),
      key: PRNG key for the initial rho (and fixed-mode randomness),
    and returns a :class:`CloakResult`. Loss: cos(phi(x), e+) - cos(phi(x), e-) (the shipped
    triplet loss with cosine distance).
    """
    make = make_faithful_cloak if config.mode == "faithful" else make_fixed_cloak
    return make(embed, config, size)


def make_batched_cloak(embed: EmbedFn, config: CloakConfig, size: int = 112) -> Callable:
    """Jitted stage 2 for many identities: ``fn(params, views, e_sim, e_dist, hp, taps, keys)``.

    Shapes: views (B, V, S, S, 3), e_sim/e_dist (B, D), hp (B, S, S, 3), taps a pair
    ((B, 4, S, S, 2), (B, 4, S, S)), keys a batch of typed keys. One compile per
    (B, V, config); params are an argument, so the weights are not baked into the program.
    """
    one = make_cloak(embed, config, size)

    def batched(params, views, e_sim, e_dist, highpass, taps, keys):
        return jax.vmap(lambda v, s, d, h, t, k: one(params, v, s, d, h, t, key=k))(
            views, e_sim, e_dist, highpass, taps, keys
        )

    return jax.jit(batched)


def highpass_for(faces: np.ndarray) -> np.ndarray:
    """(B, S, S, 3) high-pass masks of the real faces (host side; uint8 or [0, 1] input)."""
    return np.stack([obj.highpass_mask(f) for f in faces]).astype(np.float32)
