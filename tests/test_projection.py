"""Gradient projection (PCGrad / GradVac): against a float64 NumPy reference, invariants,
zero norms, granularities, the optax wrappers, and no recompilation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.experimental import aggregating

from jaxcloak.optim.projection import (
    ProjectionState,
    as_aggregator,
    block_names,
    ema_grads,
    gradvac,
    num_blocks,
    pcgrad,
)
from jaxcloak.optim.projection import project_pair as _project_pair

# Jitted once per configuration: far faster on CPU than op-by-op dispatch.
project_pair = jax.jit(
    _project_pair, static_argnames=("granularity", "beta", "update_target", "module_depth")
)

SHAPES = {"conv": {"kernel": (3, 3, 2, 4), "bias": (4,)}, "dense": {"kernel": (5, 3)}}


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
    """Tiny programs: XLA's optimisation passes cost more than they save."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def tree_of(seed: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(scale * rng.normal(size=s), jnp.float32),
        SHAPES,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def vdot(a, b) -> float:
    return float(np.vdot(np.asarray(a, np.float64), np.asarray(b, np.float64)))


def cos(a, b) -> float:
    return vdot(a, b) / np.sqrt(vdot(a, a) * vdot(b, b))


def flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def np_gradvac(a, e, phi_hat):
    """GradVac on one block in float64, as written in the paper (PCGrad at phi_hat = 0)."""
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    na, ne = np.linalg.norm(a), np.linalg.norm(e)
    phi = np.vdot(a, e) / (na * ne)
    if phi >= phi_hat:
        return a, e
    k = (phi_hat * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - phi_hat**2)) / np.sqrt(1 - phi_hat**2)
    return a + na * k / ne * e, e + ne * k / na * a


@pytest.fixture
def conflicting():
    """Every leaf of g_E leans against g_A (cosines -0.20, -0.54, -0.57)."""
    g_a = tree_of(0)
    g_e = jax.tree.map(lambda a, n: -0.5 * a + n, g_a, tree_of(1))
    return g_a, g_e


def test_pcgrad_removes_conflict(conflicting):
    g_a, g_e = conflicting
    for gran in ("layer", "global"):
        pa, pe, phi_hat, _ = project_pair(g_a, g_e, 0.0, granularity=gran, update_target=False)
        assert float(jnp.max(jnp.abs(phi_hat))) == 0.0
        # Per leaf for "layer", over the whole pytree for "global".
        blocks = zip(*map(jax.tree.leaves, (pa, pe, g_a, g_e)), strict=True)
        if gran == "global":
            blocks = [tuple(map(flat, (pa, pe, g_a, g_e)))]
        for la, le, a, e in blocks:
            scale = np.linalg.norm(a) * np.linalg.norm(e)
            assert vdot(a, e) < 0
            # Orthogonal up to float32 rounding, never negative beyond it.
            assert vdot(la, e) >= -1e-6 * scale and vdot(le, a) >= -1e-6 * scale
            assert abs(vdot(la, e)) < 1e-6 * scale and abs(vdot(le, a)) < 1e-6 * scale


def test_gradvac_zero_target_is_pcgrad(conflicting):
    """phi_hat = 0 reproduces PCGrad per leaf (float64 reference), for both the core function
    with the EMA on and the pcgrad transformation."""
    g_a, g_e = conflicting
    pa, pe, _, _ = project_pair(g_a, g_e, jnp.zeros(3), beta=0.5)
    stacked = jax.tree.map(lambda a, e: jnp.stack([a, e]), g_a, g_e)
    tx = pcgrad(weights=(1.0, 0.0))
    only_a, _ = jax.jit(tx.update)(stacked, tx.init(g_a))
    for leaves in zip(*map(jax.tree.leaves, (g_a, g_e, pa, pe, only_a)), strict=True):
        a, e, la, le, ta = leaves
        want_a, want_e = np_gradvac(a, e, 0.0)
        a64, e64 = np.asarray(a, np.float64), np.asarray(e, np.float64)
        want_pc = a64 - vdot(a, e) / vdot(e, e) * e64  # Yu et al.
        np.testing.assert_allclose(want_a, want_pc, atol=1e-12)
        np.testing.assert_allclose(la, want_a, atol=1e-6)
        np.testing.assert_allclose(le, want_e, atol=1e-6)
        np.testing.assert_allclose(ta, want_a, atol=1e-6)


def test_aligned_pass_unchanged_exactly():
    g_a = tree_of(0)
    g_e = jax.tree.map(lambda a, n: 2.0 * a + 0.1 * n, g_a, tree_of(1))
    for gran in ("layer", "global", "module"):
        pa, pe, _, st = project_pair(g_a, g_e, 0.0, granularity=gran)
        for x, y in zip(jax.tree.leaves((pa, pe)), jax.tree.leaves((g_a, g_e)), strict=True):
            np.testing.assert_array_equal(x, y)
        assert float(st.frac_projected) == 0.0


