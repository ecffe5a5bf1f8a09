"""On-disk cache of converted models under ``$JAXCLOAK_HOME`` (default: the user cache dir).

A cache entry is the folded ONNX graph (dequantised float32 weights, no constant subgraphs)
named by the model, the SHA-256 of the source file and the converter version, plus a JSON
sidecar. Loading recomputes the source hash, so an edited or replaced model file never
reuses stale params. Entries are written atomically; a corrupt entry is reconverted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import onnx

from .. import __version__
from ..io.atomic import atomic_write, atomic_write_json
from ..io.hashing import sha256_file
from ..paths import home
from .onnx import OnnxFunction, convert

# Bump when conversion output changes, so old cache entries are ignored.
CONVERTER_VERSION = 2  # 2: Conv -> BatchNormalization pairs folded


def entry_path(name: str, sha: str) -> Path:
    return home() / "models" / f"{name}-{sha[:16]}-c{CONVERTER_VERSION}.onnx"


def load_onnx_cached(
    src: str | os.PathLike, *, name: str, use_cache: bool = True
) -> tuple[OnnxFunction, dict, str, bool]:
    """Convert ``src`` (or reuse its cache entry).

    Returns:
      ``(apply_fn, params, sha256 of src, whether the cache was used)``.
    """
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"model file not found: {src}")
    sha = sha256_file(src)
    entry = entry_path(name, sha)
    meta_path = entry.with_suffix(".json")
    if use_cache and entry.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("source_sha256") == sha and meta.get("entry_sha256") == sha256_file(entry):
                fn, params = convert(entry)
                return fn, params, sha, True
        except Exception:
            pass  # unreadable or stale entry: fall through and rebuild it
    fn, params = convert(src)
    if use_cache:
        blob = fn.to_model(params).SerializeToString()
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(entry, blob)
        meta = {
            "name": name,
            "source": str(src),
            "source_sha256": sha,
            "entry_sha256": hashlib.sha256(blob).hexdigest(),
            "converter_version": CONVERTER_VERSION,
            "jaxcloak_version": __version__,
            "onnx_version": onnx.__version__,
        }
        atomic_write_json(meta_path, meta)
    return fn, params, sha, False
