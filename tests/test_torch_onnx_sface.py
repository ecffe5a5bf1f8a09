"""tests/torch_reference/onnx_torch.py: SFace in torch against jaxcloak's SFace in JAX.

Tolerances: per face (real crops and random pixels), cosine(torch, JAX) >= 0.99999 and
max |torch - JAX| <= 1e-4 on the unit-norm embeddings; per face, the input gradient of
sum(embed(x) * v) has cosine(torch, JAX) >= 0.9999. A toy graph exercising the paths SFace
does not (asymmetric pads, SAME padding, Gemm flags, Reshape 0/-1) matches jaxcloak's
converter to max |diff| <= 1e-5 of its largest output entry.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, numpy_helper  # noqa: E402
from onnx import helper as oh  # noqa: E402
from torch_reference.onnx_torch import OnnxTorch, sface_torch  # noqa: E402

from jaxcloak.convert.onnx.graph import convert  # noqa: E402
from jaxcloak.faces.samples import sample_faces  # noqa: E402
from jaxcloak.zoo import load  # noqa: E402

COS_EMBED, MAX_DIFF, COS_GRAD = 0.99999, 1e-4, 0.9999


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Two real aligned faces (the astronaut, one LFW) and two random crops, RGB [0, 1]."""
    real = list(sample_faces(n_lfw=1).values())
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(2)]
    return np.stack(real + noise).astype(np.float32) / 255


@pytest.fixture(scope="module")
def torch_sface():
    return sface_torch()


@pytest.fixture(scope="module")
def direction(images) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((len(images), 128)).astype(np.float32)


@pytest.fixture(scope="module")
def jax_result(images, direction) -> tuple[np.ndarray, np.ndarray]:
    """jaxcloak's SFace: embeddings and d/dx sum(embed(x) * direction), one compilation."""
    sface = load("sface")

    def loss(x):
        e = sface.embed(sface.params, x)
        return jnp.sum(e * direction), e

    grad, emb = jax.jit(jax.grad(loss, has_aux=True))(jnp.asarray(images))
    return np.asarray(emb), np.asarray(grad)


@pytest.fixture(scope="module")
def torch_result(images, direction, torch_sface) -> tuple[np.ndarray, np.ndarray]:
    """The same two things from the torch module, parameter gradients left on."""
    _, embed = torch_sface
    x = torch.from_numpy(images).requires_grad_(True)
    emb = embed(x)
    (emb * torch.from_numpy(direction)).sum().backward()
    return emb.detach().numpy(), x.grad.numpy()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_embeddings_match_jax(jax_result, torch_result):
    ref, ours = jax_result[0], torch_result[0]
    assert ours.shape == ref.shape == (4, 128)
    cos, diff = _cos(ours, ref), np.abs(ours - ref).max()
    assert cos.min() >= COS_EMBED, f"min cosine {cos.min():.8f} < {COS_EMBED} (per face {cos})"
    assert diff <= MAX_DIFF, f"max |torch - jax| {diff:.3g} > {MAX_DIFF}"


def test_different_inputs_embed_apart(torch_result):
    # Not a constant network: the faces embed apart (and the random crops too).
    ours = torch_result[0]
    off = (ours @ ours.T)[~np.eye(len(ours), dtype=bool)]
    assert off.max() < 0.9, f"different inputs embed alike: max off-diagonal cosine {off.max()}"


def test_embed_no_grad_and_module_input(images, torch_sface, torch_result):
    # Under no_grad too, and embed = module on BGR [0, 255] NCHW, then L2 rows.
    module, embed = torch_sface
    with torch.no_grad():
        e = embed(torch.from_numpy(images[:1])).numpy()
        raw = module(torch.from_numpy(images[:1, :, :, ::-1].copy() * 255).permute(0, 3, 1, 2))
    np.testing.assert_allclose(e, torch_result[0][:1], atol=1e-6)
    np.testing.assert_allclose(e, raw.numpy() / np.linalg.norm(raw.numpy()), atol=1e-6)


