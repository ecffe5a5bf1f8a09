"""FR ensembles: one recogniser whose cosine is the weighted mean of its members' cosines."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcloak.nets import iresnet
from jaxcloak.zoo.ensemble import (
    DIFFAM_SPLITS,
    Ensemble,
    build_ensemble,
    diffam_split,
    leave_one_out,
    parse_models,
)
from jaxcloak.zoo.registry import MODELS, FaceRecognizer, _native_embed, load


def _tiny(name: str, seed: int, threshold: float | None) -> FaceRecognizer:
    spec = dataclasses.replace(
        MODELS["arcface-r18"], name=name, variant="tiny", embedding_dim=128, threshold=threshold
    )
    params = jax.jit(lambda: iresnet.init("tiny", seed=seed)[1])()
    return FaceRecognizer(spec, _native_embed(spec), params, None, f"sha-{name}", False)


@pytest.fixture(scope="module")
def members() -> dict[str, FaceRecognizer]:
    return {
        "a": _tiny("a", 0, 0.3),
        "b": _tiny("b", 1, 0.5),
        "sface": load("sface"),  # a real member with another dim, colour order and range
    }


def _faces(seed: int, n: int = 3) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).random((n, 112, 112, 3), dtype=np.float32))


def test_cosine_is_weighted_mean_of_member_cosines(members):
    ens = build_ensemble(["a", "b", "sface"], [1, 2, 1], loader=members.__getitem__)
    assert ens.weights == (0.25, 0.5, 0.25)
    rec = ens.as_recognizer()
    assert rec.spec.embedding_dim == 128 + 128 + 128 and rec.spec.name == "a*0.25+b*0.5+sface*0.25"
    x, y = _faces(0), _faces(1)
    ex, ey = (np.asarray(jax.jit(rec.embed)(rec.params, im)) for im in (x, y))
    np.testing.assert_allclose(np.linalg.norm(ex, axis=-1), 1.0, rtol=1e-5)
    per_member = np.asarray(jax.jit(ens.member_cosines)(ens.params, x, y))
    assert per_member.shape == (3, 3)
    np.testing.assert_allclose(
        np.sum(ex * ey, axis=-1), np.asarray(ens.weights) @ per_member, atol=1e-6
    )
    # Gradients reach the input through every member.
    grad = jax.jit(jax.grad(lambda p, im: jnp.sum(rec.embed(p, im) * ey), argnums=1))(rec.params, x)
    assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).max()) > 0


def test_threshold_and_identity(members):
    ens = build_ensemble(["a", "b"], [3, 1], loader=members.__getitem__)
    assert ens.threshold() == pytest.approx(0.75 * 0.3 + 0.25 * 0.5)
    rec = ens.as_recognizer()
    assert rec.spec.require_threshold() == pytest.approx(0.35)
    other = build_ensemble(["a", "b"], [1, 3], loader=members.__getitem__).as_recognizer()
    assert rec.sha256 != other.sha256  # masks record which ensemble made them
    none = dataclasses.replace(
        members["b"], spec=dataclasses.replace(members["b"].spec, threshold=None)
    )
    assert Ensemble((members["a"], none), (0.5, 0.5)).threshold() is None
    # One member is just that member.
    assert build_ensemble(["a"], loader=members.__getitem__).as_recognizer() is members["a"]


def test_bad_ensembles_are_refused(members):
    with pytest.raises(ValueError, match="distinct"):
        build_ensemble(["a", "a"], loader=members.__getitem__)
    with pytest.raises(ValueError, match="positive"):
        build_ensemble(["a", "b"], [1, 0], loader=members.__getitem__)
    with pytest.raises(ValueError, match="sum to 1"):
        Ensemble((members["a"],), (0.5,))


def test_leave_one_out_and_diffam_table():
    assert leave_one_out(["ir152", "irse50", "facenet"], "irse50") == (
        ("ir152", "facenet"),
        "irse50",
    )
    assert leave_one_out(["x", "y", "z"], -1) == (("x", "y"), "z")
    with pytest.raises(ValueError, match="not one of"):
        leave_one_out(["x", "y"], "z")
    with pytest.raises(ValueError, match="two distinct"):
        leave_one_out(["x"], 0)
    # DiffAM's get_model_list: the black box is never a surrogate, and each split covers all four.
    for k, (bb, surrogates) in DIFFAM_SPLITS.items():
        assert diffam_split(k) == (surrogates, bb)
        assert bb not in surrogates and len({bb, *surrogates}) == 4
        assert all(name in MODELS for name in (bb, *surrogates))
    assert diffam_split() == (("facenet", "ir152", "irse50"), "mobile_face")
    with pytest.raises(ValueError, match="target_model"):
        diffam_split(4)


def test_parse_models():
    assert parse_models("sface") == (("sface",), (1.0,))
    assert parse_models("sface:2, ir152") == (("sface", "ir152"), (2.0, 1.0))
    with pytest.raises(ValueError, match="bad weight"):
        parse_models("sface:x")
    with pytest.raises(ValueError, match="empty"):
        parse_models("sface,,ir152")
