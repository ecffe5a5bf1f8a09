"""MAP's dual-objective fine-tuning of a score network (docs/map.md), one jitted step.

One step, for a batch of source faces x0 and their DDIM latents x_lat (inverted once with the
frozen weights):

1. ``x_hat, pullback = jax.vjp(theta -> generate(theta, x_lat))``: the n_train-step DDIM chain
   as a ``lax.scan``, its body rematerialised (only the step inputs stored) where the stored
   activations would pass a quarter of the device's memory (:func:`resolve_auto`);
2. image-space cotangents of the identity loss L_A, the expression loss L_E and the quality
   loss L_Q = lambda_1 L1 + lambda_LS L_LS, each from ``value_and_grad`` w.r.t. x_hat;
3. the three parameter gradients from **one** backward: ``vmap(pullback)`` over the stacked
   cotangents (the forward residuals are shared);
4. the score-matching gradient g_SM (a separate forward/backward of the UNet on noised x0);
5. the optax chain: projection of (g_A, g_E) (GradVac by default; PCGrad; or none), weighted
   sum with g_Q and g_SM, then Adam with a staircase-exponential learning rate;
6. metrics out: every loss term, surrogate cosines, the target-expression probability, global
   and per-leaf cosine between g_A and g_E, fraction of blocks projected, GradVac's phi_hat.

Everything the step needs besides its state is an argument (FR, expression and frozen
score-net weights are never baked in as constants); the config is static.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ...diffusion import Schedule, generate, invert
from ...objectives.map import SMOOTHNESS, FaceFrame, dsm_loss, identity_loss, l1_fidelity
from ...optim.projection import (
    ProjectionStats,
    gradvac,
    init_stats,
    num_blocks,
    pcgrad,
    project_pair,
)
from ...parallel import device_memory_bytes
from ...typing import EmbedFn, Params
from .config import MapConfig

__all__ = [
    "ExpressionLoss",
    "MapBatch",
    "MapInputs",
    "MapState",
    "init_state",
    "invert_faces",
    "make_map_step",
    "make_optimizer",
    "regenerate",
    "resolve_auto",
]

# expression_loss(expr_params, x_hat, x0, target) -> (loss, probability of the target emotion)
ExpressionLoss = Callable[[Params, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


class MapState(NamedTuple):
    """The train step's carry (donated): fine-tuned weights, optimiser state, step, key."""

    params: Params
    opt_state: optax.OptState
    step: jax.Array
    key: jax.Array


class MapBatch(NamedTuple):
    """Source faces x0 and their latents x_lat, (B, S, S, 3) in [-1, 1] / latent space."""

    x0: jax.Array
    x_lat: jax.Array


class MapInputs(NamedTuple):
    """Per-run arguments that are not optimised (never donated).

    Attributes:
      fr_params: the (ensemble) recogniser's weights.
      target: (D,) unit embedding of the target identity.
      expr_params: the expression model's weights.
      expr_target: the expression target (class index, or reference features).
      frozen: the pretrained score-net weights (the ``distill`` teacher), or None.
    """

    fr_params: Params
    target: jax.Array
    expr_params: Params
    expr_target: jax.Array
    frozen: Params | None


def make_optimizer(config: MapConfig) -> optax.GradientTransformationExtraArgs:
    """Projection of the stacked task gradients [g_A, g_E, g_Q, g_SM], then Adam."""
    weights = (config.lambda_id, config.lambda_expr, 1.0, config.lambda_sm)
    if not config.conflict_stats:
        project = _no_stats()
    elif config.projection == "gradvac":
        project = gradvac(config.beta, config.granularity, weights=weights)
    elif config.projection == "pcgrad":
        project = pcgrad(config.granularity, weights=weights)
    else:
        project = _weighted_sum(weights)
    schedule = optax.exponential_decay(
        config.learning_rate,
        transition_steps=config.steps_per_epoch,
        decay_rate=config.lr_growth,
        staircase=True,
    )
    # DiffAM: Adam(b1 0.9, b2 0.999, eps 1e-8), no weight decay.
    return optax.chain(project, optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8))


class _SumState(NamedTuple):
    stats: ProjectionStats


