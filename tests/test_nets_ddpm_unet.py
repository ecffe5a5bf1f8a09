"""DDPM score network (DiffusionCLIP/SDEdit ``celeba_hq.ckpt`` layout) against torch and diffusers.

Two oracles, both with seeded random weights and randomised GroupNorm affine:

* :class:`torch_reference.ddpm.DDPM`, DiffusionCLIP's module re-declared with its real key
  names, for
  :func:`convert_ddpm_state_dict`;
* diffusers' own ``UNet2DModel`` in the ``google/ddpm-celebahq-256`` layout, for
  :func:`convert_diffusers_state_dict` and :func:`load_diffusers_folder`.

Tolerance ladder (``rel_err = max|ours - ref| / max|ref|``): each piece fed torch's own inputs
<= 2e-5; the whole network <= 1e-4 (measured: a few 1e-6). The sinusoid alone is the exception
at large t, see :func:`test_timestep_embedding`.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from torch_reference.ddpm import DDPM as TorchDDPM  # noqa: E402
from torch_reference.ddpm import (  # noqa: E402
    get_timestep_embedding,
    randomise_,
    torch_kwargs,
)

from jaxcloak.convert.torch import ConversionError, key_map  # noqa: E402
from jaxcloak.nets import ddpm_unet  # noqa: E402
from jaxcloak.nets.ddpm_unet import (  # noqa: E402
    DDPMConfig,
    config_from_diffusers,
    convert_ddpm_state_dict,
    convert_diffusers_state_dict,
    diffusers_key,
    load_diffusers_folder,
    make_score,
    timestep_embedding,
)

PIECE_RTOL = 2e-5
NET_RTOL = 1e-4
BATCH = 2
# Timesteps of both ends of the schedule and a fractional one.
TIMES = np.array([3.0, 917.5], np.float32)

# Three levels, two blocks per level, attention at the middle level only: exercises what "tiny"
# does not (several blocks per level, an attention level that is neither the first nor the
# last, up/down index reversal in the diffusers names). Also the diffusers oracle's config.
THREE_LEVEL = DDPMConfig(
    ch=32, ch_mult=(1, 1, 2), num_res_blocks=2, attn_resolutions=(16,), resolution=32
)

# google/ddpm-celebahq-256 config.json (diffusers 0.0.4 era), verbatim in the fields we read.
CELEBAHQ_DIFFUSERS_CONFIG = {
    "_class_name": "UNet2DModel",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
}


def rel_err(actual: Any, expected: Any) -> float:
    """``max|actual - expected| / max|expected|`` in float64."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def nchw(x: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(x, np.float32)).permute(0, 3, 1, 2)


