"""IR / IR-SE Backbone (TreB1eN / face.evoLVe) in Flax NNX against the PyTorch reference.

The torch reference is :class:`torch_reference.irse.Backbone`, which declares TreB1eN's ``model.py``
with its module names (input_layer, body of bottleneck_IR / bottleneck_IR_SE units with
shortcut_layer and res_layer, output_layer with Dropout and Flatten at indices 1 and 2) and
configurable depth, widths and embedding size. Weights are seeded torch initialisations with
randomised BatchNorm statistics/affine and PReLU slopes, so no layer is close to the identity.

Tolerance ladder (``rel_err = max|ours - torch| / max|torch|``): each piece fed torch's own
input (input_layer, each stage, output head) <= 2e-5; the whole network from pixels <= 5e-5;
unit embeddings' cosine >= 0.99999.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from torch_reference.irse import Backbone as TorchBackbone  # noqa: E402
from torch_reference.irse import bottleneck_IR, bottleneck_IR_SE, l2_norm  # noqa: E402
from torch_reference.nets import randomise_  # noqa: E402

from jaxcloak.convert.torch import ConversionError, key_map  # noqa: E402
from jaxcloak.nets import irse  # noqa: E402
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


def nchw(x: Any) -> torch.Tensor:
    # contiguous: the reference flattens with .view, as the original does on NCHW input
    return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()


def torch_net(variant: str, seed: int = 0, *, normalise: bool = False) -> torch.nn.Module:
    """Seeded, randomised, eval-mode reference with the variant's depth and widths."""
    cfg = irse.VARIANTS[variant]
    torch.manual_seed(seed)
    net = TorchBackbone(
        mode=cfg.mode,
        units=cfg.layers,
        widths=cfg.widths,
        num_features=cfg.num_features,
        input_size=cfg.input_size,
        normalise=normalise,
    )
    return randomise_(net, seed=seed + 1)


def state_dict(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def torch_keys(net: torch.nn.Module) -> set[str]:
    return {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}


def images(seed: int = 0) -> np.ndarray:
    """(BATCH, 112, 112, 3) RGB in [0, 1]."""
    return np.random.default_rng(seed).random((BATCH, 112, 112, 3), dtype=np.float32)


@pytest.fixture(scope="module", params=["ir_tiny", "irse_tiny", "ir50", "irse50"])
def converted(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, Any]:
    variant = request.param
    net = torch_net(variant)
    return variant, net, convert_state_dict(state_dict(net), "irse", variant)


def test_per_layer_parity(converted: tuple[str, torch.nn.Module, Any]) -> None:
    """input_layer, each stage and output_layer, each fed torch's own input, match to 2e-5."""
    variant, net, params = converted
    cfg = irse.VARIANTS[variant]
    taps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str):
        def record(_m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            taps[name] = (args[0].detach().clone(), out.detach().clone())

        return record

    handles = [net.input_layer.register_forward_hook(hook("stem"))]
    bounds = np.cumsum((0, *cfg.layers))
    for i in range(4):  # first and last unit of each stage
        handles.append(net.body[bounds[i]].register_forward_hook(hook(f"first{i + 1}")))
        handles.append(net.body[bounds[i + 1] - 1].register_forward_hook(hook(f"last{i + 1}")))
    x = irse.preprocess(jnp.asarray(images()))
    with torch.no_grad():
        out = net(nchw(x))
    for h in handles:
        h.remove()

    graphdef, _ = irse.build(variant)
    model = nnx.merge(graphdef, params)
    errs = {"stem": rel_err(model.stem(x), nhwc(taps["stem"][1]))}
    for i in range(1, 5):
        t_in, t_out = taps[f"first{i}"][0], taps[f"last{i}"][1]
        errs[f"stage{i}"] = rel_err(model.stage(i, jnp.asarray(nhwc(t_in))), nhwc(t_out))
    errs["head"] = rel_err(model.head(jnp.asarray(nhwc(taps["last4"][1]))), out.numpy())
    print(f"\n{variant} per-layer rel_err: " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= LAYER_RTOL, errs


def _check_whole_net(variant: str, net: torch.nn.Module, params: Any) -> None:
    x = jnp.asarray(images(seed=1))
    graphdef, _ = irse.build(variant)
    embed = irse.make_embed(variant)

    def raw_and_embed(p: Any, im: jax.Array) -> tuple[jax.Array, jax.Array]:
        return nnx.merge(graphdef, p)(irse.preprocess(im)), embed(p, im)

    # One program: XLA merges the two identical forwards, so this compiles once, not twice.
    raw, emb = jax.jit(raw_and_embed)(params, x)
    with torch.no_grad():
        ref = net(nchw(irse.preprocess(x)))
    ref_unit = l2_norm(ref).numpy()  # TreB1eN's Backbone output
    ref = ref.numpy()
    err = rel_err(raw, ref)
    cosine = np.sum(np.asarray(emb, np.float64) * ref_unit, axis=-1)
    print(f"\n{variant} whole-net rel_err={err:.2e}, min cosine={cosine.min():.9f}")
    assert emb.shape == (BATCH, irse.VARIANTS[variant].num_features)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, rtol=1e-5)
    assert err <= NET_RTOL
    assert cosine.min() >= MIN_COSINE


def test_whole_net_parity(converted: tuple[str, torch.nn.Module, Any]) -> None:
    """Pixels -> raw features within 5e-5 of torch; unit embeddings' cosine >= 0.99999."""
    _check_whole_net(*converted)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["ir152", "irse152"])