def test_input_gradient_matches_jax(jax_result, torch_result):
    cos = _cos(torch_result[1], jax_result[1])
    assert cos.min() >= COS_GRAD, f"min input-gradient cosine {cos.min():.8f} < {COS_GRAD}"


def test_parameters_and_gradient_flag(torch_sface):
    module, _ = torch_sface
    params = dict(module.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    assert "pre_fc1_weight_dequantized" in params  # Gemm weight
    assert "conv_1_relu_gamma" in params  # PRelu slope
    buffers = dict(module.named_buffers())
    assert "bn1_moving_mean" in buffers and "bn1_moving_var" in buffers  # as nn.BatchNorm2d
    module.requires_grad_(False)
    try:
        assert not any(p.requires_grad for p in module.parameters())
    finally:
        module.requires_grad_(True)


def _toy_model() -> onnx.ModelProto:
    rng = np.random.default_rng(2)

    def init(name: str, *shape: int) -> TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        # (2, 3, 8, 7) -> (2, 4, 4, 8): asymmetric pads and a stride, F.pad then a valid conv.
        oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[0, 1, 2, 1], strides=[2, 1]),
        oh.make_node("BatchNormalization", ["c1", "g", "bt", "mu", "var"], ["n1"], epsilon=1e-3),
        oh.make_node("PRelu", ["n1", "slope"], ["p1"]),  # one slope for every channel
        # Grouped 2x2 convolution with SAME_LOWER padding (the odd cell at the start).
        oh.make_node("Conv", ["p1", "w2"], ["c2"], auto_pad="SAME_LOWER", group=2),
        oh.make_node("Relu", ["c2"], ["r2"]),
        oh.make_node("Reshape", ["r2", "shape"], ["rs"]),
        oh.make_node("Flatten", ["rs"], ["fl"], axis=-1),  # (2, 4, 32) -> (8, 32)
        oh.make_node("Dropout", ["fl"], ["dr"]),
        oh.make_node("Gemm", ["dr", "wg", "cg"], ["y"], alpha=0.5, beta=2.0),
    ]
    inits = [
        init("w1", 4, 3, 3, 2),
        init("b1", 4),
        init("g", 4),
        init("bt", 4),
        init("mu", 4),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "var"),
        numpy_helper.from_array(np.array([0.25], np.float32), "slope"),
        init("w2", 4, 2, 2, 2),  # even kernel: SAME pads one more cell on one side
        numpy_helper.from_array(np.array([0, 4, -1], np.int64), "shape"),
        init("wg", 32, 5),
        init("cg", 1, 5),
    ]
    graph = oh.make_graph(
        nodes,
        "toy",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 7])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_toy_graph_matches_jaxcloak_converter():
    model = _toy_model()
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 7)).astype(np.float32)
    fn, params = convert(model, fold_batchnorm=False)  # BatchNormalization handled as such
    ref = np.asarray(fn(params, x)[0])
    module = OnnxTorch.from_onnx(model, requires_grad=False, fold_batchnorm=False)
    with torch.no_grad():
        ours = module(torch.from_numpy(x)).numpy()
    assert ours.shape == ref.shape == (8, 5)
    diff = np.abs(ours - ref).max()
    assert diff <= 1e-5 * np.abs(ref).max(), f"max |torch - jax| {diff:.3g} > 1e-5 of max |jax|"
    assert not any(p.requires_grad for p in module.parameters())
    assert {"w1", "b1", "g", "bt", "slope", "w2", "wg", "cg"} <= dict(
        module.named_parameters()
    ).keys()
    assert {"mu", "var"} <= dict(module.named_buffers()).keys()


def test_unsupported_op_is_named():
    graph = oh.make_graph(
        [oh.make_node("Softsign", ["x"], ["y"], name="soft")],
        "unsupported",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    with pytest.raises(NotImplementedError, match=r"'Softsign' \(node 'soft'\)"):
        OnnxTorch(model)
