"""MobileFaceNet (TreB1eN / AMT-GAN ``irse.MobileFaceNet(512)``) in Flax NNX against PyTorch.

The torch reference is :class:`reference_mobilefacenet.MobileFaceNet`, the original
InsightFace_Pytorch ``model.py`` classes (Conv_block, Linear_block, Depth_Wise, Residual,
Flatten, MobileFaceNet with its final ``l2_norm``) with widths and block counts exposed as
keyword arguments. Weights are seeded torch initialisations with randomised BatchNorm
statistics/affine and PReLU slopes, so no layer is close to the identity. Inputs are 112x112.

Tolerance ladder (``rel_err = max|ours - torch| / max|torch|``): each piece fed torch's own
input (stem = conv1 + conv2_dw, each of conv_23 .. conv_5, head) <= 2e-5; the whole network from
pixels <= 5e-5, both the raw ``bn`` output and the l2-normalised embedding; embedding cosine
>= 0.99999. The ONNX export of the same torch net, converted by ``jaxcloak.convert.onnx``, must
agree with the native port to cosine >= 0.99999.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from torch_reference.mobilefacenet import MobileFaceNet as TorchMobileFaceNet  # noqa: E402
from torch_reference.nets import randomise_  # noqa: E402

from jaxcloak.convert.torch import ConversionError  # noqa: E402
from jaxcloak.nets import mobilefacenet  # noqa: E402
from jaxcloak.zoo.archs import arch_key_map, convert_state_dict  # noqa: E402

LAYER_RTOL = 2e-5
NET_RTOL = 5e-5
MIN_COSINE = 0.99999
BATCH = 2
ARCH = "mobilefacenet"


def rel_err(actual: Any, expected: Any) -> float:
    """``max|actual - expected| / max|expected|`` in float64."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def cosines(a: Any, b: Any) -> np.ndarray:
    """Row-wise cosine similarity in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def nchw(x: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)


def torch_net(variant: str, seed: int = 0) -> torch.nn.Module:
    """Seeded, randomised, eval-mode reference with the variant's widths and depths."""
    cfg = mobilefacenet.VARIANTS[variant]
    side = cfg.final_side
    torch.manual_seed(seed)
    net = TorchMobileFaceNet(
        cfg.embedding_size,
        stem_width=cfg.stem_width,
        widths=cfg.widths,
        down_groups=cfg.down_groups,
        res_groups=cfg.res_groups,
        blocks=cfg.blocks,
        sep_width=cfg.sep_width,
        gdc_kernel=(side, side),
    )
    return randomise_(net, seed=seed + 1)


