"""DDIM utilities: DiffAM's sequences and schedule, step algebra, round trip, remat, traces."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcloak.diffusion import (
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

B, H, W, C = 2, 8, 8, 3


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
    """Tiny programs: XLA's optimisation passes cost more than they save."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def tiny_eps(params, x, t):
    """A smooth stand-in score network: 3x3 conv, tanh, 1x1 conv, plus a timestep bias."""
    h = jax.lax.conv_general_dilated(
        x, params["w1"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jnp.tanh(h + (t / 1000.0)[:, None, None, None] * params["tb"])
    return jnp.einsum("bhwk,kc->bhwc", h, params["w2"])


@pytest.fixture
def params():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    return {
        "w1": 0.2 * jax.random.normal(k1, (3, 3, C, 8)),
        "tb": jax.random.normal(k2, (8,)),
        "w2": 0.3 * jax.random.normal(k3, (8, C)),
    }


@pytest.fixture
def x0():
    return jax.random.uniform(jax.random.key(1), (B, H, W, C), minval=-1.0, maxval=1.0)


@pytest.fixture(scope="module")
def sched() -> Schedule:
    return make_schedule()


def test_make_seq_matches_diffam():
    seq, seq_next = make_seq(60, 20)
    assert seq == (0, 3, 6, 9, 12, 15, 18, 22, 25, 28, 31, 34, 37, 41, 44, 47, 50, 53, 56, 60)
    assert seq_next == (-1, *seq[:-1])
    assert make_seq(60, 6) == ((0, 12, 24, 36, 48, 60), (-1, 0, 12, 24, 36, 48))
    # The same computation DiffAM runs (float64 linspace times t0, then int()).
    for t0, n in [(300, 40), (300, 6), (100, 7), (200, 13)]:
        assert make_seq(t0, n)[0] == tuple(int(s) for s in list(np.linspace(0, 1, n) * t0))


def test_pairs():
    seq, seq_next = make_seq(60, 6)
    gen = generation_pairs(seq, seq_next)
    assert gen == ((60, 48), (48, 36), (36, 24), (24, 12), (12, 0), (0, -1))
    inv = inversion_pairs(make_seq(60, 20)[0])
    assert len(inv) == 19 and inv[0] == (0, 3) and inv[-1] == (56, 60)
    hash(gen), hash(inv)  # static-argument friendly
    t, t_next = pairs_to_arrays(gen)
    assert t.dtype == jnp.int32 and t.shape == (6,)
    np.testing.assert_array_equal(t_next, [48, 36, 24, 12, 0, -1])


def test_schedule():
    betas = beta_schedule()
    assert betas.dtype == np.float64
    np.testing.assert_array_equal(betas, np.linspace(1e-4, 0.02, 1000))
    abar = alphas_cumprod(betas)
    assert abar.dtype == np.float64
    np.testing.assert_allclose(abar[60], 0.9583, atol=5e-5)
    np.testing.assert_allclose(abar[300], 0.394, atol=5e-4)
    sched = make_schedule()
    assert sched.alphas_cumprod.dtype == jnp.float32 and sched.T == 1000
    assert float(sched.alpha_bar(-1)) == 1.0
    np.testing.assert_array_equal(
        sched.alpha_bar(jnp.array([-1, 0, 60, 999])), np.float32([1.0, *abar[[0, 60, 999]]])
    )
    # Traced t: the t = -1 convention holds inside jit too.
    assert float(jax.jit(sched.alpha_bar)(jnp.int32(-1))) == 1.0


def test_step_forward_backward_exact_for_constant_eps(x0, sched):
    const = jax.random.normal(jax.random.key(2), x0.shape)

    def eps_fn(p, x, t):
        del p, t
        return const

    for t, t_next in [(0, 3), (48, 60), (12, 0), (0, -1)]:
        y = ddim_step(eps_fn, None, x0, t, t_next, sched)
        back = ddim_step(eps_fn, None, y, t_next, t, sched)
        np.testing.assert_allclose(back, x0, atol=2e-6)


def test_step_formula(params, x0, sched):
    t, t_next = 60, 48
    abar = alphas_cumprod(beta_schedule())
    eps = np.asarray(tiny_eps(params, x0, jnp.full((B,), 60.0)), dtype=np.float64)
    x0_hat = (np.asarray(x0, np.float64) - np.sqrt(1 - abar[t]) * eps) / np.sqrt(abar[t])
    want = np.sqrt(abar[t_next]) * x0_hat + np.sqrt(1 - abar[t_next]) * eps
    np.testing.assert_allclose(ddim_step(tiny_eps, params, x0, t, t_next, sched), want, atol=2e-6)


def _reverse(pairs):
    """The chain that undoes ``pairs`` step by step."""
    return tuple((b, a) for a, b in pairs[::-1])


def test_invert_generate_round_trip(params, x0, sched):
    seq, seq_next = make_seq(60, 20)
    inv = inversion_pairs(seq)
    x_lat = jax.jit(invert, static_argnums=(0, 3))(tiny_eps, params, x0, inv, sched)
    assert float(jnp.max(jnp.abs(x_lat - x0))) > 0.2  # it moved
    # Exact reversal of the inversion chain: only DDIM's discretisation error remains
    # (measured 3.1e-3 here).
    back = generate(tiny_eps, params, x_lat, _reverse(inv), sched)
    err = float(jnp.max(jnp.abs(back - x0)))
    assert err < 5e-3, err
    # DiffAM's generation pairs end with 0 -> -1, a step inversion never took, so the output
    # is x0_hat(x_0), off by about sqrt(1 - abar_0) |eps| = 0.01 |eps| (measured 1.5e-2).
    out = generate(tiny_eps, params, x_lat, generation_pairs(seq, seq_next), sched)
    err_diffam = float(jnp.max(jnp.abs(out - x0)))
    eps0 = float(jnp.max(jnp.abs(tiny_eps(params, x0, jnp.zeros((B,))))))
    assert err_diffam < 0.01 * eps0 + 5e-3, (err_diffam, eps0)


def test_round_trip_error_is_first_order(params, x0, sched):
    """Doubling the steps of a deep (t0 = 300) chain halves the round-trip error."""
    errs = []
    for n in (20, 40):
        inv = inversion_pairs(make_seq(300, n)[0])
        x_lat = invert(tiny_eps, params, x0, inv, sched)
        back = generate(tiny_eps, params, x_lat, _reverse(inv), sched)
        errs.append(float(jnp.max(jnp.abs(back - x0))))
    assert errs[1] < 0.6 * errs[0], errs  # measured 8.3e-2 -> 4.1e-2


def test_remat_same_value_and_grad(params, x0, sched):
    seq, seq_next = make_seq(60, 6)
    pairs = generation_pairs(seq, seq_next)

    def loss(p, remat):
        return jnp.sum(generate(tiny_eps, p, x0, pairs, sched, remat=remat) ** 2)

    v0, g0 = jax.jit(jax.value_and_grad(lambda p: loss(p, False)))(params)
    v1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(p, True)))(params)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    for k in params:
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-5, atol=1e-5)


def test_scan_traces_once(params, x0, sched):
    seq, seq_next = make_seq(60, 6)
    pairs = generation_pairs(seq, seq_next)
    net_traces, fn_traces = [], []

    def counting_eps(p, x, t):
        net_traces.append(1)
        return tiny_eps(p, x, t)

    @jax.jit
    def run(p, x, s):
        fn_traces.append(1)
        return generate(counting_eps, p, x, pairs, s, remat=True)

    run(params, x0, sched).block_until_ready()
    # Six steps, one trace of the network: the chain is a scan, not an unrolled loop.
    assert len(fn_traces) == 1 and len(net_traces) == 1
    p2 = jax.tree.map(lambda a: a + 1.0, params)
    run(p2, x0 + 0.5, sched).block_until_ready()
    assert len(fn_traces) == 1 and run._cache_size() == 1