@pytest.mark.parametrize("target,case", [(0.3, "conflict"), (0.8, "conflict"), (0.8, "mild")])
def test_gradvac_lifts_cosine_to_target(conflicting, target, case):
    """Conflicting leaves (cos -0.2 .. -0.57), or aligned ones below the target (cos 0.02 ..
    0.78 < 0.8), all end at cos(g_A', g_E) = cos(g_E', g_A) = phi_hat."""
    g_a, g_e = conflicting
    if case == "mild":
        g_e = jax.tree.map(lambda a, n: 0.4 * a + 0.4 * n, g_a, tree_of(2))
    pa, pe, _, st = project_pair(g_a, g_e, jnp.full((3,), target), update_target=False)
    assert float(st.frac_projected) == 1.0
    for la, le, a, e in zip(*map(jax.tree.leaves, (pa, pe, g_a, g_e)), strict=True):
        assert (cos(a, e) < 0) == (case == "conflict") and cos(a, e) < target
        np.testing.assert_allclose(cos(la, e), target, atol=1e-5)
        np.testing.assert_allclose(cos(le, a), target, atol=1e-5)
        want_a, want_e = np_gradvac(a, e, target)
        np.testing.assert_allclose(la, want_a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(le, want_e, rtol=1e-5, atol=1e-5)


def test_phi_hat_ema_update(conflicting):
    g_a, g_e = conflicting
    phi_hat = np.float32([0.1, -0.2, 0.05])
    beta = 0.01
    _, _, new, st = project_pair(g_a, g_e, jnp.asarray(phi_hat), beta=beta)
    phi = np.array([cos(a, e) for a, e in zip(*map(jax.tree.leaves, (g_a, g_e)), strict=True)])
    np.testing.assert_allclose(new, (1 - beta) * phi_hat + beta * phi, rtol=0, atol=1e-7)
    np.testing.assert_allclose(st.phi_hat_mean, np.mean(new), atol=1e-7)
    # The stats' cosines are those of the inputs.
    np.testing.assert_allclose(jax.tree.leaves(st.cos_leaf), phi, atol=1e-6)
    np.testing.assert_allclose(st.cos_global, cos(flat(g_a), flat(g_e)), atol=1e-6)


def test_zero_norm_is_safe():
    g_a = tree_of(0)
    g_e = jax.tree.map(jnp.zeros_like, g_a)
    g_e["dense"]["kernel"] = -g_a["dense"]["kernel"]  # one live, fully opposed leaf
    g_a["conv"]["bias"] = jnp.zeros(4)  # zero on both sides
    phi_hat = jnp.float32([0.5, 0.5, 0.5])
    for gran in ("layer", "global"):
        pa, pe, new, st = project_pair(g_a, g_e, phi_hat[: num_blocks(g_a, gran)], granularity=gran)
        leaves = jax.tree.leaves((pa, pe, new, st))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
        if gran == "layer":
            # Blocks with a zero side are untouched and keep their target.
            for x, y in zip(jax.tree.leaves(pa)[:2], jax.tree.leaves(g_a)[:2], strict=True):
                np.testing.assert_array_equal(x, y)
            for x, y in zip(jax.tree.leaves(pe)[:2], jax.tree.leaves(g_e)[:2], strict=True):
                np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(new[:2], phi_hat[:2])
            np.testing.assert_array_equal(st.block_projected, [False, False, True])
    # Everything zero: nothing moves, nothing is NaN.
    zeros = jax.tree.map(jnp.zeros_like, g_a)
    pa, pe, new, st = project_pair(zeros, zeros, 0.5, granularity="global")
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves((pa, pe)))
    assert float(new[0]) == 0.5 and float(st.cos_global) == 0.0


def test_global_and_layer_differ_and_fraction_projected():
    """Leaf 'x' conflicts weakly, leaf 'y' agrees strongly: the global cosine is positive, so
    only the layer-wise rule projects (one block of two)."""
    g_a = {"x": jnp.array([1.0, 0.0]), "y": jnp.array([10.0, 0.0])}
    g_e = {"x": jnp.array([-1.0, 1.0]), "y": jnp.array([10.0, 1.0])}
    la, le, _, st_l = project_pair(g_a, g_e, 0.0, granularity="layer", update_target=False)
    ga, ge, _, st_g = project_pair(g_a, g_e, 0.0, granularity="global", update_target=False)
    np.testing.assert_array_equal(st_l.block_projected, [True, False])
    assert float(st_l.frac_projected) == 0.5 and float(st_g.frac_projected) == 0.0
    assert float(st_g.cos_global) > 0 and float(st_l.cos_leaf["x"]) < 0
    np.testing.assert_allclose(la["x"], [0.5, 0.5], atol=1e-7)
    np.testing.assert_array_equal(le["x"], [0.0, 1.0])
    np.testing.assert_array_equal(la["y"], g_a["y"])
    np.testing.assert_array_equal(ga["x"], g_a["x"])
    np.testing.assert_array_equal(ge["x"], g_e["x"])