def _weighted_sum(weights: tuple[float, ...]) -> optax.GradientTransformationExtraArgs:
    """No projection: ``sum_k w_k g_k``; still measures the g_A/g_E conflict for the logs."""

    def init_fn(params):
        return _SumState(init_stats(params, num_blocks(params)))

    def update_fn(updates, state, params=None, **extra):
        del state, params, extra
        g_a = jax.tree.map(lambda u: u[0], updates)
        g_e = jax.tree.map(lambda u: u[1], updates)
        # A target cosine of -1 is never undercut, so nothing is projected: statistics only.
        _, _, _, stats = project_pair(g_a, g_e, -1.0, update_target=False)
        w = jnp.asarray(weights, jnp.float32)
        summed = jax.tree.map(lambda u: jnp.tensordot(w, u, axes=1).astype(u.dtype), updates)
        return summed, _SumState(stats)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _no_stats() -> optax.GradientTransformationExtraArgs:
    """The fused path's first stage: the gradient is already the weighted sum; NaN stats."""

    def init_fn(params):
        nan = init_stats(params, num_blocks(params))
        return _SumState(jax.tree.map(lambda x: jnp.full_like(x, jnp.nan, jnp.float32), nan))

    def update_fn(updates, state, params=None, **extra):
        del params, extra
        return updates, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


#: remat turns on when the stored chain needs more than this share of the device's memory
#: (the batched backward and the optimiser state need the rest).
REMAT_SHARE = 0.25


def resolve_auto(
    config: MapConfig,
    eps_fn: Callable,
    params: Params,
    x_lat: jax.Array | jax.ShapeDtypeStruct,
    schedule: Schedule,
    *,
    backend: str | None = None,
    memory_bytes: int | None = None,
) -> MapConfig:
    """``config`` with its automatic settings (None) decided; explicit ones are kept.

    ``unroll``: on a CPU only (see :class:`MapConfig`). ``remat``: when the activations the
    non-rematerialised train chain would store for its backward (measured by tracing it,
    nothing runs) exceed :data:`REMAT_SHARE` of ``memory_bytes`` (default: the first
    device's memory, :func:`jaxcloak.parallel.device_memory_bytes`).
    """
    remat = config.remat
    if remat is None:
        stored = chain_residual_bytes(eps_fn, params, x_lat, config.train_pairs, schedule)
        limit = memory_bytes if memory_bytes is not None else device_memory_bytes()
        remat = bool(stored > REMAT_SHARE * limit)
    return dataclasses.replace(config, unroll=_auto_unroll(config.unroll, backend), remat=remat)


def _auto_unroll(unroll: bool | None, backend: str | None = None) -> bool:
    """``unroll``, or (None) whether the backend is a CPU."""
    return bool(unroll) if unroll is not None else (backend or jax.default_backend()) == "cpu"


def chain_residual_bytes(
    eps_fn: Callable,
    params: Params,
    x_lat: jax.Array | jax.ShapeDtypeStruct,
    pairs: tuple[tuple[int, int], ...],
    schedule: Schedule,
) -> int:
    """Bytes the DDIM chain's VJP keeps for the backward without remat (shapes only)."""

    def residuals(p, x):
        _, pullback = jax.vjp(lambda q: generate(eps_fn, q, x, pairs, schedule), p)
        return pullback  # a pytree whose leaves are the stored residuals

    shapes = jax.eval_shape(residuals, params, jax.ShapeDtypeStruct(x_lat.shape, x_lat.dtype))
    return sum(int(a.size) * a.dtype.itemsize for a in jax.tree.leaves(shapes))


def init_state(params: Params, config: MapConfig, key: jax.Array) -> MapState:
    """Fresh optimiser state around the pretrained weights."""
    return MapState(params, make_optimizer(config).init(params), jnp.zeros((), jnp.int32), key)


def invert_faces(eps_fn: Callable, config: MapConfig) -> Callable:
    """``jit(invert)``: ``(params, x0, schedule) -> x_lat`` (precompute with frozen weights)."""
    pairs = config.inversion_pairs
    unroll = _auto_unroll(config.unroll)
    return jax.jit(
        lambda params, x0, schedule: invert(eps_fn, params, x0, pairs, schedule, unroll=unroll)
    )


def regenerate(eps_fn: Callable, config: MapConfig) -> Callable:
    """``jit(generate)`` with the test sequence: ``(params, x_lat, schedule) -> x_hat``."""
    pairs = config.test_pairs
    return jax.jit(lambda params, x_lat, schedule: generate(eps_fn, params, x_lat, pairs, schedule))


