"""MAP presets (docs/map.md, "Reconstruction choices"). Read by the CLI, tests and benchmarks only.

:data:`PAPER` is the reconstructed paper-scale run (DiffAM's pipeline with MAP's
ingredients: t0 60, 20 inversion / 6 generation steps, Adam 8e-6 x1.3 per epoch, layer-wise
GradVac). :data:`DEMO` is what ``jaxcloak protect --method map`` runs by default on a CPU with
the small embedded score network: the same step, shorter and with a learning rate sized for a
network that was never trained (its prior is noise, so only the mechanics are meaningful).
"""

from __future__ import annotations

import dataclasses

from ..methods.map.config import MapConfig

__all__ = ["DEMO", "PAPER", "PRESETS", "get_config"]

PAPER = MapConfig()

DEMO = dataclasses.replace(
    PAPER,
    steps=60,
    steps_per_epoch=60,
    learning_rate=2e-4,
    lr_growth=1.0,
    # XLA:CPU runs the vmapped (batched) backward ~15% slower than three pullback calls
    # (7.1 vs 6.0 s per step with the embedded network on 2 cores); same gradients.
    batched_backward=False,
)

PRESETS: dict[str, MapConfig] = {"paper": PAPER, "demo": DEMO}


def get_config(name: str = "demo", **overrides: object) -> MapConfig:
    """A preset with field overrides (unknown fields raise TypeError)."""
    if name not in PRESETS:
        raise KeyError(f"unknown MAP preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