def test_module_granularity(conflicting):
    g_a, g_e = conflicting
    assert block_names(g_a, "module") == ("conv", "dense")
    assert block_names(g_a, "layer") == ("conv/bias", "conv/kernel", "dense/kernel")
    pa, _, new, _ = project_pair(g_a, g_e, 0.0, granularity="module", update_target=False)
    assert new.shape == (2,)
    # The 'conv' module is one block: its two leaves are projected together.
    a = np.concatenate([np.ravel(g_a["conv"][k]) for k in ("bias", "kernel")])
    e = np.concatenate([np.ravel(g_e["conv"][k]) for k in ("bias", "kernel")])
    want, _ = np_gradvac(a, e, 0.0)
    got = np.concatenate([np.ravel(pa["conv"][k]) for k in ("bias", "kernel")])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_vmap_matches_loop(conflicting):
    g_a, g_e = conflicting
    batch_a = jax.tree.map(lambda a: jnp.stack([a, -a, 2 * a]), g_a)
    batch_e = jax.tree.map(lambda e: jnp.stack([e, e, e]), g_e)
    out = jax.vmap(lambda a, e: project_pair(a, e, 0.2)[:3])(batch_a, batch_e)
    for i in range(3):
        one = project_pair(*jax.tree.map(lambda x, i=i: x[i], (batch_a, batch_e)), 0.2)[:3]
        for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(one), strict=True):
            np.testing.assert_allclose(x[i], y, rtol=1e-6, atol=1e-7)


def stack(*trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def test_transformation_weights_state_and_no_recompile(conflicting):
    g_a, g_e = conflicting
    g_q = tree_of(3)
    tx = gradvac(beta=0.01, weights=(0.5, 0.25, 1.0))
    state = tx.init(g_a)
    assert isinstance(state, ProjectionState) and state.phi_hat.shape == (3,)

    traces = []

    def update(u, s):
        traces.append(1)
        return tx.update(u, s, None, some_extra_arg=1.0)  # extra args are accepted

    update = jax.jit(update)
    out, state1 = update(stack(g_a, g_e, g_q), state)
    pa, pe, phi_hat, _ = project_pair(g_a, g_e, state.phi_hat, beta=0.01)
    want = jax.tree.map(lambda a, e, q: 0.5 * a + 0.25 * e + q, pa, pe, g_q)
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(state1.phi_hat, phi_hat)
    assert int(state1.count) == 1 and float(state1.stats.frac_projected) == 1.0
    _, state2 = update(stack(g_e, g_a, g_q), state1)
    assert len(traces) == 1 and update._cache_size() == 1
    assert int(state2.count) == 2
    with pytest.raises(ValueError, match="leading task axis"):
        tx.update(stack(g_a, g_e), state)


def test_dtype_preserved():
    g_a = jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree_of(0))
    g_e = jax.tree.map(lambda x: -x, g_a)
    tx = pcgrad("global")
    out, _ = jax.jit(tx.update)(stack(g_a, g_e), tx.init(g_a))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))


def test_chain_and_aggregator_agree(conflicting):
    g_a, g_e = conflicting
    params = jax.tree.map(jnp.zeros_like, g_a)
    chained = optax.chain(gradvac(phi_init=0.1), optax.sgd(1.0))
    agg = aggregating.process(
        optax.identity(), as_aggregator(gradvac(phi_init=0.1)), optax.sgd(1.0)
    )
    assert isinstance(agg, aggregating.Aggregator)
    u1, _ = jax.jit(chained.update)(stack(g_a, g_e), chained.init(params), params)
    u2, s2 = jax.jit(agg.update)(stack(g_a, g_e), agg.init(params), params)
    for x, y in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
        np.testing.assert_array_equal(x, y)
    assert int(s2[1].count) == 1


def test_ema_grads(conflicting):
    g_a, g_e = conflicting
    tx = optax.chain(ema_grads(0.9), pcgrad())
    state = tx.init(g_a)
    update = jax.jit(tx.update)
    _, state = update(stack(g_a, g_e), state)
    out, state = update(stack(g_e, g_a), state)
    # m = 0.9 (0.1 g1) + 0.1 g2 per task, then projected.
    m_a = jax.tree.map(lambda a, e: 0.09 * a + 0.1 * e, g_a, g_e)
    m_e = jax.tree.map(lambda a, e: 0.09 * e + 0.1 * a, g_a, g_e)
    pa, pe, _, _ = project_pair(m_a, m_e, 0.0, update_target=False)
    for x, a, e in zip(*map(jax.tree.leaves, (out, pa, pe)), strict=True):
        np.testing.assert_allclose(x, a + e, rtol=1e-5, atol=1e-7)
