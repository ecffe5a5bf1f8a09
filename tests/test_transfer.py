"""Transfer components of FaceCloak's fixed mode: each one's defining property, and all of
them together inside the one compiled scan."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.fft import dctn
from scipy.signal import convolve2d
from test_facecloak_attack import tiny_embed

from jaxcloak.faces.augment import low_frequency, resize_and_pad
from jaxcloak.faces.chain import identity_taps
from jaxcloak.methods.facecloak.attack import make_cloak
from jaxcloak.methods.facecloak.config import CloakConfig
from jaxcloak.objectives.facecloak import perceptual_budget
from jaxcloak.optim.attack import gaussian_kernel, momentum_sign_step, smooth_gradient

S, D = 24, 8


@pytest.fixture
def problem():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.05, (S * S * 3, D)).astype(np.float32)
    yy, xx = np.mgrid[:S, :S] / S
    face = np.stack([0.5 + 0.3 * np.sin(7 * xx) * (yy > 0.5), 0.4 + 0.1 * yy, 0.5 + 0 * xx], -1)
    views = np.stack([np.clip(face + rng.normal(0, 0.02, face.shape), 0, 1) for _ in range(3)])
    e = rng.normal(size=(2, D)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return {"w": w}, views.astype(np.float32), e[0], e[1]


def run(cfg, problem, key=0):
    params, views, e_pos, e_neg = problem
    fn = jax.jit(
        lambda p, v, a, b, k: make_cloak(tiny_embed, cfg, size=S)(
            p, v, a, b, jnp.zeros((S, S, 3)), identity_taps(S), key=k
        )
    )
    return fn(params, views, e_pos, e_neg, jax.random.key(key))


def test_resize_and_pad_keeps_shape_and_bounds():
    img = jax.random.uniform(jax.random.key(0), (S, S, 3), minval=0.2, maxval=0.8)
    for seed in range(5):
        out = np.asarray(resize_and_pad(img, jax.random.key(seed), 0.7, fill=0.0))
        assert out.shape == img.shape
        pad = np.all(out == 0.0, axis=-1)
        face = out[~pad]
        # Shrunk content stays inside the input's range; the rest is exactly the fill.
        assert face.min() >= 0.2 - 1e-6 and face.max() <= 0.8 + 1e-6
        assert 0 < pad.mean() < 1 - 0.7**2 + 0.1
    same = resize_and_pad(img, jax.random.key(0), 1.0)
    np.testing.assert_allclose(same, img, atol=1e-5)


def test_ti_is_a_convolution_of_the_gradient():
    g = np.random.default_rng(0).normal(size=(S, S, 3)).astype(np.float32)
    k = np.asarray(gaussian_kernel(1.5))
    want = np.stack([convolve2d(g[..., c], k, mode="same") for c in range(3)], -1)
    np.testing.assert_allclose(smooth_gradient(jnp.asarray(g), 1.5), want, atol=1e-5)
    assert abs(k.sum() - 1) < 1e-6


def test_momentum_accumulates_normalised_gradients():
    lr, mu = 0.1, 0.9
    tx = momentum_sign_step(lr, mu)
    rng = np.random.default_rng(0)
    g1, g2 = (jnp.asarray(rng.normal(size=(5,)), jnp.float32) for _ in range(2))
    state = tx.init(jnp.zeros(5))
    _, state = tx.update(g1, state)
    u, state = tx.update(g2, state)
    m = mu * g1 / jnp.mean(jnp.abs(g1)) + g2 / jnp.mean(jnp.abs(g2))
    np.testing.assert_allclose(u, -lr * jnp.sign(m))
    trace = state[1]
    assert isinstance(trace, optax.TraceState)
    np.testing.assert_allclose(trace.trace, m, rtol=1e-6)
    # Nesterov: the step looks ahead along the momentum.
    tn = momentum_sign_step(lr, mu, nesterov=True)
    sn = tn.init(jnp.zeros(5))
    _, sn = tn.update(g1, sn)
    un, _ = tn.update(g2, sn)
    np.testing.assert_allclose(un, -lr * jnp.sign(g2 / jnp.mean(jnp.abs(g2)) + mu * m))


def test_perceptual_budget_bounds_and_mask_never_exceeds_it(problem):
    _, views, _, _ = problem
    eps = 8 / 255
    b = np.asarray(perceptual_budget(jnp.asarray(views[-1]), eps))
    assert b.min() >= 0.5 * eps - 1e-7 and b.max() <= 2 * eps + 1e-7
    assert b.std() > 0  # textured rows get more than flat ones
    cfg = CloakConfig(eps=eps, steps=6, perceptual=True, resample_jitter=False, realign_jitter=0)
    res = run(cfg, problem)
    mask = np.abs(np.asarray(res.mask)) / cfg.mask_scale  # reference units
    over = mask - b * cfg.to_ref * (1 + 1e-3)  # float rounding of the jitted map
    assert over.max() <= 1e-6, (over.max(), np.unravel_index(over.argmax(), over.shape))
    assert mask.max() > eps * cfg.to_ref  # it does spend the extra budget where allowed


def test_low_frequency_mask_has_no_energy_above_cutoff(problem):
    f = 4
    x = jax.random.normal(jax.random.key(0), (S, S, 3))
    y = np.asarray(low_frequency(x, f))
    assert np.abs(y).max() <= np.abs(np.asarray(x)).max() + 1e-6
    # Only the block means matter: a zero-mean change inside every block leaves it unchanged.
    wiggle = np.tile(np.array([[1.0, -1.0], [-1.0, 1.0]]), (S // 2, S // 2))[..., None]
    np.testing.assert_allclose(low_frequency(x + wiggle, f), y, atol=1e-5)
    cfg = CloakConfig(steps=5, lowfreq=f, resample_jitter=False, realign_jitter=0)
    mask = np.asarray(run(cfg, problem).mask)
    assert np.abs(mask).max() > 0
    spec = dctn(mask, axes=(0, 1), norm="ortho") ** 2
    k = S // f  # the coarse grid's Nyquist in DCT indices
    high = spec[k:, :].sum() + spec[:k, k:].sum()
    # Bilinear upsampling leaks a little above the grid's Nyquist (its kernel is not an ideal
    # low-pass), but nothing like a full-resolution mask does.
    assert high / spec.sum() < 0.06
    full = np.asarray(run(dataclasses.replace(cfg, lowfreq=1), problem).mask)
    sf = dctn(full, axes=(0, 1), norm="ortho") ** 2
    assert (sf[k:, :].sum() + sf[:k, k:].sum()) / sf.sum() > 0.5  # the property is not free


def one_program_runs(cloak, params, views, e_pos, e_neg, size=S):
    """``cloak`` run with two keys, checked to be one compiled program (traced once) whose
    iterations are a scan and that never calls back to the host; the two results."""
    traces = []

    def fn(p, v, a, b, k):
        traces.append(1)
        return cloak(p, v, a, b, jnp.zeros((size, size, 3)), identity_taps(size), key=k)

    jitted = jax.jit(fn)
    r1 = jitted(params, views, e_pos, e_neg, jax.random.key(0))
    r2 = jitted(params, views, e_pos, e_neg, jax.random.key(1))
    assert len(traces) == 1  # one program for the shape
    text = str(jax.make_jaxpr(fn)(params, views, e_pos, e_neg, jax.random.key(0)))
    assert "scan[" in text or " scan " in text
    assert "callback" not in text  # no host round trips
    return r1, r2


def test_everything_in_one_compiled_scan(problem):
    cfg = CloakConfig(
        steps=4,
        momentum=1.0,
        nesterov=True,
        diversity=0.7,
        ti_sigma=1.0,
        lowfreq=2,
        perceptual=True,
    )
    params, views, e_pos, e_neg = problem
    r1, r2 = one_program_runs(make_cloak(tiny_embed, cfg, size=S), params, views, e_pos, e_neg)
    assert r1.trace["loss"].shape == (4,)
    assert not np.allclose(r1.mask, r2.mask)
    assert np.all(np.isfinite(np.asarray(r1.mask)))


def test_transfer_options_are_fixed_mode_only():
    from jaxcloak.configs.facecloak import FAITHFUL

    for field, value in [
        ("momentum", 1.0),
        ("diversity", 0.5),
        ("ti_sigma", 1.0),
        ("lowfreq", 2),
        ("perceptual", True),
    ]:
        with pytest.raises(ValueError, match="fixed-mode"):
            dataclasses.replace(FAITHFUL, **{field: value})
    with pytest.raises(ValueError, match="diversity"):
        CloakConfig(diversity=1.5)


def test_run_summary_counts_photos_still_recognised(capsys):
    from types import SimpleNamespace as R

    from jaxcloak.cli.output import EXIT_STILL_RECOGNISED, report_unprotected

    def rec(name, *same):
        return R(status="protected", output=name, faces=[{"same_person_after": s} for s in same])

    records = [rec("a.jpg", False), rec("b.jpg", False, True), rec("c.jpg", True)]
    records.append(R(status="failed", output=None, faces=[]))
    assert report_unprotected(records, "sface", allow=False) == EXIT_STILL_RECOGNISED
    err = capsys.readouterr().err
    assert "2 of 3 photo(s) are still recognised by sface" in err
    assert "STILL RECOGNISED b.jpg" in err and "STILL RECOGNISED c.jpg" in err
    assert "a.jpg" not in err
    assert report_unprotected(records, "sface", allow=True) == 0
    assert report_unprotected(records[:1], "sface", allow=False) == 0
    assert "no longer recognised" in capsys.readouterr().out


def test_multi_photo_views_use_every_given_photo():
    from jaxcloak.methods.facecloak.views import AugmentViews, MultiPhotoViews

    rng = np.random.default_rng(0)
    photos = rng.random((3, 32, 32, 3)).astype(np.float32)  # reference + 2 other photos

    class Copies:  # a base generator whose views are the photo itself, to trace the source
        name, n_views = "copies", 7

        def config(self):
            return {}

        def __call__(self, face, *, key):
            return jnp.broadcast_to(face, (self.n_views + 1, *face.shape))

    gen = MultiPhotoViews(Copies(), photos[1:])
    views = np.asarray(gen(jnp.asarray(photos[0]), key=jax.random.key(0)))
    assert views.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(views[-1], photos[0])  # the reference last, unchanged
    sources = [int(np.argmin([np.abs(v - p).max() for p in photos])) for v in views[:-1]]
    assert sources == [0, 1, 2, 0, 1, 2, 0]
    real = MultiPhotoViews(AugmentViews(n_views=4), photos[1:])
    out = real(jnp.asarray(photos[0]), key=jax.random.key(1))
    assert out.shape == (5, 32, 32, 3) and real.config()["extra_photos"] == 2


def _coordinates(size: int = 112) -> jax.Array:
    """An image whose channels are each pixel's own x and y (and 0), to read warps off."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return jnp.asarray(np.stack([xs, ys, np.zeros_like(xs)], axis=-1))


