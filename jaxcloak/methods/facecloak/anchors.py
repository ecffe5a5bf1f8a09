"""Anchor pools and FaceCloak's anchor selection (docs/facecloak.md, "Anchors").

FaceCloak pulls the cloaked face away from a *similar* anchor e+ (G+) and toward a *distant*
anchor e- (G-). The reference draws both from the evaluation gallery with no identity filter,
so G+ is often the user's own photo, and then overwrites G- with one hard-coded CelebA file
(docs/facecloak.md, "Defect: anchors from the evaluation gallery" and "Defect: hard-coded far
anchor"). jaxcloak's flag ``anchor_rule`` picks the behaviour:

- ``"gallery_filtered"`` (fixed, default): drop pool faces of the user's identity and any face
  whose cosine to the user reaches the same-person threshold; G+ is the most similar remaining
  face, G- the least similar face of another identity. Use a pool disjoint from the evaluation
  gallery (e.g. :func:`builtin_pool`, or :func:`user_pool` on a separate folder).
- ``"faithful"`` (alias ``"constant"``, after its constant G-): no filter, G+ = argmax cosine
  over the whole pool, G- = a fixed far-anchor embedding the user must supply.

Pools are aligned 112x112 uint8 crops with an identity label per face. :func:`builtin_pool`
builds one at run time from real photos shipped inside installed packages (never copied into
the repository: they are third-party photos), so the method works without a user gallery.
"""

from __future__ import annotations

import functools
import hashlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ...faces import align_face, detect_faces
from ...faces._cv2 import quiet_cv2
from ...io.folders import identity_from_path, scan_folder
from ...io.images import IMAGE_SUFFIXES, ImageReadError, read_image
from ...paths import package_dir
from ...zoo.embed import embed_faces
from ...zoo.registry import FaceRecognizer

__all__ = [
    "RULES",
    "AnchorPool",
    "Anchors",
    "anchor_embeddings",
    "builtin_pool",
    "select_anchors",
    "user_pool",
]

#: Anchor rules, the values of ``anchor_rule`` (fixed first here, it is the default).
RULES = ("gallery_filtered", "faithful")
_RULE_ALIASES = {"constant": "faithful"}  # named after the faithful rule's constant G-

_FACE_SHAPE = (112, 112, 3)
# Bump when what is embedded for a given pool and model changes (e.g. preprocessing).
_CACHE_VERSION = 1
_FAITHFUL_FAR_ANCHOR_HELP = (
    "rule='faithful' reproduces the reference, whose far anchor G- is hard-coded to "
    "data/celeba_verify/group2_gallery/200502_0.jpg (a CelebA image that does not ship with "
    "it); pass the embedding of your own fixed far-anchor face (far_anchor_emb=, or "
    "far_anchor_face= to anchor_embeddings), or use rule='gallery_filtered'"
)


