"""FaceCloak presets: the reference as shipped ("faithful") and jaxcloak's corrected default.

Launch examples::

    jaxcloak protect photo.jpg -o out/                     # fixed, strength mid
    jaxcloak protect photo.jpg -o out/ --strength high
    jaxcloak protect photo.jpg -o out/ --mode faithful --far-anchor celeb.jpg

``get_config(mode, strength)`` returns a :class:`CloakConfig`; a run's settings file, flags
and ``--set`` overrides go on top through :func:`jaxcloak.configs.files.resolve_facecloak`.
"""

from __future__ import annotations

import dataclasses

from ..methods.facecloak.config import CloakConfig

#: The shipped reference run (cloak_template.txt): afog_cloak_multi, T = 10 passes over the
#: views, eta = 2/255, eps = 8/255, lambda_alpha = 10, std guard 0.01, no projection inside
#: the loop, mask x255, stickers and high-pass on (added after the loop).
FAITHFUL = CloakConfig(
    mode="faithful",
    eps=8 / 255,
    step=2 / 255,
    passes=10,
    lambda_alpha=10.0,
    std_guard=0.01,
    alpha_max=None,
    mask_scale=255.0,
    project_in_loop=False,
    stickers=True,
    highpass=True,
    dodge_weight=0.0,
    resample_jitter=False,
    real_weight=None,
    realign_jitter=0.0,
    step_decay=None,
)

#: jaxcloak's default: all views per step, projected every step, consistent scale.
FIXED = CloakConfig(mode="fixed")

#: Transfer components every preset uses: MI momentum, input diversity, TI smoothing. On the
#: development faces at eps 16/255 they raised universal SFace PSR 58 -> 63%, universal dlib
#: 5 -> 16% and per-photo dlib 11 -> 44% (benchmarks/bench_protection.py, RESULTS.md).
TRANSFER = {"momentum": 1.0, "diversity": 0.7, "ti_sigma": 1.5}

#: Strength presets of the fixed mode, from bench_protection's measurements on the development
#: faces (RESULTS.md, 2026-12-04): the budget and the number of steps are what make a mask hold
#: on the person's other photos, and a stronger push away from the face's own embedding
#: (dodge_weight 2) is what moves the black box on the photo itself. Universal SFace / dlib
#: PSR, per-photo dlib, PSNR median: low 68 / 16 / 33% at 37.0 dB, mid 89 / 16-21 / 44-56% at
#: 35.1 dB, high 100 / 37 / 89% at 33.5 dB (the previous default, 16/255 with 20 steps:
#: 63 / 16 / 44% at 36.5 dB). 8/255 protected none of a person's other photos, so it is no
#: preset. ``low`` keeps dodge_weight 1: dodge 2 was not measured at its budget.
STRENGTHS: dict[str, dict] = {
    "low": {"eps": 16 / 255, "steps": 40, "step": 3 / 255, **TRANSFER},
    "mid": {"eps": 20 / 255, "steps": 40, "step": 3 / 255, "dodge_weight": 2.0, **TRANSFER},
    "high": {"eps": 24 / 255, "steps": 40, "step": 3 / 255, "dodge_weight": 2.0, **TRANSFER},
}


def get_config(mode: str = "fixed", strength: str = "mid", **overrides) -> CloakConfig:
    """The preset for ``mode`` ("fixed" or "faithful") and ``strength`` (fixed mode only)."""
    if mode == "faithful":
        if strength != "mid":
            raise ValueError("--strength applies to the fixed mode; faithful uses the shipped run")
        base = FAITHFUL
    elif mode == "fixed":
        if strength not in STRENGTHS:
            raise ValueError(f"unknown strength {strength!r}; choose one of {sorted(STRENGTHS)}")
        base = dataclasses.replace(FIXED, **STRENGTHS[strength])
    else:
        raise ValueError(f"unknown mode {mode!r}; choose 'fixed' or 'faithful'")
    return dataclasses.replace(base, **overrides)