def test_head_turn_moves_the_nose_more_than_the_eyes_and_zero_is_identity():
    from jaxcloak.faces.align import ARCFACE_TEMPLATE
    from jaxcloak.faces.augment import head_turn

    img = _coordinates()
    np.testing.assert_allclose(head_turn(img, 0.0, 0.0), img, atol=1e-4)
    turned = np.asarray(head_turn(img, np.deg2rad(20.0), 0.0))
    (rx, ry), (lx, ly), (nx, ny) = np.round(ARCFACE_TEMPLATE[:3]).astype(int)
    # Source x read at each template point, minus the point's own x: how far it moved.
    eye_shift = np.mean([turned[ry, rx, 0] - rx, turned[ly, lx, 0] - lx])
    nose_shift = turned[ny, nx, 0] - nx
    assert abs(nose_shift - eye_shift) > 2.0  # depth: the nose moves against the eye line
    # Re-alignment keeps the landmarks near the template (a similarity refit, not a drift).
    assert abs(eye_shift) < 4.0
    # Pitch moves vertically only at the centre column.
    tilted = np.asarray(head_turn(img, 0.0, np.deg2rad(10.0)))
    assert (
        np.abs(tilted[:, 56, 0] - 56).max() < 1.0 and np.abs(tilted[..., 1] - img[..., 1]).max() > 1
    )


