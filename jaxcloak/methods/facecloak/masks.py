"""Personal mask files: one identity's learned delta plus the metadata to trust and reuse it.

Format (``.mask``, an uncompressed NumPy ``.npz``; no pickles, so loading runs no code):

- ``delta``: (S, S, 3) float32, grey levels (0..255 units) to add to an aligned S x S crop;
- ``trace_<name>``: optional (steps,) per-step optimisation traces (loss, cosines, norms);
- ``meta``: UTF-8 JSON as a uint8 array: ``format``, ``version``, ``surrogate`` (name, sha256),
  ``mode``, ``eps``, ``seed``, ``config`` and ``config_hash``, ``anchors`` (names, cosines),
  ``created`` (UTC ISO time), ``jaxcloak_version``, ``source`` (the reference photo's hash).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...io.atomic import atomic_write

MASK_FORMAT = "jaxcloak-mask"
MASK_VERSION = 1


class MaskFileError(ValueError):
    """A mask file is unreadable, corrupt or of an unsupported version; names the file."""


@dataclass(frozen=True, eq=False)
class PersonalMask:
    """A loaded mask: ``delta`` (S, S, 3) float32 grey levels, its ``meta`` and ``traces``."""

    delta: np.ndarray
    meta: dict[str, Any]
    traces: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.delta.shape[0])


def save_mask(
    path: str | os.PathLike,
    delta: np.ndarray,
    meta: dict[str, Any],
    *,
    traces: dict[str, np.ndarray] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a mask file atomically; ``meta`` gets ``format`` and ``version`` added."""
    delta = np.asarray(delta, np.float32)
    if delta.ndim != 3 or delta.shape[0] != delta.shape[1] or delta.shape[2] != 3:
        raise ValueError(f"mask delta must be (S, S, 3), got {delta.shape}")
    if not np.all(np.isfinite(delta)):
        raise ValueError("mask delta has non-finite values")
    full = {"format": MASK_FORMAT, "version": MASK_VERSION, **meta}
    buf = io.BytesIO()
    blob = np.frombuffer(json.dumps(full, sort_keys=True).encode(), np.uint8)
    extra = {f"trace_{k}": np.asarray(v, np.float32) for k, v in (traces or {}).items()}
    np.savez(buf, delta=delta, meta=blob, **extra)
    return atomic_write(Path(path), buf.getvalue(), overwrite=overwrite)


def load_mask(path: str | os.PathLike) -> PersonalMask:
    """Read and validate a mask file.

    Raises:
      MaskFileError: missing, not a mask file, corrupt, wrong version, or a bad array.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise MaskFileError(f"{p}: cannot read mask file ({e.strerror or e})") from e
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if "delta" not in z.files or "meta" not in z.files:
                raise MaskFileError(f"{p}: not a jaxcloak mask (arrays {sorted(z.files)})")
            delta = np.array(z["delta"])
            meta = json.loads(bytes(z["meta"]).decode())
            traces = {k[6:]: np.array(z[k]) for k in z.files if k.startswith("trace_")}
    except MaskFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, UnicodeDecodeError) as e:
        raise MaskFileError(f"{p}: not a jaxcloak mask or corrupt ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
        raise MaskFileError(f"{p}: not a jaxcloak mask (metadata is a {type(meta).__name__})")
    if meta.get("format") != MASK_FORMAT:
        raise MaskFileError(f"{p}: not a jaxcloak mask (format {meta.get('format')!r})")
    if meta.get("version") != MASK_VERSION:
        raise MaskFileError(
            f"{p}: mask version {meta.get('version')!r} is not supported by this jaxcloak "
            f"(reads version {MASK_VERSION}); refit the mask with `jaxcloak mask fit`"
        )
    if delta.dtype != np.float32 or delta.ndim != 3 or delta.shape[0] != delta.shape[1]:
        raise MaskFileError(f"{p}: bad mask array {delta.dtype} {delta.shape}")
    if delta.shape[2] != 3 or not np.all(np.isfinite(delta)):
        raise MaskFileError(f"{p}: bad mask array (shape {delta.shape} or non-finite values)")
    bound = _stated_bound(p, meta)
    worst = float(np.abs(delta).max(initial=0.0))
    if worst > bound + 1e-3:
        raise MaskFileError(
            f"{p}: mask changes pixels by up to {worst:.1f} grey levels, more than the "
            f"{bound:.1f} its settings allow (eps {meta['eps'] * 255:.1f}/255); the file was "
            "altered or is corrupt"
        )
    for k, v in traces.items():
        if v.ndim != 1:
            raise MaskFileError(f"{p}: bad trace {k!r} of shape {v.shape}")
    return PersonalMask(delta, meta, traces)


def _stated_bound(p: Path, meta: dict[str, Any]) -> float:
    """The largest |delta| (grey levels) the mask's own recorded settings allow."""
    from .config import CloakConfig

    eps = meta.get("eps")
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps <= 1:
        raise MaskFileError(f"{p}: bad mask metadata: eps {eps!r} is not a number in (0, 1]")
    cfg = meta.get("config")
    if cfg is None:  # a mask written by hand or by an outside tool: eps is the whole budget
        return 255.0 * float(eps)
    try:
        if not isinstance(cfg, dict):
            raise TypeError(f"a {type(cfg).__name__}")
        config = CloakConfig.from_dict(cfg)
    except (TypeError, ValueError) as e:
        raise MaskFileError(f"{p}: bad mask metadata: config is not valid ({e})") from None
    if abs(config.eps - eps) > 1e-9:
        raise MaskFileError(f"{p}: bad mask metadata: eps {eps} but config eps {config.eps}")
    return config.max_levels()
