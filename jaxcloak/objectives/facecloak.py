"""FaceCloak's objective and its key-region operator (docs/facecloak.md, "Stage 2: the mask")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..faces.align import ARCFACE_TEMPLATE

#: Reference budget of the sticker and high-pass regions, in reference [-1, 1] units.
STICKER_MAX = 32 / 255


def triplet_loss(e: jax.Array, e_similar: jax.Array, e_distant: jax.Array) -> jax.Array:
    """``cos(e, e+) - cos(e, e-)`` on unit embeddings (D,): minimising it moves the face's
    embedding away from the similar anchor e+ and toward the distant anchor e- (the shipped
    ``triplet_loss`` with cosine distance)."""
    return jnp.dot(e, e_similar) - jnp.dot(e, e_distant)


def sticker_boxes(size: int = 112, landmarks: np.ndarray | None = None) -> np.ndarray:
    """The reference's four key-region boxes (right eye, left eye, nose, mouth) as masks.

    Box sizes (height x width) at 112 px: eyes 10 x 22, nose 28 x 22, mouth 28 x W with W the
    mouth-corner distance rounded up to even, centred on the landmarks with integer slicing as
    ``StickerHandler`` does. Landmarks default to the ArcFace template, i.e. the landmarks of
    any aligned crop, so the boxes sit where the mask is applied (docs/facecloak.md, "Defect:
    mask placement and stale landmarks"). Boxes are clipped to the crop rather than silently
    dropped ("Defect: stickers dropped at the crop edge").

    Returns:
      (4, size, size) float32 binary masks.
    """
    lm = ARCFACE_TEMPLATE * (size / 112.0) if landmarks is None else np.asarray(landmarks)
    k = size / 112.0
    pts = [(int(x), int(y)) for x, y in lm]
    w_mouth = pts[4][0] - pts[3][0]
    w_mouth += w_mouth % 2
    spec = [  # (centre, height, width)
        (pts[0], 10, 22),
        (pts[1], 10, 22),
        (pts[2], 28, 22),
        (((pts[3][0] + pts[4][0]) // 2, (pts[3][1] + pts[4][1]) // 2), 28, w_mouth / k),
    ]
    masks = np.zeros((4, size, size), np.float32)
    for i, ((cx, cy), h, w) in enumerate(spec):
        h2, w2 = round(h * k) // 2, round(w * k) // 2
        y0, y1 = max(0, cy - h2), min(size, cy + h2)
        x0, x1 = max(0, cx - w2), min(size, cx + w2)
        masks[i, y0:y1, x0:x1] = 1.0
    return masks


def highpass_mask(face: np.ndarray) -> np.ndarray:
    """The reference's high-pass mask F = 1[standardise(s - blur(s)) > 0] (``HighpassHandler``).

    Args:
      face: (S, S, 3) aligned face, uint8 or float in [0, 1].

    Returns:
      (S, S, 3) float32 binary mask; a Gaussian blur with kernel 23 and sigma 3 and reflect
      padding (torchvision's), one global mean for the standardisation (its std does not change
      the sign, so it is not computed).
    """
    import cv2

    face = np.asarray(face)
    x = face.astype(np.float32) / 255.0 if face.dtype == np.uint8 else face.astype(np.float32)
    x = 2.0 * x - 1.0  # the reference's [-1, 1] units
    detail = x - cv2.GaussianBlur(x, (23, 23), 3.0, borderType=cv2.BORDER_REFLECT_101)
    return (detail > detail.mean()).astype(np.float32)


def budget_map(
    eps: float,
    size: int = 112,
    *,
    boxes: np.ndarray | None = None,
    box_eps: float = STICKER_MAX,
    highpass: np.ndarray | None = None,
    highpass_eps: float = STICKER_MAX,
) -> np.ndarray:
    """Per-pixel L-inf budget: ``eps`` everywhere, larger inside the key regions when given.

    This is the region operator A of the paper's figure put inside the loss, the fixed mode's
    correction (docs/facecloak.md, "Defect: key regions outside the loss"): the perturbation
    may spend ``box_eps`` in the eye/nose/mouth boxes and ``highpass_eps`` on the
    high-frequency pixels, as the reference's stickers and high-pass handler do after the fact.

    Returns:
      (size, size, 3) float32 budget in the same units as ``eps``.
    """
    out = np.full((size, size, 3), eps, np.float32)
    if boxes is not None:
        inside = np.clip(boxes.sum(0), 0, 1)[..., None]
        out = np.maximum(out, inside * box_eps)
    if highpass is not None:
        out = np.maximum(out, highpass * highpass_eps)
    return out


def faithful_region_mask(p: jax.Array, boxes: jax.Array, highpass: jax.Array | None) -> jax.Array:
    """Grey-level extra mask the reference adds after the loop (stickers, high-pass), as coded.

    Stickers: ``clamp(sum_b M_b * clamp(P, +-c), +-c)`` scaled by 255 and floored by the int16
    cast of ``region + x``; high-pass: ``h = clamp(P * F, +-c)`` added **unscaled**, so its only
    effect is -1 grey level where h < 0 (docs/facecloak.md, "Defect: unscaled high-pass mask").

    Args:
      p: (S, S, 3) final alpha * rho in reference units.
      boxes: (4, S, S) sticker masks.
      highpass: (S, S, 3) F, or None when the high-pass handler is off.
    """
    c = STICKER_MAX
    per_box = boxes[..., None] * jnp.clip(p, -c, c)[None]
    out = jnp.floor(jnp.clip(jnp.sum(255.0 * per_box, axis=0), -255 * c, 255 * c))
    if highpass is not None:
        h = jnp.clip(p * highpass, -c, c)
        out = out + jnp.floor(h)  # -1 where h < 0, 0 elsewhere (|h| < 1)
    return out


def perceptual_budget(
    face: jax.Array, eps: float, *, lo: float = 0.5, hi: float = 2.0, sigma: float = 2.0
) -> jax.Array:
    """Per-pixel L-inf budget that spends more where a change is least visible.

    Texture masking: the local contrast (standard deviation of luminance in a Gaussian window
    of ``sigma`` px) relative to its mean over the crop scales ``eps``, clipped to
    ``[lo, hi] * eps``: flat skin gets less, hair, brows and edges get more. Luminance masking:
    very dark and very bright pixels (where the eye and JPEG both see less) get up to a quarter
    more. Computed from the clean face inside the compiled program.

    Args:
      face: (S, S, 3) clean face in [0, 1].
      eps: the nominal budget (any units; the map is in the same).

    Returns:
      (S, S, 3) budget, each entry in ``[lo * eps, hi * eps]``.
    """
    from ..faces.augment import gaussian_blur

    y = jnp.sum(face * jnp.array([0.299, 0.587, 0.114], face.dtype), axis=-1, keepdims=True)
    mean = gaussian_blur(y, sigma)
    var = jnp.maximum(gaussian_blur(y * y, sigma) - mean * mean, 0.0)
    tex = jnp.sqrt(var + 1e-8)
    rel = tex / (jnp.mean(tex) + 1e-8)
    lum = 1.0 + 0.25 * jnp.abs(2.0 * mean - 1.0) ** 2
    m = jnp.clip(rel * lum, lo, hi)
    return jnp.broadcast_to(eps * m, face.shape).astype(jnp.float32)
