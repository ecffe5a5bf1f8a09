"""Differentiable image transforms on one aligned face, for varied views and EOT.

Every function takes ONE image, (H, W, 3) float32 RGB in [0, 1]; batch with ``jax.vmap`` at the
call site. All are pure, jit-able, keep shapes static and are differentiable with respect to the
image (``jpeg_like`` through a straight-through estimator), so FaceCloak's stage 1 uses them to
make views and the attack reuses them for expectation over transformation.

Coordinates follow OpenCV: pixel (row i, column j) has its centre at (x, y) = (j, i), so the
matrices here mean the same as ``cv2.warpAffine(..., flags=WARP_INVERSE_MAP)`` and line up with
:func:`jaxcloak.faces.align_face`.

>>> import jax, jax.numpy as jnp
>>> img = jnp.full((112, 112, 3), 0.5, jnp.float32)
>>> affine_warp(img, random_pose(jax.random.key(0), 112)).shape
(112, 112, 3)
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from ..typing import Image, PRNGKey
from .align import ARCFACE_TEMPLATE, estimate_similarity

__all__ = [
    "JPEG_CHROMA_TABLE",
    "JPEG_LUMA_TABLE",
    "adjust_colour",
    "affine_warp",
    "channel_gain",
    "directional_light",
    "gaussian_blur",
    "head_turn",
    "hflip_aligned",
    "hflip_matrix",
    "jpeg_like",
    "jpeg_quant_tables",
    "occlude",
    "random_pose",
    "resize_round_trip",
    "sample_bilinear",
    "sharpen",
    "smooth_warp",
]

# ---------------------------------------------------------------------------------------------
# Geometry


def affine_warp(
    img: Image, matrix: jax.Array, *, border: Literal["edge", "reflect"] = "edge"
) -> Image:
    """Bilinearly resample ``img`` through an output -> input affine map or homography.

    Output pixel (x, y) reads the input at ``(u / w, v / w)`` with ``[u, v, w] = M @ [x, y, 1]``
    (a (2, 3) matrix means ``w = 1``). Samples outside the image take the nearest edge pixel
    (``border="edge"``, OpenCV's BORDER_REPLICATE) or its mirror image (``"reflect"``, half-sample
    symmetric, OpenCV's BORDER_REFLECT), so small warps never pull black into a face.

    Args:
      img: (H, W, C) image.
      matrix: (2, 3) or (3, 3) output -> input map in pixel coordinates; may be traced.
      border: how out-of-range samples are filled (static).

    Returns:
      (H, W, C) warped image, same dtype; differentiable w.r.t. ``img`` and ``matrix``.
    """
    h, w = img.shape[:2]
    if h < 2 or w < 2:
        raise ValueError(f"affine_warp needs at least 2x2 pixels, got {img.shape}")
    m = jnp.asarray(matrix, img.dtype)
    if m.shape == (2, 3):
        m = jnp.concatenate([m, jnp.array([[0.0, 0.0, 1.0]], img.dtype)])
    elif m.shape != (3, 3):
        raise ValueError(f"matrix must be (2, 3) or (3, 3), got {m.shape}")
    ys, xs = jnp.meshgrid(
        jnp.arange(h, dtype=img.dtype), jnp.arange(w, dtype=img.dtype), indexing="ij"
    )
    uvw = jnp.einsum("ij,jhw->ihw", m, jnp.stack([xs, ys, jnp.ones_like(xs)]))
    # A homography can send w through zero far outside the face; keep the division finite.
    den = jnp.where(jnp.abs(uvw[2]) < 1e-6, 1e-6, uvw[2])
    u, v = uvw[0] / den, uvw[1] / den
    if border == "reflect":
        u, v = _reflect(u, w), _reflect(v, h)
    elif border != "edge":
        raise ValueError(f"border must be 'edge' or 'reflect', got {border!r}")
    return sample_bilinear(img, u, v)


def sample_bilinear(img: Image, u: jax.Array, v: jax.Array) -> Image:
    """``img`` read at continuous pixel coordinates ``(u, v)`` (each (H', W')), bilinearly;
    coordinates outside the image take the nearest edge pixel. Differentiable in all three."""
    h, w = img.shape[:2]
    # Clamping the coordinate (not the result) is what makes the border replicate the edge.
    u = jnp.clip(u, 0.0, w - 1.0)
    v = jnp.clip(v, 0.0, h - 1.0)
    u0 = jnp.clip(jnp.floor(u), 0, w - 2).astype(jnp.int32)
    v0 = jnp.clip(jnp.floor(v), 0, h - 2).astype(jnp.int32)
    fu = (u - u0.astype(img.dtype))[..., None]
    fv = (v - v0.astype(img.dtype))[..., None]
    u1, v1 = u0 + 1, v0 + 1
    top = img[v0, u0] * (1 - fu) + img[v0, u1] * fu
    bottom = img[v1, u0] * (1 - fu) + img[v1, u1] * fu
    return top * (1 - fv) + bottom * fv


def _reflect(x: jax.Array, n: int) -> jax.Array:
    """Fold a continuous pixel coordinate into [-0.5, n - 0.5] by half-sample mirroring."""
    period = 2.0 * n
    x = jnp.mod(x + 0.5, period)
    return jnp.where(x >= n, period - x, x) - 0.5


def random_pose(
    key: PRNGKey,
    size: int | tuple[int, int],
    max_rotate_deg: float = 10.0,
    max_scale: float = 0.1,
    max_shift: float = 4.0,
    max_perspective: float = 0.0,
) -> jax.Array:
    """A random small pose change as a (3, 3) output -> input homography for :func:`affine_warp`.

    Rotation, scale and perspective act about the image centre, so the face stays put on
    average. Each parameter is drawn uniformly and independently; the ranges are symmetric,
    so that the matrix maps output to input (a scale above 1 shrinks the face) does not bias
    the views.

    Args:
      key: PRNG key.
      size: image side ``S`` or ``(H, W)``.
      max_rotate_deg: rotation in [-max, max] degrees.
      max_scale: scale in [1 - max, 1 + max].
      max_shift: translation per axis in [-max, max] pixels.
      max_perspective: the homography's bottom row per axis in [-max, max], acting on
        coordinates centred and divided by half the side; 0.02 moves the edges by about 2%,
        a pixel on a 112 face.

    Returns:
      (3, 3) float32 matrix.
    """
    h, w = (size, size) if isinstance(size, int) else size
    k_rot, k_scale, k_shift, k_persp = jax.random.split(key, 4)
    theta = jnp.deg2rad(
        jax.random.uniform(k_rot, (), minval=-max_rotate_deg, maxval=max_rotate_deg)
    )
    s = jax.random.uniform(k_scale, (), minval=1.0 - max_scale, maxval=1.0 + max_scale)
    half = np.array([w / 2.0, h / 2.0], np.float32)
    t = jax.random.uniform(k_shift, (2,), minval=-max_shift, maxval=max_shift) / half
    p = jax.random.uniform(k_persp, (2,), minval=-max_perspective, maxval=max_perspective)
    c, sn = s * jnp.cos(theta), s * jnp.sin(theta)
    pose = jnp.array([[c, -sn, t[0]], [sn, c, t[1]], [p[0], p[1], 1.0]], jnp.float32)
    # Work in centred coordinates scaled to [-1, 1] so the parameters do not depend on size.
    from_unit = np.array([[w / 2.0, 0, (w - 1) / 2.0], [0, h / 2.0, (h - 1) / 2.0], [0, 0, 1]])
    to_unit = np.linalg.inv(from_unit)
    return jnp.asarray(from_unit, jnp.float32) @ pose @ jnp.asarray(to_unit, jnp.float32)


def face_depth(size: int) -> np.ndarray:
    """A mean face's depth (pixels towards the camera) over an aligned ``size`` crop.

    An ellipsoid over the ArcFace template's face region plus a nose bump: crude, but enough
    for a turn of the head to move the nose across the cheek and foreshorten the far side,
    which no 2D similarity or homography does.
    """
    s = size / 112.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy, rx, ry = 55.5 * s, 62.0 * s, 48.0 * s, 64.0 * s
    r2 = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2
    head = 40.0 * s * np.sqrt(np.clip(1.0 - r2, 0.0, None))
    nose = 12.0 * s * np.exp(-((xs - 56.0 * s) ** 2 + (ys - 68.0 * s) ** 2) / (2 * (8.0 * s) ** 2))
    return (head + nose).astype(np.float32)


def _fit_similarity(src: jax.Array, dst: jax.Array) -> jax.Array:
    """Least-squares 2D similarity (2, 3) taking ``src`` (N, 2) points onto ``dst``."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    den = jnp.sum(a * a)
    c = jnp.sum(a * b) / den
    s = jnp.sum(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]) / den
    rot = jnp.array([[c, -s], [s, c]])
    return jnp.concatenate([rot, (md - rot @ ms)[:, None]], axis=1)


