"""Real faces for demos and tests, read at run time from installed packages (never committed).

- ``astronaut``: scikit-image's public-domain NASA portrait of Eileen Collins, detected with
  YuNet and aligned to the ArcFace 112x112 5-point template (:mod:`jaxcloak.faces`).
- ``lfw-N``: faces from scikit-image's ``lfw_subset`` (25x25 grey LFW crops), upscaled; tiny
  and grey, but real and different people.
- :func:`synthetic_photos`: any number of distinct photo-sized images made from the astronaut
  and (with insightface installed) the six people of its ``t1.jpg`` group photo, by random
  crops, scales, flips, small rotations and colour changes; for bulk tests and benchmarks.
"""

from __future__ import annotations

import numpy as np

from . import align_face, detect_faces
from ._cv2 import quiet_cv2


def astronaut_aligned() -> np.ndarray:
    """The astronaut's face, 5-point aligned, (112, 112, 3) uint8 RGB."""
    import skimage.data

    rgb = skimage.data.astronaut()
    faces = detect_faces(rgb)
    if len(faces) == 0:
        raise RuntimeError("YuNet found no face in skimage.data.astronaut()")
    crop, _ = align_face(rgb, faces[0].landmarks)
    return crop


def lfw_faces(n: int = 3, size: int = 112) -> list[np.ndarray]:
    """The first ``n`` LFW faces of ``skimage.data.lfw_subset()``, (size, size, 3) uint8 RGB."""
    import skimage.data

    cv2 = quiet_cv2()
    faces = skimage.data.lfw_subset()[:100]  # the first 100 entries are faces
    out = []
    for g in faces[:n]:
        up = cv2.resize((g * 255).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        out.append(np.repeat(np.clip(up, 0, 255).round().astype(np.uint8)[..., None], 3, axis=-1))
    return out


def sample_faces(n_lfw: int = 3) -> dict[str, np.ndarray]:
    """Named real faces, (112, 112, 3) uint8 RGB: the astronaut and ``n_lfw`` LFW faces."""
    faces = {"astronaut": astronaut_aligned()}
    faces.update({f"lfw-{i}": f for i, f in enumerate(lfw_faces(n_lfw))})
    return faces


def _source_photos(
    sources: tuple[str, ...],
) -> list[tuple[np.ndarray, list[tuple[float, float, float]]]]:
    """(RGB, [(cx, cy, size) per face]) of the package-shipped photos named in ``sources``."""
    import skimage.data

    from ..io.images import read_image
    from ..paths import package_dir

    rgbs = [skimage.data.astronaut()] if "astronaut" in sources else []
    insightface = package_dir("insightface") if "t1" in sources else None
    t1 = insightface / "data/images/t1.jpg" if insightface is not None else None
    if t1 is not None and t1.is_file():
        rgbs.append(read_image(t1).rgb)
    if not rgbs:
        raise ValueError(f"no source photo available among {sources} (t1 needs insightface)")
    out = []
    for rgb in rgbs:
        boxes = [f.box for f in detect_faces(rgb)]
        out.append((rgb, [(x + w / 2, y + h / 2, max(w, h)) for x, y, w, h in boxes]))
    return out


def synthetic_photos(
    n: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (256, 512),
    sources: tuple[str, ...] = ("astronaut", "t1"),
):
    """Yield ``n`` ``(name, rgb)`` photos with at least one face each, all different.

    ``sources``: "astronaut" (one face) and/or "t1" (insightface's group photo, six people;
    windows around one of them often show a neighbour too).

    Each is a random window around one face of a package-shipped photo (face 15-45% of the
    window), resized so its longer side is in ``size``, maybe mirrored, rotated by up to 8
    degrees, with random brightness, contrast and gamma. Deterministic in ``seed``.
    """
    cv2 = quiet_cv2()
    photos = _source_photos(sources)
    rng = np.random.default_rng(seed)
    for i in range(n):
        rgb, faces = photos[int(rng.integers(len(photos)))]
        cx, cy, fs = faces[int(rng.integers(len(faces)))]
        win = fs / rng.uniform(0.15, 0.45)
        aspect = rng.uniform(0.75, 1.33)
        w, h = win * np.sqrt(aspect), win / np.sqrt(aspect)
        x0, y0 = cx - w * rng.uniform(0.3, 0.7), cy - h * rng.uniform(0.3, 0.7)
        side = rng.uniform(*size)
        scale = side / max(w, h)
        angle = rng.uniform(-8, 8)
        out_w, out_h = round(w * scale), round(h * scale)
        photo = cv2.warpAffine(
            rgb,
            _window_matrix(cx, cy, x0, y0, angle, scale),
            (out_w, out_h),
            flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        if rng.random() < 0.5:
            photo = photo[:, ::-1]
        x = photo.astype(np.float32) / 255.0
        x = np.clip((x - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08), 0, 1)
        x = x ** rng.uniform(0.8, 1.25)
        yield f"synthetic-{i:05d}", np.ascontiguousarray(np.rint(x * 255).astype(np.uint8))


def _window_matrix(cx, cy, x0, y0, angle, scale) -> np.ndarray:
    """2x3 affine: rotate by ``angle`` about the face centre, scale, window origin to (0, 0)."""
    a = np.deg2rad(angle)
    c, s = np.cos(a) * scale, np.sin(a) * scale
    rs = np.array([[c, s], [-s, c]])  # OpenCV's rotation convention (counter-clockwise)
    centre = np.array([cx, cy])
    t = rs @ (-centre) + (centre - np.array([x0, y0])) * scale
    return np.hstack([rs, t[:, None]]).astype(np.float64)
