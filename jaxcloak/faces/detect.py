"""Face detection with YuNet through ``cv2.FaceDetectorYN``, on photos of any size."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ._cv2 import YUNET as _YUNET
from ._cv2 import quiet_cv2 as _quiet_cv2


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face, in the coordinates of the photo passed to :func:`detect_faces`.

    Attributes:
      box: (x, y, w, h) of the face box in pixels; may reach outside the photo.
      landmarks: (5, 2) float64 (x, y) points in YuNet's order: right eye, left eye, nose tip,
        right mouth corner, left mouth corner ("right" is the subject's right, i.e. the point
        with the smaller x in a frontal face). Read-only.
      score: YuNet's confidence in [0, 1].
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return self.box[2] * self.box[3]


@dataclass(frozen=True)
class DetectionResult:
    """What :func:`detect_faces` found.

    Attributes:
      faces: faces at least ``min_face`` pixels on their shorter box side, largest first.
      too_small: faces that were detected but are smaller than ``min_face``, largest first;
        reported so that callers can warn that they will not be protected.
      scale: factor the photo was resized by before detection (1.0 when it was not).
    """

    faces: tuple[Face, ...] = field(default_factory=tuple)
    too_small: tuple[Face, ...] = field(default_factory=tuple)
    scale: float = 1.0

    def __len__(self) -> int:
        return len(self.faces)

    def __iter__(self):
        return iter(self.faces)

    def __getitem__(self, i: int) -> Face:
        return self.faces[i]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 when either is empty."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


_LOCAL = threading.local()
_PER_THREAD = 8  # detectors kept per thread (one per recent input size and threshold)


def _detector(width: int, height: int, score_threshold: float):
    """This thread's YuNet detector for one input size; building one reloads the ONNX file.

    A ``cv2.FaceDetectorYN`` holds its network's buffers, so two threads detecting through one
    object corrupt each other's results (wrong boxes, or OpenCV assertion errors). Each thread
    therefore keeps its own small LRU of detectors.
    """
    cache: OrderedDict = getattr(_LOCAL, "detectors", None)
    if cache is None:
        cache = _LOCAL.detectors = OrderedDict()
    key = (width, height, score_threshold)
    det = cache.get(key)
    if det is None:
        cv2 = _quiet_cv2()
        det = cv2.FaceDetectorYN.create(str(_YUNET()), "", (width, height), score_threshold)
        cache[key] = det
        while len(cache) > _PER_THREAD:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return det


def detect_faces(
    rgb: np.ndarray,
    *,
    score_threshold: float = 0.6,
    min_face: float = 20,
    max_side: int = 1280,
) -> DetectionResult:
    """Detect faces in an RGB photo of any size.

    Args:
      rgb: (H, W, 3) uint8 RGB photo.
      score_threshold: YuNet confidence below which detections are discarded.
      min_face: faces whose shorter box side is below this many pixels (in the original photo)
        go to ``too_small`` rather than ``faces``.
      max_side: photos whose longer side exceeds this are detected on a downscaled copy (YuNet's
        cost grows with the pixel count); boxes and landmarks are mapped back to full size.
        Faces much smaller than ~10 px in the downscaled copy are then missed.

    Returns:
      A :class:`DetectionResult`; detectors are cached per thread and input size, so repeated
      calls on same-sized photos are cheap and calls from several threads are safe.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    if max_side < 32:
        raise ValueError(f"max_side must be at least 32, got {max_side}")
    cv2 = _quiet_cv2()
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if scale < 1.0:
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        # INTER_AREA averages rather than skips pixels, so small faces keep their structure.
        bgr = cv2.resize(bgr, (sw, sh), interpolation=cv2.INTER_AREA)
        # Map back with the exact per-axis factors the rounding produced.
        sx, sy = w / sw, h / sh
    else:
        sw, sh, sx, sy = w, h, 1.0, 1.0
    _, raw = _detector(sw, sh, float(score_threshold)).detect(bgr)
    if raw is None:
        raw = np.zeros((0, 15), np.float32)
    faces, too_small = [], []
    for row in np.asarray(raw, np.float64):
        box = (row[0] * sx, row[1] * sy, row[2] * sx, row[3] * sy)
        lm = row[4:14].reshape(5, 2) * (sx, sy)
        lm.setflags(write=False)
        face = Face(box=tuple(float(v) for v in box), landmarks=lm, score=float(row[14]))
        (too_small if min(box[2], box[3]) < min_face else faces).append(face)
    faces.sort(key=lambda f: f.area, reverse=True)
    too_small.sort(key=lambda f: f.area, reverse=True)
    return DetectionResult(faces=tuple(faces), too_small=tuple(too_small), scale=scale)