def head_turn(img: Image, yaw: jax.Array | float, pitch: jax.Array | float) -> Image:
    """The aligned face as if the head were turned by ``yaw`` and tilted by ``pitch`` (radians),
    then re-aligned from its five landmarks as a new photo would be.

    Each pixel is lifted onto :func:`face_depth` and rotated (orthographic projection), so the
    nose moves further than the cheeks and the far side shrinks; the landmarks move with it and
    a least-squares similarity puts them back on the template, as the aligner does for a real
    photo taken at that angle. The inverse of the depth map is found by fixed-point iteration
    (it converges for the small depth slopes of a face); self-occlusion is ignored, which is
    mild up to about 25 degrees. Zero angles return ``img`` up to resampling.
    """
    size = img.shape[0]
    depth = jnp.asarray(face_depth(size))
    c = (size - 1) / 2.0
    cy_, sy_ = jnp.cos(yaw), jnp.sin(yaw)
    cp_, sp_ = jnp.cos(pitch), jnp.sin(pitch)

    def forward(x, y, z):  # source pixel -> where the turned head shows it
        return c + (x - c) * cy_ + z * sy_, c + (y - c) * cp_ + z * sp_

    tmpl = jnp.asarray(ARCFACE_TEMPLATE * (size / 112.0), jnp.float32)
    zl = sample_bilinear(depth[..., None], tmpl[:, 0], tmpl[:, 1])[..., 0]
    moved = jnp.stack(forward(tmpl[:, 0], tmpl[:, 1], zl), axis=-1)
    realign = _fit_similarity(tmpl, moved)  # template position -> turned-photo position
    ys, xs = jnp.meshgrid(
        jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32), indexing="ij"
    )
    qx = realign[0, 0] * xs + realign[0, 1] * ys + realign[0, 2]
    qy = realign[1, 0] * xs + realign[1, 1] * ys + realign[1, 2]
    u, v = qx, qy
    for _ in range(5):  # solve forward(u, v, depth(u, v)) = q
        z = sample_bilinear(depth[..., None], u, v)[..., 0]
        fx, fy = forward(u, v, z)
        u, v = u + (qx - fx), v + (qy - fy)
    return sample_bilinear(img, u, v)


