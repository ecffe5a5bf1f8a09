"""Protection-success and image-quality metrics (FaceCloak's: docs/facecloak.md, "Evaluation").

Three families, all pure functions of arrays:

- **Verification** (a threshold on each pair's similarity, as AMT-GAN, CLIP2Protect, DiffAM
  and MAP report it): :func:`verification_psr`, :func:`verification_psr_at_far`, the
  :data:`THRESHOLDS` table and :func:`calibrate_threshold` / :func:`calibration_report` to
  recalibrate a threshold on one's own genuine/impostor pairs (AMT-GAN #24 asks how; nobody
  published the calibration data).
- **Identification** (ranking against a gallery, as OPOM, AdvCloak and FaceCloak report it):
  :func:`identification_psr`, FaceCloak's top-n counting rule, vectorised in ``jax.numpy``.
- **Image quality**: :func:`psnr`, :func:`mse`, :func:`ssim` (Wang et al. 2004, equal to
  skimage's ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``), :func:`linf`,
  :func:`l2`, each with an optional region mask; and :func:`ssim_int8_compat`, the reference's
  SSIM on int8-wrapped arrays (docs/facecloak.md, "Defect: SSIM on int8 arrays"), kept only so
  faithful runs can be compared.

Decision rules at a threshold are explicit (:data:`SameIf`): a model's published rule decides
whether a score exactly at the threshold is "same" or "different" (SFace ``cosine >= 0.363``;
dlib ``distance < 0.6``; AMT-GAN ``cosine > th``). Comparisons run in float64 on the host, as
the reference scripts do (``tensor.item()`` against a Python float), because casting a threshold
such as 0.363 to float32 would move the boundary.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

__all__ = [
    "THRESHOLDS",
    "SameIf",
    "Threshold",
    "calibrate_threshold",
    "calibration_report",
    "identification_psr",
    "is_same",
    "l2",
    "linf",
    "mse",
    "psnr",
    "same_name_mask",
    "ssim",
    "ssim_int8_compat",
    "verification_psr",
    "verification_psr_at_far",
]

#: How a score is compared with a threshold to decide "same identity".
#: ``">="``/``">"`` for similarities (higher = same), ``"<="``/``"<"`` for distances.
SameIf = Literal[">=", ">", "<=", "<"]
Mode = Literal["dodging", "impersonation"]
#: An image or mask the pixel metrics read on the host.
AnyArray = np.ndarray | jax.Array

_COMPARE = {">=": np.greater_equal, ">": np.greater, "<=": np.less_equal, "<": np.less}
_MODES = ("dodging", "impersonation")


class Threshold(NamedTuple):
    """One published decision threshold.

    Attributes:
        value: the threshold.
        kind: ``"cosine"`` (similarity, higher = same) or ``"l2"`` (distance, lower = same).
        source: where the number and its rule come from.
        same_if: the source's rule at the boundary; ``score same_if value`` means "same".
    """

    value: float
    kind: Literal["cosine", "l2"]
    source: str
    same_if: SameIf


# AMT-GAN's table (cosine on its own IR152/IRSE50/FaceNet/MobileFace weights, 112² except
# FaceNet 160²). Verified here against a stored copy of AMT-GAN's test.py (``th_dict`` in
# ``attack_local_models``; its imports, ``backbone.Inference`` and ``setup.setup_argparser``,
# match CGCL-codes/AMT-GAN, whose test.py the index does not hold under the repository name), and
# the FAR 0.01 column against fahadshamshad/Clip2Protect ``utils/clip2protect_utils.py`` @4c046fd
# (``quan``). Both count a success with a strict ``cos > th``, hence ``same_if=">"``.
_AMT = (
    "AMT-GAN test.py th_dict (also CLIP2Protect utils/clip2protect_utils.py quan, DiffAM); "
    "accepted if cosine > th"
)
_SFACE = (
    "opencv/opencv_zoo models/face_recognition_sface/sface.py SFace.match: "
    "same if cosine >= 0.363, or if norm-L2 distance <= 1.128"
)
_DLIB = (
    "dlib examples/dnn_face_recognition_ex.cpp and face_recognition_model_v1 docs: "
    "same if L2 distance < 0.6"
)


def _far_row(values: tuple[float, float, float]) -> dict[float | str, Threshold]:
    return {
        far: Threshold(v, "cosine", _AMT, ">")
        for far, v in zip((0.1, 0.01, 0.001), values, strict=True)
    }


#: model -> FAR (float) or rule name (str) -> :class:`Threshold`. Treat as read-only.
THRESHOLDS: dict[str, dict[float | str, Threshold]] = {
    "ir152": _far_row((0.094632, 0.166788, 0.227922)),
    "irse50": _far_row((0.144840, 0.241045, 0.312703)),
    "facenet": _far_row((0.256587, 0.409131, 0.591191)),
    "mobile_face": _far_row((0.183635, 0.301611, 0.380878)),
    "sface": {
        "cosine": Threshold(0.363, "cosine", _SFACE, ">="),
        "l2": Threshold(1.128, "l2", _SFACE, "<="),
    },
    "dlib": {"l2": Threshold(0.6, "l2", _DLIB, "<")},
}


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def _as_scores(scores: np.ndarray | jax.Array | Sequence[float], what: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError(f"{what} is empty")
    if not np.all(np.isfinite(s)):
        # A NaN compares False both ways and would silently count as "different".
        raise ValueError(f"{what} has non-finite values")
    return s


def _resolve_rule(
    threshold: float | Threshold, higher_is_same: bool | None, same_if: SameIf | None
) -> tuple[float, SameIf]:
    if same_if is None and isinstance(threshold, Threshold):
        same_if = threshold.same_if
    if same_if is None:
        # Bare number: a score exactly at the threshold counts as "same".
        same_if = "<=" if higher_is_same is False else ">="
    if same_if not in _COMPARE:
        raise ValueError(f"same_if must be one of {tuple(_COMPARE)}, got {same_if!r}")
    rule_higher = same_if in (">=", ">")
    if higher_is_same is not None and higher_is_same != rule_higher:
        raise ValueError(
            f"higher_is_same={higher_is_same} contradicts the rule 'score {same_if} threshold'"
        )
    value = threshold.value if isinstance(threshold, Threshold) else float(threshold)
    return value, same_if


def is_same(
    scores: np.ndarray | jax.Array | Sequence[float],
    threshold: float | Threshold,
    *,
    higher_is_same: bool | None = None,
    same_if: SameIf | None = None,
) -> np.ndarray:
    """The verifier's decision per score, in float64.

    Args:
        scores: (N,) similarities or distances.
        threshold: a number or a :class:`Threshold` (whose ``same_if`` is then the default rule).
        higher_is_same: True for similarities, False for distances; None infers it from the rule
            (similarity for a bare number). Must agree with ``same_if`` when both are given.
        same_if: the rule; default: the :class:`Threshold`'s, else ``">="`` for similarities and
            ``"<="`` for distances, i.e. a score exactly at a bare threshold is "same".

    Returns:
        (N,) bool, True where the pair is judged the same identity.
    """
    value, rule = _resolve_rule(threshold, higher_is_same, same_if)
    return _COMPARE[rule](_as_scores(scores, "scores"), value)


def verification_psr(
    scores: np.ndarray | jax.Array | Sequence[float],
    threshold: float | Threshold,
    *,
    higher_is_same: bool | None = None,
    mode: Mode = "dodging",
    same_if: SameIf | None = None,
) -> float:
    """Protection success rate of 1:1 verification (a threshold on each pair's score).

    Dodging (obfuscation): ``scores`` compare each protected face with a clean photo of the same
    person; success when the verifier says "different". Impersonation: ``scores`` compare each
    protected face with the target identity; success when it says "same".

    Ties: see :func:`is_same`. For a bare number a score exactly at the threshold is "same",
    which is conservative for dodging; pass a :class:`Threshold` (or ``same_if``) to use a
    model's own rule, e.g. ``THRESHOLDS["dlib"]["l2"]`` where distance == 0.6 is "different".

    Args:
        scores: (N,) similarities (``higher_is_same``) or distances.
        threshold: a number or a :class:`Threshold`.
        higher_is_same: see :func:`is_same`.
        mode: ``"dodging"`` or ``"impersonation"``.
        same_if: see :func:`is_same`.

    Returns:
        The fraction of successful pairs, in [0, 1].

    >>> verification_psr([0.1, 0.5], 0.363)  # SFace cosine: 0.1 is "different"
    0.5
    >>> verification_psr([0.59, 0.6, 0.7], THRESHOLDS["dlib"]["l2"])  # 0.6 is "different"
    0.6666666666666666
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    same = is_same(scores, threshold, higher_is_same=higher_is_same, same_if=same_if)
    success = ~same if mode == "dodging" else same
    return float(np.mean(success))


def verification_psr_at_far(
    scores: np.ndarray | jax.Array | Sequence[float],
    model: str,
    *,
    mode: Mode = "impersonation",
    fars: Sequence[float] | None = None,
    table: Mapping[str, Mapping[float | str, Threshold]] = THRESHOLDS,
) -> dict[float, float]:
    """:func:`verification_psr` at each tabulated FAR of one model (AMT-GAN's report).

    Args:
        scores: (N,) cosine similarities of the model named ``model``.
        model: a key of ``table`` with FAR entries, e.g. ``"irse50"``.
        mode: ``"impersonation"`` (AMT-GAN's ASR, the default) or ``"dodging"``.
        fars: which FARs; default every float key of ``table[model]``, largest first.
        table: thresholds, e.g. :data:`THRESHOLDS` or one rebuilt from :func:`calibrate_threshold`.

    Returns:
        FAR -> PSR.
    """
    if model not in table:
        raise KeyError(f"no thresholds for model {model!r}; known: {sorted(table)}")
    row = table[model]
    tabulated = sorted((k for k in row if isinstance(k, float)), reverse=True)
    if fars is None:
        fars = tabulated
    if not fars:
        raise ValueError(f"model {model!r} has no FAR thresholds (entries: {list(row)})")
    out = {}
    for far in fars:
        if far not in row:
            raise KeyError(f"no FAR {far} threshold for {model!r}; tabulated: {tabulated}")
        out[far] = verification_psr(scores, row[far], mode=mode)
    return out


def _n_false_accepts_allowed(far: float, n_impostors: int) -> int:
    if not 0.0 < far < 1.0:
        raise ValueError(f"far must be in (0, 1), got {far}")
    # round() first: 0.29 * 100 is 28.999999999999996 in binary floating point.
    allowed = math.floor(round(far * n_impostors, 9))
    if allowed < 1:
        raise ValueError(
            f"FAR {far} needs at least {math.ceil(round(1 / far, 9))} impostor pairs "
            f"(one false accept at most), got {n_impostors}"
        )
    return allowed


def calibrate_threshold(
    genuine_scores: np.ndarray | jax.Array | Sequence[float],
    impostor_scores: np.ndarray | jax.Array | Sequence[float],
    far: float,
    *,
    same_if: Literal[">=", ">"] = ">=",
) -> float:
    """The lowest similarity threshold whose false-accept rate on ``impostor_scores`` is <= far.

    With the impostor scores sorted in decreasing order s_1 >= ... >= s_n and k = floor(far·n)
    false accepts allowed, the answer is s_{k+1} under ``same_if=">"`` (AMT-GAN's rule) and the
    next float64 above s_{k+1} under ``">="`` (the default, matching :func:`verification_psr`'s
    tie rule for a bare number). Ties among impostors can only lower the achieved FAR.
    Use the result with the same ``same_if``. For distances, pass negated distances.

    Args:
        genuine_scores: (Ng,) same-identity similarities; validated only (the true-accept rate
            at the threshold is reported by :func:`calibration_report`).
        impostor_scores: (Ni,) different-identity similarities; need Ni >= 1/far.
        far: target false-accept rate in (0, 1).
        same_if: the rule the threshold will be used with.

    Returns:
        The threshold.

    >>> calibrate_threshold([0.9], np.arange(10) / 10, 0.1, same_if=">")
    0.8
    """
    _as_scores(genuine_scores, "genuine_scores")
    imp = np.sort(_as_scores(impostor_scores, "impostor_scores"))[::-1]
    k = _n_false_accepts_allowed(far, imp.size)
    if same_if not in (">=", ">"):
        raise ValueError(f"same_if must be '>=' or '>' for similarities, got {same_if!r}")
    t = float(imp[k])
    return t if same_if == ">" else float(np.nextafter(t, np.inf))


def calibration_report(
    genuine_scores: np.ndarray | jax.Array | Sequence[float],
    impostor_scores: np.ndarray | jax.Array | Sequence[float],
    fars: Sequence[float] = (0.1, 0.01, 0.001),
    *,
    same_if: Literal[">=", ">"] = ">=",
) -> dict[float, dict[str, float | int]]:
    """Calibrate at several FARs and report the achieved FAR and TAR at each threshold.

    Returns:
        FAR -> ``{"threshold", "far", "tar", "n_genuine", "n_impostor"}``; ``far`` is the achieved
        false-accept rate (<= the target), ``tar`` the share of genuine pairs accepted.
    """
    gen = _as_scores(genuine_scores, "genuine_scores")
    imp = _as_scores(impostor_scores, "impostor_scores")
    out = {}
    for far in fars:
        t = calibrate_threshold(gen, imp, far, same_if=same_if)
        out[far] = {
            "threshold": t,
            "far": float(np.mean(_COMPARE[same_if](imp, t))),
            "tar": float(np.mean(_COMPARE[same_if](gen, t))),
            "n_genuine": gen.size,
            "n_impostor": imp.size,
        }
    return out


# --------------------------------------------------------------------------------------------
# Identification
# --------------------------------------------------------------------------------------------


def _hits_within_ranks(
    sim: jax.Array, same_id: jax.Array, valid: jax.Array, ranks: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per probe, the share of genuine gallery items found within each rank.

    sim, same_id, valid: (P, G); ranks: (R,) int32. Returns ((R, P) float32, (P,) int32).
    """
    n_gallery = sim.shape[1]
    genuine = same_id & valid
    impostor = ~same_id & valid
    # Non-impostors sink to -inf at the front of each sorted row, so they are never "above".
    imp_sorted = jnp.sort(jnp.where(impostor, sim, -jnp.inf), axis=1)  # (P, G) ascending
    # side="right": an impostor *equal* to the genuine score is not counted as ranked above it,
    # so a tie counts the genuine as found, i.e. against protection (conservative PSR).
    n_below_or_equal = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side="right"))(
        imp_sorted, sim
    )
    n_above = n_gallery - n_below_or_equal  # (P, G) impostors strictly more similar
    hit = (n_above[None] <= ranks[:, None, None] - 1) & genuine[None]  # (R, P, G)
    n_genuine = jnp.sum(genuine, axis=1, dtype=jnp.int32)  # (P,)
    denom = jnp.maximum(n_genuine, 1).astype(jnp.float32)[None, :]  # (1, P)
    share = jnp.sum(hit, axis=2, dtype=jnp.float32) / denom
    return share, n_genuine


def _encode_ids(probe_ids: Sequence, gallery_ids: Sequence) -> tuple[np.ndarray, np.ndarray]:
    # Labels may be strings (file-name prefixes); JAX needs integers.
    p = np.asarray(probe_ids).reshape(-1)
    g = np.asarray(gallery_ids).reshape(-1)
    _, codes = np.unique(np.concatenate([p, g]), return_inverse=True)
    return codes[: p.size].astype(np.int32), codes[p.size :].astype(np.int32)


def identification_psr(
    sim: np.ndarray | jax.Array,
    probe_ids: Sequence | np.ndarray,
    gallery_ids: Sequence | np.ndarray,
    *,
    ranks: Sequence[int] = (1, 5),
    exclude: np.ndarray | jax.Array | None = None,
) -> dict[int | str, float | int]:
    """Closed-set identification PSR, FaceCloak's top-n counting (docs/facecloak.md, "Evaluation").

    For probe p with genuine gallery items g(p) (same identity, not excluded) and impostors
    (other identities, not excluded)::

        score_n(p) = mean_{g in g(p)} 1[#{impostors h : sim(p, h) > sim(p, g)} <= n - 1]
        PSR_n      = 1 - mean_p score_n(p)

    Other genuine items never push a genuine item down, as in the reference. The reference
    divides by a fixed c = 4 genuine items per probe; the mean here equals it when every probe
    has c genuine items and stays in [0, 1] otherwise.

    Ties: the reference ranks by sort order, which is arbitrary at a tie. Here an impostor with
    a similarity *equal* to the genuine one is not ranked above it, so ties count the person as
    recognised: the conservative choice for a metric of protection success.

    Probes with no genuine gallery item cannot be scored; they are left out of the mean and
    counted under ``"n_probes_without_genuine"``.

    Similarities are compared in ``jax.numpy``'s default float (float32 unless x64 is on); two
    float64 values that round to the same float32 then tie, which again counts against
    protection.

    Args:
        sim: (P, G) probe-gallery similarities (higher = more alike), e.g. cosine of cloaked
            probes against the clean gallery. For distances pass ``-distance``.
        probe_ids: (P,) identity labels (ints or strings).
        gallery_ids: (G,) identity labels.
        ranks: the n of top-n; positive integers.
        exclude: optional (P, G) bool, True for gallery items to skip for that probe (e.g. the
            probe's own file, :func:`same_name_mask`).

    Returns:
        ``{n: PSR_n for n in ranks, "n_probes_without_genuine": int, "n_probes_scored": int}``.

    >>> sim = np.array([[0.9, 0.8, 0.1]])
    >>> identification_psr(sim, ["a"], ["b", "a", "c"], ranks=(1, 2))
    {1: 1.0, 2: 0.0, 'n_probes_without_genuine': 0, 'n_probes_scored': 1}
    """
    sim_np = np.asarray(sim)
    if sim_np.ndim != 2:
        raise ValueError(f"sim must be (P, G), got shape {sim_np.shape}")
    if not np.all(np.isfinite(sim_np)):
        raise ValueError("sim has non-finite values")
    n_probe, n_gallery = sim_np.shape
    pid, gid = _encode_ids(probe_ids, gallery_ids)
    if pid.size != n_probe or gid.size != n_gallery:
        raise ValueError(
            f"ids do not match sim {sim_np.shape}: {pid.size} probe ids, {gid.size} gallery ids"
        )
    if exclude is None:
        valid = np.ones((n_probe, n_gallery), bool)
    else:
        exclude_np = np.asarray(exclude)
        if exclude_np.shape != sim_np.shape or exclude_np.dtype != np.bool_:
            raise ValueError(f"exclude must be a bool array of shape {sim_np.shape}")
        valid = ~exclude_np
    ranks_t = tuple(int(r) for r in ranks)
    if not ranks_t or any(r < 1 for r in ranks_t) or len(set(ranks_t)) != len(ranks_t):
        raise ValueError(f"ranks must be distinct positive integers, got {ranks}")

    share, n_genuine = _hits_within_ranks(
        jnp.asarray(sim_np, dtype=jnp.result_type(float)),
        jnp.asarray(pid[:, None] == gid[None, :]),
        jnp.asarray(valid),
        jnp.asarray(ranks_t, dtype=jnp.int32),
    )
    share, has_genuine = np.asarray(share, np.float64), np.asarray(n_genuine) > 0
    n_scored = int(has_genuine.sum())
    if n_scored == 0:
        raise ValueError("no probe has a genuine (same identity, not excluded) gallery item")
    out: dict[int | str, float | int] = {
        r: float(1.0 - share[i, has_genuine].mean()) for i, r in enumerate(ranks_t)
    }
    out["n_probes_without_genuine"] = int(n_probe - n_scored)
    out["n_probes_scored"] = n_scored
    return out


def same_name_mask(
    probe_names: Sequence[str | os.PathLike], gallery_names: Sequence[str | os.PathLike]
) -> np.ndarray:
    """(P, G) bool, True where a gallery file has the probe's base name (the reference skips it).

    Compares ``os.path.basename`` of each path, e.g. ``probe/x_1.jpg`` and ``gallery/x_1.jpg``.
    """
    p = np.asarray([os.path.basename(os.fspath(n)) for n in probe_names], dtype=object)
    g = np.asarray([os.path.basename(os.fspath(n)) for n in gallery_names], dtype=object)
    return (p[:, None] == g[None, :]).astype(bool).reshape(p.size, g.size)


# --------------------------------------------------------------------------------------------
# Image quality
# --------------------------------------------------------------------------------------------


def _pair_f64(a: AnyArray, b: AnyArray) -> tuple[np.ndarray, ...]:
    a_np, b_np = np.asarray(a), np.asarray(b)
    if a_np.shape != b_np.shape:
        raise ValueError(f"images differ in shape: {a_np.shape} vs {b_np.shape}")
    if np.int8 in (a_np.dtype, b_np.dtype):
        # int8 cannot hold grey levels 128..255 (the reference's SSIM defect); use
        # ssim_int8_compat on purpose.
        raise TypeError("int8 images are not grey levels; pass uint8 or float (0..255)")
    # float64 throughout: uint8 differences would wrap and float32 loses SSIM's small terms.
    return a_np.astype(np.float64), b_np.astype(np.float64)


def _region(mask: AnyArray | None, spatial: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != np.bool_ or m.shape != spatial:
        raise ValueError(f"mask must be a bool array of shape {spatial}, got {m.dtype} {m.shape}")
    if not m.any():
        raise ValueError("mask selects no pixel")
    return m


def _diff(a: AnyArray, b: AnyArray, mask: AnyArray | None) -> np.ndarray:
    """a - b in float64, flattened; with ``mask`` (H, W) only the selected pixels."""
    x, y = _pair_f64(a, b)
    d = x - y
    if mask is None:
        return d.reshape(-1)
    m = _region(mask, d.shape[:2])
    return d[m].reshape(-1)  # (n_pixels, C) -> flat: every channel of the selected pixels


def mse(a: AnyArray, b: AnyArray, *, mask: AnyArray | None = None) -> float:
    """Mean squared difference in grey levels over all elements (or over a (H, W) region)."""
    return float(np.mean(np.square(_diff(a, b, mask))))


def psnr(
    a: AnyArray, b: AnyArray, data_range: float = 255, *, mask: AnyArray | None = None
) -> float:
    """Peak signal-to-noise ratio, 10·log10(data_range² / MSE) in dB; inf for equal images.

    Matches ``skimage.metrics.peak_signal_noise_ratio(a, b, data_range=data_range)``.

    Args:
        a, b: images of equal shape, e.g. (H, W, 3) uint8 or float grey levels.
        data_range: the value range (255 for 0..255 grey levels).
        mask: optional (H, W) bool region; the MSE is taken over its pixels only.
    """
    err = mse(a, b, mask=mask)
    if err == 0.0:
        return math.inf
    return float(10.0 * np.log10(float(data_range) ** 2 / err))


def linf(a: AnyArray, b: AnyArray, *, mask: AnyArray | None = None) -> float:
    """Largest absolute change in grey levels, max |a - b| (FaceCloak's budget is 8)."""
    return float(np.max(np.abs(_diff(a, b, mask))))


def l2(a: AnyArray, b: AnyArray, *, mask: AnyArray | None = None) -> float:
    """Euclidean norm of the change in grey levels over all elements (AdvCloak's budget: 1200)."""
    return float(np.sqrt(np.sum(np.square(_diff(a, b, mask)))))


_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # 11 taps at sigma 1.5, as Wang et al. 2004 and skimage
_SSIM_PAD = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)  # 5: filter radius, cropped as skimage does


def ssim(
    a: AnyArray,
    b: AnyArray,
    *,
    data_range: float = 255,
    channel_axis: int | None = -1,
    mask: AnyArray | None = None,
) -> float:
    """Mean SSIM (Wang et al. 2004) with an 11-tap Gaussian window, sigma 1.5, on float64 data.

    Equals ``skimage.metrics.structural_similarity(a, b, data_range=data_range,
    channel_axis=channel_axis, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``:
    local statistics by ``scipy.ndimage.gaussian_filter`` (mode ``"reflect"``, truncate 3.5) on
    each channel, K1 = 0.01, K2 = 0.03, the SSIM map averaged over the image minus a 5-pixel
    border (the filter radius), then over channels. This is the corrected SSIM;
    :func:`ssim_int8_compat` is the reference's (docs/facecloak.md, "Defect: SSIM on int8
    arrays").

    Region variant: with ``mask`` the SSIM map (averaged over channels) is averaged over the
    masked pixels that lie outside the 5-pixel border, so ``mask`` of all True gives the
    whole-image value. Windows centred near the region's edge still see pixels outside it.

    Args:
        a, b: images of equal shape, (H, W, C) (or (H, W) with ``channel_axis=None``), uint8 or
            float grey levels; int8 is refused.
        data_range: value range of the data (255 for grey levels).
        channel_axis: axis of the channels, or None for a single-channel image.
        mask: optional (H, W) bool region.

    Returns:
        The mean SSIM.
    """
    x, y = _pair_f64(a, b)
    if channel_axis is None:
        x, y = x[..., None], y[..., None]
    else:
        x, y = np.moveaxis(x, channel_axis, -1), np.moveaxis(y, channel_axis, -1)
    if x.ndim != 3:
        raise ValueError(f"expected a 2-d image (plus channels), got shape {np.shape(a)}")
    h, w, _ = x.shape
    if min(h, w) < 2 * _SSIM_PAD + 1:
        raise ValueError(f"images must be at least 11x11 for SSIM, got {h}x{w}")
    m = _region(mask, (h, w))

    # sigma 0 on the channel axis: scipy skips that axis, i.e. each channel is filtered alone.
    def filt(z: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(
            z, sigma=(_SSIM_SIGMA, _SSIM_SIGMA, 0.0), mode="reflect", truncate=_SSIM_TRUNCATE
        )

    ux, uy = filt(x), filt(y)
    vx = filt(x * x) - ux * ux  # population (co)variances: use_sample_covariance=False
    vy = filt(y * y) - uy * uy
    vxy = filt(x * y) - ux * uy
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    s = s.mean(axis=-1)  # (H, W): every channel has the same cropped size, so means commute
    inner = np.zeros((h, w), bool)
    inner[_SSIM_PAD : h - _SSIM_PAD, _SSIM_PAD : w - _SSIM_PAD] = True
    if m is not None:
        inner &= m
        if not inner.any():
            raise ValueError("mask selects no pixel outside SSIM's 5-pixel border")
    return float(s[inner].mean())


def ssim_int8_compat(a: AnyArray, b: AnyArray) -> float:
    """FAITHFUL-ONLY: the reference's SSIM on int8-cast images. Not a quality metric.

    Why it is wrong: docs/facecloak.md, "Defect: SSIM on int8 arrays".

    Reproduces ``skimage.metrics.structural_similarity(a.astype(np.int8), b.astype(np.int8),
    data_range=255, channel_axis=2)`` (FaceCloak ``cloaker.py`` L756): skimage's defaults, i.e.
    a 7x7 uniform window with sample covariance, on grey levels where 128..255 wrap to
    -128..-1. Report it next to :func:`ssim` only to compare with the reference's numbers.

    Args:
        a, b: (H, W, 3) images of integral grey levels in 0..255 (uint8 or any dtype holding
            such values; converted through uint8 so the wrap is the defined modulo-256 one).
    """
    from skimage.metrics import structural_similarity  # heavy import, only for this path

    def to_int8(z: AnyArray) -> np.ndarray:
        z = np.asarray(z)
        if z.dtype != np.uint8:
            # float -> int8 of values > 127 is undefined in C; go through uint8 to pin the wrap.
            if not (np.all(z == np.round(z)) and z.min() >= 0 and z.max() <= 255):
                raise ValueError("ssim_int8_compat needs integral grey levels in 0..255")
            z = z.astype(np.uint8)
        return z.astype(np.int8)

    a8, b8 = to_int8(a), to_int8(b)
    if a8.shape != b8.shape or a8.ndim != 3:
        raise ValueError(
            f"expected two (H, W, C) images of equal shape, got {a8.shape}, {b8.shape}"
        )
    return float(structural_similarity(a8, b8, data_range=255, channel_axis=2))
