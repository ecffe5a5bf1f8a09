"""MAP's expression objective L_E on the fer mini-Xception (docs/map.md, "Choice: expression
model and loss").

Each loss is a pure function of the classifier's outputs, written for one example (logits (7,),
features (128,)); they broadcast over leading batch axes as well, or vmap at the call site.
The network side lives in :mod:`jaxcloak.nets.fer_xception`; a MAP step composes::

    x01 = (x_hat + 1) / 2                                   # generator output [-1, 1] -> [0, 1]
    face = crop_face_region(x01)                            # (N, 188, 188, 3) of a 256^2 image
    logits = expression_logits(params, face)                # (N, 7)
    loss = jax.vmap(fer_ce, in_axes=(0, None))(logits, emotion_index("happy")).mean()

Variants (named as in docs/map.md):

* ``fer_ce`` (default): -log softmax(z)[c*], the cross-entropy toward a target emotion.
* ``fer_align``: 1 - cos(h(x_hat), h(x_ref)) toward a reference face's features.
* ``fer_dir``: -log((1 + cos(n(h(x_hat) - h(x0)), n(h(x_ref) - h(x_ref_neutral)))) / 2), the
  directional form (CLIP-direction losses, with the fer features as the embedding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "DIFFAM_FACE_COLS",
    "DIFFAM_FACE_ROWS",
    "crop_face_region",
    "fer_align",
    "fer_ce",
    "fer_dir",
]

#: DiffAM's ID-loss crop of a 256x256 image: rows 35:223, columns 32:220 (188x188).
DIFFAM_FACE_ROWS = (35, 223)
DIFFAM_FACE_COLS = (32, 220)

# Norm floor of the cosines. Squared inside an rsqrt (see _unit), so a zero vector gives a zero
# direction with a finite gradient instead of jnp.linalg.norm's NaN.
_EPS = 1e-8


def _unit(v: jax.Array) -> jax.Array:
    """v / max(|v|, eps) over the last axis, NaN-free at v = 0 (value and gradient)."""
    return v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), _EPS**2))


def _cos(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.sum(_unit(a) * _unit(b), axis=-1)


def fer_ce(logits: jax.Array, target_index: int | jax.Array) -> jax.Array:
    """L_E variant ``fer_ce``: ``-log softmax(logits)[target_index]``.

    Args:
      logits: (7,) pre-softmax scores (:func:`~jaxcloak.nets.fer_xception.expression_logits`).
      target_index: the target emotion's index in ``EMOTIONS`` (``emotion_index("happy")``);
        may be traced.

    Returns:
      Scalar loss >= 0; 0 when the target's probability is 1.

    >>> round(float(fer_ce(jnp.zeros(7), 3)), 4)  # uniform: log 7
    1.9459
    """
    return -jnp.take(jax.nn.log_softmax(logits, axis=-1), target_index, axis=-1)


def fer_align(features: jax.Array, ref_features: jax.Array) -> jax.Array:
    """L_E variant ``fer_align``: ``1 - cos(h(x_hat), h(x_ref))``, in [0, 2].

    Args:
      features: (128,) pooled features of the generated face.
      ref_features: (128,) pooled features of a face showing the target expression.
    """
    return 1.0 - _cos(features, ref_features)


def fer_dir(
    features: jax.Array, features_src: jax.Array, ref: jax.Array, ref_neutral: jax.Array
) -> jax.Array:
    """L_E variant ``fer_dir``: ``-log((1 + cos(n(h - h_src), n(ref - ref_neutral))) / 2)``.

    The edit direction of the generated face (from its source) should point along the reference
    pair's direction (neutral -> target expression). 0 when aligned, log 2 when orthogonal or
    when ``features == features_src`` (no edit yet: the zero direction has a finite gradient),
    and large (``-log`` of a 1e-12 floor at most) when opposed.

    Args:
      features: (128,) h(x_hat), the generated face.
      features_src: (128,) h(x0), the same face before editing.
      ref: (128,) h(x_ref), a reference face with the target expression.
      ref_neutral: (128,) h(x_ref_neutral), the same reference person, neutral.
    """
    cos = _cos(features - features_src, ref - ref_neutral)
    return -jnp.log(jnp.maximum(0.5 * (1.0 + cos), 1e-12))


def crop_face_region(
    images: jax.Array,
    rows: tuple[int, int] = DIFFAM_FACE_ROWS,
    cols: tuple[int, int] = DIFFAM_FACE_COLS,
) -> jax.Array:
    """Static crop ``images[..., r0:r1, c0:c1, :]`` (DiffAM's face box of a 256x256 image).

    Args:
      images: (..., H, W, C), e.g. (256, 256, 3) or batched (N, 256, 256, 3).
      rows: (start, stop) row range, stop exclusive.
      cols: (start, stop) column range, stop exclusive.

    Returns:
      (..., r1 - r0, c1 - c0, C); (..., 188, 188, C) with the defaults.
    """
    (r0, r1), (c0, c1) = rows, cols
    h, w = images.shape[-3], images.shape[-2]
    if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
        raise ValueError(f"crop rows {rows}, cols {cols} do not fit an image of {h}x{w}")
    return images[..., r0:r1, c0:c1, :]