def smooth_warp(img: Image, key: PRNGKey, amplitude: jax.Array | float, grid: int = 4) -> Image:
    """A random smooth local deformation (expression-like: a mouth or brow moves, a cheek
    fills), displacements drawn on a ``grid`` x ``grid`` lattice and interpolated; no pixel
    moves more than ``amplitude`` pixels along either axis."""
    h, w = img.shape[:2]
    coarse = jax.random.uniform(key, (grid + 1, grid + 1, 2), minval=-1.0, maxval=1.0)
    d = jax.image.resize(coarse, (h, w, 2), "linear", antialias=False) * amplitude
    ys, xs = jnp.meshgrid(
        jnp.arange(h, dtype=img.dtype), jnp.arange(w, dtype=img.dtype), indexing="ij"
    )
    return sample_bilinear(img, xs + d[..., 0], ys + d[..., 1])


@functools.lru_cache(maxsize=8)
def _hflip_matrix_np(size: int) -> np.ndarray:
    template = ARCFACE_TEMPLATE * (size / 112.0)
    # Flipping columns moves x to (size - 1) - x under the pixel-centre convention above.
    mirrored = template.copy()
    mirrored[:, 0] = (size - 1) - mirrored[:, 0]
    # After the flip the right eye sits where the left eye belongs, and likewise the mouth
    # corners, so the mirrored points are reordered to the template's roles before fitting.
    mirrored = mirrored[[1, 0, 2, 4, 3]]
    aligned_from_flipped = estimate_similarity(mirrored, template)
    a_inv = np.linalg.inv(aligned_from_flipped[:, :2])
    flipped_from_aligned = np.hstack([a_inv, -a_inv @ aligned_from_flipped[:, 2:]])
    original_from_flipped = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    m = original_from_flipped @ np.vstack([flipped_from_aligned, [0.0, 0.0, 1.0]])
    m.setflags(write=False)
    return m


