"""Carry perturbations made on aligned crops back into the full photo."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._cv2 import quiet_cv2 as _quiet_cv2


def crop_mask(size: int, feather: float = 2.0, erode: int = 2) -> np.ndarray:
    """Blend weight over an aligned crop: 1 inside, falling smoothly to exactly 0 at the edge.

    The crop is eroded by ``erode + 3 * feather`` pixels and then Gaussian-blurred with sigma
    ``feather``; the blur's support stops ``erode`` pixels short of the border, so the outer
    ``erode`` pixels (where bilinear warping mixes in the zero border) carry no weight.

    Args:
      size: crop side in pixels.
      feather: Gaussian sigma of the soft edge, in crop pixels (0 for a hard edge).
      erode: width of the all-zero band along the crop border, in crop pixels.

    Returns:
      (size, size) float32 mask in [0, 1].
    """
    if feather < 0 or erode < 0:
        raise ValueError(f"feather and erode must be >= 0, got {feather}, {erode}")
    radius = math.ceil(3 * feather)
    margin = erode + radius
    if 2 * margin >= size:
        raise ValueError(f"feather {feather} and erode {erode} leave nothing of a {size} crop")
    mask = np.zeros((size, size), np.float32)
    mask[margin : size - margin, margin : size - margin] = 1.0
    if radius > 0:
        cv2 = _quiet_cv2()
        k = 2 * radius + 1
        # BORDER_CONSTANT keeps the zero band zero; the kernel never reaches past it anyway.
        mask = cv2.GaussianBlur(mask, (k, k), feather, borderType=cv2.BORDER_CONSTANT)
        mask[mask < 1e-6] = 0.0
    return mask


def paste_back(
    photo: np.ndarray,
    deltas: Sequence[np.ndarray],
    transforms: Sequence[np.ndarray],
    *,
    feather: float = 2.0,
    erode: int = 2,
) -> np.ndarray:
    """Add aligned-space perturbations to a photo, leaving every other pixel bit-identical.

    Each delta is multiplied by :func:`crop_mask` in crop space and warped into the photo with
    the inverse of its alignment matrix (bilinear). Where feathered faces overlap, deltas are
    averaged by mask weight instead of summed, so ``|output - input| <= max |delta|``.

    Args:
      photo: (H, W, 3) uint8 photo the crops were aligned from.
      deltas: one (S, S, 3) float perturbation per face, in 0..255 pixel units, in crop space.
      transforms: the (2, 3) photo -> crop matrices returned by ``align_face``.
      feather, erode: soft-edge parameters of :func:`crop_mask`, in crop pixels.

    Returns:
      A new (H, W, 3) uint8 photo. Pixels outside every warped crop region equal the input, and
      a zero delta returns the input exactly.
    """
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 photo, got {photo.shape} {photo.dtype}")
    if len(deltas) != len(transforms):
        raise ValueError(f"{len(deltas)} deltas but {len(transforms)} transforms")
    cv2 = _quiet_cv2()
    h, w = photo.shape[:2]
    num = np.zeros((h, w, 3), np.float32)  # sum of mask * delta
    den = np.zeros((h, w), np.float32)  # sum of mask
    for delta, m in zip(deltas, transforms, strict=True):
        delta = np.asarray(delta, np.float32)
        m = np.asarray(m, np.float64)
        if delta.ndim != 3 or delta.shape[0] != delta.shape[1] or delta.shape[2] != 3:
            raise ValueError(f"expected an (S, S, 3) delta, got {delta.shape}")
        if m.shape != (2, 3):
            raise ValueError(f"expected a (2, 3) transform, got {m.shape}")
        size = delta.shape[0]
        mask = crop_mask(size, feather, erode)
        src = np.concatenate([delta * mask[..., None], mask[..., None]], axis=-1)
        # Only warp into the photo box the crop covers, so big photos cost no more than faces.
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
        a_inv = np.linalg.inv(m[:, :2])
        pts = (corners - m[:, 2]) @ a_inv.T
        x0, y0 = (max(0, math.floor(v) - 1) for v in pts.min(0))
        x1, y1 = min(w, math.ceil(pts[:, 0].max()) + 2), min(h, math.ceil(pts[:, 1].max()) + 2)
        if x1 <= x0 or y1 <= y0:
            continue  # the crop lies wholly outside the photo
        m_roi = m.copy()
        m_roi[:, 2] += m[:, :2] @ (x0, y0)
        # WARP_INVERSE_MAP: m maps photo (dst) -> crop (src), exactly what this lookup needs.
        warped = cv2.warpAffine(
            src,
            m_roi,
            (x1 - x0, y1 - y0),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0.0,
        )
        num[y0:y1, x0:x1] += warped[..., :3]
        den[y0:y1, x0:x1] += warped[..., 3]
    # Dividing by max(1, weight) averages overlaps but leaves single faces' feathering intact.
    shift = num / np.maximum(den, 1.0)[..., None]
    touched = np.any(shift != 0, axis=-1)
    out = photo.copy()
    # Only pixels with a nonzero shift are rewritten, so all others stay bit-identical.
    out[touched] = np.clip(np.rint(photo[touched] + shift[touched]), 0, 255).astype(np.uint8)
    return out