def test_whole_net_parity_152(variant: str) -> None:
    """Full-depth IR-152 (AMT-GAN / DiffAM ``ir152``) and IR-SE-152."""
    net = torch_net(variant)
    _check_whole_net(variant, net, convert_state_dict(state_dict(net), "irse", variant))


@pytest.mark.parametrize(
    "in_c,depth,se",
    [(16, 16, False), (16, 16, True), (16, 32, False)],
    ids=["maxpool-ir", "maxpool-ir_se", "conv-ir"],
)
def test_unit_parity_odd_side(in_c: int, depth: int, se: bool) -> None:
    """One unit on a 7x7 map: MaxPool(1, 2) and strided-conv shortcuts both give ceil(7/2).

    At 112x112 every stride-2 unit sees an even side; other input sizes do not.
    """
    torch.manual_seed(0)
    unit = randomise_((bottleneck_IR_SE if se else bottleneck_IR)(in_c, depth, 2), seed=1)
    assert isinstance(unit.shortcut_layer, torch.nn.MaxPool2d) == (in_c == depth)
    ours = irse.BottleneckIR(in_c, depth, 2, se=se, rngs=nnx.Rngs(0))
    assert (ours.shortcut_layer is None) == (in_c == depth)
    entries = key_map(nnx.split(ours)[1])
    sd = state_dict(unit)
    assert set(entries) == torch_keys(unit)
    for name, e in entries.items():  # load the torch weights in place, through the key map
        leaf = ours
        for p in e.path:
            leaf = leaf[p] if isinstance(p, int) else getattr(leaf, p)
        leaf[...] = jnp.asarray(e.transform(sd[name]))
    x = np.random.default_rng(0).standard_normal((BATCH, 7, 7, in_c)).astype(np.float32)
    with torch.no_grad():
        ref = nhwc(unit(nchw(x)))
    err = rel_err(ours(jnp.asarray(x)), ref)
    assert ref.shape[1:3] == (4, 4)
    print(f"\nunit {in_c}->{depth} stride 2 se={se} 7x7 rel_err={err:.2e}")
    assert err <= LAYER_RTOL, err


def test_maxpool_shortcut_is_exercised() -> None:
    """The real layout's stage-1 first unit is 64 -> 64 at stride 2: a MaxPool(1, 2) shortcut."""
    cfg = irse.VARIANTS["ir50"]
    units = cfg.units()
    assert units[0] == (64, 64, 2)
    for variant in ("ir_tiny", "irse_tiny", "ir50", "irse50"):
        units = irse.VARIANTS[variant].units()
        assert any(i == d and s == 2 for i, d, s in units), variant
        _, abstract = irse.build(variant)
        assert "shortcut_layer" not in abstract["body"][0]  # no weights: the MaxPool path
        assert "shortcut_layer" in abstract["body"][sum(irse.VARIANTS[variant].layers[:1])]
    net = TorchBackbone(50, widths=(16, 32, 48, 64))
    assert isinstance(net.body[0].shortcut_layer, torch.nn.MaxPool2d)
    assert net.body[0].shortcut_layer.stride == 2