def hflip_matrix(size: int = 112) -> np.ndarray:
    """Output -> input (3, 3) matrix of :func:`hflip_aligned` for a ``size`` x ``size`` face.

    Computed on the host: the ArcFace template is mirrored, its left/right eye and mouth-corner
    points swapped, and :func:`jaxcloak.faces.estimate_similarity` fits the similarity taking the
    mirrored points back onto the template; the flip itself is folded into the same matrix so a
    caller can compose it with a pose and resample once.
    """
    return np.array(_hflip_matrix_np(int(size)), np.float32)


def hflip_aligned(img: Image) -> Image:
    """Mirror an ArcFace-aligned face so that the mirror image is aligned too.

    Equivalent to flipping the source photo before alignment: a plain column flip leaves the
    face off the (slightly asymmetric) template by a 0.6 degree tilt and a sub-pixel shift,
    up to about a pixel at the crop's edge; this folds in the correcting similarity warp.
    Border: edge-replicated, as :func:`affine_warp`.

    Args:
      img: (S, S, C) aligned face, square.

    Returns:
      (S, S, C) mirrored aligned face.
    """
    h, w = img.shape[:2]
    if h != w:
        raise ValueError(f"hflip_aligned needs a square aligned face, got {h}x{w}")
    return affine_warp(img, jnp.asarray(hflip_matrix(w), img.dtype))


# ---------------------------------------------------------------------------------------------
# Colour and illumination

# ITU-R BT.601 luma, the weights JPEG and PIL's "L" mode use.
_LUMA = (0.299, 0.587, 0.114)


def _grey(img: Image) -> jax.Array:
    return (img @ jnp.asarray(_LUMA, img.dtype))[..., None]


def adjust_colour(
    img: Image,
    brightness: jax.Array | float = 0.0,
    contrast: jax.Array | float = 1.0,
    saturation: jax.Array | float = 1.0,
    gamma: jax.Array | float = 1.0,
) -> Image:
    """Gamma, then brightness, contrast and saturation, then clip to [0, 1].

    Args:
      img: (H, W, 3) RGB in [0, 1].
      brightness: added to every pixel (0 keeps).
      contrast: factor about the image's mean luma (1 keeps), as torchvision.
      saturation: factor about each pixel's luma (1 keeps; 0 is greyscale).
      gamma: exponent applied first (1 keeps; < 1 brightens shadows).

    Returns:
      (H, W, 3) adjusted image in [0, 1]. All factors may be traced scalars.
    """
    pos = img > 0
    # Double where: pow's derivative at 0 is infinite for gamma < 1, so keep 0 out of it.
    x = jnp.where(pos, jnp.power(jnp.where(pos, img, 1.0), gamma), 0.0)
    x = x + brightness
    mean = jnp.mean(_grey(x))
    x = (x - mean) * contrast + mean
    grey = _grey(x)
    x = (x - grey) * saturation + grey
    return jnp.clip(x, 0.0, 1.0)


