"""Photos and their faces as the methods see them: which faces to protect, aligned crops, batches.

``prepare_photo`` applies the face policies (which detected faces to use, what to do when there
is none) and aligns every chosen face; ``stack_crops`` gathers the crops of many photos into one
array for a compiled step; ``Photo.paste`` carries per-face deltas back into the full photo.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..io.images import LoadedImage
from .align import ARCFACE_TEMPLATE, align_face, invert_affine, warp_crop
from .detect import Face, detect_faces
from .paste import paste_back

FacePolicy = Literal["largest", "all"] | int
NoFacePolicy = Literal["skip", "whole-image"] | tuple[float, float, float, float]


class NoFaceError(ValueError):
    """A photo has no face to protect under the chosen policy; the message says why."""


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """One face chosen for protection, aligned to the ArcFace template.

    Attributes:
      crop: (S, S, 3) uint8 aligned face.
      transform: (2, 3) float64 photo -> crop matrix (``paste_back`` inverts it).
      landmarks: (5, 2) landmarks in photo pixels (template points mapped back for fallbacks).
      box: (x, y, w, h) face box in photo pixels.
      score: detector confidence (1.0 for a fallback box).
      origin: "detected", "whole-image" or "user-box".
      index: position among the photo's detected faces (largest first); -1 for a fallback.
    """

    crop: np.ndarray
    transform: np.ndarray
    landmarks: np.ndarray
    box: tuple[float, float, float, float]
    score: float
    origin: str
    index: int


@dataclass(frozen=True, eq=False)
class Photo:
    """A decoded photo and the faces to protect in it.

    Attributes:
      image: the decoded input (pixels, metadata, hash).
      faces: the chosen faces, in detection order (largest first); empty when skipped.
      too_small: detected faces below the minimum size; never protected, always reported.
      notes: human-readable remarks for the report (fallbacks, skipped faces).
    """

    image: LoadedImage
    faces: tuple[AlignedFace, ...]
    too_small: tuple[Face, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def path(self):
        return self.image.path

    def crops(self) -> np.ndarray:
        """(F, S, S, 3) uint8 aligned crops of the chosen faces."""
        if not self.faces:
            raise NoFaceError(f"{self.image.path}: no faces to stack")
        return np.stack([f.crop for f in self.faces])

    def paste(self, deltas: Sequence[np.ndarray], **kwargs) -> np.ndarray:
        """Photo with one crop-space delta (0..255 units) per chosen face added; see paste_back."""
        if len(deltas) != len(self.faces):
            raise ValueError(f"{self.image.path}: {len(deltas)} deltas for {len(self.faces)} faces")
        return paste_back(self.image.rgb, deltas, [f.transform for f in self.faces], **kwargs)


def box_transform(box: Sequence[float], size: int = 112) -> np.ndarray:
    """Similarity photo -> crop matrix placing a box like an aligned face would sit in the crop.

    The ArcFace template's landmarks span about the central 60% of the crop; a face box from a
    detector spans roughly the whole crop, so the box's longer side is mapped onto the crop side
    and centred (uniform scale: no anisotropic stretch as in the reference, defect D12).
    """
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        raise ValueError(f"box must have positive width and height, got {tuple(box)}")
    s = size / max(w, h)
    cx, cy = x + w / 2, y + h / 2
    return np.array([[s, 0.0, size / 2 - s * cx], [0.0, s, size / 2 - s * cy]], np.float64)


def _fallback_face(rgb: np.ndarray, box: Sequence[float], origin: str, size: int) -> AlignedFace:
    m = box_transform(box, size)
    crop = warp_crop(rgb, m, size)
    inv = invert_affine(m)
    template = ARCFACE_TEMPLATE * (size / 112.0)
    landmarks = template @ inv[:, :2].T + inv[:, 2]
    box_t = tuple(float(v) for v in box)
    return AlignedFace(crop, m, landmarks, box_t, 1.0, origin, -1)


def prepare_photo(
    image: LoadedImage,
    *,
    faces: FacePolicy = "all",
    no_face: NoFacePolicy = "skip",
    min_face: float = 20,
    score_threshold: float = 0.6,
    size: int = 112,
) -> Photo:
    """Detect, choose and align the faces of one photo.

    Args:
      image: a decoded photo (see :func:`jaxcloak.io.read_image`).
      faces: ``"all"`` faces (default), the ``"largest"`` one, or an int index into the detected
        faces sorted largest first.
      no_face: when no face is usable: ``"skip"`` (raise :class:`NoFaceError`, which batch jobs
        report and go on), ``"whole-image"`` (treat the whole photo as the face box), or an
        ``(x, y, w, h)`` box given by the user.
      min_face: faces whose shorter box side is below this many pixels are reported in
        ``too_small`` and never protected.
      score_threshold: YuNet confidence threshold.
      size: aligned crop side.

    Raises:
      NoFaceError: no usable face and ``no_face="skip"``, or the index is out of range.
    """
    rgb = image.rgb
    found = detect_faces(rgb, score_threshold=score_threshold, min_face=min_face)
    notes = [
        f"face at ({f.box[0]:.0f}, {f.box[1]:.0f}) is {min(f.box[2:]):.0f} px, below the "
        f"{min_face:g} px minimum; not protected"
        for f in found.too_small
    ]
    detected = list(found.faces)
    if isinstance(faces, bool) or not (faces in ("all", "largest") or isinstance(faces, int)):
        raise ValueError(f"faces must be 'all', 'largest' or an int index, got {faces!r}")
    if isinstance(faces, int):
        if detected and not -len(detected) <= faces < len(detected):
            raise NoFaceError(
                f"{image.path}: face index {faces} out of range, {len(detected)} face(s) found"
            )
        chosen = [(faces % len(detected), detected[faces])] if detected else []
    elif faces == "largest":
        chosen = [(0, detected[0])] if detected else []
    else:
        chosen = list(enumerate(detected))

    out = []
    for i, f in chosen:
        crop, m = align_face(rgb, f.landmarks, size)
        out.append(AlignedFace(crop, m, np.array(f.landmarks), f.box, f.score, "detected", i))
    if not out:
        small = f" ({len(found.too_small)} smaller than {min_face:g} px)" if found.too_small else ""
        if no_face == "skip":
            raise NoFaceError(f"{image.path}: no face found{small}")
        if no_face == "whole-image":
            h, w = rgb.shape[:2]
            out.append(_fallback_face(rgb, (0, 0, w, h), "whole-image", size))
            notes.append(f"no face found{small}; protecting the whole image as one face")
        elif isinstance(no_face, tuple | list) and len(no_face) == 4:
            out.append(_fallback_face(rgb, no_face, "user-box", size))
            notes.append(f"no face found{small}; using the given box {tuple(no_face)}")
        else:
            raise ValueError(f"no_face must be 'skip', 'whole-image' or a box, got {no_face!r}")
    return Photo(image, tuple(out), tuple(found.too_small), tuple(notes))


def stack_crops(photos: Sequence[Photo]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Gather every chosen face of many photos into one batch for a compiled step.

    Returns:
      ``(crops, where)``: (N, S, S, 3) float32 RGB in [0, 1], and for each row the
      ``(photo index, face index)`` it came from, so results can be scattered back.
    """
    rows, where = [], []
    for p, photo in enumerate(photos):
        for j, face in enumerate(photo.faces):
            rows.append(face.crop)
            where.append((p, j))
    if not rows:
        raise NoFaceError("none of the photos has a face to protect")
    return np.stack(rows).astype(np.float32) / 255.0, where


def scatter_rows(rows: np.ndarray, where: Sequence[tuple[int, int]], n_photos: int) -> list[list]:
    """Inverse of :func:`stack_crops`: per photo, the list of its faces' rows in face order."""
    out: list[list] = [[] for _ in range(n_photos)]
    for row, (p, _) in zip(rows, where, strict=True):
        out[p].append(row)
    return out
