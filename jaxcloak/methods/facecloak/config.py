"""FaceCloak's stage-2 settings (:class:`CloakConfig`), free of JAX so the command line can read
preset numbers without starting it. The presets themselves are :mod:`jaxcloak.configs.facecloak`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

Mode = Literal["faithful", "fixed"]


@dataclass(frozen=True)
class CloakConfig:
    """Stage-2 settings; hashable so a config is a static argument of the compiled program.

    Attributes:
      mode: "faithful" (the reference as coded) or "fixed" (defects corrected).
      eps: L-inf budget of the applied mask outside the key regions, [0, 1] pixel units.
      step: sign-step size eta, in the same applied units as ``eps``.
      passes: faithful only: T passes over the views (T * V sequential steps).
      steps: fixed only: number of steps, each over all views at once.
      lambda_alpha: attention learning rate (10 in the reference).
      std_guard: added to the gradient std in the attention step (0.01 in the reference,
        docs/facecloak.md "Defect: attention std guard").
      alpha_max: upper bound of the attention map (None: unbounded, as the reference).
      mask_scale: grey levels per reference unit of the stored mask: 255 (reference: the
        applied mask is twice the optimised one, docs/facecloak.md "Defect: mask scale") or
        127.5 (consistent).
      project_in_loop: clip rho to the budget and the input to [-1, 1] every step (the
        reference never does: docs/facecloak.md "Defect: no projection in the loop").
      stickers, highpass: use the reference's key regions (eye/nose/mouth boxes; high-pass
        mask of the real face). Faithful: added after the loop as the reference does;
        fixed: inside the loss as larger per-pixel budgets (docs/facecloak.md "Defect: key
        regions outside the loss").
      region_eps: budget inside the key regions, applied pixel units (32/255 in the reference).
      eot: expectation over transformations applied to the views in every fixed step, from
        ``("resize", "blur", "jpeg")``.
      dodge_weight: weight of ``cos(phi(x), phi(view))``, pushing each view away from its own
        clean embedding (a real dodging loss, docs/facecloak.md "Defect: untargeted loss
        pushes the wrong way"; 0 in the faithful mode). The triplet
        loss alone moves the face toward the distant anchor but can leave it close to itself.
      real_weight: fixed mode: share of the loss on the real face (the views split the rest);
        None weighs all views equally (the paper's mean over n).
      step_decay: fixed mode: the sign step follows a cosine decay from ``step`` to
        ``step * step_decay`` over the steps (None: constant, as the reference).
      realign_jitter: fixed mode: the real view (face and perturbation together) is warped by
        a random similarity shifting it up to this many pixels (with up to 2% scale and 1.5
        degrees), as re-detecting and re-aligning the protected photo does; 0 disables.
      resample_jitter: fixed mode: in every step each view sees the perturbation resampled
        twice by random near-identity similarity warps (bilinear), as pasting it into a photo
        and aligning the face again does. Without it the sign-like perturbation is tuned to
        the crop's pixel grid and loses most of its effect once pasted back (measured on the
        astronaut: SFace cosine 0.22 on the crop, 0.75 after paste-back and re-alignment).
      momentum: fixed mode: MI-FGSM decay of the accumulated L1-normalised gradient of rho
        (0: plain sign steps).
      nesterov: with ``momentum``, step along the Nesterov look-ahead of the momentum.
      diversity: fixed mode: probability, per view and step, that the view is shrunk by a
        random factor in [``diversity_scale``, 1] and padded at a random offset (DI).
      diversity_scale: smallest DI shrink factor.
      ti_sigma: fixed mode: the gradient is smoothed by a Gaussian of this many pixels before
        each step (translation-invariant attack; 0 disables).
      lowfreq: fixed mode: the mask lives on a grid this many times coarser than the crop
        (block means, bilinear back up); 1 is full resolution. Must divide the crop size.
      perceptual: fixed mode: the per-pixel budget follows the clean face's local texture
        and luminance (:func:`jaxcloak.objectives.facecloak.perceptual_budget`), between 0.5
        and 2 times ``eps``, instead of ``eps`` everywhere.
      variance: fixed mode: variance tuning (VT): the gradient of each step is corrected by
        the previous step's gap between the mean gradient of this many random neighbours
        (within ``variance_beta * eps``) and the gradient itself (0 disables; each
        neighbour costs one more gradient per step).
      variance_beta: VT neighbourhood radius in units of ``eps``.
      si_copies: fixed mode: the loss is averaged over the views scaled by 1, 1/2, 1/4, ...
        (scale-invariant copies, SIM; 1 disables; each copy costs one more gradient).
      linbp: fixed mode: the backward pass of every surrogate activation is mixed toward the
        identity by this share (linear backpropagation, LinBP); forward unchanged (0: off).
      skip_gamma: fixed mode: gradient through residual branches scaled by this (SGM; 1:
        off). Needs a surrogate with residual additions (SFace has none: use ``linbp``).
      act_dropout: fixed mode: every surrogate activation dropped with this probability,
        fresh per step and view batch (forward and backward; 0: off).
      feature_weight: fixed mode: the intermediate-feature term, the cosine between the
        masked and the clean view's activations at one layer, pushed down: its gradient and
        the embedding loss's are each L1-normalised and mixed 1 : ``feature_weight`` (0: off).
      feature_depth: the layer of that term, as a relative depth in [0, 1] of the
        surrogate's activations (:func:`jaxcloak.objectives.surrogate.feature_site`).

    The last four edit the surrogate's graph (:mod:`jaxcloak.objectives.surrogate`) and need
    a converted (ONNX) surrogate such as ``sface``; its weights never change.
    """

    mode: Mode = "fixed"
    eps: float = 8 / 255
    step: float = 3 / 255
    passes: int = 10
    steps: int = 20
    lambda_alpha: float = 0.05
    std_guard: float = 1e-12
    alpha_max: float | None = 2.0
    mask_scale: float = 127.5
    project_in_loop: bool = True
    stickers: bool = False
    highpass: bool = False
    region_eps: float = 32 / 255
    eot: tuple[str, ...] = ()
    dodge_weight: float = 1.0
    resample_jitter: bool = True
    real_weight: float | None = 0.5
    realign_jitter: float = 1.0
    step_decay: float | None = 0.2
    momentum: float = 0.0
    nesterov: bool = False
    diversity: float = 0.0
    diversity_scale: float = 0.9
    ti_sigma: float = 0.0
    lowfreq: int = 1
    perceptual: bool = False
    variance: int = 0
    variance_beta: float = 1.5
    si_copies: int = 1
    linbp: float = 0.0
    skip_gamma: float = 1.0
    act_dropout: float = 0.0
    feature_weight: float = 0.0
    feature_depth: float = 0.5

    def __post_init__(self):
        if self.mode not in ("faithful", "fixed"):
            raise ValueError(f"mode must be 'faithful' or 'fixed', got {self.mode!r}")
        if not 0 < self.eps <= 1 or not 0 < self.step <= 1:
            raise ValueError(f"eps and step must be in (0, 1], got {self.eps}, {self.step}")
        if self.passes < 1 or self.steps < 1:
            raise ValueError(f"passes and steps must be >= 1, got {self.passes}, {self.steps}")
        if self.mask_scale not in (255.0, 127.5):
            raise ValueError(f"mask_scale must be 255 or 127.5, got {self.mask_scale}")
        unknown = set(self.eot) - {"resize", "blur", "jpeg"}
        if unknown:
            raise ValueError(f"unknown eot transforms {sorted(unknown)}; known: resize, blur, jpeg")
        fixed_only = self.eot or self.dodge_weight or self.resample_jitter or self.realign_jitter
        transfer = (
            self.momentum
            or self.diversity
            or self.ti_sigma
            or self.lowfreq != 1
            or self.perceptual
            or self.variance
            or self.si_copies != 1
        )
        if self.mode == "faithful" and (fixed_only or transfer or self.edits_surrogate):
            raise ValueError(
                "eot, dodge_weight, resample_jitter, realign_jitter, momentum, diversity, "
                "ti_sigma, lowfreq, perceptual, variance, si_copies, linbp, skip_gamma, "
                "act_dropout and feature_weight are fixed-mode options (the reference has none)"
            )
        if self.variance < 0 or self.variance_beta <= 0 or self.si_copies < 1:
            raise ValueError(
                f"variance must be >= 0, variance_beta > 0 and si_copies >= 1, got "
                f"{self.variance}, {self.variance_beta}, {self.si_copies}"
            )
        if not 0.0 <= self.linbp <= 1.0 or not 0.0 < self.skip_gamma <= 1.0:
            raise ValueError(
                f"linbp must be in [0, 1] and skip_gamma in (0, 1], got {self.linbp}, "
                f"{self.skip_gamma}"
            )
        if not 0.0 <= self.act_dropout < 1.0 or self.feature_weight < 0:
            raise ValueError(
                f"act_dropout must be in [0, 1) and feature_weight >= 0, got "
                f"{self.act_dropout}, {self.feature_weight}"
            )
        if not 0.0 <= self.feature_depth <= 1.0:
            raise ValueError(f"feature_depth must be in [0, 1], got {self.feature_depth}")
        if not 0.0 <= self.momentum <= 2.0:
            raise ValueError(f"momentum must be in [0, 2], got {self.momentum}")
        if not 0.0 <= self.diversity <= 1.0 or not 0.5 <= self.diversity_scale <= 1.0:
            raise ValueError(
                f"diversity must be in [0, 1] and diversity_scale in [0.5, 1], got "
                f"{self.diversity}, {self.diversity_scale}"
            )
        if self.ti_sigma < 0 or self.lowfreq < 1:
            raise ValueError(
                f"ti_sigma must be >= 0 and lowfreq >= 1, got {self.ti_sigma}, {self.lowfreq}"
            )

    @property
    def edits_surrogate(self) -> bool:
        """Whether these settings edit the surrogate's graph (LinBP, SGM, dropout, features)."""
        return bool(self.linbp or self.skip_gamma != 1.0 or self.act_dropout or self.feature_weight)

    def max_levels(self) -> float:
        """Largest |mask| in grey levels these settings can produce (an upper bound): the
        L-inf budget, doubled where the perceptual map spends more, plus the key regions'."""
        regions = self.stickers or self.highpass
        if self.mode == "faithful":
            from ...objectives.facecloak import STICKER_MAX

            return 255.0 * self.eps + (255.0 * STICKER_MAX + 1.0 if regions else 0.0)
        return 255.0 * (
            self.eps * (2.0 if self.perceptual else 1.0) + (self.region_eps if regions else 0.0)
        )

    @classmethod
    def from_dict(cls, d: dict) -> CloakConfig:
        """Inverse of :meth:`to_dict`; raises ``TypeError``/``ValueError`` on bad fields."""
        d = dict(d)
        if "eot" in d:
            d["eot"] = tuple(d["eot"])
        return cls(**d)

    @property
    def to_ref(self) -> float:
        """Reference units per applied pixel unit (1 for mask scale 255, 2 for 127.5)."""
        return 255.0 / self.mask_scale

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["eot"] = list(self.eot)
        return d

    def digest(self) -> str:
        """Short stable hash of the settings, for manifests and mask files."""

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