# --------------------------------------------------------------------------------------------
# Pools
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AnchorPool:
    """Aligned faces that anchors are chosen from.

    ``eq=False`` because numpy arrays do not compare with ``==``; ``faces`` is read-only.

    Attributes:
        faces: (N, 112, 112, 3) uint8 RGB crops on the ArcFace 5-point template.
        ids: identity label per face; faces of one person (and their synthetic variants)
            share a label.
        names: unique stable identifier per face, e.g. ``"builtin:t1#3~flip"`` or
            ``"user:alice/img1.jpg#0"``; recorded in manifests.
        source: human-readable description of where the faces come from.
        skipped: ``(path, reason)`` per file that gave no face (user pools only).
    """

    faces: np.ndarray
    ids: tuple[str, ...]
    names: tuple[str, ...]
    source: str
    skipped: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        faces = np.asarray(self.faces)
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != _FACE_SHAPE:
            raise ValueError(
                f"faces must be (N, 112, 112, 3) uint8, got {faces.shape} {faces.dtype}"
            )
        n = faces.shape[0]
        if len(self.ids) != n or len(self.names) != n:
            raise ValueError(f"{n} faces but {len(self.ids)} ids and {len(self.names)} names")
        if len(set(self.names)) != n:
            raise ValueError("pool names must be unique")
        if not faces.flags.owndata or faces.flags.writeable:
            faces = faces.copy()  # never alias (and freeze) the caller's array
        faces.setflags(write=False)
        object.__setattr__(self, "faces", faces)
        object.__setattr__(self, "ids", tuple(str(i) for i in self.ids))
        object.__setattr__(self, "names", tuple(str(s) for s in self.names))

    def __len__(self) -> int:
        return int(self.faces.shape[0])

    @property
    def identities(self) -> tuple[str, ...]:
        """The distinct identity labels, sorted."""
        return tuple(sorted(set(self.ids)))

    @functools.cached_property
    def content_sha256(self) -> str:
        """SHA-256 of the pixels (shape included); names and labels do not change embeddings."""
        h = hashlib.sha256(f"jaxcloak-anchor-pool|{self.faces.shape}|".encode())
        h.update(np.ascontiguousarray(self.faces).tobytes())
        return h.hexdigest()

    def embeddings(
        self, recognizer: FaceRecognizer, *, use_cache: bool = True, chunk: int = 32
    ) -> np.ndarray:
        """Embed every face once per model, reusing an on-disk cache.

        The cache entry is ``$JAXCLOAK_HOME/anchors/<key>.npz`` with ``key`` the SHA-256 of the
        model name, the model file's SHA-256 and :attr:`content_sha256`; it is written
        atomically and ignored (recomputed) when unreadable or of the wrong shape.

        Args:
            recognizer: a loaded recogniser (:func:`jaxcloak.zoo.load`).
            use_cache: read and write the cache.
            chunk: batch size of the jitted embedding calls.

        Returns:
            (N, D) float32 unit-norm embeddings, rows in pool order.
        """
        from ...paths import home

        key = hashlib.sha256(
            f"v{_CACHE_VERSION}|{recognizer.spec.name}|{recognizer.sha256}|"
            f"{self.content_sha256}".encode()
        ).hexdigest()
        path = home() / "anchors" / f"{recognizer.spec.name}-{key[:32]}.npz"
        dim = recognizer.spec.embedding_dim
        if use_cache and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    emb = np.asarray(z["embeddings"], np.float32)
                if emb.shape == (len(self), dim) and np.isfinite(emb).all():
                    return emb
            except (OSError, ValueError, KeyError):
                pass  # corrupt entry: recompute and overwrite it below
        emb = embed_faces(recognizer, self.faces, chunk=chunk)
        if use_cache:
            from ...io.atomic import atomic_write

            buf = io.BytesIO()
            np.savez(buf, embeddings=emb, names=np.asarray(self.names))
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, buf.getvalue())
        return emb


def builtin_pool(*, include_lfw: bool | None = None) -> AnchorPool:
    """A small anchor pool built at run time from faces that installed packages ship.

    With insightface installed: the 6 people of its ``t1.jpg`` group photo (detected and
    aligned with :mod:`jaxcloak.faces`, numbered left to right as ``t1#0..5``) and its aligned
    Tom Hanks face, each with synthetic variants that keep the identity label (``~flip``
    horizontal mirror, ``~tone`` gamma 0.8 with a warm cast, ``~rot`` a 7 degree rotation
    re-warped from the source photo): 7 identities, 28 faces.

    scikit-image's LFW faces are left out by default when insightface is present: they are
    25x25 grey crops that SFace barely separates (mean pairwise cosine 0.30, and 29% of pairs
    reach the 0.363 same-person threshold although they carry no identity labels), so they
    would crowd G+ with faces the model cannot tell apart. Without insightface they are the
    only faces available: each of the 100 becomes its own identity ``lfw:i`` (upscaled to 112
    as :func:`jaxcloak.faces.samples.lfw_faces`), and a warning says the pool is weak.

    Nothing is excluded here (exclusion is :func:`select_anchors`'s job) and nothing is random.

    Args:
        include_lfw: add the LFW faces; ``None`` adds them only when insightface is missing.

    Returns:
        The pool; its ``source`` says what went in.
    """
    images = _insightface_images()
    lfw = images is None if include_lfw is None else include_lfw
    pool = _builtin_pool_cached(str(images) if images is not None else None, bool(lfw))
    if images is None:
        warnings.warn(
            "insightface is not installed, so the built-in anchor pool holds only scikit-image's "
            "tiny grey LFW faces, which the recogniser barely separates: anchors will be weak. "
            "Install insightface (pip install --no-deps insightface) or pass a gallery "
            "(user_pool).",
            UserWarning,
            stacklevel=2,
        )
    return pool


