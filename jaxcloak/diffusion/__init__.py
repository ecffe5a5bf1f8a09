"""Diffusion utilities for MAP: DDIM schedule, timestep sequences, invert and generate."""

from jaxcloak.diffusion.ddim import (
    EpsFn,
    Pairs,
    Schedule,
    alphas_cumprod,
    beta_schedule,
    ddim_step,
    generate,
    generation_pairs,
    inversion_pairs,
    invert,
    make_schedule,
    make_seq,
    pairs_to_arrays,
)

__all__ = [
    "EpsFn",
    "Pairs",
    "Schedule",
    "alphas_cumprod",
    "beta_schedule",
    "ddim_step",
    "generate",
    "generation_pairs",
    "inversion_pairs",
    "invert",
    "make_schedule",
    "make_seq",
    "pairs_to_arrays",
]
