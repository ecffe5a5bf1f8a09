"""FaceNet (facenet-pytorch InceptionResnetV1) in Flax NNX against the PyTorch reference.

The torch reference is :class:`torch_reference.facenet.InceptionResnetV1`, which declares
facenet-pytorch's ``models/inception_resnet_v1.py`` with its module names and configurable
repeat counts. Weights are seeded; convolutions are re-drawn He-normal because torch's default
(fan-in uniform, gain 1/sqrt(3)) shrinks the signal through the stem until BatchNorm's shifts
dominate and two different images embed with cosine 0.9999993, which would let a network that
ignores its input pass the cosine gate. BatchNorm statistics/affine are randomised
(:func:`torch_reference.nets.randomise_`). Inputs are smooth random fields plus a little noise,
closer to faces than white noise and easier to tell apart.

Tolerance ladder (``rel_err = max|ours - torch| / max|torch|``): each piece fed torch's own
input (stem up to conv2d_4b, each of repeat_1, mixed_6a, repeat_2, mixed_7a, repeat_3, block8,
and the head) <= 2e-5; the whole network from pixels <= 5e-5; unit embeddings' cosine >= 0.99999.
The head is fed block8's 3x3 map, so its parity also shows that NHWC mean-pooling then
flattening equals torch's NCHW AdaptiveAvgPool2d(1) + view with ``last_linear`` merely transposed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from flax import nnx  # noqa: E402
from torch_reference.facenet import InceptionResnetV1 as TorchFaceNet  # noqa: E402
from torch_reference.nets import randomise_  # noqa: E402

from jaxcloak.convert.torch import ConversionError  # noqa: E402
from jaxcloak.nets import facenet  # noqa: E402
from jaxcloak.zoo.archs import arch_key_map, convert_state_dict  # noqa: E402

LAYER_RTOL = 2e-5
NET_RTOL = 5e-5
MIN_COSINE = 0.99999
BATCH = 2
SIDE = facenet.INPUT_SIZE[0]


def rel_err(actual: Any, expected: Any) -> float:
    """``max|actual - expected| / max|expected|`` in float64."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def nchw(x: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)


def torch_net(variant: str, seed: int = 0) -> torch.nn.Module:
    """Seeded, He-initialised, BN-randomised, eval-mode reference of the variant."""
    cfg = facenet.VARIANTS[variant]
    torch.manual_seed(seed)
    net = TorchFaceNet(repeats=cfg.repeats, num_classes=cfg.num_classes)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return randomise_(net, seed=seed + 1)


