"""The exact linear map "paste a crop-space delta into the photo, then align the face again".

Pasting (``paste_back``) and re-aligning (``align_face``) are two bilinear resamplings; composed,
crop pixel q receives sum_j w_j(q) * (mask * delta)(pos_j(q)): the four photo pixels around
M^-1 q, each reading the feathered delta at its own crop position. Precomputed on the host per
face as static-shape taps, so the attack can optimise the delta through the photo's real
geometry (a sign-like perturbation tuned to the crop grid alone loses most of its effect when
pasted back) and stay one compiled program for photos of any size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def paste_realign_taps(m: np.ndarray, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Taps of paste-then-realign for the photo -> crop matrix ``m`` (from ``align_face``).

    Returns:
      ``(pos, w)``: (4, S, S, 2) float32 crop positions (x, y) and (4, S, S) float32 weights;
      the feather mask is applied to the delta by :func:`apply_taps`.
    """
    m = np.asarray(m, np.float64)
    a_inv = np.linalg.inv(m[:, :2])
    qy, qx = np.mgrid[0:size, 0:size].astype(np.float64)
    q = np.stack([qx, qy], -1)  # (S, S, 2) as (x, y)
    p = (q - m[:, 2]) @ a_inv.T  # photo position each crop pixel reads
    p0 = np.floor(p)
    f = p - p0
    pos, w = [], []
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        pj = p0 + np.array([dx, dy], np.float64)
        pos.append(pj @ m[:, :2].T + m[:, 2])  # where that photo pixel reads the crop
        wx = f[..., 0] if dx else 1 - f[..., 0]
        wy = f[..., 1] if dy else 1 - f[..., 1]
        w.append(wx * wy)
    return np.stack(pos).astype(np.float32), np.stack(w).astype(np.float32)


def identity_taps(size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Taps of the identity map (no photo geometry known)."""
    return paste_realign_taps(np.array([[1.0, 0, 0], [0, 1.0, 0]]), size)


def _bilinear(img: jax.Array, pos: jax.Array) -> jax.Array:
    """(S, S, C) image read at (..., 2) (x, y) positions, zero outside (as BORDER_CONSTANT)."""
    coords = [pos[..., 1], pos[..., 0]]
    return jnp.stack(
        [
            jax.scipy.ndimage.map_coordinates(img[..., c], coords, order=1, mode="constant")
            for c in range(img.shape[-1])
        ],
        axis=-1,
    )


def apply_taps(delta: jax.Array, pos: jax.Array, w: jax.Array, mask: jax.Array) -> jax.Array:
    """(S, S, 3) delta after paste (with the (S, S) feather ``mask`` of
    :func:`jaxcloak.faces.crop_mask`) and re-alignment."""
    src = delta * mask[..., None]
    return sum(w[j][..., None] * _bilinear(src, pos[j]) for j in range(pos.shape[0]))
