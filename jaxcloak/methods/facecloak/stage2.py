"""What FaceCloak's two stage-2 algorithms share (:mod:`.fixed`, :mod:`.faithful`): the scan
carry, the result, the attention and perturbation updates, the surrogate probe and the loss.

Everything runs in the reference's [-1, 1] units (x_ref = 2 x - 1) so the faithful constants
keep their meaning; the surrogate sees ``(x_ref + 1) / 2``. Budgets in :class:`CloakConfig`
are in *applied* pixel units ([0, 1] scale) and are converted with the mask scale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ...objectives import surrogate as sur
from ...optim.attack import afog_attention, momentum_sign_step, project_linf, sign_step
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


def to_unit(x_ref: jax.Array) -> jax.Array:
    return (x_ref + 1.0) * 0.5


class Stage2(NamedTuple):
    """The pieces both algorithms build on, for one config and surrogate."""

    cfg: CloakConfig
    embed: EmbedFn
    attention: optax.GradientTransformation
    perturb: optax.GradientTransformation
    feature: str | None  # the tapped layer of the feature term, None when unused

    def surrogate(self, params: Params, x_ref: jax.Array) -> jax.Array:
        """(N, S, S, 3) reference units -> (N, D) embeddings."""
        return self.embed(params, to_unit(x_ref))

    def probe(self, params: Params, x_ref: jax.Array, key, augment: bool = True):
        """Embeddings of (N, S, S, 3) reference-unit faces through the augmented surrogate
        (``augment=False``: plain forward), and the tapped features (None when unused)."""
        cfg, feature = self.cfg, self.feature
        store: dict = {}
        edit = sur.chain(
            sur.linear_backprop(cfg.linbp) if augment and cfg.linbp else None,
            sur.skip_gradient(cfg.skip_gamma) if augment and cfg.skip_gamma != 1.0 else None,
            sur.activation_dropout(key, cfg.act_dropout) if augment and cfg.act_dropout else None,
            sur.tap([feature], store) if feature else None,
        )
        if edit is None:
            return self.surrogate(params, x_ref), None
        return self.embed(params, to_unit(x_ref), edit=edit), store.get(feature)

    def init(self, views_ref: jax.Array, eps_ref: float, key: PRNGKey) -> AttackState:
        """The reference's start: rho = 2 eps (U[0, 1) - 0.5), alpha = 1."""
        k_init, k_loop = jax.random.split(key)
        rho0 = 2.0 * eps_ref * (jax.random.uniform(k_init, views_ref.shape[1:]) - 0.5)
        alpha0 = jnp.ones_like(rho0)
        return AttackState(
            alpha0,
            rho0,
            self.attention.init(alpha0),
            self.perturb.init(rho0),
            k_loop,
            jnp.zeros_like(rho0),
        )

    def update(self, state: AttackState, g: jax.Array, budget) -> AttackState:
        cfg = self.cfg
        # Both gradients at the pre-update point, as the reference computes them.
        g_alpha, g_rho = state.rho * g, state.alpha * g
        da, opt_alpha = self.attention.update(g_alpha, state.opt_alpha)
        dr, opt_rho = self.perturb.update(g_rho, state.opt_rho)
        alpha = optax.apply_updates(state.alpha, da)
        rho = optax.apply_updates(state.rho, dr)
        if cfg.alpha_max is not None:
            alpha = jnp.clip(alpha, 0.0, cfg.alpha_max)
        if cfg.project_in_loop:
            # A per-pixel budget map, so a clip rather than optax.projection_linf_ball.
            rho = project_linf(rho, budget)
        return state._replace(alpha=alpha, rho=rho, opt_alpha=opt_alpha, opt_rho=opt_rho)

    def stats(self, state: AttackState, clipped: jax.Array, fed: jax.Array) -> dict:
        """Per-step trace scalars; ``clipped``: the applied perturbation, ``fed``: what the
        surrogate sees next step (both reference units)."""
        delta = clipped / self.cfg.to_ref  # applied [0, 1] units
        return {
            "linf": jnp.max(jnp.abs(delta)),
            "l2": jnp.sqrt(jnp.sum(delta**2)),
            "input_linf": jnp.max(jnp.abs(fed)) / self.cfg.to_ref,
            "alpha_mean": jnp.mean(state.alpha),
            "alpha_std": jnp.std(state.alpha),
            "alpha_min": jnp.min(state.alpha),
            "alpha_max": jnp.max(state.alpha),
        }

    def loss_terms(self, params: Params, e_similar, e_distant, e_clean) -> Callable:
        """``loss_terms(x_ref, e_idx, key=None, x_clean=None) -> (loss, aux)``: the triplet
        loss cos(phi(x), e+) - cos(phi(x), e-) (the shipped loss with cosine distance), plus
        the dodge and feature terms where configured."""
        cfg = self.cfg

        def loss_terms(x_ref, e_idx, key=None, x_clean=None):
            e, feat = self.probe(params, x_ref, key)  # (N, D); no edits: the plain surrogate
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
                _, feat_clean = self.probe(params, x_clean, key, augment=False)
                fc = sur.feature_cosine(feat, jax.lax.stop_gradient(feat_clean))
                aux["feature_cos"] = jnp.mean(fc)
                aux["feature_loss"] = jnp.sum(wts * fc)
            return loss, aux

        return loss_terms


def stage2(embed: EmbedFn, cfg: CloakConfig, eta_ref) -> Stage2:
    """The shared pieces for ``cfg``; ``eta_ref``: the step size (a schedule or a number)."""
    attention = afog_attention(cfg.lambda_alpha, cfg.std_guard)
    if cfg.momentum:
        perturb = momentum_sign_step(eta_ref, cfg.momentum, cfg.nesterov)
    else:
        perturb = sign_step(eta_ref)
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
    return Stage2(cfg, embed, attention, perturb, feature)
