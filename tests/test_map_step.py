"""MAP's train step on toy networks: the batched backward, projection modes, no recompiles.

The score network, recogniser and expression model here are tiny closed-form functions, so
the checks are about the step's mechanics (docs/map.md, "The train step"); the real networks have
their own parity tests and the end-to-end run is in test_map_fit.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcloak.diffusion import generate, make_schedule
from jaxcloak.methods.map.config import MapConfig
from jaxcloak.methods.map.step import MapBatch, MapInputs, init_state, make_map_step
from jaxcloak.objectives.map import FaceFrame, identity_loss, l1_fidelity

S = 16  # crop side
D = 8  # embedding width


def eps_fn(params, x, t):
    """A per-pixel MLP with a time input: enough structure for non-trivial gradients."""
    h = jnp.tanh(x @ params["w1"] + params["b1"] + 0.001 * t[:, None, None, None])
    return h @ params["w2"]


def embed(params, images):
    """A random projection of the 112 crop, unit-normalised."""
    flat = jax.image.resize(images, (images.shape[0], 8, 8, 3), "linear").reshape(
        images.shape[0], -1
    )
    e = flat @ params
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def expression_loss(params, x_hat, x0, target):
    """Push the mean of one colour channel toward a target value; 'probability' = sigmoid."""
    m = jnp.mean(x_hat[..., 0] * params)
    return jnp.square(m - target), jax.nn.sigmoid(m)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.standard_normal((3, 6)) * 0.5, jnp.float32),
        "b1": jnp.zeros((6,), jnp.float32),
        "w2": jnp.asarray(rng.standard_normal((6, 3)) * 0.1, jnp.float32),
    }
    fr = jnp.asarray(rng.standard_normal((8 * 8 * 3, D)), jnp.float32)
    x0 = jnp.asarray(rng.uniform(-0.8, 0.8, (1, S, S, 3)), jnp.float32)
    target = jnp.asarray(rng.standard_normal(D), jnp.float32)
    target /= jnp.linalg.norm(target)
    inputs = MapInputs(fr, target, jnp.float32(1.0), jnp.float32(0.5), params)
    return params, MapBatch(x0, x0 * 0.98), inputs


CONFIG = MapConfig(t0=20, n_inv=4, n_train=3, n_test=3, steps_per_epoch=4, learning_rate=1e-2)


def test_batched_backward_equals_separate_grads(setup):
    """vmap(pullback) over stacked cotangents = jax.grad of each loss through the chain."""
    params, batch, inputs = setup
    schedule = make_schedule()
    pairs = CONFIG.train_pairs
    frame = FaceFrame(S, CONFIG.margin)

    def regen(p):
        return generate(eps_fn, p, batch.x_lat, pairs, schedule, remat=True)

    x_hat, pullback = jax.vjp(regen, params)
    losses = [
        lambda x: identity_loss(embed, inputs.fr_params, x, inputs.target, frame)[0],
        lambda x: l1_fidelity(x, batch.x0),
    ]
    cots = jnp.stack([jax.grad(f)(x_hat) for f in losses])
    (batched,) = jax.vmap(pullback)(cots)
    for k, f in enumerate(losses):
        direct = jax.grad(lambda p, f=f: f(regen(p)))(params)
        for name in params:
            np.testing.assert_allclose(batched[name][k], direct[name], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("projection", ["gradvac", "pcgrad", "none"])
def test_step_runs_logs_and_does_not_recompile(setup, projection):
    params, batch, inputs = setup
    config = dataclasses.replace(CONFIG, projection=projection)
    traces = []

    def counting_eps(p, x, t):
        traces.append(1)
        return eps_fn(p, x, t)

    step = make_map_step(counting_eps, make_schedule(), embed, expression_loss, config)
    state = init_state(jax.tree.map(jnp.copy, params), config, jax.random.key(0))
    state, m1 = step(state, batch, inputs)
    n_traced = len(traces)
    for _ in range(3):
        state, m = step(state, batch, inputs)
    assert len(traces) == n_traced, "the step retraced on a later call"
    assert int(state.step) == 4
    for name in (
        "loss_id",
        "loss_expr",
        "loss_l1",
        "loss_smooth",
        "loss_sm",
        "cos_target",
        "grad_cos_global",
        "frac_projected",
        "lr",
    ):
        assert np.isfinite(np.asarray(m[name])).all(), name
    assert m["grad_cos_leaf"].shape == (3,)
    assert -1.0 <= float(m["grad_cos_global"]) <= 1.0
    if projection == "none":
        assert float(m["frac_projected"]) == 0.0
    # The learning rate grows x1.3 per epoch of steps_per_epoch = 4 steps.
    assert float(m1["lr"]) == pytest.approx(1e-2)
    state, m5 = step(state, batch, inputs)
    assert float(m5["lr"]) == pytest.approx(1.3e-2)


def test_identity_loss_decreases(setup):
    """Optimising only L_A (other weights 0) lowers it: the chain carries useful gradients."""
    params, batch, inputs = setup
    config = dataclasses.replace(
        CONFIG,
        lambda_expr=0.0,
        lambda_l1=0.0,
        lambda_ls=0.0,
        lambda_sm=0.0,
        projection="none",
        learning_rate=3e-2,
    )
    step = make_map_step(eps_fn, make_schedule(), embed, expression_loss, config)
    state = init_state(jax.tree.map(jnp.copy, params), config, jax.random.key(0))
    first = None
    for _ in range(15):
        state, m = step(state, batch, inputs)
        first = float(m["loss_id"]) if first is None else first
    assert float(m["loss_id"]) < 0.9 * first, (first, float(m["loss_id"]))


def test_fused_backward_equals_weighted_sum(setup):
    """conflict_stats=False: one pullback of the weighted cotangents = the unfused sum."""
    params, batch, inputs = setup
    plain = dataclasses.replace(CONFIG, projection="none", sm_variant="none")
    fused = dataclasses.replace(plain, conflict_stats=False)
    out = {}
    for name, cfg in (("plain", plain), ("fused", fused)):
        step = make_map_step(eps_fn, make_schedule(), embed, expression_loss, cfg)
        state = init_state(jax.tree.map(jnp.copy, params), cfg, jax.random.PRNGKey(0))
        for _ in range(2):
            state, m = step(state, batch, inputs)
        out[name] = (state.params, m)
    for k in params:
        np.testing.assert_allclose(out["fused"][0][k], out["plain"][0][k], rtol=1e-5, atol=1e-7)
        assert not np.allclose(out["fused"][0][k], params[k])  # the step did move them
    assert np.isnan(out["fused"][1]["grad_cos_global"])
    assert np.isfinite(out["plain"][1]["grad_cos_global"])
    with pytest.raises(ValueError, match="projection='none'"):
        dataclasses.replace(CONFIG, conflict_stats=False)


def test_auto_settings_follow_backend_and_memory(setup):
    """unroll (None) unrolls on CPUs only; remat (None) turns on exactly when the chain's
    stored activations pass a quarter of the device memory; explicit values are kept."""
    from jaxcloak.methods.map.step import REMAT_SHARE, chain_residual_bytes, resolve_auto

    params, batch, _ = setup
    schedule = make_schedule()
    stored = chain_residual_bytes(eps_fn, params, batch.x_lat, CONFIG.train_pairs, schedule)
    # At least the n_train UNet inputs and hidden activations of this toy net, float32.
    assert stored >= CONFIG.n_train * batch.x_lat.size * 4
    auto = dataclasses.replace(CONFIG, remat=None, unroll=None)

    def resolved(backend, memory):
        c = resolve_auto(
            auto, eps_fn, params, batch.x_lat, schedule, backend=backend, memory_bytes=memory
        )
        return c.unroll, c.remat

    fits, tight = int(stored / REMAT_SHARE) + 1, int(stored / REMAT_SHARE) - 1
    assert resolved("cpu", fits) == (True, False)
    assert resolved("gpu", fits) == (False, False)
    assert resolved("gpu", tight) == (False, True)
    fixed = dataclasses.replace(CONFIG, remat=False, unroll=True)
    c = resolve_auto(fixed, eps_fn, params, batch.x_lat, schedule, backend="gpu", memory_bytes=1)
    assert (c.unroll, c.remat) == (True, False)
    assert MapConfig().remat is None and MapConfig().unroll is None  # auto by default


def test_auto_remat_step_equals_explicit(setup):
    """The step with remat/unroll left to the backend computes what explicit settings do."""
    params, batch, inputs = setup
    schedule = make_schedule()
    outs = []
    for remat, unroll in ((None, None), (True, True)):
        cfg = dataclasses.replace(CONFIG, remat=remat, unroll=unroll, steps=1)
        step = make_map_step(eps_fn, schedule, embed, expression_loss, cfg)
        state = init_state(jax.tree.map(jnp.copy, params), cfg, jax.random.PRNGKey(0))
        state, m = step(state, batch, inputs)
        outs.append((state.params, m["loss_id"]))
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(outs[0][0]), jax.tree.leaves(outs[1][0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