def torch_net(variant: str | DDPMConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomise_(TorchDDPM(**torch_kwargs(ddpm_unet.get_config(variant))), seed=seed + 1)


def state_dict(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def noisy_images(cfg: DDPMConfig, seed: int = 0) -> np.ndarray:
    r = cfg.resolution
    return np.random.default_rng(seed).uniform(-1, 1, (BATCH, r, r, 3)).astype(np.float32)


def diffusers_config(cfg: DDPMConfig) -> dict[str, Any]:
    """``UNet2DModel`` kwargs of a DDPM config, in the google/ddpm-celebahq-256 layout."""
    attn = [cfg.has_attn(i) for i in range(cfg.num_levels)]
    return {
        "sample_size": cfg.resolution,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_ch,
        "block_out_channels": tuple(cfg.ch * m for m in cfg.ch_mult),
        "layers_per_block": cfg.num_res_blocks,
        "down_block_types": tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        "up_block_types": tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        "attention_head_dim": None,
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "norm_eps": 1e-6,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "time_embedding_type": "positional",
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
    }


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, Any]:
    net = torch_net("tiny")
    return net, convert_ddpm_state_dict(state_dict(net), "tiny")


@pytest.fixture(scope="module")
def unet2d() -> Any:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(3)
    return randomise_(diffusers.UNet2DModel(**diffusers_config(THREE_LEVEL)), seed=4)


# ---------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------


def test_celeba_hq_param_count_is_abstract() -> None:
    """113,673,219 parameters (DiffAM's checkpoint), counted from shapes without allocating any."""
    _, abstract = ddpm_unet.build("celeba_hq")
    leaves = jax.tree.leaves(abstract)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert sum(int(np.prod(x.shape)) for x in leaves) == 113_673_219


@pytest.mark.parametrize("variant", ["tiny", "small", "celeba_hq", THREE_LEVEL])
def test_key_map_matches_torch_state_dict(variant: str | DDPMConfig) -> None:
    """Same keys and shapes as DiffusionCLIP's module (built on the meta device: no memory)."""
    with torch.device("meta"):
        ref = TorchDDPM(**torch_kwargs(ddpm_unet.get_config(variant)))
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    entries = key_map(ddpm_unet.build(variant)[1])
    assert {k: e.torch_shape for k, e in entries.items()} == expected


def test_init_matches_build() -> None:
    """init() fills build()'s tree: He/LeCun-scaled weights, unit GroupNorm scales, zero biases."""
    graphdef, concrete = ddpm_unet.init("tiny", seed=1)
    _, abstract = ddpm_unet.build("tiny")
    assert jax.tree.structure(concrete) == jax.tree.structure(abstract)
    assert [(x.shape, x.dtype) for x in jax.tree.leaves(concrete)] == [
        (x.shape, x.dtype) for x in jax.tree.leaves(abstract)
    ]
    model = nnx.merge(graphdef, concrete)
    kernel = np.asarray(model.down[1].block[0].conv1.weight[...])  # (3, 3, 32, 64)
    assert abs(kernel.std() - np.sqrt(2 / (9 * 32))) < 0.01
    np.testing.assert_array_equal(np.asarray(model.mid.attn_1.norm.weight[...]), 1.0)
    np.testing.assert_array_equal(np.asarray(model.temb.dense[0].bias[...]), 0.0)
    again = ddpm_unet.init("tiny", seed=1)[1]
    _leaves_equal(again, concrete)


def test_make_score_checks_shapes() -> None:
    _, abstract = ddpm_unet.build("tiny")
    eps_fn = make_score("tiny")
    good = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    out = jax.eval_shape(eps_fn, abstract, good, jax.ShapeDtypeStruct((2,), jnp.float32))
    assert out.shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="32, 32, 3"):
        jax.eval_shape(eps_fn, abstract, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32), good)
    with pytest.raises(ValueError, match="t must have shape"):
        jax.eval_shape(eps_fn, abstract, good, jax.ShapeDtypeStruct((), jnp.float32))


def test_group_norm_matches_torch() -> None:
    """NHWC GroupNorm vs torch's NCHW one, also for bf16 input (statistics in float32)."""
    from jaxcloak.nets.layers import GroupNorm

    ref = torch.nn.GroupNorm(32, 96, eps=1e-6)
    randomise_(ref, seed=0)
    x = torch.randn(2, 96, 5, 7) * 3 + 1
    ours = GroupNorm(32, 96, eps=1e-6)
    ours.weight[...] = jnp.asarray(ref.weight.detach().numpy())
    ours.bias[...] = jnp.asarray(ref.bias.detach().numpy())
    with torch.no_grad():
        expected = nhwc(ref(x))
    assert rel_err(ours(jnp.asarray(nhwc(x))), expected) <= 2e-6
    low = ours(jnp.asarray(nhwc(x), jnp.bfloat16))
    assert low.dtype == jnp.bfloat16
    assert rel_err(low, expected) <= 2e-2
    with pytest.raises(ValueError, match="divisible"):
        GroupNorm(32, 48)


def test_group_norm_one_pass_stays_accurate_far_from_zero() -> None:
    """The one-reduction statistics against float64 two-pass ones where a plain
    E[x^2] - E[x]^2 would cancel (mean 300, spread 0.5: ~4% variance error in float32),
    values and input gradient."""
    from jaxcloak.nets.layers import GroupNorm

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 6, 5, 16)) * 0.5 + 300.0).astype(np.float32)
    cot = rng.standard_normal(x.shape).astype(np.float32)
    gn = GroupNorm(4, 16, eps=1e-6)

    # float64 NumPy reference: two-pass statistics and the analytic input gradient.
    v = x.astype(np.float64).reshape(2, -1, 4, 4)
    c = v - v.mean(axis=(1, 3), keepdims=True)
    inv = 1.0 / np.sqrt((c**2).mean(axis=(1, 3), keepdims=True) + 1e-6)
    xhat = c * inv
    want = xhat.reshape(x.shape)
    g = cot.astype(np.float64).reshape(v.shape)
    g_mean = g.mean(axis=(1, 3), keepdims=True)
    gx_mean = (g * xhat).mean(axis=(1, 3), keepdims=True)
    g_want = (inv * (g - g_mean - xhat * gx_mean)).reshape(x.shape)
    assert rel_err(gn(jnp.asarray(x)), want) <= 1e-3
    g = jax.grad(lambda v: jnp.sum(gn(v) * cot))(jnp.asarray(x))
    assert rel_err(g, g_want) <= 1e-3