def test_smooth_warp_moves_no_pixel_further_than_its_amplitude():
    from jaxcloak.faces.augment import smooth_warp

    img = _coordinates()
    out = np.asarray(smooth_warp(img, jax.random.key(3), 2.0))
    moved = np.abs(out[..., :2] - np.asarray(img)[..., :2])
    assert moved.max() <= 2.0 + 1e-4 and moved.max() > 0.5
    np.testing.assert_allclose(smooth_warp(img, jax.random.key(3), 0.0), img, atol=1e-5)


def test_pose_views_are_valid_views_with_the_face_last():
    from jaxcloak.methods.facecloak.views import make_view_generator

    face = jax.random.uniform(jax.random.key(0), (112, 112, 3))
    v = make_view_generator("augment", n_views=3, strength="pose")(face, key=jax.random.key(1))
    assert v.shape == (4, 112, 112, 3) and float(v.min()) >= 0 and float(v.max()) <= 1
    np.testing.assert_array_equal(v[-1], face)


def test_views_of_photos_use_only_the_real_extra_photos():
    from jaxcloak.methods.facecloak.views import views_of_photos

    class Copy:  # a view generator that returns its source unchanged, n_views times
        n_views = 6

        def __call__(self, face, *, key):
            return jnp.broadcast_to(face, (self.n_views + 1, *face.shape))

    face = jnp.zeros((8, 8, 3))
    extra = jnp.stack([jnp.full((8, 8, 3), v) for v in (0.25, 0.5, 0.75)])  # padded to 3
    fn = jax.jit(lambda n: views_of_photos(Copy(), face, extra, n, key=jax.random.key(0)))
    for n, want in ((0, {0.0}), (1, {0.0, 0.25}), (3, {0.0, 0.25, 0.5, 0.75})):
        v = fn(n)  # one program for every count
        assert {float(x) for x in v[:-1, 0, 0, 0]} == want
        np.testing.assert_array_equal(v[-1], face)  # the face itself last
