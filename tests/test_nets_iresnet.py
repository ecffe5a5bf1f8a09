"""IResNet (arcface_torch) in Flax NNX against the PyTorch reference, layer by layer.

The torch reference is :class:`torch_reference.nets.IResNet`, which declares arcface_torch
``backbones/iresnet.py`` with its module names (conv1, bn1, prelu, layer1..4 of IBasicBlock(bn1,
conv1, bn2, prelu, conv2(stride), bn3, downsample.0/.1), bn2, dropout, fc, features) and a
configurable input size (arcface_torch hard-codes 7x7 at ``fc``, i.e. 112x112 inputs, as here).
Weights are seeded torch initialisations with randomised BatchNorm statistics/affine and PReLU
slopes, so no layer is close to the identity.

Tolerance ladder (``rel_err = max|ours - torch| / max|torch|``): each piece fed torch's own
input (stem, each stage, head) <= 2e-5; the whole network from pixels <= 5e-5; unit
embeddings' cosine >= 0.99999.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from torch_reference.nets import IResNet as TorchIResNet  # noqa: E402
from torch_reference.nets import randomise_  # noqa: E402

from jaxcloak.convert.torch import ConversionError, load_checkpoint  # noqa: E402
from jaxcloak.nets import iresnet  # noqa: E402
from jaxcloak.zoo.archs import arch_key_map, convert_state_dict  # noqa: E402

LAYER_RTOL = 2e-5
NET_RTOL = 5e-5
MIN_COSINE = 0.99999
BATCH = 2


def rel_err(actual: Any, expected: Any) -> float:
    """``max|actual - expected| / max|expected|`` in float64."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def torch_net(variant: str, seed: int = 0) -> torch.nn.Module:
    """Seeded, randomised, eval-mode reference with the variant's depth and widths."""
    cfg = iresnet.VARIANTS[variant]
    torch.manual_seed(seed)
    net = TorchIResNet(
        layers=cfg.layers,
        widths=cfg.widths,
        num_features=cfg.num_features,
        input_size=cfg.input_size,
    )
    return randomise_(net, seed=seed + 1)


def state_dict(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def images(seed: int = 0) -> np.ndarray:
    """(BATCH, 112, 112, 3) RGB in [0, 1]."""
    return np.random.default_rng(seed).random((BATCH, 112, 112, 3), dtype=np.float32)


@pytest.fixture(scope="module", params=["tiny", "r18"])
def converted(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, Any]:
    variant = request.param
    net = torch_net(variant)
    return variant, net, convert_state_dict(state_dict(net), "iresnet", variant)


def test_per_layer_parity(converted: tuple[str, torch.nn.Module, Any]) -> None:
    """Stem, each stage and the head, each fed torch's own input, match torch to 2e-5."""
    variant, net, params = converted
    taps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str):
        def record(_m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            taps[name] = (args[0].detach().clone(), out.detach().clone())

        return record

    handles = [net.prelu.register_forward_hook(hook("stem"))]
    handles += [
        getattr(net, f"layer{i}").register_forward_hook(hook(f"layer{i}")) for i in range(1, 5)
    ]
    x = iresnet.preprocess(jnp.asarray(images()))
    with torch.no_grad():
        out = net(torch.from_numpy(np.array(x)).permute(0, 3, 1, 2))
    for h in handles:
        h.remove()

    graphdef, _ = iresnet.build(variant)
    model = nnx.merge(graphdef, params)
    errs = {"stem": rel_err(model.stem(x), nhwc(taps["stem"][1]))}
    for i in range(1, 5):
        t_in, t_out = taps[f"layer{i}"]
        errs[f"layer{i}"] = rel_err(model.stage(i, jnp.asarray(nhwc(t_in))), nhwc(t_out))
    errs["head"] = rel_err(model.head(jnp.asarray(nhwc(taps["layer4"][1]))), out.numpy())
    print(f"\n{variant} per-layer rel_err: " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= LAYER_RTOL, errs


def _check_whole_net(variant: str, net: torch.nn.Module, params: Any) -> None:
    x = jnp.asarray(images(seed=1))
    graphdef, _ = iresnet.build(variant)
    raw = jax.jit(lambda p, im: nnx.merge(graphdef, p)(iresnet.preprocess(im)))(params, x)
    emb = jax.jit(iresnet.make_embed(variant))(params, x)
    with torch.no_grad():
        ref = net(torch.from_numpy(np.array(iresnet.preprocess(x))).permute(0, 3, 1, 2))
    ref = ref.numpy()
    ref_unit = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
    err = rel_err(raw, ref)
    cosine = np.sum(np.asarray(emb, np.float64) * ref_unit, axis=-1)
    print(f"\n{variant} whole-net rel_err={err:.2e}, min cosine={cosine.min():.9f}")
    assert emb.shape == (BATCH, iresnet.VARIANTS[variant].num_features)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, rtol=1e-5)
    assert err <= NET_RTOL
    assert cosine.min() >= MIN_COSINE
    # The two inputs must embed apart, or a net that ignores its input would pass too.
    assert float(ref_unit[0] @ ref_unit[1]) < 0.9999


def test_whole_net_parity(converted: tuple[str, torch.nn.Module, Any]) -> None:
    """Pixels -> raw features within 5e-5 of torch; unit embeddings' cosine >= 0.99999."""
    _check_whole_net(*converted)


@pytest.mark.parametrize(
    "variant",
    [
        "r34",
        "r50",
        pytest.param("r100", marks=pytest.mark.slow),
        pytest.param("r200", marks=pytest.mark.slow),
    ],
)
def test_whole_net_parity_deep(variant: str) -> None:
    """The released depths (r100/r200 in the slow set; tiny/r18 above cover every layer kind)."""
    net = torch_net(variant)
    _check_whole_net(variant, net, convert_state_dict(state_dict(net), "iresnet", variant))


def test_fc_rows_follow_torch_nchw_flatten() -> None:
    """Our NHWC flatten with permuted fc rows equals torch's NCHW flatten with fc as stored."""
    rng = np.random.default_rng(0)
    c, side, out = 5, 3, 4
    x = rng.standard_normal((2, side, side, c))  # NHWC
    w = rng.standard_normal((out, c * side * side))  # torch (out, C*H*W)
    expected = x.transpose(0, 3, 1, 2).reshape(2, -1) @ w.T
    ours = x.reshape(2, -1) @ iresnet.fc_rows_from_torch(c, side)(w)
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_key_map_matches_torch_keys() -> None:
    """Every torch key except num_batches_tracked is mapped, and nothing else."""
    sd = torch_net("tiny").state_dict()
    torch_keys = {k for k in sd if not k.endswith("num_batches_tracked")}
    assert set(arch_key_map("iresnet", "tiny")[0]) == torch_keys
    assert set(arch_key_map("iresnet", "r100")[0]) == {
        k
        for k in TorchIResNet(layers=(3, 13, 30, 3), widths=(4, 4, 4, 4)).state_dict()
        if not k.endswith("num_batches_tracked")
    }


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, np.ndarray]:
    return state_dict(torch_net("tiny"))


