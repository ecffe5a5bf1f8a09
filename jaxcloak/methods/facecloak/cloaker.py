"""FaceCloak end to end: fit personal masks for many identities at once, apply them to photos.

:class:`Cloaker` holds what every identity shares (surrogate, anchor pool, view generator,
stage-2 config and its compiled program); :meth:`Cloaker.fit` runs stages 1 and 2 for a batch
of aligned reference faces in one compiled call (padded to a bucket size so the program
compiles once per bucket, and split over the devices of a ``data`` mesh,
:mod:`jaxcloak.parallel`), and :func:`apply_mask` is stage 3.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from ... import __version__
from ...faces.chain import identity_taps, paste_realign_taps
from ...faces.photo import Photo
from ...parallel import (
    bucket_for,
    data_parallel,
    make_mesh,
    n_shards,
    pad_rows,
    replicate,
    shard_rows,
)
from ...precision import Policy, resolve, scope, wrap_network
from ...zoo.embed import embed_faces
from ...zoo.registry import FaceRecognizer
from .anchors import AnchorPool, anchor_embeddings
from .attack import highpass_for, make_cloak
from .config import CloakConfig
from .views import ViewGenerator, views_of_photos


def identity_key(seed: int, reference_id: str) -> jax.Array:
    """Per-identity PRNG key: the run's seed folded with a hash of the reference face's id.

    Keyed by content rather than position, so resuming or reordering a batch job gives every
    identity the same mask.
    """
    return fold_key(seed, identity_fold(reference_id))


def identity_fold(reference_id: str) -> int:
    """The 32-bit number :func:`identity_key` folds into the seed for ``reference_id``."""
    return int(hashlib.sha256(reference_id.encode()).hexdigest()[:8], 16)


def fold_key(seed: int | jax.Array, fold: int | jax.Array) -> jax.Array:
    """``fold`` folded into the key of ``seed``: on the host (Python ints) or traced inside
    the fit (uint32 arrays), the same key."""
    return jax.random.fold_in(jax.random.key(seed), fold)


@dataclass
class FitResult:
    """One identity's fitted mask, the anchors it was pushed between, and its trace."""

    reference_id: str
    delta: np.ndarray  # (S, S, 3) float32 grey levels
    trace: dict[str, np.ndarray]
    anchors: dict[str, Any]
    cos_after: float  # surrogate cosine between the clean and the masked reference crop
    embedding: np.ndarray  # the clean reference face's surrogate embedding; never written
    meta: dict[str, Any] = field(default_factory=dict)