def state_dict(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def images(seed: int = 0) -> np.ndarray:
    """(BATCH, 112, 112, 3) RGB in [0, 1]."""
    return np.random.default_rng(seed).random((BATCH, 112, 112, 3), dtype=np.float32)


@functools.cache
def _converted(variant: str) -> tuple[torch.nn.Module, Any]:
    """(torch net, converted params); cached so the ONNX test reuses the full variant."""
    net = torch_net(variant)
    return net, convert_state_dict(state_dict(net), ARCH, variant)


@pytest.fixture(scope="module", params=["tiny", "mobilefacenet"])
def converted(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, Any]:
    return request.param, *_converted(request.param)


def _raw_torch(net: torch.nn.Module, x: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """(raw ``bn`` output, l2-normalised forward output) of torch on NHWC network input."""
    taps: list[torch.Tensor] = []
    handle = net.bn.register_forward_hook(lambda _m, _a, out: taps.append(out.detach().clone()))
    with torch.no_grad():
        out = net(nchw(x))
    handle.remove()
    return taps[0].numpy(), out.numpy()


def test_per_layer_parity(converted: tuple[str, torch.nn.Module, Any]) -> None:
    """Stem, each body piece and the head, each fed torch's own input, match torch to 2e-5."""
    variant, net, params = converted
    taps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str):
        def record(_m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            taps[name] = (args[0].detach().clone(), out.detach().clone())

        return record

    names = ("conv2_dw", *mobilefacenet.STAGES, "bn")
    handles = [getattr(net, n).register_forward_hook(hook(n)) for n in names]
    x = mobilefacenet.preprocess(jnp.asarray(images()))
    with torch.no_grad():
        net(nchw(x))
    for h in handles:
        h.remove()

    graphdef, _ = mobilefacenet.build(variant)

    # Jitted per piece: eager dispatch compiles every primitive at every shape (~4x slower).
    @functools.partial(jax.jit, static_argnames="piece")
    def run(p: Any, h: jax.Array, piece: str) -> jax.Array:
        model = nnx.merge(graphdef, p)
        return model.stage(piece, h) if piece in mobilefacenet.STAGES else getattr(model, piece)(h)

    errs = {"stem": rel_err(run(params, x, "stem"), nhwc(taps["conv2_dw"][1]))}
    for name in mobilefacenet.STAGES:
        t_in, t_out = taps[name]
        errs[name] = rel_err(run(params, jnp.asarray(nhwc(t_in)), name), nhwc(t_out))
    head_in = jnp.asarray(nhwc(taps["conv_5"][1]))
    errs["head"] = rel_err(run(params, head_in, "head"), taps["bn"][1].numpy())
    print(f"\n{variant} per-layer rel_err: " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= LAYER_RTOL, errs


def test_whole_net_parity(converted: tuple[str, torch.nn.Module, Any]) -> None:
    """Pixels -> raw features and unit embeddings within 5e-5 of torch; cosine >= 0.99999."""
    variant, net, params = converted
    x = jnp.asarray(images(seed=1))
    graphdef, _ = mobilefacenet.build(variant)
    raw = jax.jit(lambda p, im: nnx.merge(graphdef, p)(mobilefacenet.preprocess(im)))(params, x)
    emb = jax.jit(mobilefacenet.make_embed(variant))(params, x)
    ref_raw, ref_emb = _raw_torch(net, mobilefacenet.preprocess(x))
    err, err_emb = rel_err(raw, ref_raw), rel_err(emb, ref_emb)
    cosine = cosines(emb, ref_emb)
    print(
        f"\n{variant} whole net: raw rel_err={err:.2e}, embedding rel_err={err_emb:.2e}, "
        f"min cosine={cosine.min():.9f}"
    )
    assert emb.shape == (BATCH, mobilefacenet.VARIANTS[variant].embedding_size)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, rtol=1e-5)
    assert err <= NET_RTOL
    assert err_emb <= NET_RTOL
    assert cosine.min() >= MIN_COSINE


def test_onnx_conversion_agrees_with_native_port(tmp_path: Path) -> None:
    """The full torch net exported to ONNX and converted matches the native Flax port."""
    pytest.importorskip("onnx")
    from torch_reference.nets import export_onnx

    from jaxcloak.convert.onnx import convert

    net, params = _converted(ARCH)
    x = mobilefacenet.preprocess(jnp.asarray(images(seed=2)))
    path = export_onnx(net, nchw(x), 17, tmp_path / "mobilefacenet.onnx")
    apply_fn, onnx_params = convert(path)
    (onnx_out,) = jax.jit(apply_fn)(onnx_params, jnp.transpose(x, (0, 3, 1, 2)))

    graphdef, _ = mobilefacenet.build(ARCH)
    raw = jax.jit(lambda p, xi: nnx.merge(graphdef, p)(xi))(params, x)
    unit = raw / jnp.linalg.norm(raw, axis=-1, keepdims=True)
    # The export includes torch's l2_norm, so compare directions (and the unit vectors).
    cosine = cosines(onnx_out, raw)
    err = rel_err(onnx_out, unit)
    print(f"\nONNX vs native: min cosine={cosine.min():.9f}, unit rel_err={err:.2e}")
    assert cosine.min() >= MIN_COSINE
    assert err <= NET_RTOL


def test_gdc_pools_to_one_by_one() -> None:
    """The head flattens a 1x1 map, so ``linear.weight`` needs only the generic transpose."""
    for variant, cfg in mobilefacenet.VARIANTS.items():
        graphdef, abstract = mobilefacenet.build(variant)
        head_in = jax.ShapeDtypeStruct((1, 7, 7, cfg.widths[2]), jnp.float32)

        def gdc_out(p: Any, h: jax.Array, graphdef: nnx.GraphDef = graphdef) -> jax.Array:
            model = nnx.merge(graphdef, p)
            return model.conv_6_dw(model.conv_6_sep(h))

        gdc = jax.eval_shape(gdc_out, abstract, head_in)
        assert gdc.shape == (1, 1, 1, cfg.sep_width), variant
    entries, _ = arch_key_map(ARCH, "tiny")
    w = np.arange(48 * 72, dtype=np.float32).reshape(48, 72)  # torch (out, in)
    np.testing.assert_array_equal(entries["linear.weight"].transform(w), w.T)


def test_key_map_matches_torch_keys() -> None:
    """Every torch key except num_batches_tracked is mapped, and nothing else."""
    for variant in mobilefacenet.VARIANTS:
        sd = torch_net(variant).state_dict()
        torch_keys = {k for k in sd if not k.endswith("num_batches_tracked")}
        assert set(arch_key_map(ARCH, variant)[0]) == torch_keys, variant
    # Spot-check names deep in the tree against the released checkpoint's layout.
    keys = set(arch_key_map(ARCH, ARCH)[0])
    assert {"conv_4.model.5.conv_dw.prelu.weight", "conv_6_dw.bn.running_var"} <= keys
    assert {"linear.weight", "bn.running_mean", "conv_23.project.bn.bias"} <= keys


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, np.ndarray]:
    return state_dict(_converted("tiny")[0])


def test_missing_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = dict(tiny_state)
    del sd["conv_3.model.0.conv_dw.bn.running_var"]
    with pytest.raises(
        ConversionError, match=r"missing.*conv_3\.model\.0\.conv_dw\.bn\.running_var"
    ):
        convert_state_dict(sd, ARCH, "tiny")


def test_extra_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = {**tiny_state, "conv_6_flatten.weight": np.zeros(3, np.float32)}
    with pytest.raises(ConversionError, match=r"unused.*conv_6_flatten\.weight"):
        convert_state_dict(sd, ARCH, "tiny")


def test_misshaped_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    # A dense (groups=1) kernel where the depthwise one belongs.
    sd = {**tiny_state, "conv2_dw.conv.weight": np.zeros((8, 8, 3, 3), np.float32)}
    with pytest.raises(ConversionError, match=r"conv2_dw\.conv\.weight.*shape"):
        convert_state_dict(sd, ARCH, "tiny")


def test_wrong_variant_fails(tiny_state: dict[str, np.ndarray]) -> None:
    """A tiny checkpoint loaded as the full net fails loudly rather than half-loading."""
    with pytest.raises(ConversionError, match=r"conv1\.conv\.weight"):
        convert_state_dict(tiny_state, ARCH, ARCH)


def test_module_prefix_is_stripped(tiny_state: dict[str, np.ndarray]) -> None:
    """A DataParallel (``module.``-prefixed) state dict converts to the same params."""
    prefixed = {f"module.{k}": v for k, v in tiny_state.items()}
    params = convert_state_dict(prefixed, ARCH, "tiny")
    ref = _converted("tiny")[1]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_embed_rejects_unaligned_images() -> None:
    _, abstract = mobilefacenet.build("tiny")
    wrong = jax.ShapeDtypeStruct((1, 96, 96, 3), jnp.float32)
    with pytest.raises(ValueError, match="112"):
        jax.eval_shape(mobilefacenet.make_embed("tiny"), abstract, wrong)


def test_build_is_abstract_and_matches_init() -> None:
    """build() allocates nothing and has the same tree and shapes as a real init."""
    _, abstract = mobilefacenet.build(ARCH)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    # Traced, not run: the real init code path without compiling ~100 random initialisers
    # (jitting it costs ~8 s on CPU), which is all a tree-and-shape comparison needs.
    initialised = jax.eval_shape(lambda: mobilefacenet.init("tiny")[1])
    _, tiny_abstract = mobilefacenet.build("tiny")
    assert jax.tree.structure(initialised) == jax.tree.structure(tiny_abstract)
    assert [x.shape for x in jax.tree.leaves(initialised)] == [
        x.shape for x in jax.tree.leaves(tiny_abstract)
    ]
