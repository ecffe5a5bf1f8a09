"""MAP's losses on the regenerated face (docs/map.md, "Losses"), as pure functions.

Images here are the score network's: NHWC float32 in [-1, 1], a face aligned to the ArcFace
template with a margin (:class:`FaceFrame`), at the network's resolution (256 for the
CelebA-HQ DDPM). Every loss is a scalar mean over the batch, so ``jax.grad`` of it w.r.t. the
image is the cotangent the train step pushes back through the DDIM chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..diffusion import Schedule
from ..typing import EmbedFn, Params

__all__ = [
    "SMOOTHNESS",
    "FaceFrame",
    "dirichlet_energy",
    "dsm_loss",
    "fr_crop",
    "identity_loss",
    "l1_fidelity",
    "laplacian_l1",
    "laplacian_pyramid_l1",
]


@dataclass(frozen=True)
class FaceFrame:
    """Where the ArcFace 112 crop sits inside the score network's square face crop.

    The face is aligned to the ArcFace template scaled to ``size / (1 + 2 * margin)`` and
    centred, so the inner ``size / (1 + 2 margin)`` square *is* the 112 template crop. A margin
    of 0.125 frames faces roughly as CelebA-HQ does (eye distance about a quarter of the width),
    which a CelebA-HQ score network expects; 0 is the tight ArcFace crop.

    Attributes:
      size: side of the score network's crop (e.g. 256).
      margin: border around the template crop, as a fraction of the template crop's side.
    """

    size: int
    margin: float = 0.125

    @property
    def inner(self) -> float:
        """Side of the ArcFace template square inside the crop, in crop pixels."""
        return self.size / (1.0 + 2.0 * self.margin)

    @property
    def offset(self) -> float:
        """Top-left corner of that square (same for x and y)."""
        return self.margin * self.inner

    def template(self) -> np.ndarray:
        """The (5, 2) ArcFace landmarks in this crop's pixels (for ``estimate_similarity``)."""
        from ..faces.align import ARCFACE_TEMPLATE

        return ARCFACE_TEMPLATE * (self.inner / 112.0) + self.offset


def fr_crop(images: jax.Array, frame: FaceFrame, side: int = 112) -> jax.Array:
    """The ArcFace-aligned ``side`` x ``side`` face inside score-network crops, differentiably.

    Bilinear with half-pixel centres and no antialias, as DiffAM resizes FR inputs (docs/map.md,
    "Choice: resize without antialias"); ``images`` (B, S, S, C) in any range, returned in the
    same range.
    """
    scale = side / frame.inner
    return jax.image.scale_and_translate(
        images,
        (images.shape[0], side, side, images.shape[-1]),
        spatial_dims=(1, 2),
        scale=jnp.array([scale, scale], images.dtype),
        translation=jnp.array([-frame.offset * scale] * 2, images.dtype),
        method="linear",
        antialias=False,
    )


def identity_loss(
    embed: EmbedFn, params: Params, images: jax.Array, target: jax.Array, frame: FaceFrame
) -> tuple[jax.Array, jax.Array]:
    """L_A = mean over the batch of ``1 - cos(f(x), target)``.

    With an ensemble recogniser (:mod:`jaxcloak.zoo.ensemble`) the cosine is the weighted mean
    of the members' cosines, i.e. DiffAM's ``cal_adv_loss`` averaged over its surrogates.

    Args:
      embed: the recogniser's pure ``embed(params, images)`` (112 RGB [0, 1] in).
      params: its weights.
      images: (B, S, S, 3) in [-1, 1].
      target: (D,) or (B, D) unit target embedding(s).
      frame: where the 112 face sits in the crop.

    Returns:
      ``(loss, cosines (B,))``.
    """
    x01 = (fr_crop(images, frame) + 1.0) * 0.5
    cos = jnp.sum(embed(params, x01) * target, axis=-1)
    return jnp.mean(1.0 - cos), cos


