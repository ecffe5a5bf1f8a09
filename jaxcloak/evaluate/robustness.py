"""Robustness transforms: what a photo goes through after it is protected and shared.

The sweep covers what users of cloaking tools such as Fawkes ask about in their issue trackers:
JPEG re-encoding at quality 95/85/75/50, downscaling (x0.75, x0.5) and back, Gaussian blur, a
90% centre crop and greyscale. Each transform runs on the host on an (H, W, 3) uint8 RGB photo,
as a social network would, and is deterministic. None is differentiable: these are for
evaluation; the attack's EoT transforms live on the device.

Every transform returns a :class:`Transformed` ``(rgb, affine)`` where ``affine`` is the 2x3
matrix taking (x, y) in the original photo to (x, y) in the transformed one, so face boxes and
landmarks found on the clean photo can be carried over (:func:`map_points`, :func:`map_box`).
Only the crop moves content; the others return the identity.

Example::

    out, affine = apply_transform("crop90", rgb)
    box = map_box(affine, face.box)
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

__all__ = [
    "TRANSFORMS",
    "Transformed",
    "apply_transform",
    "centre_crop",
    "downscale",
    "gaussian_blur",
    "grayscale",
    "jpeg",
    "map_box",
    "map_points",
]


class Transformed(NamedTuple):
    """A transformed photo and where the original's pixels went.

    Attributes:
      rgb: (H', W', 3) uint8 RGB photo, C-contiguous and writable.
      affine: (2, 3) float64 matrix, original (x, y, 1) -> transformed (x, y).
    """

    rgb: np.ndarray
    affine: np.ndarray


def _identity() -> np.ndarray:
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    return rgb


def _cv2():
    # The faces package owns the quiet OpenCV import; keep one place that configures it.
    from ..faces._cv2 import quiet_cv2

    return quiet_cv2()


def jpeg(rgb: np.ndarray, quality: int, subsampling: str = "4:2:0") -> Transformed:
    """Encode to JPEG with Pillow and decode again.

    Args:
      rgb: (H, W, 3) uint8 RGB photo.
      quality: libjpeg quality, 1-100 (Pillow advises at most 95).
      subsampling: chroma subsampling; 4:2:0, libjpeg's default and what social networks serve,
        halves the colour resolution, which alone removes much of a fine colour perturbation.

    Returns:
      The decoded photo, same size, identity affine.
    """
    rgb = _check_rgb(rgb)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    # optimize/progressive change only the entropy coding, not the pixels: leave them off.
    Image.fromarray(rgb, "RGB").save(
        buf, format="JPEG", quality=int(quality), subsampling=subsampling
    )
    buf.seek(0)
    with Image.open(buf) as img:
        out = np.array(img.convert("RGB"), np.uint8)
    return Transformed(out, _identity())


def downscale(rgb: np.ndarray, factor: float) -> Transformed:
    """Shrink by ``factor`` with area averaging, then scale back up bilinearly to the old size.

    This is the "uploaded at a lower resolution, viewed at the original size" case. Area
    averaging is what a careful resizer does going down (it low-passes instead of skipping
    pixels); bilinear is the common cheap upscale.

    Args:
      rgb: (H, W, 3) uint8 RGB photo.
      factor: scale in (0, 1].

    Returns:
      The photo at its original size; identity affine, since both resizes use OpenCV's
      pixel-centre convention and map the image extent onto itself.
    """
    rgb = _check_rgb(rgb)
    if not 0.0 < factor <= 1.0:
        raise ValueError(f"downscale factor must be in (0, 1], got {factor}")
    cv2 = _cv2()
    h, w = rgb.shape[:2]
    small = (max(1, round(w * factor)), max(1, round(h * factor)))
    down = cv2.resize(rgb, small, interpolation=cv2.INTER_AREA)
    up = cv2.resize(down, (w, h), interpolation=cv2.INTER_LINEAR)
    return Transformed(np.ascontiguousarray(up, np.uint8), _identity())


def gaussian_blur(rgb: np.ndarray, sigma: float) -> Transformed:
    """Gaussian blur with standard deviation ``sigma`` px (kernel sized by OpenCV from sigma).

    Args:
      rgb: (H, W, 3) uint8 RGB photo.
      sigma: standard deviation in pixels, > 0.

    Returns:
      The blurred photo (edges reflected), identity affine.
    """
    rgb = _check_rgb(rgb)
    if sigma <= 0:
        raise ValueError(f"blur sigma must be positive, got {sigma}")
    cv2 = _cv2()
    out = cv2.GaussianBlur(
        rgb, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101
    )
    return Transformed(np.ascontiguousarray(out, np.uint8), _identity())


def centre_crop(rgb: np.ndarray, keep: float) -> Transformed:
    """Keep the central ``keep`` fraction of each side (the photo gets smaller).

    Args:
      rgb: (H, W, 3) uint8 RGB photo.
      keep: fraction of the width and of the height kept, in (0, 1].

    Returns:
      The crop, (round(keep * H), round(keep * W), 3), and the translation taking original
      coordinates to crop coordinates (x - x0, y - y0). Faces cut by the border stay cut: a
      detector that then misses them is part of what this test measures.
    """
    rgb = _check_rgb(rgb)
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"crop fraction must be in (0, 1], got {keep}")
    h, w = rgb.shape[:2]
    nh, nw = max(1, round(h * keep)), max(1, round(w * keep))
    y0, x0 = (h - nh) // 2, (w - nw) // 2
    out = np.array(rgb[y0 : y0 + nh, x0 : x0 + nw], np.uint8)
    affine = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]])
    return Transformed(out, affine)


def grayscale(rgb: np.ndarray) -> Transformed:
    """Luminance only, repeated over 3 channels so every RGB consumer still accepts it.

    Pillow's ``convert("L")`` uses ITU-R 601-2 luma (0.299 R + 0.587 G + 0.114 B), the same
    weights as OpenCV's RGB2GRAY and most photo apps' "black and white".

    Args:
      rgb: (H, W, 3) uint8 RGB photo.

    Returns:
      (H, W, 3) uint8 photo with equal channels, identity affine.
    """
    rgb = _check_rgb(rgb)
    luma = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    return Transformed(np.repeat(luma[:, :, None], 3, axis=2), _identity())


#: The standard sweep, by name; each maps an (H, W, 3) uint8 photo to a :class:`Transformed`.
TRANSFORMS: dict[str, Callable[[np.ndarray], Transformed]] = {
    "jpeg95": functools.partial(jpeg, quality=95),
    "jpeg85": functools.partial(jpeg, quality=85),
    "jpeg75": functools.partial(jpeg, quality=75),
    "jpeg50": functools.partial(jpeg, quality=50),
    "down0.75": functools.partial(downscale, factor=0.75),
    "down0.5": functools.partial(downscale, factor=0.5),
    "blur1": functools.partial(gaussian_blur, sigma=1.0),
    "crop90": functools.partial(centre_crop, keep=0.9),
    "gray": grayscale,
}


def apply_transform(name: str, rgb: np.ndarray) -> Transformed:
    """Apply the named transform from :data:`TRANSFORMS`.

    Raises:
      KeyError: unknown name; the message lists the known ones.
    """
    try:
        fn = TRANSFORMS[name]
    except KeyError:
        raise KeyError(
            f"unknown robustness transform {name!r}; known: {list(TRANSFORMS)}"
        ) from None
    return fn(rgb)


def map_points(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (..., 2) (x, y) points; returns float64 of the same shape."""
    pts = np.asarray(points, np.float64)
    a = np.asarray(affine, np.float64)
    return pts @ a[:, :2].T + a[:, 2]


def map_box(affine: np.ndarray, box: Sequence[float]) -> tuple[float, float, float, float]:
    """Map an (x, y, w, h) box; the result is the axis-aligned box around its mapped corners.

    The box is not clipped to the new photo: a face cut by a crop keeps its full extent, so IoU
    matching against a detector's box on the crop stays meaningful.
    """
    x, y, w, h = (float(v) for v in box)
    corners = map_points(affine, np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]]))
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    return (float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1]))
