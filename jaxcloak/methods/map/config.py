"""MAP's static hyperparameters (:class:`MapConfig`), free of JAX so the command line can read
preset numbers without starting it. The presets themselves are :mod:`jaxcloak.configs.map`.
"""

from __future__ import annotations

import dataclasses

#: The smoothness terms of :data:`jaxcloak.objectives.map.SMOOTHNESS`, by name (tested equal).
SMOOTHNESS_NAMES = ("dirichlet", "lap_l1", "lap_pyr")


@dataclasses.dataclass(frozen=True)
class MapConfig:
    """Static hyperparameters of a MAP run (defaults: the reconstructed paper setting).

    Attributes:
      t0, n_inv, n_train, n_test: DDIM depth and step counts (DiffAM makeup transfer: 60/20/6/6).
      lambda_id, lambda_expr: weights of L_A and L_E after projection.
      lambda_l1, lambda_ls, lambda_sm: weights of L1 fidelity, local smoothness, score matching.
      smoothness: ``dirichlet`` (default), ``lap_l1`` or ``lap_pyr``.
      sm_variant: ``dsm`` (noise target) or ``distill`` (frozen-weights target), or ``none``.
      sm_t_max: draw score-matching t below this (default: all T).
      projection: ``gradvac`` (default), ``pcgrad`` or ``none`` (plain weighted sum; the
        conflict statistics are still reported).
      granularity: projection blocks: ``layer`` (one per leaf), ``global`` or ``module``.
      beta: GradVac's EMA rate of the target cosine.
      learning_rate, lr_growth, steps_per_epoch: Adam's rate, multiplied by ``lr_growth`` per
        epoch (DiffAM's StepLR(1, 1.3) stepped per epoch of ``steps_per_epoch`` images).
      steps: total optimisation steps.
      remat: rematerialise each DDIM step when differentiating; None (auto): only where the
        chain's stored activations would take more than a quarter of the device's memory
        (:func:`resolve_auto`). Same values either way.
      unroll: unroll the short DDIM scans; None (auto): on a CPU only, where the train step is
        still about 1.6x faster unrolled, at about 3x the compile time (see
        :func:`jaxcloak.diffusion.generate`); accelerators keep the rolled scan, one compiled
        UNet body. remat still applies per step.
      batched_backward: the three task gradients from ``vmap(pullback)`` (one batched
        backward) rather than three pullback calls; same values.
      conflict_stats: with ``projection="none"``: keep the three task gradients apart to log
        their conflict (default). False weighs the image-space cotangents first and pulls
        back once: by linearity the gradient of the summed loss, DiffAM's single backward,
        a third of the backward work; the gradient-conflict metrics are then NaN.
      margin: face framing of the score network's crop (:class:`FaceFrame`).
      checkpoint_every: steps between orbax checkpoints in ``map fit`` (0: only at the end).
    """

    t0: int = 60
    n_inv: int = 20
    n_train: int = 6
    n_test: int = 6
    lambda_id: float = 0.5
    lambda_expr: float = 0.5
    lambda_l1: float = 3.0
    lambda_ls: float = 1.0
    lambda_sm: float = 1.0
    smoothness: str = "dirichlet"
    sm_variant: str = "dsm"
    sm_t_max: int | None = None
    projection: str = "gradvac"
    granularity: str = "layer"
    beta: float = 0.01
    learning_rate: float = 8e-6
    lr_growth: float = 1.3
    steps_per_epoch: int = 200
    steps: int = 800
    remat: bool | None = None
    unroll: bool | None = None
    batched_backward: bool = True
    conflict_stats: bool = True
    margin: float = 0.125
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.projection not in ("gradvac", "pcgrad", "none"):
            raise ValueError(f"projection must be gradvac, pcgrad or none: {self.projection!r}")
        if self.smoothness not in SMOOTHNESS_NAMES:
            raise ValueError(f"smoothness must be one of {sorted(SMOOTHNESS_NAMES)}")
        if self.sm_variant not in ("dsm", "distill", "none"):
            raise ValueError(f"sm_variant must be dsm, distill or none: {self.sm_variant!r}")
        if not self.conflict_stats and self.projection != "none":
            raise ValueError("conflict_stats=False (one fused backward) needs projection='none'")
        if self.t0 <= 0 or self.n_train < 2 or self.n_inv < 2 or self.n_test < 2:
            raise ValueError("need t0 > 0 and at least 2 inversion/train/test steps")

    @property
    def train_pairs(self) -> tuple[tuple[int, int], ...]:
        from ...diffusion import generation_pairs, make_seq

        return generation_pairs(*make_seq(self.t0, self.n_train))

    @property
    def test_pairs(self) -> tuple[tuple[int, int], ...]:
        from ...diffusion import generation_pairs, make_seq

        return generation_pairs(*make_seq(self.t0, self.n_test))

    @property
    def inversion_pairs(self) -> tuple[tuple[int, int], ...]:
        from ...diffusion import inversion_pairs, make_seq

        return inversion_pairs(make_seq(self.t0, self.n_inv)[0])
