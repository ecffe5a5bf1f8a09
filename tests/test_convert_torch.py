"""ONNX->JAX conversion of PyTorch-exported reference nets, checked against ONNX Runtime and torch.

Each net in ``torch_reference.nets`` (IResNet, MobileFaceNet, SmallResizeNet; random weights with
non-trivial BatchNorm statistics and PReLU slopes) is exported with the legacy TorchScript
exporter at opsets 13 and 17, run by ONNX Runtime (CPUExecutionProvider) as the reference, and
converted with :func:`jaxcloak.convert.onnx.convert`.

Relative error is ``max|actual - expected| / max|expected|`` over the whole output tensor
(a max-norm ratio, so it is insensitive to near-zero entries); every comparison requires
``<= 1e-5``, both against ONNX Runtime and against the torch module itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import onnx  # noqa: E402
from torch_reference.nets import NET_NAMES, build_net, export_onnx  # noqa: E402

from jaxcloak.convert.onnx import convert  # noqa: E402

OPSETS = (13, 17)
RTOL = 1e-5
BATCH = 2


def rel_err(actual: Any, expected: Any) -> float:
    """``max|actual - expected| / max|expected|`` (see the module docstring)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def make_input(shape: tuple[int, ...], batch: int, seed: int = 0) -> np.ndarray:
    """Fixed-seed standard-normal NCHW float32 input."""
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


def run_ort(path: str, x: np.ndarray) -> np.ndarray:
    """Reference output from ONNX Runtime on CPU."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x})
    return y


def run_torch(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Output of the eval-mode torch module itself."""
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx_exports")


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", NET_NAMES)
def test_matches_onnxruntime_and_torch(name: str, opset: int, export_dir: Path) -> None:
    """Converted forward pass matches ORT and torch within ``RTOL``."""
    net, shape = build_net(name)
    x = make_input(shape, BATCH)
    path = export_onnx(net, torch.from_numpy(x), opset, export_dir / f"{name}_op{opset}.onnx")
    y_ort = run_ort(path, x)
    y_torch = run_torch(net, x)
    # Guards the reference itself: if export drifts from torch, the JAX check means little.
    assert rel_err(y_ort, y_torch) <= RTOL

    # Cover both accepted argument types: a path at opset 13, a ModelProto at opset 17.
    apply_fn, params = convert(path if opset == 13 else onnx.load(path))
    assert apply_fn.input_names == ["x"]
    assert apply_fn.output_names == ["y"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))

    outs = jax.jit(apply_fn)(params, jnp.asarray(x))
    assert isinstance(outs, tuple) and len(outs) == 1
    (y_jax,) = outs
    assert y_jax.shape == y_ort.shape
    err_ort, err_torch = rel_err(y_jax, y_ort), rel_err(y_jax, y_torch)
    assert err_ort <= RTOL, f"{name} opset {opset}: rel err vs ORT {err_ort:.3e}"
    assert err_torch <= RTOL, f"{name} opset {opset}: rel err vs torch {err_torch:.3e}"


# IResNet exports identically with or without a dynamic batch (Flatten needs no shape maths);
# these two build their Reshape / Resize / Slice arguments from Shape of a symbolic batch.
@pytest.mark.parametrize("name", ["mobilefacenet", "small_resize"])
def test_dynamic_batch(name: str, tmp_path: Path) -> None:
    """A symbolic-batch export runs at batch sizes other than the export one, and vmaps."""
    net, shape = build_net(name)
    path = export_onnx(
        net,
        torch.from_numpy(make_input(shape, BATCH)),
        17,
        tmp_path / f"{name}_dyn.onnx",
        dynamic_batch=True,
    )
    apply_fn, params = convert(path)
    fn = jax.jit(apply_fn)
    for batch in (1, 3):  # neither equals the export batch
        x = make_input(shape, batch, seed=batch)
        (y_jax,) = fn(params, jnp.asarray(x))
        assert y_jax.shape[0] == batch
        err = rel_err(y_jax, run_ort(path, x))
        assert err <= RTOL, f"{name} batch {batch}: rel err vs ORT {err:.3e}"
        assert rel_err(y_jax, run_torch(net, x)) <= RTOL
    # With a symbolic batch, mapping single-sample calls must reproduce the batched call.
    x = jnp.asarray(make_input(shape, 3, seed=3))
    (y_batched,) = fn(params, x)
    y_mapped = jax.jit(jax.vmap(lambda xi: apply_fn(params, xi[None])[0][0]))(x)
    assert rel_err(y_mapped, y_batched) <= RTOL


def test_iresnet_input_gradient(tmp_path: Path) -> None:
    """d sum(outputs) / d input is finite, non-zero and agrees with torch autograd."""
    net, shape = build_net("iresnet")
    x = make_input(shape, BATCH)
    path = export_onnx(net, torch.from_numpy(x), 17, tmp_path / "iresnet.onnx")
    apply_fn, params = convert(path)

    def loss(inp: jax.Array) -> jax.Array:
        return sum(jnp.sum(o) for o in apply_fn(params, inp))

    g = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(x)))
    assert g.shape == x.shape
    assert np.all(np.isfinite(g))
    assert np.max(np.abs(g)) > 0.0

    # The gradient should also agree with torch autograd through the same eval-mode net.
    xt = torch.from_numpy(x).requires_grad_(True)
    net(xt).sum().backward()
    g_torch = xt.grad.numpy()
    err = rel_err(g, g_torch)
    # Backward passes accumulate more rounding than forward ones; 1e-4 is still tight.
    assert err <= 1e-4, f"input-gradient rel err vs torch {err:.3e}"