def channel_gain(img: Image, gain: jax.Array) -> Image:
    """Per-channel gain (a white-balance or coloured-light shift), clipped to [0, 1].

    Args:
      img: (H, W, 3) RGB in [0, 1].
      gain: (3,) multipliers, 1 keeps.
    """
    return jnp.clip(img * jnp.asarray(gain, img.dtype).reshape(1, 1, 3), 0.0, 1.0)


def directional_light(img: Image, angle: jax.Array | float, strength: jax.Array | float) -> Image:
    """Light falling off linearly across the face, as from a lamp to one side.

    Args:
      img: (H, W, 3) RGB in [0, 1].
      angle: direction of the brightest side in radians (0 is +x, the image's right).
      strength: the gain runs from ``1 - strength`` to ``1 + strength`` across the image.

    Returns:
      (H, W, 3) relit image in [0, 1].
    """
    h, w = img.shape[:2]
    ys, xs = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w), indexing="ij")
    ramp = (xs * jnp.cos(angle) + ys * jnp.sin(angle)) / math.sqrt(2.0)  # in [-1, 1]
    return jnp.clip(img * (1.0 + strength * ramp)[..., None].astype(img.dtype), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Blur and sharpen


def gaussian_blur(img: Image, sigma: jax.Array | float, *, radius: int = 4) -> Image:
    """Separable Gaussian blur with a static ``2 * radius + 1`` tap kernel.

    The truncated kernel is renormalised (as scipy's ``gaussian_filter``), so it is accurate for
    ``sigma`` up to about ``radius / 3``, and ``sigma -> 0`` is the identity. Borders are
    edge-replicated.

    Args:
      img: (H, W, C) image.
      sigma: standard deviation in pixels; may be traced.
      radius: kernel half-width in pixels (static).

    Returns:
      (H, W, C) blurred image.
    """
    taps = np.arange(-radius, radius + 1)
    sigma = jnp.maximum(jnp.asarray(sigma, img.dtype), 1e-3)
    k = jnp.exp(-0.5 * (jnp.asarray(taps, img.dtype) / sigma) ** 2)
    k = k / jnp.sum(k)
    h, w = img.shape[:2]
    # Each axis is a banded (n, n) matrix with the edge replication folded in. A matmul reads a
    # materialised input, whereas shifted slices let XLA re-run the whole fused producer chain
    # (colour, pow, ...) once per tap, which made AugmentViews about 3x slower on CPU.
    x = jnp.einsum("ij,jwc->iwc", _band_matrix(k, h, taps), img)
    return jnp.einsum("ij,hjc->hic", _band_matrix(k, w, taps), x)


def _band_matrix(k: jax.Array, n: int, taps: np.ndarray) -> jax.Array:
    """(n, n) matrix applying 1-D kernel ``k`` at offsets ``taps`` with edge replication."""
    src = np.clip(np.arange(n)[:, None] + taps[None, :], 0, n - 1)  # (n, taps)
    onehot = np.eye(n, dtype=np.float32)[src]  # (n, taps, n), static
    return jnp.einsum("t,itj->ij", k, jnp.asarray(onehot, k.dtype))


def sharpen(
    img: Image, amount: jax.Array | float, sigma: jax.Array | float = 1.0, *, radius: int = 4
) -> Image:
    """Unsharp mask: ``img + amount * (img - blur(img, sigma))``, clipped to [0, 1]."""
    return jnp.clip(img + amount * (img - gaussian_blur(img, sigma, radius=radius)), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# JPEG

# ITU-T T.81 Annex K tables (what libjpeg scales by quality), row-major over (v, u).
JPEG_LUMA_TABLE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    np.float32,
)
JPEG_CHROMA_TABLE = np.full((8, 8), 99, np.float32)
JPEG_CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
JPEG_LUMA_TABLE.setflags(write=False)
JPEG_CHROMA_TABLE.setflags(write=False)


def jpeg_quant_tables(quality: jax.Array | float) -> jax.Array:
    """(8, 8, 3) quantisation steps for Y, Cb, Cr at a libjpeg ``quality`` in [1, 100].

    libjpeg's ``jpeg_quality_scaling`` and ``jpeg_add_quant_table`` with ``force_baseline``, as
    Pillow calls them: scale = 5000 / q below 50, else 200 - 2q; step = (T * scale + 50) // 100
    clipped to [1, 255]. ``quality`` may be traced (it is floored to an integer first).
    """
    q = jnp.clip(jnp.floor(jnp.asarray(quality, jnp.float32)), 1.0, 100.0)
    scale = jnp.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    tables = jnp.stack([JPEG_LUMA_TABLE, JPEG_CHROMA_TABLE, JPEG_CHROMA_TABLE], axis=-1)
    return jnp.clip(jnp.floor((tables * scale + 50.0) / 100.0), 1.0, 255.0)


def _block_dct_matrix() -> np.ndarray:
    """(64, 64) orthonormal 8x8 DCT-II on row-major blocks: ``coef = K @ x``, ``x = K.T @ coef``."""
    n = np.arange(8)
    d = np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / 16) * np.sqrt(2 / 8)
    d[0] /= np.sqrt(2)
    # kron(D, D) applies D to rows and columns of a flattened block in one matmul.
    return np.kron(d, d).astype(np.float32)


