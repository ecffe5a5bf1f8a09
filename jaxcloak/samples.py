"""Real faces for demos and tests, read at run time from installed packages (never committed).

- ``astronaut``: scikit-image's public-domain NASA portrait of Eileen Collins, detected with
  YuNet and aligned to the ArcFace 112x112 5-point template (:mod:`jaxcloak.faces`).
- ``lfw-N``: faces from scikit-image's ``lfw_subset`` (25x25 grey LFW crops), upscaled; tiny
  and grey, but real and different people.
"""

from __future__ import annotations

import numpy as np

from .faces import align_face, detect_faces
from .faces._cv2 import quiet_cv2


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
