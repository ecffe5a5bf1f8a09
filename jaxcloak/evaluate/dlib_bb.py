"""dlib's face recogniser as a black-box evaluator.

dlib's ResNet descriptor (128-d, from a 150x150 chip aligned with dlib's own 5-point shape
predictor; same person if the L2 distance is below 0.6) shares no architecture, training data
or toolkit with the SFace surrogate that jaxcloak attacks, and it has no gradients here: a
protection that fools it transferred, it was not optimised against it.

Everything runs through dlib's own pipeline, so the numbers are what a user of dlib or of the
``face_recognition`` package would get: the HOG frontal face detector (upsampled once), the
5-point shape predictor, and ``compute_face_descriptor`` on the RGB uint8 photo (which extracts
the chip exactly as ``dlib.get_face_chip_details(shape, 150, 0.25)`` describes). The only
departure is opt-in: with ``fallback=True``, a face that HOG misses but another detector found is
described from a dlib rectangle built from that detector's box. The landmarks and the network are
still dlib's; only the box is borrowed, and such results are marked ``detector="hint"``.

Install with ``pip install dlib-bin face-recognition-models``. The models are located inside
``face_recognition_models`` without importing it (its ``__init__`` needs ``pkg_resources``, gone
from setuptools >= 81).

Example (needs dlib and a photo with a face)::

    rec = DlibRecognizer()
    clean = rec.describe_near(photo, box)          # box: (x, y, w, h) from detect_faces
    cloaked = rec.describe_near(protected, box)    # None: dlib finds no face there
    fooled = cloaked is None or rec.distance(clean, cloaked) >= THRESHOLD
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..faces.detect import box_iou
from ..paths import package_dir

__all__ = [
    "CHIP_PADDING",
    "CHIP_SIZE",
    "INSTALL_HINT",
    "THRESHOLD",
    "DlibFace",
    "DlibRecognizer",
    "DlibUnavailableError",
    "box_iou",
]

#: Same person when the L2 distance between descriptors is below this (dlib's documented value,
#: 99.38% on LFW).
THRESHOLD = 0.6
#: Side of the aligned chip the ResNet sees, and the padding around the 5 landmarks; both fixed
#: by how the network was trained (``compute_face_descriptor``'s defaults).
CHIP_SIZE = 150
CHIP_PADDING = 0.25
INSTALL_HINT = "pip install dlib-bin face-recognition-models"

_MODELS_PACKAGE = "face_recognition_models"
_MODEL_FILES = {
    "shape_predictor": "models/shape_predictor_5_face_landmarks.dat",
    "resnet": "models/dlib_face_recognition_resnet_model_v1.dat",
}

Box = tuple[float, float, float, float]


class DlibUnavailableError(ImportError):
    """dlib or its model files are missing; the message says what to install."""


@dataclass(frozen=True, eq=False)
class DlibFace:
    """One face as dlib sees it, in the coordinates of the photo it was found in.

    Attributes:
      box: (x, y, w, h) of the dlib rectangle the landmarks were fitted in: HOG's detection, or
        for ``detector="hint"`` the square built from the hint box.
      descriptor: (128,) float32 dlib ResNet descriptor, read-only.
      landmarks: (5, 2) float64 (x, y) points of dlib's 5-point predictor, in dlib's order (outer
        and inner corner of one eye, then of the other, then the base of the nose), read-only.
      score: HOG detection score (larger is surer); NaN when ``detector="hint"``.
      detector: ``"hog"`` for dlib's own detector, ``"hint"`` when the box came from the caller.
      iou: IoU between ``box`` and the hint it was matched to; NaN when no hint was given.
    """

    box: Box
    descriptor: np.ndarray
    landmarks: np.ndarray
    score: float
    detector: Literal["hog", "hint"]
    iou: float = float("nan")

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return self.box[2] * self.box[3]


def _model_files() -> dict[str, Path]:
    """Paths of dlib's model files inside ``face_recognition_models``, without importing it."""
    root = package_dir(_MODELS_PACKAGE)
    if root is None:
        raise DlibUnavailableError(
            f"the dlib models package {_MODELS_PACKAGE!r} is not installed; {INSTALL_HINT}"
        )
    paths = {key: root / rel for key, rel in _MODEL_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DlibUnavailableError(f"dlib model files missing: {missing}; {INSTALL_HINT}")
    return paths


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as e:
        raise DlibUnavailableError(f"dlib is not installed ({e}); {INSTALL_HINT}") from e
    return dlib


# dlib's models are shared by the process and not documented as thread-safe; one lock
# serialises their calls (dlib is the evaluator, never on the protect path's hot loop).
_DLIB_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _load() -> tuple[Any, Any, Any, Any]:
    """(dlib, HOG detector, shape predictor, ResNet), loaded once per process.

    Failures raise and are not cached, so installing the packages mid-session works.
    """
    dlib = _import_dlib()
    paths = _model_files()
    return (
        dlib,
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(paths["shape_predictor"])),
        dlib.face_recognition_model_v1(str(paths["resnet"])),
    )


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    # dlib's numpy bridge reads rows with a fixed stride; read-only arrays are fine.
    return np.ascontiguousarray(rgb)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class DlibRecognizer:
    """dlib's detector, 5-point predictor and ResNet descriptor behind one small API.

    The models load on first use and are shared by every instance in the process. dlib's objects
    are not documented as thread-safe, so their calls are serialised by a process-wide lock.

    Args:
      upsample: HOG pyramid upsampling; 1 (dlib's and ``face_recognition``'s usual value) finds
        faces down to about 40 px, 0 about 80 px and is ~4x faster.
      num_jitters: descriptor test-time augmentation (dlib's ``num_jitters``); 0 keeps it
        deterministic, which an evaluator needs.
      min_iou: a HOG face matches a hint box only above this IoU. YuNet's boxes are taller than
        HOG's square ones (they include the forehead); the same face measured IoU 0.60-0.78 on
        ``t1.jpg`` and the astronaut, while neighbouring faces never overlap, so 0.3 is safe.
    """

    def __init__(self, *, upsample: int = 1, num_jitters: int = 0, min_iou: float = 0.3) -> None:
        if upsample < 0 or num_jitters < 0:
            raise ValueError(
                f"upsample and num_jitters must be >= 0, got {upsample}, {num_jitters}"
            )
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
        self.upsample = int(upsample)
        self.num_jitters = int(num_jitters)
        self.min_iou = float(min_iou)

    @staticmethod
    def available() -> bool:
        """Whether dlib imports and its model files are installed (loads no model)."""
        try:
            _import_dlib()
            _model_files()
        except DlibUnavailableError:
            return False
        return True

    def load(self) -> DlibRecognizer:
        """Load the models now (otherwise the first call does).

        Raises:
          DlibUnavailableError: dlib or the models are missing; the message says what to install.
        """
        _load()
        return self

    # -- detection and description ---------------------------------------------------------

    def _hog(self, rgb: np.ndarray) -> list[tuple[Any, float]]:
        _, detector, _, _ = _load()
        with _DLIB_LOCK:
            rects, scores, _ = detector.run(rgb, self.upsample, 0.0)
        return list(zip(rects, scores, strict=True))

    def _describe_rect(
        self, rgb: np.ndarray, rect: Any, score: float, detector: str, iou: float
    ) -> DlibFace:
        _, _, predictor, resnet = _load()
        with _DLIB_LOCK:
            shape = predictor(rgb, rect)
            # Same chip as dlib.get_face_chip_details(shape, CHIP_SIZE, CHIP_PADDING) followed
            # by extract_image_chip; compute_face_descriptor does both internally.
            desc = resnet.compute_face_descriptor(rgb, shape, self.num_jitters, CHIP_PADDING)
        landmarks = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
        box = (float(rect.left()), float(rect.top()), float(rect.width()), float(rect.height()))
        return DlibFace(
            box=box,
            descriptor=_readonly(np.asarray(desc, np.float32).reshape(128)),
            landmarks=_readonly(landmarks),
            score=float(score),
            detector=detector,  # type: ignore[arg-type]
            iou=float(iou),
        )

    def describe(self, rgb: np.ndarray) -> list[DlibFace]:
        """Every face dlib's HOG detector finds, described, largest first.

        Args:
          rgb: (H, W, 3) uint8 RGB photo.

        Returns:
          One :class:`DlibFace` per detection (``detector="hog"``); empty when none. HOG has
          false positives (one on the astronaut's sleeve): match against a known face box with
          :meth:`match` rather than trusting ``describe(rgb)[0]`` in evaluations.
        """
        rgb = _check_rgb(rgb)
        faces = [self._describe_rect(rgb, r, s, "hog", float("nan")) for r, s in self._hog(rgb)]
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces

    def match_many(
        self, rgb: np.ndarray, hints: Sequence[Sequence[float]], *, fallback: bool = False
    ) -> list[DlibFace | None]:
        """For each hint box, the dlib face it corresponds to; HOG runs once for all of them.

        Hints are matched one-to-one, highest IoU first, so two hints can never share a face.

        Args:
          rgb: (H, W, 3) uint8 RGB photo.
          hints: (x, y, w, h) boxes in this photo's coordinates, e.g. the YuNet boxes of the clean
            photo a protected one came from (mapped by a robustness transform's affine).
          fallback: when HOG has no face at a hint, fit dlib's landmarks inside a square built
            from the hint instead of returning None (see :meth:`match`).

        Returns:
          One :class:`DlibFace` or None ("not detected") per hint, in the order given.
        """
        rgb = _check_rgb(rgb)
        hints = [tuple(float(v) for v in h) for h in hints]
        for h in hints:
            if len(h) != 4 or h[2] <= 0 or h[3] <= 0:
                raise ValueError(f"hint must be (x, y, w, h) with positive w, h; got {h}")
        dets = self._hog(rgb)
        boxes = [(r.left(), r.top(), r.width(), r.height()) for r, _ in dets]
        pairs = sorted(
            ((box_iou(h, b), i, j) for i, h in enumerate(hints) for j, b in enumerate(boxes)),
            reverse=True,
        )
        chosen: dict[int, tuple[int, float]] = {}
        used: set[int] = set()
        for iou, i, j in pairs:
            if iou < self.min_iou:
                break
            if i not in chosen and j not in used:
                chosen[i] = (j, iou)
                used.add(j)
        out: list[DlibFace | None] = []
        for i, hint in enumerate(hints):
            if i in chosen:
                j, iou = chosen[i]
                rect, score = dets[j]
                out.append(self._describe_rect(rgb, rect, score, "hog", iou))
            elif fallback:
                rect = _hint_rect(hint)
                box = (rect.left(), rect.top(), rect.width(), rect.height())
                out.append(self._describe_rect(rgb, rect, float("nan"), "hint", box_iou(hint, box)))
            else:
                out.append(None)
        return out

    def match(
        self, rgb: np.ndarray, box_hint: Sequence[float], *, fallback: bool = False
    ) -> DlibFace | None:
        """The dlib face whose HOG box best overlaps ``box_hint`` (IoU >= ``min_iou``).

        Args:
          rgb: (H, W, 3) uint8 RGB photo.
          box_hint: (x, y, w, h) of the face wanted, e.g. its YuNet box in the clean photo.
          fallback: when HOG finds no face there, still describe it: dlib's 5-point predictor
            is run inside a square of side min(w, h) centred on the hint (HOG's boxes are square
            and about as wide as YuNet's), then dlib's network as usual. The landmarks and the
            network remain dlib's; only the box is not. Marked ``detector="hint"``. On the
            astronaut and ``t1.jpg`` such descriptors lie 0.00-0.21 (mean 0.07) from the ones
            HOG's own box gives, well inside the 0.6 threshold but not zero.

        Returns:
          The :class:`DlibFace`, or None when dlib does not detect a face there and ``fallback``
          is off: report that as "not detected", a protection success of its own kind.
        """
        return self.match_many(rgb, [box_hint], fallback=fallback)[0]

    def describe_near(
        self, rgb: np.ndarray, box_hint: Sequence[float], *, fallback: bool = False
    ) -> np.ndarray | None:
        """The (128,) float32 descriptor of :meth:`match`'s face, or None when not detected.

        Use :meth:`match` instead when the caller must know whether the fallback was used.
        """
        face = self.match(rgb, box_hint, fallback=fallback)
        return None if face is None else face.descriptor

    # -- comparison -------------------------------------------------------------------------

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
        """L2 distance between descriptors; broadcasts over leading axes ((128,) pair -> float)."""
        d = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)
        return float(d) if np.ndim(d) == 0 else d

    @staticmethod
    def same_person(a: np.ndarray, b: np.ndarray, threshold: float = THRESHOLD) -> bool:
        """dlib's verification decision: distance below ``threshold``."""
        d = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        return bool(d < threshold)


def _hint_rect(hint: Box) -> Any:
    """A square dlib rectangle of side min(w, h) centred on an (x, y, w, h) hint.

    Why square: dlib's 5-point predictor starts from a mean shape placed relative to the box it is
    given, and it was trained on dlib's detector boxes, which are square. YuNet's boxes are ~1.25x
    taller than wide, the extra height being forehead, and HOG's side is close to YuNet's width
    (ratio 0.85-1.30, mean 1.07, on 7 faces).
    """
    dlib = _load()[0]
    x, y, w, h = hint
    side = min(w, h)
    cx, cy = x + w / 2, y + h / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    # dlib rectangles are inclusive: right = left + width - 1.
    return dlib.rectangle(left, top, left + round(side) - 1, top + round(side) - 1)