def user_pool(folder: str | Path, *, min_face: float = 20) -> AnchorPool:
    """Read a user's gallery folder into an anchor pool, skipping files that give no face.

    Identity labels: the first-level subfolder name for images inside subfolders, else the
    file name up to the first ``_`` (the reference's convention: ``alice_01.jpg`` -> ``alice``).
    Each image contributes its largest face, aligned to 112x112. Hidden files are ignored;
    unreadable files, files without a face and files with a non-image suffix are returned in
    ``skipped`` with the reason, never raised.

    Args:
        folder: the gallery folder.
        min_face: smallest face side in pixels that is accepted (as :func:`detect_faces`).

    Returns:
        The pool, names ``"user:<relative path>#0"``, in sorted path order.

    Raises:
        NotADirectoryError: ``folder`` is not a directory.
        ValueError: no file in ``folder`` gave a usable face (the reasons are listed).
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: anchor gallery folder not found")
    faces: list[np.ndarray] = []
    ids: list[str] = []
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    scan = scan_folder(root)  # hidden files and folders (.DS_Store, swap files) left out
    others = [s.path for s in scan.skipped if s.why == "suffix" and s.path.is_file()]
    for path in sorted(scan.images + others):
        rel = path.relative_to(root)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((str(path), f"not an image file suffix ({path.suffix or 'none'})"))
            continue
        face, reason = _largest_aligned_face(path, min_face)
        if face is None:
            skipped.append((str(path), reason))
            continue
        faces.append(face)
        ids.append(identity_from_path(rel))
        names.append(f"user:{rel.as_posix()}#0")
    if not faces:
        detail = "; ".join(f"{Path(p).name}: {r}" for p, r in skipped[:10]) or "folder is empty"
        raise ValueError(f"{root}: no usable face in the anchor gallery ({detail})")
    n_ids = len(set(ids))
    return AnchorPool(
        faces=np.stack(faces),
        ids=tuple(ids),
        names=tuple(names),
        source=f"user gallery {root} ({len(faces)} faces, {n_ids} identities, "
        f"{len(skipped)} files skipped)",
        skipped=tuple(skipped),
    )


def _largest_aligned_face(path: Path, min_face: float) -> tuple[np.ndarray | None, str]:
    try:
        rgb = read_image(path).rgb
    except ImageReadError as e:
        return None, str(e)
    try:
        det = detect_faces(rgb, min_face=min_face)
        if len(det) == 0:
            if det.too_small:
                side = min(det.too_small[0].box[2:])
                return None, f"only faces smaller than {min_face:g} px found ({side:.0f} px)"
            return None, "no face found"
        crop, _ = align_face(rgb, det[0].landmarks)
    except Exception as e:  # one odd file (e.g. a 1x1 image OpenCV rejects) must not stop the run
        return None, f"face detection failed ({type(e).__name__}: {e})"
    return crop, ""


def _insightface_images() -> Path | None:
    """insightface's image folder, found without importing the package (its deps are absent)."""
    package = package_dir("insightface")
    if package is None:
        return None
    folder = package / "data" / "images"
    ok = (folder / "t1.jpg").is_file() and (folder / "Tom_Hanks_54745.png").is_file()
    return folder if ok else None