def make_map_step(
    eps_fn: Callable[[Params, jax.Array, jax.Array], jax.Array],
    schedule: Schedule,
    embed: EmbedFn,
    expression_loss: ExpressionLoss,
    config: MapConfig,
) -> Callable[[MapState, MapBatch, MapInputs], tuple[MapState, dict[str, jax.Array]]]:
    """The jitted train step ``(state, batch, inputs) -> (state, metrics)``, state donated.

    Args:
      eps_fn: the score network ``eps_fn(params, x, t)`` (NHWC, t float (B,)).
      schedule: the diffusion schedule.
      embed: the (ensemble) recogniser's pure ``embed(params, images)``.
      expression_loss: ``(expr_params, x_hat, x0, target) -> (loss, target probability)``.
      config: static hyperparameters.
    """
    tx = make_optimizer(config)
    pairs = config.train_pairs
    smooth = SMOOTHNESS[config.smoothness]

    def step(state: MapState, batch: MapBatch, inputs: MapInputs):
        # At trace time: the automatic settings need the shapes (a no-op when resolved).
        cfg = resolve_auto(config, eps_fn, state.params, batch.x_lat, schedule)
        frame = FaceFrame(batch.x0.shape[1], config.margin)
        key, k_sm = jax.random.split(state.key)

        def regen(params):
            return generate(
                eps_fn,
                params,
                batch.x_lat,
                pairs,
                schedule,
                remat=cfg.remat,
                unroll=cfg.unroll,
            )

        x_hat, pullback = jax.vjp(regen, state.params)

        def l_id(x):
            return identity_loss(embed, inputs.fr_params, x, inputs.target, frame)

        def l_expr(x):
            return expression_loss(inputs.expr_params, x, batch.x0, inputs.expr_target)

        def l_quality(x):
            l1 = l1_fidelity(x, batch.x0)
            ls = smooth(x, batch.x0)
            return config.lambda_l1 * l1 + config.lambda_ls * ls, (l1, ls)

        (la, cos), c_a = jax.value_and_grad(l_id, has_aux=True)(x_hat)
        (le, prob), c_e = jax.value_and_grad(l_expr, has_aux=True)(x_hat)
        (lq, (l1, ls)), c_q = jax.value_and_grad(l_quality, has_aux=True)(x_hat)
        cots = jnp.stack([c_a, c_e, c_q])
        if not config.conflict_stats:
            # One backward of lambda_id L_A + lambda_expr L_E + L_Q (linearity of the VJP).
            (g3,) = pullback(config.lambda_id * c_a + config.lambda_expr * c_e + c_q)
        elif config.batched_backward:
            # One backward for the three tasks: the pullback vmapped over stacked cotangents.
            (g3,) = jax.vmap(pullback)(cots)
        else:
            # Three backwards through the same stored forward, stacked afterwards.
            g3 = jax.tree.map(lambda *g: jnp.stack(g), *(pullback(c)[0] for c in cots))

        if config.sm_variant == "none" or config.lambda_sm == 0.0:
            lsm = jnp.zeros(())
            g_sm = jax.tree.map(jnp.zeros_like, state.params)
        else:
            teacher = inputs.frozen if config.sm_variant == "distill" else None

            def l_sm(params):
                return dsm_loss(
                    eps_fn, params, batch.x0, k_sm, schedule, t_max=config.sm_t_max, teacher=teacher
                )

            lsm, g_sm = jax.value_and_grad(l_sm)(state.params)

        if config.conflict_stats:
            grads = jax.tree.map(lambda g, s: jnp.concatenate([g, s[None]]), g3, g_sm)
        else:
            grads = jax.tree.map(lambda g, s: g + config.lambda_sm * s, g3, g_sm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        stats = opt_state[0].stats
        metrics = {
            "loss_id": la,
            "loss_expr": le,
            "loss_l1": l1,
            "loss_smooth": ls,
            "loss_quality": lq,
            "loss_sm": lsm,
            "cos_target": jnp.mean(cos),
            "p_expression": jnp.mean(prob),
            "grad_cos_global": stats.cos_global,
            "grad_cos_leaf": jnp.stack(jax.tree.leaves(stats.cos_leaf)),
            "frac_projected": stats.frac_projected,
            "phi_hat_mean": getattr(stats, "phi_hat_mean", jnp.zeros(())),
            "lr": config.learning_rate
            * config.lr_growth ** (state.step // config.steps_per_epoch).astype(jnp.float32),
        }
        return MapState(params, opt_state, state.step + 1, key), metrics

    return jax.jit(step, donate_argnums=(0,))
