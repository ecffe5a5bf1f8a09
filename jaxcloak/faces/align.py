"""5-point similarity alignment onto the ArcFace 112x112 template (as insightface does)."""

from __future__ import annotations

import numpy as np

from ._cv2 import quiet_cv2 as _quiet_cv2

# insightface's ``arcface_dst``: right eye, left eye, nose tip, right and left mouth corners,
# in the same order YuNet reports its landmarks.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) src -> dst.

    Umeyama's closed form (IEEE TPAMI 13(4), 1991), the same estimator as
    ``skimage.transform.SimilarityTransform.estimate``.

    Args:
      src, dst: (N, 2) corresponding points, N >= 2.

    Returns:
      (2, 3) float64 matrix M with dst ~= M @ [x, y, 1].
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two (N, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    # Flip the weakest axis if needed so the result is a rotation, never a reflection.
    e = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[-1] = -1.0
    r = u @ np.diag(e) @ vt
    var_s = (s**2).sum() / len(src)
    if var_s == 0:
        raise ValueError("source points are all identical")
    c = (sig * e).sum() / var_s
    t = mu_d - c * r @ mu_s
    return np.hstack([c * r, t[:, None]])


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix, as a (2, 3) float64 matrix."""
    m = np.asarray(m, np.float64)
    a_inv = np.linalg.inv(m[:, :2])
    return np.hstack([a_inv, -a_inv @ m[:, 2:]])


def align_face(
    rgb: np.ndarray, landmarks: np.ndarray, size: int = 112
) -> tuple[np.ndarray, np.ndarray]:
    """Warp a face onto the ArcFace template, matching insightface's ``norm_crop``.

    Args:
      rgb: (H, W, 3) uint8 photo.
      landmarks: (5, 2) points in YuNet/ArcFace order (see :class:`jaxcloak.faces.Face`).
      size: output side; the template is scaled by ``size / 112``.

    Returns:
      ``(crop, M)``: the (size, size, 3) uint8 aligned face (bilinear, zeros outside the photo,
      as ``norm_crop``) and the (2, 3) photo -> crop matrix that ``paste_back`` needs.
    """
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"expected (5, 2) landmarks, got {landmarks.shape}")
    m = estimate_similarity(landmarks, ARCFACE_TEMPLATE * (size / 112.0))
    return warp_crop(rgb, m, size), m


def warp_crop(rgb: np.ndarray, m: np.ndarray, size: int = 112) -> np.ndarray:
    """The (size, size) crop a photo -> crop matrix selects: bilinear, zeros outside the photo."""
    cv2 = _quiet_cv2()
    return cv2.warpAffine(
        rgb,
        np.asarray(m, np.float64),
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
