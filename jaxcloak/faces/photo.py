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
from .detect import Face, box_iou, detect_faces
from .paste import paste_back

FacePolicy = Literal["largest", "all"] | int
NoFacePolicy = Literal["skip", "whole-image"] | tuple[float, float, float, float]
#: When to look for faces in the photo turned by 90, 180 and 270 degrees: "auto" only when the
#: photo as stored shows none (a sideways portrait with no EXIF orientation), "all" always
#: (faces at several orientations in one photo), "off" never.
RotationPolicy = Literal["auto", "off", "all"]

#: Longest side (a third of the photo's, within these bounds) the turned copies are probed
#: at: a face that fills a portrait is large, and three small probes keep a photo without any
#: face well under two full detections.
_TURN_SEARCH_SIDE = (160, 256)


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
    and centred (uniform scale: no anisotropic stretch as in the reference; docs/facecloak.md,
    "Defect: unaligned, stretched crops").
    """
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        raise ValueError(f"box must have positive width and height, got {tuple(box)}")
    s = size / max(w, h)
    cx, cy = x + w / 2, y + h / 2
    return np.array([[s, 0.0, size / 2 - s * cx], [0.0, s, size / 2 - s * cy]], np.float64)


def _turned_to_original(pts: np.ndarray, k: int, h: int, w: int) -> np.ndarray:
    """(N, 2) points of ``np.rot90(photo, k)`` in the (h, w) photo's own coordinates."""
    x, y = pts[:, 0], pts[:, 1]
    if k == 1:
        return np.stack([w - 1 - y, x], axis=1)
    if k == 2:
        return np.stack([w - 1 - x, h - 1 - y], axis=1)
    return np.stack([y, h - 1 - x], axis=1)


def _probe_turns(rgb: np.ndarray, threshold: float) -> list[tuple[float, int]]:
    """``(best face score, k)`` for the photo turned by k = 1, 2, 3 quarter turns, detected on
    one small copy (made once, so a large photo is not turned and resized three times)."""
    import cv2

    h, w = rgb.shape[:2]
    # A multiple of 32: YuNet pads its input to one, so 171 px costs as much as 192.
    side = 32 * int(np.clip(max(h, w) / 3, *_TURN_SEARCH_SIDE) // 32)
    scale = min(1.0, side / max(h, w))
    small = rgb
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    out = []
    for k in (1, 2, 3):
        res = detect_faces(
            np.ascontiguousarray(np.rot90(small, k)), score_threshold=threshold, min_face=0
        )
        out.append((max((f.score for f in res.faces), default=0.0), k))
    return out


def _detect_turned(rgb: np.ndarray, k: int, threshold: float, min_face: float) -> list[Face]:
    """Usable faces of the photo turned by ``k`` quarter turns, in the photo's coordinates."""
    turned = np.ascontiguousarray(np.rot90(rgb, k))
    res = detect_faces(turned, score_threshold=threshold, min_face=min_face)
    h, w = rgb.shape[:2]

    def back(f: Face) -> Face:
        x, y, bw, bh = f.box
        corners = np.array([[x, y], [x + bw, y], [x, y + bh], [x + bw, y + bh]], np.float64)
        c = _turned_to_original(corners, k, h, w)
        lo, hi = c.min(0), c.max(0)
        lm = _turned_to_original(np.asarray(f.landmarks), k, h, w)
        lm.setflags(write=False)
        box = (float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1]))
        return Face(box=box, landmarks=lm, score=f.score)

    return [back(f) for f in res.faces]


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
    rotations: RotationPolicy = "auto",
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
      rotations: see :data:`RotationPolicy`. A face found in a turned copy is mapped back to
        the photo's own coordinates (its alignment then includes the turn), so it is protected
        and pasted back in the photo's original orientation; its ``origin`` says
        ``detected-rot90`` (180, 270) and a note records it.

    Raises:
      NoFaceError: no usable face and ``no_face="skip"``, or the index is out of range.
    """
    rgb = image.rgb
    if rotations not in ("auto", "off", "all"):
        raise ValueError(f"rotations must be 'auto', 'off' or 'all', got {rotations!r}")
    found = detect_faces(rgb, score_threshold=score_threshold, min_face=min_face)
    # (face, quarter turns it was found at); YuNet also fires on a sideways face, with its
    # landmarks in image order, so at several orientations the most confident one wins.
    hits = [(f, 0) for f in found.faces]
    if rotations == "auto" and not hits:
        # Probe the three turns on small copies; detect at full size only at the turn that
        # shows the most confident face (YuNet also fires, less surely, on an upside-down one).
        best, k = max(_probe_turns(rgb, score_threshold))
        if best > 0:
            hits = [(f, k) for f in _detect_turned(rgb, k, score_threshold, min_face)]
    elif rotations == "all":
        for k in (1, 2, 3):
            for f in _detect_turned(rgb, k, score_threshold, min_face):
                same = [i for i, (g, _) in enumerate(hits) if box_iou(f.box, g.box) > 0.3]
                if not same:
                    hits.append((f, k))
                elif all(f.score > hits[i][0].score for i in same):
                    for i in sorted(same, reverse=True):
                        del hits[i]
                    hits.append((f, k))
    hits.sort(key=lambda h: h[0].area, reverse=True)
    turns = [k for _, k in hits]
    notes = [
        f"face at ({f.box[0]:.0f}, {f.box[1]:.0f}) is {min(f.box[2:]):.0f} px, below the "
        f"{min_face:g} px minimum; not protected"
        for f in found.too_small
    ]
    notes += [
        f"face {i} found with the photo turned {90 * k} degrees; protected in the photo's own "
        "orientation"
        for i, k in enumerate(turns)
        if k
    ]
    detected = [f for f, _ in hits]
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
        origin = f"detected-rot{90 * turns[i]}" if turns[i] else "detected"
        out.append(AlignedFace(crop, m, np.array(f.landmarks), f.box, f.score, origin, i))
    if not out:
        small = f" ({len(found.too_small)} smaller than {min_face:g} px)" if found.too_small else ""
        if no_face == "skip":
            raise NoFaceError(f"{image.path}: no face found{small}")
        if no_face == "whole-image":
            h, w = rgb.shape[:2]
            out.append(_fallback_face(rgb, (0, 0, w, h), "whole-image", size))
            notes.append(f"no face found{small}; protecting the whole image as one face")
        elif isinstance(no_face, tuple | list) and len(no_face) == 4:
            x, y, bw, bh = (float(v) for v in no_face)
            h, w = rgb.shape[:2]
            inside = max(0.0, min(x + bw, w) - max(x, 0.0)) * max(0.0, min(y + bh, h) - max(y, 0.0))
            if bw <= 0 or bh <= 0 or inside < 0.5 * bw * bh:
                raise NoFaceError(
                    f"{image.path}: no face found, and the box {tuple(no_face)} lies mostly "
                    f"outside the {w}x{h} photo; nothing protected"
                )
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