@functools.lru_cache(maxsize=4)
def _builtin_pool_cached(images: str | None, include_lfw: bool) -> AnchorPool:
    faces: list[np.ndarray] = []
    ids: list[str] = []
    names: list[str] = []
    parts: list[str] = []

    def add(source_rgb: np.ndarray, m: np.ndarray, ident: str, name: str) -> None:
        for suffix, face in _variants(source_rgb, m):
            faces.append(face)
            ids.append(ident)
            names.append(f"builtin:{name}{suffix}")

    if images is not None:
        folder = Path(images)
        t1 = read_image(folder / "t1.jpg").rgb
        # Left to right, so "t1#k" names the same person whatever the detector's score order.
        for k, face in enumerate(sorted(detect_faces(t1), key=lambda f: f.box[0])):
            _, m = align_face(t1, face.landmarks)
            add(t1, m, f"t1#{k}", f"t1#{k}")
        n_t1 = len(set(ids))
        hanks = read_image(folder / "Tom_Hanks_54745.png").rgb  # already aligned 112x112
        add(hanks, np.eye(2, 3), "Tom_Hanks", "Tom_Hanks_54745")
        parts.append(f"insightface t1.jpg ({n_t1} people) + Tom_Hanks_54745.png")
    if include_lfw:
        from ...faces.samples import lfw_faces

        for i, face in enumerate(lfw_faces(100)):
            add(face, np.eye(2, 3), f"lfw:{i}", f"lfw#{i}")
        parts.append("scikit-image lfw_subset (100 unlabelled 25x25 grey faces, one id each)")
    if not faces:
        raise RuntimeError("no built-in anchor faces: install insightface or scikit-image")
    weak = "" if images is not None else "; WEAK: no insightface, LFW faces only"
    variants = ", ".join(s.lstrip("~") for s, *_ in _VARIANTS if s)
    return AnchorPool(
        faces=np.stack(faces),
        ids=tuple(ids),
        names=tuple(names),
        source=f"builtin: {' + '.join(parts)}; variants {variants}; "
        f"{len(faces)} faces, {len(set(ids))} identities{weak}",
    )


# (suffix, gamma, RGB gains, rotation in degrees): mild enough to keep the identity (SFace
# cosine to the original >= 0.8 on the built-in faces, see tests/test_anchors.py).
_VARIANTS = (
    ("", None, None, 0.0),
    ("~flip", None, None, 0.0),
    ("~tone", 0.8, (1.06, 1.0, 0.92), 0.0),
    ("~rot", None, None, 7.0),
)


