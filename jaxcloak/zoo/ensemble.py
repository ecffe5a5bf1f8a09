"""Face-recognition ensembles, usable wherever one recogniser is (FaceCloak, MAP, evaluation).

An ensemble of M recognisers with weights w (summing to 1) is presented as *one*
:class:`~jaxcloak.zoo.registry.FaceRecognizer` whose embedding is the concatenation
``[sqrt(w_1) e_1, ..., sqrt(w_M) e_M]`` of the members' unit embeddings. That vector has unit
norm and, for two images a and b, ``<E(a), E(b)> = sum_m w_m cos_m(a, b)``: the cosine of the
ensemble *is* the weighted mean of the members' cosines, the loss the papers optimise
(DiffAM's ``cal_adv_loss`` averages ``1 - cos`` over its surrogates). So attack code that
knows one ``embed(params, images)`` needs no change, and the members keep their own input
sizes and normalisations (each member's ``embed`` handles its own).

The black-box protocol of DiffAM/AMT-GAN is :func:`leave_one_out`: of an ordered list of
models, one is held out as the black box and the rest are the surrogates
(:data:`DIFFAM_SPLITS` reproduces ``get_model_list``'s four cases exactly).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp

from ..typing import Embedding, Image, Params
from .registry import FaceRecognizer, load

__all__ = [
    "DIFFAM_SPLITS",
    "Ensemble",
    "build_ensemble",
    "diffam_split",
    "leave_one_out",
    "load_surrogate",
    "parse_models",
]

# DiffAM ``--target_model`` -> (black box, surrogates in its order), as its ``get_model_list``
# code defines them; its README lists another order, but the code is what ran.
DIFFAM_SPLITS: dict[int, tuple[str, tuple[str, str, str]]] = {
    0: ("ir152", ("facenet", "mobile_face", "irse50")),
    1: ("irse50", ("facenet", "mobile_face", "ir152")),
    2: ("mobile_face", ("facenet", "ir152", "irse50")),
    3: ("facenet", ("ir152", "irse50", "mobile_face")),
}


def diffam_split(target_model: int = 2) -> tuple[tuple[str, ...], str]:
    """DiffAM's ``(surrogates, black box)`` for its ``--target_model`` (default 2)."""
    if target_model not in DIFFAM_SPLITS:
        raise ValueError(f"target_model must be one of {sorted(DIFFAM_SPLITS)}, got {target_model}")
    black_box, surrogates = DIFFAM_SPLITS[target_model]
    return surrogates, black_box


def leave_one_out(names: Sequence[str], black_box: str | int) -> tuple[tuple[str, ...], str]:
    """Hold one model out as the black box; the others, in order, are the surrogates.

    Args:
      names: the candidate models (at least two, no repeats).
      black_box: the held-out model, by name or by index into ``names``.
    """
    names = tuple(names)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"leave-one-out needs at least two distinct models, got {names}")
    if isinstance(black_box, int):
        if not -len(names) <= black_box < len(names):
            raise ValueError(f"black-box index {black_box} out of range for {names}")
        black_box = names[black_box]
    if black_box not in names:
        raise ValueError(f"black box {black_box!r} is not one of {names}")
    return tuple(n for n in names if n != black_box), black_box


