"""Shared type aliases and the one protocol attack code depends on."""

from __future__ import annotations

from typing import Any, Protocol

import jax

Params = Any  # a pytree of arrays
PRNGKey = jax.Array
Image = jax.Array  # (H, W, 3) float32 RGB in [0, 1]; batched: (N, H, W, 3)
Embedding = jax.Array  # (D,) unit norm; batched: (N, D)


class EmbedFn(Protocol):
    """``embed(params, images) -> embeddings``: NHWC RGB [0, 1] images to unit-norm rows."""

    def __call__(self, params: Params, images: Image) -> Embedding: ...