def _variants(source_rgb: np.ndarray, m: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The face warped from ``source_rgb`` by the (2, 3) matrix ``m``, plus synthetic variants."""
    cv2 = quiet_cv2()
    size = _FACE_SHAPE[0]
    m3 = np.vstack([np.asarray(m, np.float64), [0.0, 0.0, 1.0]])

    def warp(rot_deg: float) -> np.ndarray:
        r = np.vstack([cv2.getRotationMatrix2D((size / 2, size / 2), rot_deg, 1.0), [0, 0, 1]])
        # Rotating in crop space after alignment re-samples the source photo once, so corners
        # are real pixels for photos; REFLECT fills them for sources that are already crops.
        return cv2.warpAffine(
            source_rgb,
            (r @ m3)[:2],
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )

    base = warp(0.0)
    out = []
    for suffix, gamma, gains, rot in _VARIANTS:
        if suffix == "~flip":
            face = np.ascontiguousarray(base[:, ::-1])
        elif gamma is not None:
            x = (base.astype(np.float32) / 255.0) ** gamma * np.asarray(gains, np.float32)
            face = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        elif rot:
            face = warp(rot)
        else:
            face = base
        out.append((suffix, face))
    return out


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anchors:
    """The selected similar (G+) and distant (G-) anchors.

    Attributes:
        rule: ``"gallery_filtered"`` or ``"faithful"``.
        similar_index: pool row of G+.
        distant_index: pool row of G-, or ``None`` when G- is the fixed far anchor.
        similar_cos: cosine between the user and G+.
        distant_cos: cosine between the user and G-.
        excluded: pool faces removed before choosing (0 under the faithful rule).
        distant_source: ``"pool"`` or ``"far_anchor"`` (the faithful rule's fixed G-).
        similar_name, similar_id, distant_name, distant_id: filled by
            :func:`anchor_embeddings` from the pool; ``None`` from :func:`select_anchors`.
    """

    rule: str
    similar_index: int
    distant_index: int | None
    similar_cos: float
    distant_cos: float
    excluded: int
    distant_source: Literal["pool", "far_anchor"]
    similar_name: str | None = None
    similar_id: str | None = None
    distant_name: str | None = None
    distant_id: str | None = None


def select_anchors(
    user_emb: np.ndarray,
    pool_emb: np.ndarray,
    pool_ids: Sequence[str],
    *,
    rule: str = "gallery_filtered",
    user_id: str | None = None,
    same_person_threshold: float,
    far_anchor_emb: np.ndarray | None = None,
) -> Anchors:
    """Choose FaceCloak's similar and distant anchors (docs/facecloak.md, "Anchors").

    ``"gallery_filtered"``: drop pool faces labelled ``user_id`` and faces with cosine to the
    user >= ``same_person_threshold`` (probably the user under another label); G+ = argmax
    cosine over the rest, G- = argmin cosine over the rest of an identity other than G+'s.

    ``"faithful"`` (the reference as coded): no filter, G+ = argmax cosine over the whole pool
    (possibly the user's own photo), G- = ``far_anchor_emb``.

    Ties go to the lowest pool index, so the choice is deterministic.

    Args:
        user_emb: (D,) embedding of the user's clean face.
        pool_emb: (N, D) pool embeddings.
        pool_ids: N identity labels.
        rule: ``"gallery_filtered"`` or ``"faithful"`` (``"constant"`` is accepted for the
            latter).
        user_id: the user's identity label in the pool, if any.
        same_person_threshold: the recogniser's same-person cosine (SFace 0.363); ignored by
            the faithful rule.
        far_anchor_emb: (D,) the fixed far anchor; required by the faithful rule, ignored by
            the fixed one.

    Returns:
        :class:`Anchors` with indices and cosines (names and ids left ``None``).

    Raises:
        ValueError: unknown rule, mismatched shapes, a missing far anchor under the faithful
            rule, or fewer than two identities left after exclusion.
    """
    rule = _canonical_rule(rule)
    u = _unit(np.asarray(user_emb, np.float64).reshape(-1), "user_emb")
    g = np.asarray(pool_emb, np.float64)
    ids = np.asarray([str(i) for i in pool_ids], dtype=object)
    if g.ndim != 2 or g.shape[1] != u.shape[0]:
        raise ValueError(f"pool_emb must be (N, {u.shape[0]}), got {g.shape}")
    if ids.shape[0] != g.shape[0]:
        raise ValueError(f"{g.shape[0]} pool embeddings but {ids.shape[0]} ids")
    cos = _unit(g, "pool_emb") @ u  # (N,)

    if rule == "faithful":
        if far_anchor_emb is None:
            raise ValueError(_FAITHFUL_FAR_ANCHOR_HELP)
        if g.shape[0] == 0:
            raise ValueError("the anchor pool is empty")
        far = _unit(np.asarray(far_anchor_emb, np.float64).reshape(-1), "far_anchor_emb")
        if far.shape != u.shape:
            raise ValueError(f"far_anchor_emb must have shape {u.shape}, got {far.shape}")
        s = int(np.argmax(cos))
        return Anchors(rule, s, None, float(cos[s]), float(far @ u), 0, "far_anchor")

    keep = cos < same_person_threshold
    if user_id is not None:
        keep &= ids != str(user_id)
    if len(set(ids[keep])) < 2:
        raise ValueError(
            f"only {int(keep.sum())} pool faces of {len(set(ids[keep]))} identities remain "
            f"after excluding {int((~keep).sum())} of {g.shape[0]} (the user's identity "
            f"{user_id!r} and faces with cosine >= {same_person_threshold}); the anchors need "
            "faces of at least 2 other identities"
        )
    idx = np.flatnonzero(keep)
    s = int(idx[np.argmax(cos[idx])])
    far_idx = idx[ids[idx] != ids[s]]
    d = int(far_idx[np.argmin(cos[far_idx])])
    return Anchors(rule, s, d, float(cos[s]), float(cos[d]), int((~keep).sum()), "pool")


def _canonical_rule(rule: str) -> str:
    rule = _RULE_ALIASES.get(rule, rule)
    if rule not in RULES:
        raise ValueError(f"unknown anchor rule {rule!r}; expected one of {RULES} (or 'constant')")
    return rule


def _unit(x: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or infinity")
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    if (norm == 0).any():
        raise ValueError(f"{what} contains a zero vector")
    return x / norm


def anchor_embeddings(
    recognizer: FaceRecognizer,
    user_face: np.ndarray,
    pool: AnchorPool,
    *,
    rule: str = "gallery_filtered",
    user_id: str | None = None,
    same_person_threshold: float | None = None,
    far_anchor_face: np.ndarray | None = None,
    far_anchor_name: str = "user:far_anchor",
    use_cache: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Select anchors for one user face and return their embeddings plus a manifest record.

    Args:
        recognizer: the surrogate recogniser (the anchors are compared in its space).
        user_face: (112, 112, 3) uint8 aligned clean face of the user.
        pool: the anchor pool (embedded once per model, cached on disk).
        rule: ``"gallery_filtered"`` or ``"faithful"``, see :func:`select_anchors`.
        user_id: the user's identity label in ``pool``, if it has one.
        same_person_threshold: defaults to ``recognizer.spec.threshold``.
        far_anchor_face: (112, 112, 3) uint8 aligned fixed far anchor (faithful rule only).
        far_anchor_name: how the far anchor is named in the record.
        use_cache: use the pool's embedding cache.

    Returns:
        ``(e_similar, e_distant, info)``: (D,) float32 unit embeddings of G+ and G-, and a
        JSON-serialisable dict with the rule, the pool's source, size and hash, the model,
        the threshold, the number excluded and each anchor's name, id, index and cosine.
    """
    user_face = np.asarray(user_face)
    if user_face.shape != _FACE_SHAPE or user_face.dtype != np.uint8:
        raise ValueError(
            f"user_face must be (112, 112, 3) uint8, got {user_face.shape} {user_face.dtype}"
        )
    thr = (
        recognizer.spec.require_threshold()
        if same_person_threshold is None
        else same_person_threshold
    )
    rule = _canonical_rule(rule)  # fail before any embedding work
    extra = [] if far_anchor_face is None or rule != "faithful" else [far_anchor_face]
    for f in extra:
        if np.asarray(f).shape != _FACE_SHAPE or np.asarray(f).dtype != np.uint8:
            raise ValueError("far_anchor_face must be a (112, 112, 3) uint8 aligned face")
    query = embed_faces(recognizer, np.stack([user_face, *extra]))
    pool_emb = pool.embeddings(recognizer, use_cache=use_cache)
    a = select_anchors(
        query[0],
        pool_emb,
        pool.ids,
        rule=rule,
        user_id=user_id,
        same_person_threshold=thr,
        far_anchor_emb=query[1] if extra else None,
    )
    if a.distant_index is None:
        e_distant, d_name, d_id = query[1], far_anchor_name, far_anchor_name
    else:
        i = a.distant_index
        e_distant, d_name, d_id = pool_emb[i], pool.names[i], pool.ids[i]
    a = replace(
        a,
        similar_name=pool.names[a.similar_index],
        similar_id=pool.ids[a.similar_index],
        distant_name=d_name,
        distant_id=d_id,
    )
    info: dict[str, Any] = {
        "rule": a.rule,
        "model": recognizer.spec.name,
        "model_sha256": recognizer.sha256,
        "same_person_threshold": float(thr),
        "user_id": user_id,
        "pool": {
            "source": pool.source,
            "size": len(pool),
            "identities": len(pool.identities),
            "content_sha256": pool.content_sha256,
        },
        "excluded": a.excluded,
        "similar": {
            "name": a.similar_name,
            "id": a.similar_id,
            "index": a.similar_index,
            "cos": a.similar_cos,
        },
        "distant": {
            "name": a.distant_name,
            "id": a.distant_id,
            "index": a.distant_index,
            "cos": a.distant_cos,
            "source": a.distant_source,
        },
    }
    e_similar = pool_emb[a.similar_index]
    return e_similar.astype(np.float32), np.asarray(e_distant, np.float32), info