def l1_fidelity(x_hat: jax.Array, x0: jax.Array) -> jax.Array:
    """``mean |x_hat - x0|`` (DiffAM's L1, weight 3 by default)."""
    return jnp.mean(jnp.abs(x_hat - x0))


def dirichlet_energy(delta: jax.Array) -> jax.Array:
    """Default L_LS: mean squared forward difference of the edit along rows and columns.

    Zero for any constant edit; penalises high-frequency, noisy edits.
    """
    dy = delta[:, 1:, :, :] - delta[:, :-1, :, :]
    dx = delta[:, :, 1:, :] - delta[:, :, :-1, :]
    return jnp.mean(jnp.square(dy)) + jnp.mean(jnp.square(dx))


_LAPLACE = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], np.float32)


def _laplacian(x: jax.Array) -> jax.Array:
    """Per-channel 5-point Laplacian with reflect padding, (B, H, W, C) -> same."""
    c = x.shape[-1]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    kernel = jnp.tile(jnp.asarray(_LAPLACE)[:, :, None, None], (1, 1, 1, c))  # HWIO depthwise
    return jax.lax.conv_general_dilated(
        xp,
        kernel,
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
    )


def laplacian_l1(delta: jax.Array) -> jax.Array:
    """``lap_l1``: mean |K * delta| with the 5-point Laplacian K, reflect padding."""
    return jnp.mean(jnp.abs(_laplacian(delta)))


def laplacian_pyramid_l1(x_hat: jax.Array, x0: jax.Array, levels: int = 3) -> jax.Array:
    """``lap_pyr``: L1 between the Laplacian pyramids of ``x_hat`` and ``x0`` (2x2 average
    pooling, nearest upsampling), summed over levels; zero for a constant edit at every level
    but the coarsest residual, which is excluded."""

    def down(x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        return x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))

    def up(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        y = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return jnp.pad(
            y, ((0, 0), (0, shape[1] - y.shape[1]), (0, shape[2] - y.shape[2]), (0, 0)), mode="edge"
        )

    total = jnp.zeros((), x_hat.dtype)
    a, b = x_hat, x0
    for _ in range(levels):
        da, db = down(a), down(b)
        total = total + jnp.mean(jnp.abs((a - up(da, a.shape)) - (b - up(db, b.shape))))
        a, b = da, db
    return total


SMOOTHNESS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "dirichlet": lambda x_hat, x0: dirichlet_energy(x_hat - x0),
    "lap_l1": lambda x_hat, x0: laplacian_l1(x_hat - x0),
    "lap_pyr": laplacian_pyramid_l1,
}


def dsm_loss(
    eps_fn: Callable[[Params, jax.Array, jax.Array], jax.Array],
    params: Params,
    x0: jax.Array,
    key: jax.Array,
    schedule: Schedule,
    *,
    t_max: int | None = None,
    teacher: Params | None = None,
) -> jax.Array:
    """Denoising score matching on the source faces (L_SM), or its distillation variant.

    t ~ U{0 .. t_max - 1} (default T), eps ~ N(0, I), ``x_t = sqrt(abar_t) x0 +
    sqrt(1 - abar_t) eps``; the loss is ``mean ||eps_theta(x_t, t) - target||^2`` where the
    target is eps, or ``eps_teacher(x_t, t)`` (frozen weights, no gradient) for ``sm_distill``.
    """
    k_t, k_e = jax.random.split(key)
    hi = schedule.T if t_max is None else t_max
    t = jax.random.randint(k_t, (x0.shape[0],), 0, hi)
    eps = jax.random.normal(k_e, x0.shape, x0.dtype)
    abar = schedule.alpha_bar(t)[:, None, None, None]
    x_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * eps
    tf = t.astype(jnp.float32)
    target = eps if teacher is None else jax.lax.stop_gradient(eps_fn(teacher, x_t, tf))
    return jnp.mean(jnp.square(eps_fn(params, x_t, tf) - target))