def test_missing_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = dict(tiny_state)
    del sd["layer2.0.downsample.1.running_var"]
    with pytest.raises(ConversionError, match=r"missing.*layer2\.0\.downsample\.1\.running_var"):
        convert_state_dict(sd, "iresnet", "tiny")


def test_extra_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = {**tiny_state, "head.extra.weight": np.zeros(3, np.float32)}
    with pytest.raises(ConversionError, match=r"unused.*head\.extra\.weight"):
        convert_state_dict(sd, "iresnet", "tiny")


def test_misshaped_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = {**tiny_state, "layer1.0.conv2.weight": np.zeros((16, 16, 3, 2), np.float32)}
    with pytest.raises(ConversionError, match=r"layer1\.0\.conv2\.weight.*shape"):
        convert_state_dict(sd, "iresnet", "tiny")


def test_wrong_variant_fails(tiny_state: dict[str, np.ndarray]) -> None:
    """A tiny checkpoint loaded as r18 fails on shapes and keys rather than half-loading."""
    with pytest.raises(ConversionError, match=r"conv1\.weight"):
        convert_state_dict(tiny_state, "iresnet", "r18")


@pytest.mark.parametrize("suffix", [".pth", ".npz"])
def test_load_checkpoint_round_trip(
    tmp_path: Path, suffix: str, tiny_state: dict[str, np.ndarray]
) -> None:
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".pth":
        torch.save({k: torch.from_numpy(v) for k, v in tiny_state.items()}, path)
    else:
        np.savez(path, **tiny_state)
    loaded = load_checkpoint(path)
    assert set(loaded) == set(tiny_state)
    params = convert_state_dict(loaded, "iresnet", "tiny")
    ref = convert_state_dict(tiny_state, "iresnet", "tiny")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_embed_rejects_unaligned_images() -> None:
    _, abstract = iresnet.build("tiny")
    images = jax.ShapeDtypeStruct((1, 96, 96, 3), jnp.float32)
    with pytest.raises(ValueError, match="112"):
        jax.eval_shape(iresnet.make_embed("tiny"), abstract, images)


def test_build_is_abstract_and_matches_init() -> None:
    """build() allocates nothing and has the same tree and shapes as a real init."""
    _, abstract = iresnet.build("r100")
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    # Jitted because eager random init dispatches (and compiles) dozens of tiny ops.
    concrete = jax.jit(lambda: iresnet.init("tiny")[1])()
    _, tiny_abstract = iresnet.build("tiny")
    assert jax.tree.structure(concrete) == jax.tree.structure(tiny_abstract)
    assert [x.shape for x in jax.tree.leaves(concrete)] == [
        x.shape for x in jax.tree.leaves(tiny_abstract)
    ]


def test_onnx_export_path_agrees_with_native_port(tmp_path: Path) -> None:
    """torch reference -> ONNX -> jaxcloak's ONNX converter gives the native port's embedding."""
    from torch_reference.nets import export_onnx

    from jaxcloak.convert.onnx import convert

    net = torch_net("r18")
    onnx_path = export_onnx(net, torch.zeros(1, 3, 112, 112), 17, tmp_path / "r18.onnx", True)
    apply_fn, onnx_params = convert(onnx_path)
    x = jnp.asarray(images(seed=2))
    nchw = jnp.transpose(iresnet.preprocess(x), (0, 3, 1, 2))
    (via_onnx,) = jax.jit(apply_fn)(onnx_params, nchw)
    via_onnx = np.asarray(via_onnx, np.float64)
    via_onnx /= np.linalg.norm(via_onnx, axis=-1, keepdims=True)
    native = np.asarray(
        jax.jit(iresnet.make_embed("r18"))(
            convert_state_dict(state_dict(net), "iresnet", "r18"), x
        ),
        np.float64,
    )
    cosine = np.sum(via_onnx * native, axis=-1)
    print(f"\nr18 ONNX path vs native port: min cosine {cosine.min():.9f}")
    assert cosine.min() >= MIN_COSINE
