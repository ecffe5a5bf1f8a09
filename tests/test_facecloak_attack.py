"""FaceCloak stage 2: the update against a NumPy transcription, budgets, seeds, vmap, traces."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcloak.configs.facecloak import FAITHFUL, get_config
from jaxcloak.faces.chain import identity_taps
from jaxcloak.methods.facecloak.attack import make_batched_cloak, make_cloak
from jaxcloak.methods.facecloak.config import CloakConfig
from jaxcloak.objectives.facecloak import faithful_region_mask, sticker_boxes

S, D = 24, 8
TAPS = identity_taps(S)


def tiny_embed(params, images):
    """(N, S, S, 3) [0, 1] -> unit (N, D): tanh of a linear map, a smooth stand-in network."""
    h = jnp.tanh(images.reshape(images.shape[0], -1) @ params["w"])
    return h / jnp.linalg.norm(h, axis=-1, keepdims=True)


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (S * S * 3, D)).astype(np.float32)
    w[:30] = 0.0  # pixels with an exactly zero gradient: sign(0) must be 0
    views = rng.random((3, S, S, 3), dtype=np.float32)
    e = rng.normal(size=(2, D)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return {"w": w}, views, e[0], e[1]


def numpy_faithful_step(w, s_ref, alpha, rho, e_pos, e_neg, lam, guard, eta):
    """One afog_cloak_multi step (docs/facecloak.md, Stage 2), float64, gradient by hand."""
    x = s_ref + alpha * rho
    u = ((x + 1) / 2).reshape(-1) @ w
    h = np.tanh(u)
    n = np.linalg.norm(h)
    e = h / n
    loss = e @ e_pos - e @ e_neg
    de = e_pos - e_neg
    dh = (de - e * (e @ de)) / n
    g = (0.5 * (w @ ((1 - h**2) * dh))).reshape(x.shape)
    g_a, g_r = rho * g, alpha * g
    alpha = alpha - lam * (g_a - g_a.mean()) / (g_a.std(ddof=1) + guard)
    rho = rho - eta * np.sign(g_r)
    return loss, g, alpha, rho


def test_one_faithful_step_matches_numpy(problem):
    params, views, e_pos, e_neg = problem
    cfg = dataclasses.replace(FAITHFUL, passes=1, stickers=False, highpass=False)
    one = views[:1]
    res = make_cloak(tiny_embed, cfg, size=S)(
        params, one, e_pos, e_neg, np.zeros((S, S, 3), np.float32), TAPS, key=jax.random.key(3)
    )
    # Recreate the initial rho the attack drew from its key.
    k_init, _ = jax.random.split(jax.random.key(3))
    rho0 = np.asarray(2 * cfg.eps * (jax.random.uniform(k_init, (S, S, 3)) - 0.5), np.float64)
    loss, g, alpha, rho = numpy_faithful_step(
        params["w"].astype(np.float64), 2.0 * one[0].astype(np.float64) - 1.0,
        np.ones((S, S, 3)), rho0, e_pos.astype(np.float64), e_neg.astype(np.float64),
        lam=10.0, guard=0.01, eta=2 / 255,
    )  # fmt: skip
    assert np.sum(g == 0) >= 30  # the zeroed rows give exact zeros
    np.testing.assert_allclose(np.asarray(res.trace["loss"])[0], loss, atol=1e-6)
    np.testing.assert_allclose(np.asarray(res.alpha), alpha, atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.rho), rho, atol=1e-6)
    zero = g == 0
    np.testing.assert_array_equal(np.asarray(res.rho)[zero], rho0.astype(np.float32)[zero])
    # Mask: int16(255 * clip(alpha * rho, +-eps)), truncation toward zero.
    want = np.trunc(np.clip(alpha * rho, -cfg.eps, cfg.eps) * 255)
    np.testing.assert_allclose(np.asarray(res.mask), want, atol=1e-4)


def test_faithful_runs_passes_in_view_order(problem):
    params, views, e_pos, e_neg = problem
    cfg = dataclasses.replace(FAITHFUL, passes=2)
    res = make_cloak(tiny_embed, cfg, size=S)(
        params, views, e_pos, e_neg, np.ones((S, S, 3), np.float32), TAPS, key=jax.random.key(0)
    )
    assert res.trace["loss"].shape == (6,)
    # No projection inside the faithful loop: what the surrogate sees may exceed eps.
    assert float(res.trace["input_linf"].max()) > cfg.eps
    assert np.all(np.asarray(res.mask) == np.round(np.asarray(res.mask)))  # integer grey levels


def test_faithful_region_extras():
    boxes = jnp.asarray(sticker_boxes(S))
    p = jnp.full((S, S, 3), -0.5)
    extra = np.asarray(faithful_region_mask(p, boxes, jnp.ones((S, S, 3))))
    inside = np.asarray(boxes).sum(0) > 0
    # floor(-32) in the boxes, plus -1 from the unscaled high-pass everywhere (the reference's bug).
    assert np.all(extra[inside] == -33) and np.all(extra[~inside] == -1)


@pytest.mark.parametrize("stickers", [False, True])
def test_fixed_mode_respects_the_budget(problem, stickers):
    params, views, e_pos, e_neg = problem
    cfg = CloakConfig(steps=15, step=2 / 255, stickers=stickers)
    res = make_cloak(tiny_embed, cfg, size=S)(
        params, views, e_pos, e_neg, np.zeros((S, S, 3), np.float32), TAPS, key=jax.random.key(1)
    )
    mask = np.abs(np.asarray(res.mask))
    inside = sticker_boxes(S).sum(0) > 0
    assert mask[~inside].max() <= 8 + 1e-4
    assert mask.max() <= (32 if stickers else 8) + 1e-4
    assert float(res.trace["input_linf"].max()) <= (32 if stickers else 8) / 255 + 1e-6
    assert np.all(np.asarray(res.alpha) >= 0) and np.all(np.asarray(res.alpha) <= cfg.alpha_max)
    # It optimises: the loss goes down.
    loss = np.asarray(res.trace["loss"])
    assert loss[-1] < loss[0]


def test_seeds_and_vmap_equal_one_at_a_time(problem):
    params, views, e_pos, e_neg = problem
    cfg = CloakConfig(steps=6)
    one = jax.jit(make_cloak(tiny_embed, cfg, size=S))
    hp = np.zeros((S, S, 3), np.float32)
    a = one(params, views, e_pos, e_neg, hp, TAPS, key=jax.random.key(7))
    b = one(params, views, e_pos, e_neg, hp, TAPS, key=jax.random.key(7))
    c = one(params, views, e_pos, e_neg, hp, TAPS, key=jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))
    assert not np.array_equal(np.asarray(a.mask), np.asarray(c.mask))

    traces = []

    def counting_embed(p, x):
        traces.append(1)
        return tiny_embed(p, x)

    batched = make_batched_cloak(counting_embed, cfg, size=S)
    views_b = np.stack([views, views[::-1], views * 0.5])
    e_pos_b = np.stack([e_pos, e_neg, e_pos])
    e_neg_b = np.stack([e_neg, e_pos, -e_pos])
    keys = jax.random.split(jax.random.key(0), 3)
    hp_b = np.zeros((3, S, S, 3), np.float32)
    taps_b = tuple(np.stack([t] * 3) for t in TAPS)
    out = batched(params, views_b, e_pos_b, e_neg_b, hp_b, taps_b, keys)
    n_traces = len(traces)
    # A second batch of different identities with the same shapes does not retrace.
    batched(params, views_b[::-1], e_pos_b, e_neg_b, hp_b, taps_b, keys)
    assert len(traces) == n_traces
    for i in range(3):
        single = one(params, views_b[i], e_pos_b[i], e_neg_b[i], hp, TAPS, key=keys[i])
        np.testing.assert_allclose(np.asarray(out.mask[i]), np.asarray(single.mask), atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(out.trace["loss"][i]), np.asarray(single.trace["loss"]), atol=1e-5
        )


def test_config_checks():
    with pytest.raises(ValueError, match="mode must be"):
        CloakConfig(mode="fast")
    with pytest.raises(ValueError, match="unknown eot"):
        CloakConfig(eot=("rotate",))
    with pytest.raises(ValueError, match="fixed-mode options"):
        dataclasses.replace(FAITHFUL, eot=("jpeg",))
    with pytest.raises(ValueError, match="unknown strength"):
        get_config("fixed", "extreme")
    low, mid, high = (get_config("fixed", s) for s in ("low", "mid", "high"))
    assert low.eps < mid.eps < high.eps and all(
        c.momentum and c.diversity for c in (low, mid, high)
    )
    assert get_config("faithful") == FAITHFUL
    assert get_config().digest() != get_config(steps=41).digest()