@dataclass(frozen=True)
class Ensemble:
    """Loaded members and their normalised weights.

    Attributes:
      members: the recognisers.
      weights: one per member, positive, summing to 1.
    """

    members: tuple[FaceRecognizer, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.members or len(self.members) != len(self.weights):
            raise ValueError("an ensemble needs one weight per member and at least one member")
        if any(w <= 0 for w in self.weights) or not math.isclose(sum(self.weights), 1.0):
            raise ValueError(f"ensemble weights must be positive and sum to 1, got {self.weights}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.spec.name for m in self.members)

    @property
    def params(self) -> tuple[Params, ...]:
        return tuple(m.params for m in self.members)

    def embed(self, params: Sequence[Params], images: Image) -> Embedding:
        """(N, 112, 112, 3) RGB [0, 1] -> (N, sum of dims) unit rows; see the module docstring."""
        parts = [
            math.sqrt(w) * m.embed(p, images)
            for m, w, p in zip(self.members, self.weights, params, strict=True)
        ]
        return jnp.concatenate(parts, axis=-1)

    def member_cosines(self, params: Sequence[Params], a: Image, b: Image) -> jax.Array:
        """(M, N) cosine of each member between paired images ``a[i]`` and ``b[i]``."""
        rows = []
        for m, p in zip(self.members, params, strict=True):
            rows.append(jnp.sum(m.embed(p, a) * m.embed(p, b), axis=-1))
        return jnp.stack(rows)

    def threshold(self) -> float | None:
        """Weighted mean of the members' thresholds (None if any member has none).

        Only an approximation of the ensemble's same-person boundary (the members' score
        distributions differ); used for grouping faces into people, never for reporting PSR,
        which is scored per member.
        """
        thresholds = [m.spec.threshold for m in self.members]
        if any(t is None for t in thresholds):
            return None
        return float(sum(w * t for w, t in zip(self.weights, thresholds, strict=True)))

    def as_recognizer(self) -> FaceRecognizer:
        """This ensemble as one recogniser (params = the tuple of member params)."""
        if len(self.members) == 1:
            return self.members[0]
        first = self.members[0].spec
        name = "+".join(
            f"{n}*{w:.3g}" if len(set(self.weights)) > 1 else n
            for n, w in zip(self.names, self.weights, strict=True)
        )
        spec = replace(
            first,
            name=name,
            embedding_dim=sum(m.spec.embedding_dim for m in self.members),
            threshold=self.threshold(),
            threshold_source="weighted mean of the members' thresholds (approximate)",
            source="ensemble of " + ", ".join(self.names),
            licence="; ".join(f"{m.spec.name}: {m.spec.licence}" for m in self.members),
            locate=None,
        )
        digest = hashlib.sha256(
            "".join(
                f"{m.sha256}:{w!r};" for m, w in zip(self.members, self.weights, strict=True)
            ).encode()
        ).hexdigest()
        return FaceRecognizer(
            spec,
            self.embed,
            self.params,
            self.members[0].path,
            digest,
            all(m.from_cache for m in self.members),
        )


def build_ensemble(
    names: Sequence[str],
    weights: Sequence[float] | None = None,
    *,
    loader: Callable[[str], FaceRecognizer] = load,
) -> Ensemble:
    """Load registered models into an :class:`Ensemble` (equal weights by default).

    Args:
      names: registry names, e.g. ``diffam_split(2)[0]``.
      weights: relative weights (normalised here); equal when omitted.
      loader: ``name -> FaceRecognizer`` (the registry's :func:`load` by default).
    """
    names = tuple(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"an ensemble needs distinct model names, got {names}")
    if weights is None:
        weights = [1.0] * len(names)
    if len(weights) != len(names) or any(w <= 0 for w in weights):
        raise ValueError(f"need one positive weight per model: {names} vs {tuple(weights)}")
    total = float(sum(weights))
    return Ensemble(tuple(loader(n) for n in names), tuple(float(w) / total for w in weights))


def parse_models(text: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """``"sface"`` / ``"sface,ir152"`` / ``"sface:2,ir152:1"`` -> (names, weights)."""
    names, weights = [], []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            raise ValueError(f"empty model name in {text!r}")
        name, _, w = item.partition(":")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"bad weight {w!r} for {name!r} in {text!r}") from None
        names.append(name.strip())
        weights.append(weight)
    return tuple(names), tuple(weights)


def load_surrogate(text: str) -> FaceRecognizer:
    """One model (``"sface"``) or a weighted ensemble (``"sface:2,ir152"``) as one recogniser."""
    names, weights = parse_models(text)
    if len(names) == 1:
        return load(names[0])
    return build_ensemble(names, weights).as_recognizer()
