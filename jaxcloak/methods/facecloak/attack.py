"""FaceCloak stage 2: learn one identity's universal mask as a single ``lax.scan``.

Two modes (docs/facecloak.md, "Two modes" and "Stage 2: the mask"):

- ``faithful``: ``afog_cloak_multi`` as shipped: T passes over the V views in list order, one
  batch-1 step per view, attention step with the 0.01 std guard, sign step on rho, no
  projection inside the loop, final ``clip(alpha * rho, +-eps)``, mask scaled by 255, stickers
  and high-pass added after the loop.
- ``fixed``: the loss averaged over all views per step (one batched forward), rho and the
  perturbation projected to the per-pixel budget and the input to the valid range every step,
  alpha bounded, true standardisation, key regions inside the loss, optional expectation over
  transformations, mask scale 127.5 so the budget means the same while optimising and applying.

Everything runs in the reference's [-1, 1] units (x_ref = 2 x - 1) so the faithful constants
keep their meaning; the surrogate sees ``(x_ref + 1) / 2``. Budgets in :class:`CloakConfig`
are in *applied* pixel units ([0, 1] scale) and are converted with the mask scale.

Write-for-one-identity: :func:`make_cloak` returns a pure function for one identity;
:func:`make_batched_cloak` vmaps it over identities and jits it once per (batch, config).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ...faces.augment import low_frequency, resize_and_pad
from ...faces.chain import apply_taps
from ...faces.paste import crop_mask
from ...objectives import facecloak as obj
from ...objectives import surrogate as sur
from ...optim.attack import (
    afog_attention,
    l1_normalized,
    momentum_sign_step,
    neighbourhood_gradient,
    project_linf,
    sign_step,
    smooth_gradient,
)
from ...typing import EmbedFn, Params, PRNGKey
from .config import CloakConfig


class AttackState(NamedTuple):
    """Scan carry: attention map, raw perturbation, their optax states, a key (fixed-mode
    randomness) and the variance-tuning correction (zeros when VT is off)."""

    alpha: jax.Array  # (S, S, 3)
    rho: jax.Array  # (S, S, 3), reference units
    opt_alpha: optax.OptState
    opt_rho: optax.OptState
    key: PRNGKey
    variance: jax.Array  # (S, S, 3)


class CloakResult(NamedTuple):
    """One identity's mask and how it got there.

    Attributes:
      mask: (S, S, 3) float32 delta in grey levels (0..255 units) to add to an aligned crop.
      alpha, rho: final attention map and raw perturbation (reference units).
      trace: per-step scalars, each of shape (steps,).
    """

    mask: jax.Array
    alpha: jax.Array
    rho: jax.Array
    trace: dict[str, jax.Array]


def _to_unit(x_ref: jax.Array) -> jax.Array:
    return (x_ref + 1.0) * 0.5


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


def make_cloak(embed: EmbedFn, config: CloakConfig, size: int = 112) -> Callable[..., CloakResult]:
    """Build the stage-2 optimisation for ONE identity (pure; jit/vmap at the call site).

    The returned ``cloak(params, views, e_similar, e_distant, highpass, taps, *, key)`` takes
      params: the surrogate's weights (never differentiated),
      views: (V, S, S, 3) float32 RGB [0, 1] aligned views, the real face last,
      e_similar, e_distant: (D,) unit anchor embeddings e+ and e-,
      highpass: (S, S, 3) high-pass mask F of the real face (zeros when unused),
      taps: ``(pos, w)`` of :func:`jaxcloak.faces.chain.paste_realign_taps` for the real
        face's photo: in the fixed mode the real view sees the delta exactly as it will be
        after paste-back and re-alignment (``identity_taps`` when there is no photo),
      key: PRNG key for the initial rho (and fixed-mode EOT),
    and returns a :class:`CloakResult`. Loss: cos(phi(x), e+) - cos(phi(x), e-) (the shipped
    triplet loss with cosine distance).
    """
    cfg = config
    eps_ref = cfg.eps * cfg.to_ref
    eta_ref = cfg.step * cfg.to_ref
    # Host constants stay NumPy (baked into the traced program); jnp.asarray here would
    # compile a staging program per shape when the cloak is built.
    boxes = np.asarray(obj.sticker_boxes(size), np.float32)
    box_budget = obj.budget_map(
        eps_ref, size, boxes=obj.sticker_boxes(size), box_eps=cfg.region_eps * cfg.to_ref
    )
    feather = np.asarray(crop_mask(size), np.float32)  # the blend mask paste_back uses
    attention = afog_attention(cfg.lambda_alpha, cfg.std_guard)
    if cfg.mode == "fixed" and cfg.step_decay:
        # Constant-size sign steps keep bouncing around the optimum; a larger first step that
        # decays lets the perturbation settle. Astronaut, 20 steps, SFace cosine after
        # re-detection on the written photo: constant 1.5/255 0.34, decay from 3/255 0.29.
        eta_ref = optax.cosine_decay_schedule(eta_ref, cfg.steps, alpha=cfg.step_decay)
    if cfg.momentum:
        perturb = momentum_sign_step(eta_ref, cfg.momentum, cfg.nesterov)
    else:
        perturb = sign_step(eta_ref)

    def applied(p, budget):  # what is applied: clipped (fixed mode: through the coarse grid)
        clipped = jnp.clip(p, -budget, budget)
        if cfg.mode == "faithful":
            return clipped
        return jnp.clip(low_frequency(clipped, cfg.lowfreq), -budget, budget)

    def _diverse(x01, key):  # DI: each view shrunk and padded with probability cfg.diversity
        k_on, k_tr = jax.random.split(key)
        on = jax.random.bernoulli(k_on, cfg.diversity, (x01.shape[0],))[:, None, None, None]
        keys = jax.random.split(k_tr, x01.shape[0])
        y = jax.vmap(lambda im, k: resize_and_pad(im, k, cfg.diversity_scale))(x01, keys)
        return jnp.where(on, y, x01)

    def surrogate(params, x_ref):  # (N, S, S, 3) reference units -> (N, D)
        return embed(params, _to_unit(x_ref))

    feature = None
    if cfg.edits_surrogate:
        sites = getattr(embed, "sites", None)
        if sites is None:
            raise ValueError(
                "linbp, skip_gamma, act_dropout and feature_weight edit the surrogate's graph; "
                "this surrogate (a native port or an ensemble) cannot be edited: use a "
                "converted ONNX model such as sface"
            )
        if cfg.skip_gamma != 1.0 and not sur.residual_sites(sites):
            raise ValueError(
                "skip_gamma scales gradients through residual branches and this surrogate has "
                "none (SFace is a plain chain of convolutions): use linbp instead"
            )
        if cfg.feature_weight:
            feature = sur.feature_site(sites, cfg.feature_depth).name

    def probe(params, x_ref, key, augment=True):
        """Embeddings of (N, S, S, 3) reference-unit faces through the augmented surrogate
        (``augment=False``: plain forward), and the tapped features (None when unused)."""
        store: dict = {}
        edit = sur.chain(
            sur.linear_backprop(cfg.linbp) if augment and cfg.linbp else None,
            sur.skip_gradient(cfg.skip_gamma) if augment and cfg.skip_gamma != 1.0 else None,
            sur.activation_dropout(key, cfg.act_dropout) if augment and cfg.act_dropout else None,
            sur.tap([feature], store) if feature else None,
        )
        if edit is None:
            return surrogate(params, x_ref), None
        return embed(params, _to_unit(x_ref), edit=edit), store.get(feature)

    def update(state: AttackState, g: jax.Array, budget) -> AttackState:
        # Both gradients at the pre-update point, as the reference computes them.
        g_alpha, g_rho = state.rho * g, state.alpha * g
        da, opt_alpha = attention.update(g_alpha, state.opt_alpha)
        dr, opt_rho = perturb.update(g_rho, state.opt_rho)
        alpha = optax.apply_updates(state.alpha, da)
        rho = optax.apply_updates(state.rho, dr)
        if cfg.alpha_max is not None:
            alpha = jnp.clip(alpha, 0.0, cfg.alpha_max)
        if cfg.project_in_loop:
            # A per-pixel budget map, so a clip rather than optax.projection_linf_ball.
            rho = project_linf(rho, budget)
        return state._replace(alpha=alpha, rho=rho, opt_alpha=opt_alpha, opt_rho=opt_rho)

    def stats(state, budget):
        p = state.alpha * state.rho
        clipped = applied(p, budget)
        fed = p if cfg.mode == "faithful" else clipped
        delta = clipped / cfg.to_ref  # applied [0, 1] units
        return {
            "linf": jnp.max(jnp.abs(delta)),
            "l2": jnp.sqrt(jnp.sum(delta**2)),
            # What the surrogate sees next step: the raw alpha * rho in the faithful loop.
            "input_linf": jnp.max(jnp.abs(fed)) / cfg.to_ref,
            "alpha_mean": jnp.mean(state.alpha),
            "alpha_std": jnp.std(state.alpha),
            "alpha_min": jnp.min(state.alpha),
            "alpha_max": jnp.max(state.alpha),
        }

    def cloak(params: Params, views, e_similar, e_distant, highpass, taps, *, key: PRNGKey):
        views_ref = 2.0 * jnp.asarray(views, jnp.float32) - 1.0
        n_views = views_ref.shape[0]
        e_clean = jax.lax.stop_gradient(surrogate(params, views_ref))  # (V, D)
        k_init, k_loop = jax.random.split(key)
        # rho = 2 eps (U[0, 1) - 0.5), the reference's init (L229).
        rho0 = 2.0 * eps_ref * (jax.random.uniform(k_init, views_ref.shape[1:]) - 0.5)
        alpha0 = jnp.ones_like(rho0)
        state = AttackState(
            alpha0, rho0, attention.init(alpha0), perturb.init(rho0), k_loop, jnp.zeros_like(rho0)
        )
        if cfg.mode == "fixed":
            budget = box_budget if cfg.stickers else jnp.full_like(rho0, eps_ref)
            if cfg.perceptual:
                budget = jnp.maximum(budget - eps_ref, 0.0) + obj.perceptual_budget(
                    jnp.asarray(views, jnp.float32)[-1], eps_ref
                )
            if cfg.highpass:
                budget = jnp.maximum(budget, highpass * cfg.region_eps * cfg.to_ref)
        else:
            budget = jnp.full_like(rho0, eps_ref)

        def loss_terms(x_ref, e_idx, key=None, x_clean=None):
            e, feat = probe(params, x_ref, key)  # (N, D); no edits: the plain surrogate
            cs, cd = e @ e_similar, e @ e_distant
            cc = jnp.sum(e * e_clean[e_idx], axis=-1)
            n = x_ref.shape[0]
            if n > 1 and cfg.real_weight is not None:
                # The real face (last) carries real_weight; the synthetic views share the rest.
                wts = jnp.full((n,), (1.0 - cfg.real_weight) / (n - 1)).at[-1].set(cfg.real_weight)
            else:
                wts = jnp.full((n,), 1.0 / n)
            loss = jnp.sum(wts * (cs - cd))  # weighted obj.triplet_loss over the batch
            if cfg.dodge_weight:
                loss = loss + cfg.dodge_weight * jnp.sum(wts * cc)
            aux = {
                "cos_similar": jnp.mean(cs),
                "cos_distant": jnp.mean(cd),
                "cos_clean": jnp.mean(cc),
                "cos_clean_real": cc[-1],
            }
            if feat is not None:
                # The clean view through the same transforms and the plain network.
                _, feat_clean = probe(params, x_clean, key, augment=False)
                fc = sur.feature_cosine(feat, jax.lax.stop_gradient(feat_clean))
                aux["feature_cos"] = jnp.mean(fc)
                aux["feature_loss"] = jnp.sum(wts * fc)
            return loss, aux

        if cfg.mode == "faithful":

            def body(state, k):
                x = views_ref[k] + state.alpha * state.rho  # no clip of any kind, as the reference
                (loss, aux), g = jax.value_and_grad(
                    lambda x: loss_terms(x[None], k[None]), has_aux=True
                )(x)
                new = update(state, g, budget)
                return new, {"loss": loss, **aux, **stats(new, budget)}

            order = jnp.tile(jnp.arange(n_views), cfg.passes)  # synthetic views, then real
        else:
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
                        x_real = _realign_jitter(_to_unit(x[-1]), k_re, cfg.realign_jitter)
                        x = x.at[-1].set(2.0 * x_real - 1.0)
                    if cfg.eot:
                        x = 2.0 * _eot(_to_unit(x), k_step, cfg.eot) - 1.0
                    if cfg.diversity:
                        x = 2.0 * _diverse(_to_unit(x), jax.random.fold_in(k_step, 3)) - 1.0
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
                new = update(state, g, budget)
                return new, {"loss": loss, **aux, **stats(new, budget)}

            order = jnp.arange(cfg.steps)

        # A rolled loop: with jaxcloak.ops.conv's forward-form gradients, unrolling a pass no
        # longer pays (measured in benchmarks/RESULTS.md) and only doubles the compile time.
        state, trace = jax.lax.scan(body, state, order)
        p = state.alpha * state.rho
        mask = applied(p, budget) * cfg.mask_scale
        if cfg.mode == "faithful":
            # int16(M) in the reference: truncation toward zero, then the regions' extras.
            mask = jnp.trunc(mask)
            if cfg.stickers or cfg.highpass:
                extra = obj.faithful_region_mask(
                    p,
                    boxes if cfg.stickers else jnp.zeros_like(boxes),
                    highpass if cfg.highpass else None,
                )
                mask = mask + extra
        return CloakResult(mask.astype(jnp.float32), state.alpha, state.rho, trace)

    return cloak


def make_batched_cloak(embed: EmbedFn, config: CloakConfig, size: int = 112) -> Callable:
    """Jitted stage 2 for many identities: ``fn(params, views, e_sim, e_dist, hp, taps, keys)``.

    Shapes: views (B, V, S, S, 3), e_sim/e_dist (B, D), hp (B, S, S, 3), taps a pair
    ((B, 4, S, S, 2), (B, 4, S, S)), keys a batch of typed keys. One compile per
    (B, V, config); params are an argument, so the weights are not baked into the program.
    """
    one = make_cloak(embed, config, size)

    def batched(params, views, e_sim, e_dist, highpass, taps, keys):
        return jax.vmap(lambda v, s, d, h, t, k: one(params, v, s, d, h, t, key=k))(
            views, e_sim, e_dist, highpass, taps, keys
        )

    return jax.jit(batched)


def highpass_for(faces: np.ndarray) -> np.ndarray:
    """(B, S, S, 3) high-pass masks of the real faces (host side; uint8 or [0, 1] input)."""
    return np.stack([obj.highpass_mask(f) for f in faces]).astype(np.float32)
