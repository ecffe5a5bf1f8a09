"""Embed aligned faces with a loaded recogniser, in bucketed batches (few compiled programs)."""

from __future__ import annotations

import jax
import numpy as np

from ..parallel import bucket_for
from .registry import FaceRecognizer

_MIN_BUCKET = 8


def embed_faces(recognizer: FaceRecognizer, faces: np.ndarray, *, chunk: int = 32) -> np.ndarray:
    """Embed aligned uint8 faces with one jitted call per chunk.

    Args:
        recognizer: a loaded recogniser.
        faces: (N, 112, 112, 3) uint8 RGB aligned crops.
        chunk: largest batch; a smaller or last batch is padded up to a bucket size
            (:func:`jaxcloak.parallel.bucket_for`), so at most a handful of programs compile
            whatever the face counts.

    Returns:
        (N, D) float32 unit-norm embeddings.
    """
    faces = np.asarray(faces)
    if faces.ndim != 4 or faces.dtype != np.uint8:
        raise ValueError(f"faces must be (N, H, W, 3) uint8, got {faces.shape} {faces.dtype}")
    n = faces.shape[0]
    if n == 0:
        return np.zeros((0, recognizer.spec.embedding_dim), np.float32)
    # Small calls (one face, a clean/protected pair, a photo's faces) all share the one
    # program of the smallest bucket at or above 8: a cold run compiles one embedding
    # program for them instead of one per count; padding a few rows costs milliseconds.
    batch = bucket_for(max(n, min(_MIN_BUCKET, chunk)), chunk)
    fn = jax.jit(recognizer.embed)  # jit's caches are keyed on the function: shared
    out = []
    for start in range(0, n, batch):
        x = faces[start : start + batch]
        pad = batch - x.shape[0]
        if pad:  # repeat the last face rather than compile another, smaller program
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        e = fn(recognizer.params, x.astype(np.float32) / 255.0)
        out.append(np.asarray(e)[: x.shape[0] - pad])
    return np.concatenate(out).astype(np.float32)
