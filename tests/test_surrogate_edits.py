"""Surrogate augmentation, feature taps, variance tuning and scale-invariant copies: each
one's defining property, and all of them inside FaceCloak's one compiled scan."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_facecloak_attack import tiny_embed
from test_transfer import one_program_runs

from jaxcloak.convert.onnx import convert
from jaxcloak.faces.chain import identity_taps
from jaxcloak.methods.facecloak.attack import make_cloak
from jaxcloak.methods.facecloak.config import CloakConfig
from jaxcloak.methods.facecloak.fixed import _darken
from jaxcloak.objectives import surrogate as sur
from jaxcloak.optim.attack import neighbourhood_gradient

S, D, C = 24, 8, 4


def _graph(residual: bool) -> onnx.ModelProto:
    """x (N,3,S,S) -> Conv -> PRelu -> Conv [-> + PRelu output] -> PRelu -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.normal(0, 0.3, (C, 3, 3, 3)),
        "a1": np.full((C, 1, 1), 0.1),
        "w2": rng.normal(0, 0.3, (C, C, 3, 3)),
        "a2": np.full((C, 1, 1), 0.2),
        "fc": rng.normal(0, 0.05, (D, C * S * S)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("PRelu", ["c1", "a1"], ["r1"], name="act1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
    ]
    last = "c2"
    if residual:
        nodes.append(helper.make_node("Add", ["r1", "c2"], ["s2"], name="merge"))
        last = "s2"
    nodes += [
        helper.make_node("PRelu", [last, "a2"], ["r2"], name="act2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, S, S])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, D])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _embed(residual: bool = False):
    fn, params = convert(_graph(residual))

    def embed(p, images, *, edit=None):
        (raw,) = fn(p, jnp.transpose(images, (0, 3, 1, 2)), edit=edit)
        return raw / jnp.linalg.norm(raw, axis=-1, keepdims=True)

    embed.sites = fn.sites
    return embed, params


def _images(n=2, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, S, S, 3))


def _grad(embed, params, x, edit):
    return jax.grad(lambda x: jnp.sum(embed(params, x, edit=edit)[:, 0]))(x)


def test_linbp_keeps_the_forward_and_mixes_the_backward_toward_identity():
    embed, params = _embed()
    x = _images()
    e0 = embed(params, x)
    e1 = embed(params, x, edit=sur.linear_backprop(0.7))
    np.testing.assert_allclose(e1, e0, atol=1e-6)
    g0 = _grad(embed, params, x, sur.linear_backprop(0.0))
    np.testing.assert_allclose(g0, _grad(embed, params, x, None), rtol=1e-5, atol=1e-7)
    g1 = _grad(embed, params, x, sur.linear_backprop(1.0))
    assert np.linalg.norm(g1 - g0) > 0.1 * np.linalg.norm(g0)
    # One PRelu alone: d/dx of the edited op is exactly (1 - gamma) f'(x) + gamma.
    site = sur.Site("PRelu", "p", 0, 1, (-1, -1))
    slope = 0.1
    xs = jnp.linspace(-2.0, 2.0, 9)

    def op(v, gamma):
        y = jnp.where(v > 0, v, slope * v)
        return sur.linear_backprop(gamma)(site, (v, None), (y,))[0]

    for gamma in (0.0, 0.4, 1.0):
        d = jax.vmap(jax.grad(lambda v, gamma=gamma: op(v, gamma)))(xs)
        want = (1 - gamma) * jnp.where(xs > 0, 1.0, slope) + gamma
        np.testing.assert_allclose(d, want, rtol=1e-6)


def test_skip_gradient_scales_only_the_residual_branch():
    embed, params = _embed(residual=True)
    sites = embed.sites
    (merge,) = sur.residual_sites(sites)
    assert merge.name == "merge"
    assert not sur.residual_sites(_embed(residual=False)[0].sites)
    x = _images()
    np.testing.assert_allclose(
        embed(params, x, edit=sur.skip_gradient(0.3)), embed(params, x), atol=1e-6
    )
    # Backward through the merge is skip + gamma * branch: linear in gamma.
    touched: list = []
    g = {gm: _grad(embed, params, x, sur.skip_gradient(gm, touched)) for gm in (0.0, 0.5, 1.0)}
    assert set(touched) == {"merge"}
    np.testing.assert_allclose(g[1.0], _grad(embed, params, x, None), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g[0.5], 0.5 * (g[1.0] + g[0.0]), rtol=1e-4, atol=1e-7)
    assert np.linalg.norm(g[0.0] - g[1.0]) > 0.05 * np.linalg.norm(g[1.0])


def test_activation_dropout_drops_its_rate_and_rescales_the_rest():
    site = sur.Site("PRelu", "p", 3, 10, (2, -1))
    y = jnp.ones((64, 32, 32, 4))
    out = np.asarray(sur.activation_dropout(jax.random.key(0), 0.2)(site, (y, None), (y,))[0])
    assert abs((out == 0).mean() - 0.2) < 0.01
    np.testing.assert_allclose(out[out != 0], 1 / 0.8, rtol=1e-6)
    other = sur.activation_dropout(jax.random.key(1), 0.2)(site, (y, None), (y,))[0]
    assert not np.array_equal(out, np.asarray(other))
    conv = sur.Site("Conv", "c", 2, 10, (1, -1))
    assert sur.activation_dropout(jax.random.key(0), 0.5)(conv, (y,), (y,))[0] is y


def test_feature_site_and_tap_record_the_layer_at_that_depth():
    embed, params = _embed()
    sites = embed.sites
    assert [s.name for s in sur.activation_sites(sites)] == ["act1", "act2"]
    assert sur.feature_site(sites, 0.0).name == "act1"
    assert sur.feature_site(sites, 1.0).name == "act2"
    store: dict = {}
    embed(params, _images(3), edit=sur.tap(["act1"], store))
    # The tapped activation, whatever layout it ran in: N x (C S S) entries, PRelu'd.
    assert set(store) == {"act1"} and store["act1"].shape[0] == 3
    assert int(np.prod(store["act1"].shape[1:])) == C * S * S
    a = np.asarray(store["act1"])
    assert (a < 0).any() and (a > 0).any()
    fc = sur.feature_cosine(store["act1"], store["act1"])
    np.testing.assert_allclose(fc, 1.0, rtol=1e-5)


def test_neighbourhood_gradient_is_the_mean_over_the_box():
    # grad of sum(x^3)/3 is x^2; over x + U[-r, r] its mean is x^2 + r^2 / 3.
    x = jnp.array([0.5, -1.0, 2.0])
    got = neighbourhood_gradient(lambda v, k: v**2, x, jax.random.key(0), 20000, 0.6)
    np.testing.assert_allclose(got, x**2 + 0.6**2 / 3, atol=0.02)
    keys_seen = neighbourhood_gradient(
        lambda v, k: jax.random.uniform(k, v.shape), x, jax.random.key(0), 2, 0.1
    )
    assert not np.allclose(keys_seen, keys_seen[0])  # each neighbour has its own key


def test_scale_invariant_copies_darken_the_unit_image():
    x_ref = 2.0 * _images() - 1.0
    for s in (1.0, 0.5, 0.25):
        np.testing.assert_allclose((_darken(x_ref, s) + 1) / 2, s * (x_ref + 1) / 2, atol=1e-6)


@pytest.fixture
def problem():
    embed, params = _embed()
    rng = np.random.default_rng(3)
    views = rng.random((3, S, S, 3), dtype=np.float32)
    e = rng.normal(size=(2, D)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return embed, params, views, e[0], e[1]


def _run(cfg, problem, key=0):
    embed, params, views, e_pos, e_neg = problem
    cloak = make_cloak(embed, cfg, size=S)
    fn = jax.jit(
        lambda p, v, a, b, k: cloak(p, v, a, b, jnp.zeros((S, S, 3)), identity_taps(S), key=k)
    )
    return fn(params, views, e_pos, e_neg, jax.random.key(key))


def test_feature_term_pushes_the_tapped_layer_away_from_the_clean_face(problem):
    cfg = CloakConfig(
        eps=16 / 255,
        steps=8,
        feature_weight=5.0,
        feature_depth=0.0,
        dodge_weight=0.0,
        resample_jitter=False,
        realign_jitter=0,
    )
    fc = np.asarray(_run(cfg, problem).trace["feature_cos"])
    assert fc[0] > 0.99 and np.all(np.diff(fc) < 0), fc  # starts at the clean face, goes down
    # ... because of the term: nearly without it, the layer stays closer to the clean face.
    weak = _run(dataclasses.replace(cfg, feature_weight=1e-6), problem).trace["feature_cos"]
    assert fc[-1] < float(weak[-1]) - 5e-4, (fc, weak)


def test_variance_tuning_carries_a_correction_that_grows_with_the_radius(problem):
    base = CloakConfig(steps=3, variance=2, resample_jitter=False, realign_jitter=0)
    small = _run(dataclasses.replace(base, variance_beta=1e-4), problem).trace["vt_correction"]
    large = _run(dataclasses.replace(base, variance_beta=3.0), problem).trace["vt_correction"]
    assert np.all(np.isfinite(small)) and np.all(large > 0)
    assert float(large[-1]) > 10 * float(small[-1])


def test_every_new_component_runs_in_one_compiled_scan(problem):
    embed, params, views, e_pos, e_neg = problem
    cfg = CloakConfig(
        steps=3,
        momentum=1.0,
        diversity=0.7,
        ti_sigma=1.0,
        variance=2,
        si_copies=2,
        linbp=0.5,
        act_dropout=0.1,
        feature_weight=1.0,
    )
    r1, r2 = one_program_runs(make_cloak(embed, cfg, size=S), params, views, e_pos, e_neg, S)
    assert np.all(np.isfinite(np.asarray(r1.mask))) and not np.allclose(r1.mask, r2.mask)
    assert np.abs(np.asarray(r1.mask)).max() <= 255 * cfg.eps + 1e-3
    assert {"feature_cos", "vt_correction"} <= set(r1.trace)


def test_graph_edits_need_an_editable_surrogate_with_the_right_parts(problem):
    with pytest.raises(ValueError, match="cannot be edited"):
        make_cloak(tiny_embed, CloakConfig(linbp=0.5), size=S)
    with pytest.raises(ValueError, match="residual"):
        make_cloak(problem[0], CloakConfig(skip_gamma=0.5), size=S)
    make_cloak(_embed(residual=True)[0], CloakConfig(skip_gamma=0.5), size=S)
    from jaxcloak.configs.facecloak import FAITHFUL

    for field, value in [
        ("variance", 2),
        ("si_copies", 2),
        ("linbp", 0.5),
        ("skip_gamma", 0.5),
        ("act_dropout", 0.1),
        ("feature_weight", 1.0),
    ]:
        with pytest.raises(ValueError, match="fixed-mode"):
            dataclasses.replace(FAITHFUL, **{field: value})
    for bad in [{"linbp": 1.5}, {"skip_gamma": 0.0}, {"act_dropout": 1.0}, {"si_copies": 0}]:
        with pytest.raises(ValueError):
            CloakConfig(**bad)