_BLOCK_DCT = _block_dct_matrix()
# JFIF full-range BT.601, on 0..255 values with chroma centred on 128.
_RGB_TO_YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32
)
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC).astype(np.float32)


def _round_ste(x: jax.Array) -> jax.Array:
    """Round in the forward pass, identity in the backward pass (straight-through)."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def jpeg_like(img: Image, quality: jax.Array | float) -> Image:
    """Differentiable JPEG compression and decompression at a libjpeg ``quality``.

    RGB -> YCbCr, 8x8 block DCT, quantise with :func:`jpeg_quant_tables` (rounding through a
    straight-through estimator: forward rounds, backward is the identity), dequantise, inverse
    DCT, back to RGB, clip to [0, 1]. Chroma is kept at full resolution (4:4:4, no subsampling,
    i.e. Pillow's ``subsampling=0``), and decoded values are not rounded to 8 bits. Sides that
    are not multiples of 8 are edge-padded, as libjpeg pads partial blocks, then cropped.

    Against Pillow 12 (libjpeg-turbo, ``subsampling=0``) on the aligned astronaut: 0.84 grey
    levels mean absolute difference at quality 50, where JPEG itself changes the image by 4.4
    (``tests/test_views.py``); against Pillow's default 4:2:0 the difference is 2.3.

    Args:
      img: (H, W, 3) RGB in [0, 1].
      quality: 1..100 (may be traced, e.g. drawn per view).

    Returns:
      (H, W, 3) decoded image in [0, 1].
    """
    h, w, c = img.shape
    if c != 3:
        raise ValueError(f"jpeg_like needs (H, W, 3) RGB, got {img.shape}")
    ph, pw = -h % 8, -w % 8
    x = jnp.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else img
    k = jnp.asarray(_BLOCK_DCT, img.dtype)
    # Level-shift Y by 128 as JPEG does; the chroma rows of the matrix are centred already.
    centre = jnp.asarray([[[128.0, 0.0, 0.0]]], img.dtype)
    ycc = (x * 255.0) @ jnp.asarray(_RGB_TO_YCC.T, img.dtype) - centre
    hb, wb = ycc.shape[0] // 8, ycc.shape[1] // 8
    blocks = ycc.reshape(hb, 8, wb, 8, 3).transpose(0, 2, 4, 1, 3).reshape(hb, wb, 3, 64)
    qt = jpeg_quant_tables(quality).astype(img.dtype).transpose(2, 0, 1).reshape(1, 1, 3, 64)
    coef = _round_ste((blocks @ k.T) / qt) * qt
    blocks = (coef @ k).reshape(hb, wb, 3, 8, 8).transpose(0, 3, 1, 4, 2)
    ycc = blocks.reshape(hb * 8, wb * 8, 3) + centre
    rgb = ycc @ jnp.asarray(_YCC_TO_RGB.T, img.dtype) / 255.0
    return jnp.clip(rgb[:h, :w], 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Resolution and occlusion


def resize_round_trip(img: Image, scale: float) -> Image:
    """Downsample by a static ``scale`` (antialiased bilinear) and back up to the input size.

    Mimics a low-resolution capture or a thumbnail re-upload. Linear weights are non-negative,
    so the output stays in the input's range.
    """
    h, w, c = img.shape
    small = (max(1, round(h * scale)), max(1, round(w * scale)), c)
    down = jax.image.resize(img, small, method="linear", antialias=True)
    return jax.image.resize(down, (h, w, c), method="linear", antialias=True)


def occlude(img: Image, key: PRNGKey, max_frac: float = 0.3, *, min_frac: float = 0.1) -> Image:
    """Paste a random axis-aligned rectangle of one random flat colour.

    The rectangle's height and width are independent fractions in [min_frac, max_frac] of the
    image's, placed uniformly so it fits; the shape stays static because it is a mask.

    Args:
      img: (H, W, 3) RGB in [0, 1].
      key: PRNG key.
      max_frac: largest side fraction (static).
      min_frac: smallest side fraction (static).

    Returns:
      (H, W, 3) image; gradients flow through every pixel outside the patch.
    """
    if not 0.0 < min_frac <= max_frac <= 1.0:
        raise ValueError(f"need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}")
    h, w = img.shape[:2]
    k_size, k_pos, k_colour = jax.random.split(key, 3)
    frac = jax.random.uniform(k_size, (2,), minval=min_frac, maxval=max_frac)
    ph, pw = frac[0] * h, frac[1] * w
    pos = jax.random.uniform(k_pos, (2,))
    y0, x0 = pos[0] * (h - ph), pos[1] * (w - pw)
    colour = jax.random.uniform(k_colour, (1, 1, 3), img.dtype)
    ys = jnp.arange(h, dtype=jnp.float32)[:, None]
    xs = jnp.arange(w, dtype=jnp.float32)[None, :]
    inside = (ys >= y0) & (ys < y0 + ph) & (xs >= x0) & (xs < x0 + pw)
    return jnp.where(inside[..., None], colour, img)


def resize_and_pad(img: Image, key: PRNGKey, min_scale: float = 0.9, fill: float = 0.0) -> Image:
    """Input diversity (DI): shrink ``img`` by a random factor in [min_scale, 1] and place it
    at a random offset in a canvas of the same size filled with ``fill``.

    Bilinear, so values stay inside the input's range (and ``fill``); shape is unchanged.
    """
    h, w = img.shape[:2]
    k_s, k_x, k_y = jax.random.split(key, 3)
    s = jax.random.uniform(k_s, minval=min_scale, maxval=1.0)
    ox = jax.random.uniform(k_x) * (w - 1) * (1.0 - s)
    oy = jax.random.uniform(k_y) * (h - 1) * (1.0 - s)
    m = jnp.array([[1.0 / s, 0.0, -ox / s], [0.0, 1.0 / s, -oy / s]], img.dtype)
    warped = affine_warp(img, m)
    ys, xs = jnp.meshgrid(
        jnp.arange(h, dtype=img.dtype), jnp.arange(w, dtype=img.dtype), indexing="ij"
    )
    u, v = (xs - ox) / s, (ys - oy) / s
    inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    return jnp.where(inside[..., None], warped, jnp.asarray(fill, img.dtype))


def low_frequency(delta: Image, factor: int) -> Image:
    """``delta`` seen through a grid ``factor`` times coarser: block means, then bilinear
    upsampling back. Both are convex combinations, so ``|result| <= max |delta|``: a mask
    parameterised this way keeps its L-inf budget and has no detail finer than the grid.
    """
    if factor == 1:
        return delta
    h, w, c = delta.shape
    if h % factor or w % factor:
        raise ValueError(f"low-frequency factor {factor} must divide the crop size {h}x{w}")
    coarse = delta.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))
    return jax.image.resize(coarse, (h, w, c), "linear", antialias=False)
