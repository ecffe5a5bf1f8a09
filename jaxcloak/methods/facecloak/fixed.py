"""FaceCloak stage 2 as jaxcloak corrects it, for one identity, as one ``lax.scan``.

The loss averaged over all views per step (one batched forward); rho and the perturbation
projected to the per-pixel budget and the input to the valid range every step; alpha
bounded; true standardisation; key regions inside the loss; a mask scale of 127.5 so the
budget means the same while optimising and applying. On top, the transfer components a
config turns on: momentum (MI), input diversity (DI), translation-invariant smoothing (TI),
variance tuning (VT), scale copies (SIM), expectation over transformations, a low-frequency
grid, surrogate edits and a feature term. Why each correction: docs/facecloak.md, "Defects of
the reference"; what each component bought: docs/transfer.md.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ...faces.augment import low_frequency, resize_and_pad
from ...faces.chain import apply_taps
from ...faces.paste import crop_mask
from ...objectives import facecloak as obj
from ...optim.attack import l1_normalized, neighbourhood_gradient, smooth_gradient
from ...typing import EmbedFn, Params, PRNGKey
from .config import CloakConfig
from .stage2 import CloakResult, stage2, to_unit


def _eot(x01: jax.Array, key: PRNGKey, kinds: tuple[str, ...]) -> jax.Array:
    """Random differentiable corruptions of (V, S, S, 3) faces; each kind applied with p=0.5."""
    from ...faces import augment  # only fixed mode with eot needs it

    keys = jax.random.split(key, len(kinds) * 2)
    for i, kind in enumerate(kinds):
        k_on, k_par = keys[2 * i], keys[2 * i + 1]
        on = jax.random.bernoulli(k_on, 0.5, (x01.shape[0],))[:, None, None, None]
        if kind == "resize":
            y = jax.vmap(lambda im: augment.resize_round_trip(im, 0.5))(x01)
        elif kind == "blur":
            sig = jax.random.uniform(k_par, (x01.shape[0],), minval=0.5, maxval=1.5)
            y = jax.vmap(augment.gaussian_blur)(x01, sig)
        else:  # jpeg
            q = jax.random.uniform(k_par, (x01.shape[0],), minval=50.0, maxval=95.0)
            y = jax.vmap(augment.jpeg_like)(x01, q)
        x01 = jnp.where(on, y, x01)
    return x01


def _darken(x_ref: jax.Array, s: float) -> jax.Array:
    """Reference-unit images with their [0, 1] intensities scaled by ``s`` (SIM copies)."""
    return (x_ref + 1.0) * s - 1.0


def _similarity(size: int, scale, theta, shift) -> jax.Array:
    """(2, 3) output -> input similarity about the image centre."""
    c = (size - 1) / 2.0
    cs, sn = scale * jnp.cos(theta), scale * jnp.sin(theta)
    a = jnp.array([[cs, -sn], [sn, cs]])
    off = jnp.array([c, c]) - a @ jnp.array([c, c]) + shift
    return jnp.concatenate([a, off[:, None]], axis=1)


def _realign_jitter(img: jax.Array, key: PRNGKey, max_shift: float) -> jax.Array:
    """``img`` re-sampled as a slightly different alignment of the same photo would give."""
    from ...faces.augment import affine_warp

    k_s, k_r, k_t = jax.random.split(key, 3)
    scale = jnp.exp(jax.random.uniform(k_s, minval=-0.02, maxval=0.02))
    theta = jnp.deg2rad(jax.random.uniform(k_r, minval=-1.5, maxval=1.5))
    shift = jax.random.uniform(k_t, (2,), minval=-max_shift, maxval=max_shift)
    return affine_warp(img, _similarity(img.shape[0], scale, theta, shift))


def _resample_jitter(delta: jax.Array, key: PRNGKey) -> jax.Array:
    """``delta`` warped by a random similarity and back by its inverse plus a sub-pixel shift.

    Emulates paste-back (crop -> photo, scale about 0.5-2x) then re-alignment (photo -> crop):
    two bilinear resamplings at arbitrary sub-pixel phase. Near-identity, so |result| <= |delta|.
    """
    from ...faces.augment import affine_warp

    k_s, k_r, k_t1, k_t2 = jax.random.split(key, 4)
    size = delta.shape[0]
    scale = jnp.exp(jax.random.uniform(k_s, minval=-0.15, maxval=0.15))
    theta = jnp.deg2rad(jax.random.uniform(k_r, minval=-2.0, maxval=2.0))
    t1 = jax.random.uniform(k_t1, (2,), minval=-0.5, maxval=0.5)
    t2 = jax.random.uniform(k_t2, (2,), minval=-0.5, maxval=0.5)
    there = affine_warp(delta, _similarity(size, scale, theta, t1))
    return affine_warp(there, _similarity(size, 1.0 / scale, -theta, t2))


def make_fixed_cloak(
    embed: EmbedFn, config: CloakConfig, size: int = 112
) -> Callable[..., CloakResult]:
    """The fixed stage 2 for ONE identity; the signature is :func:`.attack.make_cloak`'s."""
    cfg = config
    eps_ref = cfg.eps * cfg.to_ref
    eta_ref = cfg.step * cfg.to_ref
    box_budget = obj.budget_map(
        eps_ref, size, boxes=obj.sticker_boxes(size), box_eps=cfg.region_eps * cfg.to_ref
    )
    # Host constants stay NumPy (baked into the traced program); jnp.asarray here would
    # compile a staging program per shape when the cloak is built.
    feather = np.asarray(crop_mask(size), np.float32)  # the blend mask paste_back uses
    if cfg.step_decay:
        # Constant-size sign steps keep bouncing around the optimum; a larger first step that
        # decays lets the perturbation settle. Astronaut, 20 steps, SFace cosine after
        # re-detection on the written photo: constant 1.5/255 0.34, decay from 3/255 0.29.
        eta_ref = optax.cosine_decay_schedule(eta_ref, cfg.steps, alpha=cfg.step_decay)
    s2 = stage2(embed, cfg, eta_ref)
    feature = s2.feature

    def applied(p, budget):  # what is applied: clipped, through the coarse grid
        clipped = jnp.clip(p, -budget, budget)
        return jnp.clip(low_frequency(clipped, cfg.lowfreq), -budget, budget)

    def _diverse(x01, key):  # DI: each view shrunk and padded with probability cfg.diversity
        k_on, k_tr = jax.random.split(key)
        on = jax.random.bernoulli(k_on, cfg.diversity, (x01.shape[0],))[:, None, None, None]
        keys = jax.random.split(k_tr, x01.shape[0])
        y = jax.vmap(lambda im, k: resize_and_pad(im, k, cfg.diversity_scale))(x01, keys)
        return jnp.where(on, y, x01)

    def cloak(params: Params, views, e_similar, e_distant, highpass, taps, *, key: PRNGKey):
        views_ref = 2.0 * jnp.asarray(views, jnp.float32) - 1.0
        n_views = views_ref.shape[0]
        e_clean = jax.lax.stop_gradient(s2.surrogate(params, views_ref))  # (V, D)
        state = s2.init(views_ref, eps_ref, key)
        budget = box_budget if cfg.stickers else jnp.full_like(state.rho, eps_ref)
        if cfg.perceptual:
            budget = jnp.maximum(budget - eps_ref, 0.0) + obj.perceptual_budget(
                jnp.asarray(views, jnp.float32)[-1], eps_ref
            )
        if cfg.highpass:
            budget = jnp.maximum(budget, highpass * cfg.region_eps * cfg.to_ref)
        loss_terms = s2.loss_terms(params, e_similar, e_distant, e_clean)
        idx = jnp.arange(n_views)

        def body(state, t):
            k_step0 = jax.random.fold_in(state.key, t)

            def views_with(delta, k_step):
                """The views as the surrogate sees them this step, carrying ``delta``."""
                if cfg.lowfreq != 1:
                    # What will be applied: through the coarse grid and clipped again, so a
                    # non-uniform budget (regions, perceptual map) holds in the loss too.
                    delta = applied(delta, budget)
                # The real face (last) through the photo's exact paste/realign map; the
                # synthetic views through random resamplings (or as is).
                real = apply_taps(delta, taps[0], taps[1], feather)[None]
                if cfg.resample_jitter:
                    keys = jax.random.split(jax.random.fold_in(k_step, 1), n_views - 1)
                    synth = jax.vmap(_resample_jitter, in_axes=(None, 0))(delta, keys)
                else:
                    synth = jnp.broadcast_to(delta, (n_views - 1, *delta.shape))
                x = jnp.clip(views_ref + jnp.concatenate([synth, real]), -1.0, 1.0)
                if cfg.realign_jitter:
                    k_re = jax.random.fold_in(k_step, 2)
                    x_real = _realign_jitter(to_unit(x[-1]), k_re, cfg.realign_jitter)
                    x = x.at[-1].set(2.0 * x_real - 1.0)
                if cfg.eot:
                    x = 2.0 * _eot(to_unit(x), k_step, cfg.eot) - 1.0
                if cfg.diversity:
                    x = 2.0 * _diverse(to_unit(x), jax.random.fold_in(k_step, 3)) - 1.0
                return x

            def f(delta, k_step):
                x = views_with(delta, k_step)
                x_clean = None
                if feature:
                    x_clean = jax.lax.stop_gradient(views_with(jnp.zeros_like(delta), k_step))
                k_net = jax.random.fold_in(k_step, 4)
                if cfg.si_copies == 1:
                    return loss_terms(x, idx, k_net, x_clean)
                # SIM: the same views darkened by 1/2, 1/4, ...; the loss is their mean.
                parts = [
                    loss_terms(
                        _darken(x, 0.5**i),
                        idx,
                        jax.random.fold_in(k_net, i),
                        None if x_clean is None else _darken(x_clean, 0.5**i),
                    )
                    for i in range(cfg.si_copies)
                ]
                return jax.tree.map(lambda *a: sum(a) / len(a), *parts)

            def grad_of(delta, k_step):
                if not feature:
                    return jax.value_and_grad(f, has_aux=True)(delta, k_step)

                # The feature term moves a whole layer by a small angle, so its gradient is
                # orders of magnitude smaller than the embedding loss's: the two directions
                # are L1-normalised before they are mixed, so feature_weight is the share
                # of the step the layer gets, whatever the network's scales.
                def parts(d):
                    loss, aux = f(d, k_step)
                    return jnp.stack([loss, aux["feature_loss"]]), aux

                both, vjp, aux = jax.vjp(parts, delta, has_aux=True)
                (g_emb,) = vjp(jnp.array([1.0, 0.0]))
                (g_feat,) = vjp(jnp.array([0.0, 1.0]))
                g = l1_normalized(g_emb) + cfg.feature_weight * l1_normalized(g_feat)
                return (both[0], aux), g

            delta = jnp.clip(state.alpha * state.rho, -budget, budget)
            (loss, aux), g = grad_of(delta, k_step0)
            if cfg.variance:
                # VT: this step's gradient plus last step's neighbourhood correction; the
                # correction carried on is the neighbours' mean gradient minus this one.
                g_near = neighbourhood_gradient(
                    lambda d, k: grad_of(d, k)[1],
                    delta,
                    jax.random.fold_in(k_step0, 7),
                    cfg.variance,
                    cfg.variance_beta * eps_ref,
                )
                g, state = g + state.variance, state._replace(variance=g_near - g)
                aux["vt_correction"] = jnp.mean(jnp.abs(state.variance))
            if cfg.ti_sigma:
                g = smooth_gradient(g, cfg.ti_sigma)
            new = s2.update(state, g, budget)
            clipped = applied(new.alpha * new.rho, budget)
            return new, {"loss": loss, **aux, **s2.stats(new, clipped, clipped)}

        order = jnp.arange(cfg.steps)
        # A rolled loop: with jaxcloak.ops.conv's forward-form gradients, unrolling a pass no
        # longer pays (measured in benchmarks/RESULTS.md) and only doubles the compile time.
        state, trace = jax.lax.scan(body, state, order)
        mask = applied(state.alpha * state.rho, budget) * cfg.mask_scale
        return CloakResult(mask.astype(jnp.float32), state.alpha, state.rho, trace)

    return cloak