class Cloaker:
    """Stages 1 and 2 for batches of identities, with everything shared compiled once.

    Args:
      recognizer: the surrogate.
      config: stage-2 settings.
      views: the stage-1 view generator.
      pool: the anchor pool.
      anchor_rule: "gallery_filtered" (fixed) or "faithful".
      far_anchor_face: aligned uint8 far anchor, required by the faithful rule.
      max_batch: most identities per compiled call (rounded up to whole devices).
      seed: the run's seed, 0 to 2**32 - 1; every identity's key derives from it.
      mesh: devices the identity batch is split over (default: all of this process's).
      precision: the precision policy (:mod:`jaxcloak.precision`: a name or a Policy; None
        is ``auto``) the surrogate runs under in the fit, the anchors and the post-fit check;
        the mask, its optimiser and the loss stay float32 whatever it is. ``views`` keeps
        its own dtype (build an Arc2Face generator in the policy's dtype to match).
      max_extra: other photos of the person each identity may bring (:meth:`fit`'s
        ``extras``); they are an argument of the compiled program, padded to this many, and
        every photo feeds the views (:func:`.views.views_of_photos`). 0: the
        reference face alone.
    """

    def __init__(
        self,
        recognizer: FaceRecognizer,
        config: CloakConfig,
        views: ViewGenerator,
        pool: AnchorPool,
        *,
        anchor_rule: str = "gallery_filtered",
        far_anchor_face: np.ndarray | None = None,
        max_batch: int = 8,
        seed: int = 0,
        mesh: Mesh | None = None,
        precision: Policy | str | None = None,
        max_extra: int = 0,
    ):
        self.recognizer = recognizer
        self.config = config
        self.views = views
        self.pool = pool
        self.anchor_rule = anchor_rule
        self.far_anchor_face = far_anchor_face
        self.max_batch = max_batch
        if not 0 <= seed < 2**32:  # it travels into the fit as a uint32
            raise ValueError(f"seed must be in 0..{2**32 - 1}, got {seed}")
        self.seed = seed
        self.mesh = mesh if mesh is not None else make_mesh()
        self.precision = resolve(precision)
        one = make_cloak(wrap_network(recognizer.embed, self.precision), config)

        view_params = getattr(views, "params", None)
        if max_extra < 0 or (max_extra and view_params is not None):
            raise ValueError("max_extra must be >= 0, and 0 with a generator that has weights")
        self.max_extra = max_extra

        def fit_one(params, vparams, face, e_sim, e_dist, highpass, taps, seed, fold, *more):
            # identity_key, derived inside the program (no small key programs to compile)
            key = fold_key(seed, fold)
            k_views, k_cloak = jax.random.split(key)
            if more:  # the person's other photos, padded to max_extra, and how many are real
                v = views_of_photos(views, face, more[0], more[1], key=k_views)
            elif vparams is None:
                v = views(face, key=k_views)  # (V + 1, S, S, 3), the real face last
            else:  # a generator with weights (Arc2Face): they are arguments, not constants
                v = views(face, key=k_views, params=vparams)
            return one(params, v, e_sim, e_dist, highpass, taps, key=k_cloak)

        # One program per (bucket, config): weights are arguments (replicated), faces vmapped
        # and split over the mesh's devices.
        batched = (False, False, True, True, True, True, True, True, True) + (True, True) * bool(
            max_extra
        )
        self._fit = data_parallel(fit_one, self.mesh, batched)
        self._params = replicate((recognizer.params, view_params), self.mesh)
        self.compile_seconds: dict[int, float] = {}

    def bucket(self, n: int) -> int:
        """The static identity batch ``n`` identities are padded to."""
        return bucket_for(n, self.max_batch, n_shards(self.mesh))

    def describe(self) -> dict[str, Any]:
        """JSON-able settings for manifests and mask files."""
        return {
            "surrogate": {"name": self.recognizer.spec.name, "sha256": self.recognizer.sha256},
            "config": self.config.to_dict(),
            "config_hash": self.config.digest(),
            "views": self.views.config(),
            "anchor_rule": self.anchor_rule,
            "pool": {"source": self.pool.source, "size": len(self.pool)},
            "seed": self.seed,
            "precision": self.precision.describe(),
            "max_extra_photos": self.max_extra,
            "jaxcloak_version": __version__,
        }

    def fit(
        self,
        faces: np.ndarray,
        reference_ids: Sequence[str],
        transforms: Sequence[np.ndarray | None] | None = None,
        extras: Sequence[np.ndarray | None] | None = None,
    ) -> list[FitResult]:
        """Fit one mask per aligned face.

        Args:
          faces: (N, 112, 112, 3) uint8 aligned clean reference faces, one per identity.
          reference_ids: stable id per face (e.g. "<file sha256>#<face index>"); seeds the
            identity's key and names it in records.
          transforms: each face's (2, 3) photo -> crop matrix, so the optimisation sees the
            mask as it will be after paste-back into that photo; None for a bare crop.
          extras: per face, (E, 112, 112, 3) uint8 aligned crops of the same person's other
            photos (at most ``max_extra``), or None.
        """
        faces = np.asarray(faces)
        if faces.ndim != 4 or faces.shape[1:] != (112, 112, 3) or faces.dtype != np.uint8:
            raise ValueError(f"faces must be (N, 112, 112, 3) uint8, got {faces.shape}")
        if len(reference_ids) != len(faces):
            raise ValueError(f"{len(faces)} faces but {len(reference_ids)} reference ids")
        transforms = list(transforms) if transforms is not None else [None] * len(faces)
        taps = [identity_taps() if m is None else paste_realign_taps(m) for m in transforms]
        extras = list(extras) if extras is not None else [None] * len(faces)
        results: list[FitResult] = []
        step = self.bucket(self.max_batch)
        for start in range(0, len(faces), step):
            sl = slice(start, start + step)
            out, anchors = self.fit_arrays(
                faces[sl], list(reference_ids[sl]), taps[sl], extras=extras[sl]
            )
            results.extend(self.collect(out, faces[sl], list(reference_ids[sl]), anchors))
            for r, e in zip(results[start:], extras[sl], strict=True):
                r.meta["extra_photos"] = 0 if e is None else len(e)
        return results

    def anchors_for(self, face: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``(e_similar, e_distant, record)`` for one aligned face (one small device call;
        streaming runs it on reader threads so the main thread never waits for it)."""
        with scope(self.precision):  # thread-local, so reader threads get it too
            return anchor_embeddings(
                self.recognizer,
                face,
                self.pool,
                rule=self.anchor_rule,
                far_anchor_face=self.far_anchor_face,
            )

    def fit_arrays(
        self,
        faces: np.ndarray,
        reference_ids: Sequence[str],
        taps: list,
        anchors: list | None = None,
        size: int | None = None,
        extras: Sequence[np.ndarray | None] | None = None,
    ) -> tuple[Any, list]:
        """Dispatch one padded, sharded batch; returns ``(device CloakResult, anchors)``.

        The result keeps the bucket's padded batch axis, split over the mesh (``P("data")``);
        JAX dispatches asynchronously, so the host can prepare the next batch meanwhile.
        ``anchors``: each face's :meth:`anchors_for`, when already computed; ``size``: the
        bucket to pad to (default: the smallest that holds the faces); ``extras``: as
        :meth:`fit`.
        """
        n = len(faces)
        b = size or self.bucket(n)
        if n > b:
            raise ValueError(f"{n} faces exceed the largest bucket {b}; use fit()")
        if anchors is None:
            anchors = [self.anchors_for(f) for f in faces]
        rows = (
            np.asarray(faces, np.float32) / 255.0,
            np.stack([a[0] for a in anchors]),
            np.stack([a[1] for a in anchors]),
            highpass_for(faces),
            (np.stack([t[0] for t in taps]), np.stack([t[1] for t in taps])),
            np.full((n,), self.seed, np.uint32),
            np.asarray([identity_fold(i) for i in reference_ids], np.uint32),
        )
        if self.max_extra:
            rows = (*rows, *self._extra_rows(extras, n))
        elif extras is not None and any(e is not None and len(e) for e in extras):
            raise ValueError("extra photos need a Cloaker built with max_extra > 0")
        rows, _ = pad_rows(rows, n, b)
        args = (*self._params, *shard_rows(rows, self.mesh))
        with scope(self.precision):  # traced (and keyed) under the policy's matmul precision
            if b not in self.compile_seconds:
                t0 = time.perf_counter()
                self._fit.lower(*args).compile()  # cached by jit for the call below
                self.compile_seconds[b] = time.perf_counter() - t0
            return self._fit(*args), anchors

    def _extra_rows(self, extras, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, max_extra, S, S, 3) float32 [0, 1] zero-padded crops, and (n,) int32 counts."""
        e = self.max_extra
        crops = np.zeros((n, e, 112, 112, 3), np.float32)
        counts = np.zeros((n,), np.int32)
        for i, x in enumerate(extras or [None] * n):
            if x is None or not len(x):
                continue
            x = np.asarray(x)
            if x.ndim != 4 or x.shape[1:] != (112, 112, 3) or len(x) > e:
                raise ValueError(f"extras[{i}] must be (<= {e}, 112, 112, 3), got {x.shape}")
            crops[i, : len(x)] = x.astype(np.float32) / 255.0
            counts[i] = len(x)
        return crops, counts

    def collect(
        self, out: Any, faces: np.ndarray, ids: Sequence[str], anchors: list
    ) -> list[FitResult]:
        """Host side of one :meth:`fit_arrays` batch: wait for it, drop the padding, score."""
        n = len(faces)
        out = jax.device_get(out)
        masked = np.clip(np.rint(faces + out.mask[:n]), 0, 255).astype(np.uint8)
        with scope(self.precision):
            emb = embed_faces(self.recognizer, np.concatenate([faces, masked]))
        cos_after = np.sum(emb[:n] * emb[n:], axis=1)
        base = self.describe()
        results = []
        for i in range(n):
            meta = {
                **base,
                "reference_id": ids[i],
                "anchors": anchors[i][2],
                "eps": self.config.eps,
                "mode": self.config.mode,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            trace = {k: np.asarray(v[i]) for k, v in out.trace.items()}
            results.append(
                FitResult(
                    ids[i],
                    np.asarray(out.mask[i], np.float32),
                    trace,
                    anchors[i][2],
                    float(cos_after[i]),
                    emb[i],
                    meta,
                )
            )
        return results


def apply_mask(photo: Photo, masks: Sequence[np.ndarray], **paste_kwargs) -> np.ndarray:
    """Stage 3: add one crop-space mask per chosen face of ``photo``; returns the new RGB.

    Each mask is placed with the same similarity transform as that face's aligned crop and
    pasted back with a feathered edge at full resolution (``jaxcloak.faces.paste_back``).
    """
    for m in masks:
        if m.shape != photo.faces[0].crop.shape:
            raise ValueError(f"mask is {m.shape}, crops are {photo.faces[0].crop.shape}")
    return photo.paste(list(masks), **paste_kwargs)