def test_key_map_matches_torch_keys() -> None:
    """For every variant, every torch key except num_batches_tracked is mapped, nothing else.

    The torch module is built with the variant's depth but narrow widths (keys do not depend on
    widths); the tiny variants are compared at their real widths, shapes included.
    """
    for variant, cfg in irse.VARIANTS.items():
        entries, abstract = arch_key_map("irse", variant)
        # build() is shape-only: nothing is allocated, even for the 152-layer nets.
        assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
        if variant.endswith("tiny"):
            net = torch_net(variant)
            shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
            assert all(e.torch_shape == shapes[k] for k, e in entries.items()), variant
        else:
            net = TorchBackbone(mode=cfg.mode, units=cfg.layers, widths=(16, 32, 48, 64))
        assert set(entries) == torch_keys(net), variant
    # Spot-check the real IR-SE-50 names and shapes.
    entries, _ = arch_key_map("irse", "irse50")
    assert entries["body.23.res_layer.5.fc2.weight"].torch_shape == (512, 32, 1, 1)
    assert entries["output_layer.3.weight"].torch_shape == (512, 512 * 7 * 7)
    assert "output_layer.4.running_var" in entries
    assert not any(k.startswith(("output_layer.1", "output_layer.2")) for k in entries)


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, np.ndarray]:
    return state_dict(torch_net("irse_tiny"))


def test_missing_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = dict(tiny_state)
    del sd["body.1.shortcut_layer.1.running_var"]
    with pytest.raises(ConversionError, match=r"missing.*body\.1\.shortcut_layer\.1\.running_var"):
        convert_state_dict(sd, "irse", "irse_tiny")


def test_extra_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = {**tiny_state, "output_layer.2.weight": np.zeros(3, np.float32)}
    with pytest.raises(ConversionError, match=r"unused.*output_layer\.2\.weight"):
        convert_state_dict(sd, "irse", "irse_tiny")


def test_misshaped_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = {**tiny_state, "body.2.res_layer.5.fc1.weight": np.zeros((2, 48, 1, 1), np.float32)}
    with pytest.raises(ConversionError, match=r"body\.2\.res_layer\.5\.fc1\.weight.*shape"):
        convert_state_dict(sd, "irse", "irse_tiny")


def test_wrong_mode_fails(tiny_state: dict[str, np.ndarray]) -> None:
    """An IR-SE checkpoint loaded as plain IR names the SE weights it cannot place."""
    with pytest.raises(ConversionError, match=r"unused.*res_layer\.5\.fc1\.weight"):
        convert_state_dict(tiny_state, "irse", "ir_tiny")


def test_dataparallel_prefix_converts(tiny_state: dict[str, np.ndarray]) -> None:
    """Checkpoints saved from nn.DataParallel (every key ``module.``-prefixed) convert as-is."""
    prefixed = {f"module.{k}": v for k, v in tiny_state.items()}
    params = convert_state_dict(prefixed, "irse", "irse_tiny")
    ref = convert_state_dict(tiny_state, "irse", "irse_tiny")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_embed_rejects_unaligned_images() -> None:
    _, abstract = irse.build("ir_tiny")
    images = jax.ShapeDtypeStruct((1, 96, 96, 3), jnp.float32)
    with pytest.raises(ValueError, match="112"):
        jax.eval_shape(irse.make_embed("ir_tiny"), abstract, images)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="mode"):
        irse.IRSEConfig(layers=(1, 1, 1, 1), mode="se")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="widths"):
        irse.IRSEConfig(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), mode="ir_se")
    with pytest.raises(KeyError, match="ir50"):
        irse.get_config("ir51")


def test_init_matches_build() -> None:
    """init() has the same tree and shapes as the abstract build() (abstractness: key-map test)."""
    # Traced, not run: compiling dozens of random initialisers costs seconds and checks nothing
    # more about the structure.
    concrete = jax.eval_shape(lambda: irse.init("irse_tiny")[1])
    _, tiny_abstract = irse.build("irse_tiny")
    assert jax.tree.structure(concrete) == jax.tree.structure(tiny_abstract)
    assert [x.shape for x in jax.tree.leaves(concrete)] == [
        x.shape for x in jax.tree.leaves(tiny_abstract)
    ]