# ---------------------------------------------------------------------------------------------
# Parity with DiffusionCLIP's torch module
# ---------------------------------------------------------------------------------------------


def test_timestep_embedding(tiny: tuple[torch.nn.Module, Any]) -> None:
    """The sinusoid and the two dense layers after it.

    float32 ``sin(t f)`` turns a 1-ulp difference between XLA's and torch's ``exp(f)`` into up
    to ``t * 2**-24``: about 3e-5 at t = 999 (diffusers' own sinusoid differs from
    DiffusionCLIP's by the same amount). So the ladder's 2e-5 holds to t = 300 (the deepest
    DDIM inversion DiffAM uses), 4e-5 over the whole schedule.
    """
    t = np.concatenate([np.arange(0, 1000, 1.0), [0.5, 59.25, 999.75]]).astype(np.float32)
    low = t <= 300
    for dim in (32, 128, 33):
        ref = get_timestep_embedding(torch.from_numpy(t), dim).numpy()
        ours = np.asarray(timestep_embedding(jnp.asarray(t), dim))
        assert ours.shape == ref.shape
        assert np.abs(ours[low] - ref[low]).max() <= PIECE_RTOL, dim
        assert np.abs(ours - ref).max() <= 4e-5, dim

    net, params = tiny
    model = nnx.merge(ddpm_unet.build("tiny")[0], params)
    with torch.no_grad():
        temb = get_timestep_embedding(torch.from_numpy(t), net.ch)
        ref = net.temb.dense[1](net.temb.dense[0](temb) * torch.sigmoid(net.temb.dense[0](temb)))
    err = rel_err(jax.jit(model.time_embedding)(jnp.asarray(t)), ref.numpy())
    print(f"\ntime embedding (dense layers) rel_err={err:.2e}")
    assert err <= PIECE_RTOL


# Submodules checked on their own, fed the torch module's recorded inputs.
PIECES = [
    "down.0.block.0",  # identity shortcut
    "down.1.block.0",  # nin_shortcut
    "up.1.block.1",  # concatenated skip from the level below
    "down.1.attn.0",
    "mid.attn_1",
    "down.0.downsample",
    "up.1.upsample",
]