def state_dict(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def images(seed: int = 0) -> np.ndarray:
    """(BATCH, 160, 160, 3) RGB in [0, 1]: bilinear-upsampled 8x8 noise plus pixel noise."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.random((BATCH, 3, 8, 8), dtype=np.float32))
    smooth = nhwc(F.interpolate(low, size=(SIDE, SIDE), mode="bilinear", align_corners=False))
    noisy = smooth + 0.1 * rng.standard_normal(smooth.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0)


def _check_per_layer(variant: str, net: torch.nn.Module, params: Any) -> None:
    """Stem, each stage and the head, each fed torch's own input, match torch to 2e-5."""
    taps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str):
        def record(_m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            taps[name] = (args[0].detach().clone(), out.detach().clone())

        return record

    names = ("conv2d_4b", *facenet.STAGES, "last_bn")
    handles = [getattr(net, n).register_forward_hook(hook(n)) for n in names]
    x = facenet.preprocess(jnp.asarray(images()))
    with torch.no_grad():
        net(nchw(x))
    for h in handles:
        h.remove()

    graphdef, _ = facenet.build(variant)
    # Jitted per piece: eager NNX dispatches every conv separately and is several times slower.
    stem = jax.jit(lambda p, a: nnx.merge(graphdef, p).stem(a))
    stage = jax.jit(lambda p, a, name: nnx.merge(graphdef, p).stage(name, a), static_argnums=2)
    head = jax.jit(lambda p, a: nnx.merge(graphdef, p).head(a))
    errs = {"stem": rel_err(stem(params, x), nhwc(taps["conv2d_4b"][1]))}
    for name in facenet.STAGES:
        t_in, t_out = taps[name]
        errs[name] = rel_err(stage(params, jnp.asarray(nhwc(t_in)), name), nhwc(t_out))
    errs["head"] = rel_err(
        head(params, jnp.asarray(nhwc(taps["block8"][1]))), taps["last_bn"][1].numpy()
    )
    print(f"\n{variant} per-layer rel_err: " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= LAYER_RTOL, errs


def _check_whole_net(variant: str, net: torch.nn.Module, params: Any) -> None:
    """Pixels -> raw last_bn within 5e-5 of torch; unit embeddings' cosine >= 0.99999."""
    x = jnp.asarray(images(seed=1))
    graphdef, _ = facenet.build(variant)
    embed = facenet.make_embed(variant)
    # One program for both outputs: XLA shares the common network, so it compiles once.
    raw, emb = jax.jit(
        lambda p, im: (nnx.merge(graphdef, p)(facenet.preprocess(im)), embed(p, im))
    )(params, x)
    emb = np.asarray(emb, np.float64)
    taps: dict[str, torch.Tensor] = {}
    handle = net.last_bn.register_forward_hook(lambda _m, _a, out: taps.update(raw=out.clone()))
    with torch.no_grad():
        ref_unit = net(nchw(facenet.preprocess(x))).numpy().astype(np.float64)
    handle.remove()
    err = rel_err(raw, taps["raw"].numpy())
    cosine = np.sum(emb * ref_unit, axis=-1)
    # The gate is only meaningful if different faces are far apart on its scale.
    between = float(ref_unit[0] @ ref_unit[1])
    print(
        f"\n{variant} whole-net rel_err={err:.2e}, min cosine={cosine.min():.9f} "
        f"(cosine between the two inputs: {between:.4f})"
    )
    assert emb.shape == (BATCH, facenet.VARIANTS[variant].num_features)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    assert err <= NET_RTOL
    assert cosine.min() >= MIN_COSINE
    assert between < 0.9999


@pytest.fixture(scope="module")
def tiny() -> tuple[str, torch.nn.Module, Any]:
    net = torch_net("tiny")
    return "tiny", net, convert_state_dict(state_dict(net), "facenet", "tiny")


@pytest.fixture(scope="module")
def tiny_state(tiny: tuple[str, torch.nn.Module, Any]) -> dict[str, np.ndarray]:
    return state_dict(tiny[1])


def test_per_layer_parity_tiny(tiny: tuple[str, torch.nn.Module, Any]) -> None:
    _check_per_layer(*tiny)


def test_whole_net_parity_tiny(tiny: tuple[str, torch.nn.Module, Any]) -> None:
    _check_whole_net(*tiny)


@pytest.mark.slow
def test_parity_vggface2() -> None:
    """The released 5/10/5 depth at 160x160: per layer and whole network."""
    net = torch_net("vggface2")
    params = convert_state_dict(state_dict(net), "facenet", "vggface2")
    _check_per_layer("vggface2", net, params)
    _check_whole_net("vggface2", net, params)


def test_logits_match_torch_classify(tiny: tuple[str, torch.nn.Module, Any]) -> None:
    """make_logits equals facenet-pytorch's ``classify=True`` output (logits of raw last_bn)."""
    _, net, params = tiny
    x = jnp.asarray(images(seed=2))
    ours = jax.jit(facenet.make_logits("tiny"))(params, x)
    net.classify = True
    try:
        with torch.no_grad():
            ref = net(nchw(facenet.preprocess(x))).numpy()
    finally:
        net.classify = False
    err = rel_err(ours, ref)
    print(f"\ntiny logits rel_err={err:.2e}")
    assert ours.shape == (BATCH, facenet.VARIANTS["tiny"].num_classes)
    assert err <= NET_RTOL


def test_logits_need_a_classifier() -> None:
    with pytest.raises(ValueError, match="no logits"):
        facenet.make_logits(facenet.FaceNetConfig(repeats=(1, 1, 1), num_classes=None))


@pytest.mark.parametrize("variant", ["vggface2", "casia-webface"])
def test_key_map_matches_torch_state_dict(variant: str) -> None:
    """Every torch key except num_batches_tracked is mapped with torch's shape, nothing else."""
    cfg = facenet.VARIANTS[variant]
    sd = TorchFaceNet(repeats=cfg.repeats, num_classes=cfg.num_classes).state_dict()
    expected = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    entries, _ = arch_key_map("facenet", variant)
    assert {k: e.torch_shape for k, e in entries.items()} == expected
    assert expected["logits.weight"] == (cfg.num_classes, 512)


def test_module_prefix_is_stripped(tiny_state: dict[str, np.ndarray]) -> None:
    """An ``nn.DataParallel`` checkpoint (every key ``module.``-prefixed) converts the same."""
    prefixed = {f"module.{k}": v for k, v in tiny_state.items()}
    ours = convert_state_dict(prefixed, "facenet", "tiny")
    ref = convert_state_dict(tiny_state, "facenet", "tiny")
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_last_linear_is_a_plain_transpose(tiny: tuple[str, torch.nn.Module, Any]) -> None:
    """1x1 pooling before the flatten: no NCHW->NHWC row permutation, unlike IResNet's fc."""
    _, _, params = tiny
    sd = tiny[1].state_dict()
    np.testing.assert_array_equal(
        np.asarray(params["last_linear"]["weight"][...]), sd["last_linear.weight"].numpy().T
    )


def test_missing_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = dict(tiny_state)
    del sd["repeat_2.0.branch1.2.bn.running_var"]
    with pytest.raises(ConversionError, match=r"missing.*repeat_2\.0\.branch1\.2\.bn\.running_var"):
        convert_state_dict(sd, "facenet", "tiny")


def test_checkpoint_without_logits_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = {k: v for k, v in tiny_state.items() if not k.startswith("logits.")}
    with pytest.raises(ConversionError, match=r"missing.*logits\.bias.*logits\.weight"):
        convert_state_dict(sd, "facenet", "tiny")


def test_extra_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = {**tiny_state, "repeat_1.1.conv2d.weight": np.zeros((256, 96, 1, 1), np.float32)}
    with pytest.raises(ConversionError, match=r"unused.*repeat_1\.1\.conv2d\.weight"):
        convert_state_dict(sd, "facenet", "tiny")


def test_misshaped_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    # 7x1 where 1x7 belongs: the factorised kernels must not be transposed by accident.
    sd = {**tiny_state, "repeat_2.0.branch1.1.conv.weight": np.zeros((128, 128, 7, 1), np.float32)}
    with pytest.raises(ConversionError, match=r"repeat_2\.0\.branch1\.1\.conv\.weight.*shape"):
        convert_state_dict(sd, "facenet", "tiny")


def test_wrong_variant_fails(tiny_state: dict[str, np.ndarray]) -> None:
    """A tiny checkpoint loaded as vggface2 fails on keys and classifier shape, naming them."""
    with pytest.raises(ConversionError, match=r"repeat_1\.1\..*logits\.weight"):
        convert_state_dict(tiny_state, "facenet", "vggface2")


def test_embed_rejects_wrong_input_size() -> None:
    _, abstract = facenet.build("tiny")
    wrong = jax.ShapeDtypeStruct((1, 112, 112, 3), jnp.float32)
    with pytest.raises(ValueError, match="160"):
        jax.eval_shape(facenet.make_embed("tiny"), abstract, wrong)


def test_preprocess_is_fixed_image_standardization() -> None:
    x = jnp.broadcast_to(jnp.asarray([0.0, 0.5, 1.0]).reshape(1, 1, 3, 1), (1, SIDE, 3, 3))
    x = jnp.tile(x, (1, 1, SIDE // 3 + 1, 1))[:, :, :SIDE]
    y = np.asarray(facenet.preprocess(x))[0, 0, :3, 0]
    np.testing.assert_allclose(y, [-127.5 / 128, 0.0, 127.5 / 128], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("variant", sorted(facenet.VARIANTS))
def test_build_is_abstract(variant: str) -> None:
    _, abstract = facenet.build(variant)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))


@pytest.mark.slow
def test_init_matches_build() -> None:
    """A real init has build()'s tree and shapes (slow: ~20 s compiling 10M He-normal draws)."""
    concrete = jax.jit(lambda: facenet.init("tiny")[1])()
    _, tiny_abstract = facenet.build("tiny")
    assert jax.tree.structure(concrete) == jax.tree.structure(tiny_abstract)
    assert [x.shape for x in jax.tree.leaves(concrete)] == [
        x.shape for x in jax.tree.leaves(tiny_abstract)
    ]