def _submodule(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def test_per_piece_parity(tiny: tuple[torch.nn.Module, Any]) -> None:
    net, params = tiny
    taps: dict[str, tuple[tuple, torch.Tensor]] = {}

    def hook(name: str):
        def record(_m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            taps[name] = (tuple(a.detach().clone() for a in args), out.detach().clone())

        return record

    handles = [_submodule(net, p).register_forward_hook(hook(p)) for p in PIECES]
    with torch.no_grad():
        net(nchw(noisy_images(ddpm_unet.VARIANTS["tiny"])), torch.from_numpy(TIMES))
    for h in handles:
        h.remove()

    model = nnx.merge(ddpm_unet.build("tiny")[0], params)
    errs = {}
    for name in PIECES:
        args, out = taps[name]
        x = jnp.asarray(nhwc(args[0]))
        piece = _submodule(model, name)
        ours = piece(x, jnp.asarray(args[1].numpy())) if len(args) == 2 else piece(x)
        errs[name] = rel_err(ours, nhwc(out))
    print("\ntiny per-piece rel_err: " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= PIECE_RTOL, errs


def test_whole_net_parity_tiny(tiny: tuple[torch.nn.Module, Any]) -> None:
    net, params = tiny
    x = noisy_images(ddpm_unet.VARIANTS["tiny"], seed=1)
    eps = jax.jit(make_score("tiny"))(params, jnp.asarray(x), jnp.asarray(TIMES))
    with torch.no_grad():
        ref = nhwc(net(nchw(x), torch.from_numpy(TIMES)))
    err = rel_err(eps, ref)
    print(f"\ntiny whole-net rel_err={err:.2e} (max|eps|={np.abs(ref).max():.3f})")
    assert err <= NET_RTOL
    # Both batch rows (different t and x) must differ, or an input-ignoring net would pass.
    assert np.abs(ref[0] - ref[1]).max() > 0.1


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(THREE_LEVEL, id="three_level"),
        pytest.param(  # resamp_with_conv=False (pooling, plain upsampling), no AttnBlocks
            DDPMConfig(
                ch=32,
                ch_mult=(1, 2),
                num_res_blocks=1,
                attn_resolutions=(),
                resolution=16,
                resamp_with_conv=False,
            ),
            id="pool_no_attn",
        ),
        "small",  # six levels at 256 px: the celeba_hq layout, narrower
        pytest.param("celeba_hq", marks=pytest.mark.slow),  # about 15 s
    ],
)
def test_whole_net_parity(variant: str | DDPMConfig) -> None:
    cfg = ddpm_unet.get_config(variant)
    net = torch_net(cfg, seed=5)
    params = convert_ddpm_state_dict(state_dict(net), cfg)
    # One image at 256 px keeps the CPU time down; the batch axis is covered by tiny.
    x = noisy_images(cfg, seed=2)[: 1 if cfg.resolution > 64 else BATCH]
    t = TIMES[::-1][: len(x)].copy()
    eps = jax.jit(make_score(cfg))(params, jnp.asarray(x), jnp.asarray(t))
    with torch.no_grad():
        ref = nhwc(net(nchw(x), torch.from_numpy(t)))
    err = rel_err(eps, ref)
    print(f"\nch {cfg.ch} x {cfg.ch_mult} at {cfg.resolution} px: whole-net rel_err={err:.2e}")
    assert err <= NET_RTOL


def test_param_gradients_match_torch(tiny: tuple[torch.nn.Module, Any]) -> None:
    """MAP fine-tunes this network: d<w, eps>/d(params) agrees with torch autograd."""
    net, params = tiny
    x = noisy_images(ddpm_unet.VARIANTS["tiny"], seed=4)
    w = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    eps_fn = make_score("tiny")
    grads = jax.jit(jax.grad(lambda p: jnp.sum(eps_fn(p, jnp.asarray(x), TIMES) * w)))(params)
    net.zero_grad()
    (net(nchw(x), torch.from_numpy(TIMES)) * nchw(w)).sum().backward()
    ref = {k: p.grad.numpy() for k, p in net.named_parameters()}
    errs = {}
    for name in [
        "conv_in.weight",
        "temb.dense.0.weight",
        "down.1.attn.0.q.weight",
        "up.0.block.1.norm1.bias",
        "norm_out.weight",
    ]:
        g = np.asarray(_submodule(grads, name))
        g = g.transpose(3, 2, 0, 1) if g.ndim == 4 else g.T if g.ndim == 2 else g
        errs[name] = rel_err(g, ref[name])
    print("\ntiny gradient rel_err: " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= NET_RTOL, errs


# ---------------------------------------------------------------------------------------------
# DDPM-key converter errors
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_state(tiny: tuple[torch.nn.Module, Any]) -> dict[str, np.ndarray]:
    return state_dict(tiny[0])


def _leaves_equal(a: Any, b: Any) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_module_prefix_is_stripped(tiny_state: dict[str, np.ndarray], tiny: Any) -> None:
    prefixed = {f"module.{k}": v for k, v in tiny_state.items()}
    _leaves_equal(convert_ddpm_state_dict(prefixed, "tiny"), tiny[1])


def test_ddpm_missing_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = dict(tiny_state)
    del sd["up.1.attn.1.proj_out.bias"]
    with pytest.raises(ConversionError, match=r"missing.*up\.1\.attn\.1\.proj_out\.bias"):
        convert_ddpm_state_dict(sd, "tiny")


def test_ddpm_extra_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = {**tiny_state, "down.0.attn.0.q.weight": np.zeros((32, 32, 1, 1), np.float32)}
    with pytest.raises(ConversionError, match=r"unused.*down\.0\.attn\.0\.q\.weight"):
        convert_ddpm_state_dict(sd, "tiny")


def test_ddpm_misshaped_key_is_named(tiny_state: dict[str, np.ndarray]) -> None:
    sd = {**tiny_state, "temb.dense.1.weight": np.zeros((128, 64), np.float32)}
    with pytest.raises(ConversionError, match=r"temb\.dense\.1\.weight.*shape"):
        convert_ddpm_state_dict(sd, "tiny")


def test_ddpm_wrong_variant_fails(tiny_state: dict[str, np.ndarray]) -> None:
    """A tiny checkpoint loaded as another config fails on keys and shapes, never half-loads."""
    with pytest.raises(ConversionError, match=r"missing keys.*down\.0\.block\.1\.conv1\.bias"):
        convert_ddpm_state_dict(tiny_state, THREE_LEVEL)


# ---------------------------------------------------------------------------------------------
# diffusers UNet2DModel
# ---------------------------------------------------------------------------------------------


def diffusers_state(unet: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in unet.state_dict().items()}


def test_diffusers_key_names_match_unet2d(unet2d: Any) -> None:
    """Every DDPM key renamed by diffusers_key is a UNet2DModel key, with the same tensor size."""
    sd = unet2d.state_dict()
    with torch.device("meta"):
        ref = TorchDDPM(**torch_kwargs(THREE_LEVEL)).state_dict()
    renamed = {diffusers_key(k, THREE_LEVEL.num_levels): v for k, v in ref.items()}
    assert set(renamed) == set(sd)
    assert all(renamed[k].numel() == sd[k].numel() for k in sd)


def test_config_from_diffusers(unet2d: Any) -> None:
    assert config_from_diffusers(unet2d.config) == THREE_LEVEL
    assert config_from_diffusers(CELEBAHQ_DIFFUSERS_CONFIG) == ddpm_unet.VARIANTS["celeba_hq"]
    for name, value in [("flip_sin_to_cos", True), ("downsample_padding", 1), ("norm_eps", 1e-5)]:
        with pytest.raises(ConversionError, match=name):
            config_from_diffusers({**CELEBAHQ_DIFFUSERS_CONFIG, name: value})
    with pytest.raises(ConversionError, match="multi-head"):
        config_from_diffusers({**CELEBAHQ_DIFFUSERS_CONFIG, "attention_head_dim": 8})


def test_diffusers_whole_net_parity(unet2d: Any) -> None:
    params = convert_diffusers_state_dict(diffusers_state(unet2d), THREE_LEVEL)
    x = noisy_images(THREE_LEVEL, seed=3)
    eps = jax.jit(make_score(THREE_LEVEL))(params, jnp.asarray(x), jnp.asarray(TIMES))
    with torch.no_grad():
        ref = nhwc(unet2d(nchw(x), torch.from_numpy(TIMES)).sample)
    err = rel_err(eps, ref)
    print(f"\ndiffusers UNet2DModel whole-net rel_err={err:.2e}")
    assert err <= NET_RTOL


def test_diffusers_deprecated_attention_names(unet2d: Any) -> None:
    """Hub checkpoints saved before diffusers 0.15 name attention query/key/value/proj_attn."""
    sd = diffusers_state(unet2d)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for k, v in sd.items():
        for new, dep in old.items():
            k = k.replace(f".{new}.", f".{dep}.") if ".attentions." in k else k
        legacy[k] = v
    assert any(".proj_attn." in k for k in legacy)
    _leaves_equal(
        convert_diffusers_state_dict(legacy, THREE_LEVEL),
        convert_diffusers_state_dict(sd, THREE_LEVEL),
    )


def test_diffusers_errors_name_the_key(unet2d: Any) -> None:
    sd = diffusers_state(unet2d)
    missing = dict(sd)
    del missing["up_blocks.1.attentions.2.to_out.0.weight"]
    with pytest.raises(ConversionError, match=r"missing.*up_blocks\.1\.attentions\.2\.to_out\.0"):
        convert_diffusers_state_dict(missing, THREE_LEVEL)
    extra = {**sd, "mid_block.attentions.1.to_q.weight": np.zeros((64, 64), np.float32)}
    with pytest.raises(ConversionError, match=r"unused.*mid_block\.attentions\.1\.to_q\.weight"):
        convert_diffusers_state_dict(extra, THREE_LEVEL)
    bad = {**sd, "down_blocks.2.resnets.0.conv_shortcut.weight": np.zeros((64, 32), np.float32)}
    with pytest.raises(ConversionError, match=r"down_blocks\.2\.resnets\.0\.conv_shortcut.*shape"):
        convert_diffusers_state_dict(bad, THREE_LEVEL)
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    _leaves_equal(
        convert_diffusers_state_dict(prefixed, THREE_LEVEL),
        convert_diffusers_state_dict(sd, THREE_LEVEL),
    )


@pytest.mark.parametrize("subfolder", ["", "unet"], ids=["unet_folder", "pipeline_folder"])
def test_load_diffusers_folder_round_trip(unet2d: Any, tmp_path: Path, subfolder: str) -> None:
    unet2d.save_pretrained(tmp_path / subfolder, safe_serialization=True)
    assert (tmp_path / subfolder / "diffusion_pytorch_model.safetensors").is_file()
    config, params = load_diffusers_folder(tmp_path)
    assert config == THREE_LEVEL
    _leaves_equal(params, convert_diffusers_state_dict(diffusers_state(unet2d), THREE_LEVEL))


def test_load_diffusers_folder_without_weights(tmp_path: Path) -> None:
    import json

    (tmp_path / "config.json").write_text(json.dumps(CELEBAHQ_DIFFUSERS_CONFIG))
    with pytest.raises(ConversionError, match="diffusion_pytorch_model"):
        load_diffusers_folder(tmp_path)
