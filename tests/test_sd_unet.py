"""SD-1.5 ``UNet2DConditionModel`` in Flax NNX against diffusers' own torch model.

The oracle is a seeded, randomised diffusers ``UNet2DConditionModel`` in the ``tiny`` layout
(three levels: CrossAttn x2 + plain down, plain + CrossAttn x2 up, cross-attention mid block),
saved with ``save_pretrained`` and read back through :func:`load_diffusers_folder`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from torch_reference.sd_twins import unet_kwargs  # noqa: E402

from jaxcloak.convert.torch import ConversionError  # noqa: E402
from jaxcloak.nets import sd_unet  # noqa: E402
from jaxcloak.nets.sd_unet import (  # noqa: E402
    SDUNetConfig,
    config_from_diffusers,
    convert_diffusers_state_dict,
    load_diffusers_folder,
    make_unet,
)

# fp32 CPU tolerance ladder (looser as errors accumulate): per block, then the whole network.
PIECE_RTOL = 2e-5
NET_RTOL = 1e-4
TIMES = np.array([10.0, 700.0], np.float32)  # batch of 2, different t
CONTEXT_LEN = 7

# runwayml/stable-diffusion-v1-5 unet/config.json, verbatim in the fields that matter.
SD15_DIFFUSERS_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}


def rel_err(ours: Any, ref: Any) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).numpy()


def nchw(x: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(x, np.float32)).permute(0, 3, 1, 2)


def inputs(cfg: SDUNetConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    r = cfg.sample_size
    latents = rng.standard_normal((len(TIMES), r, r, cfg.in_channels), dtype=np.float32)
    context = rng.standard_normal((len(TIMES), CONTEXT_LEN, cfg.cross_attention_dim))
    return latents, context.astype(np.float32)


@pytest.fixture(scope="module")
def unet() -> Any:
    """Seeded tiny diffusers UNet; norm scales/shifts and biases perturbed so none is trivial."""
    torch.manual_seed(0)
    net = diffusers.UNet2DConditionModel(**unet_kwargs(sd_unet.VARIANTS["tiny"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 1:  # GroupNorm/LayerNorm affine and every bias (1 and 0 at init)
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return net.eval().float()


@pytest.fixture(scope="module")
def folder(unet: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sd_unet_tiny")
    unet.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(folder: Path) -> tuple[SDUNetConfig, Any]:
    return load_diffusers_folder(folder)


@pytest.fixture(scope="module")
def state(unet: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in unet.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Structure and config
# ---------------------------------------------------------------------------------------------


def test_sd15_param_count_is_abstract() -> None:
    _, abstract = sd_unet.build("sd15")
    assert sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract)) == 859_520_964


def test_config_from_diffusers(unet: Any, loaded: tuple[SDUNetConfig, Any]) -> None:
    assert config_from_diffusers(SD15_DIFFUSERS_CONFIG) == sd_unet.VARIANTS["sd15"]
    assert config_from_diffusers(dict(unet.config)) == sd_unet.VARIANTS["tiny"]
    assert loaded[0] == sd_unet.VARIANTS["tiny"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("use_linear_projection", True),
        ("class_embed_type", "timestep"),
        ("addition_embed_type", "text_time"),
        ("upcast_attention", True),
        ("time_cond_proj_dim", 256),
        ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"),
    ],
)
def test_config_rejects_unsupported(name: str, value: Any) -> None:
    with pytest.raises(ConversionError, match=rf"{name}={value!r}.*not supported"):
        config_from_diffusers({**SD15_DIFFUSERS_CONFIG, name: value})


def test_config_rejects_unknown_block() -> None:
    bad = {**SD15_DIFFUSERS_CONFIG}
    bad["down_block_types"] = ["AttnDownBlock2D", *bad["down_block_types"][1:]]
    with pytest.raises(ConversionError, match="AttnDownBlock2D"):
        config_from_diffusers(bad)


def test_init_matches_build() -> None:
    _, abstract = sd_unet.build("tiny")
    _, params = sd_unet.init("tiny", seed=3)
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), abstract)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == shapes


def test_make_unet_checks_shapes() -> None:
    eps_fn = make_unet("tiny")
    _, params = sd_unet.init("tiny")
    latents, context = inputs(sd_unet.VARIANTS["tiny"])
    t = jnp.asarray(TIMES)
    with pytest.raises(ValueError, match="divisible"):
        eps_fn(params, jnp.zeros((2, 6, 6, 4)), t, jnp.asarray(context))
    with pytest.raises(ValueError, match="t must have shape"):
        eps_fn(params, jnp.asarray(latents), t[:1], jnp.asarray(context))
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        eps_fn(params, jnp.asarray(latents), t, jnp.zeros((2, 7, 16)))


# ---------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------


def _submodule(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


# Pieces tapped with torch forward hooks: (diffusers module, how to call ours, how to read it).
PIECES = (
    "time_proj",
    "time_embedding",
    "conv_in",
    "down_blocks.0",  # CrossAttnDownBlock2D with downsampler
    "down_blocks.2",  # DownBlock2D, last level
    "mid_block",
    "up_blocks.0",  # UpBlock2D with upsampler
    "up_blocks.2",  # CrossAttnUpBlock2D, last
    "down_blocks.1.attentions.0",  # Transformer2DModel alone
)


def test_per_block_parity(unet: Any, loaded: tuple[SDUNetConfig, Any]) -> None:
    cfg, params = loaded
    taps: dict[str, tuple[tuple, dict, Any]] = {}

    def hook(name: str):
        def record(_m: Any, args: tuple, kwargs: dict, out: Any) -> None:
            taps[name] = (args, kwargs, out)

        return record

    handles = [_submodule(unet, p).register_forward_hook(hook(p), with_kwargs=True) for p in PIECES]
    latents, context = inputs(cfg, seed=2)
    with torch.no_grad():
        unet(nchw(latents), torch.from_numpy(TIMES), torch.from_numpy(context))
    for h in handles:
        h.remove()

    def arg(name: str, key: str, pos: int) -> Any:
        args, kwargs, _ = taps[name]
        return kwargs[key] if key in kwargs else args[pos]

    def nhwc_in(name: str, key: str = "hidden_states", pos: int = 0) -> np.ndarray:
        return nhwc(arg(name, key, pos))

    # Every piece gets torch's own inputs (hooked), so errors do not accumulate across pieces.
    feeds = {
        "t": TIMES,
        "context": context,
        "temb": taps["time_embedding"][2].numpy(),
        "conv_in": nhwc_in("conv_in", "input"),
        **{n: nhwc_in(n) for n in PIECES[3:]},
        "up_skips": {
            n: tuple(nhwc(s) for s in arg(n, "res_hidden_states_tuple", 1))
            for n in ("up_blocks.0", "up_blocks.2")
        },
    }
    graphdef = sd_unet.build(cfg)[0]

    @jax.jit  # one compilation for all pieces; eager NNX dispatch is slower on CPU
    def ours(params: Any, f: dict[str, Any]) -> dict[str, Any]:
        model = nnx.merge(graphdef, params)
        temb, ctx = f["temb"], f["context"]
        out = {
            "time_proj": sd_unet.timestep_embedding(f["t"], cfg.block_out_channels[0]),
            "time_embedding": model.time_embed(f["t"]),
            "conv_in": model.conv_in(f["conv_in"]),
            "mid_block": model.mid_block(f["mid_block"], temb, ctx),
        }
        for n in ("down_blocks.0", "down_blocks.2"):
            out[n] = _submodule(model, n)(f[n], temb, ctx)
        for n in ("up_blocks.0", "up_blocks.2"):
            out[n] = _submodule(model, n)(f[n], f["up_skips"][n], temb, ctx)
        n = "down_blocks.1.attentions.0"
        out[n] = _submodule(model, n)(f[n], ctx)
        return out

    got = ours(params, feeds)
    errs = {}
    for name in PIECES:
        ref = taps[name][2]
        if name in ("time_proj", "time_embedding"):
            errs[name] = rel_err(got[name], ref.numpy())
        elif name.startswith("down_blocks.") and name.count(".") == 1:
            (out, skips), (ref_out, ref_skips) = got[name], ref
            assert len(skips) == len(ref_skips)
            errs[name] = max(
                rel_err(a, nhwc(b))
                for a, b in zip((out, *skips), (ref_out, *ref_skips), strict=True)
            )
        else:
            ref = ref if isinstance(ref, torch.Tensor) else ref[0]  # Transformer2D: a tuple
            errs[name] = rel_err(got[name], nhwc(ref))

    print("\ntiny per-block rel_err: " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= PIECE_RTOL, errs


def test_whole_net_parity(unet: Any, loaded: tuple[SDUNetConfig, Any]) -> None:
    cfg, params = loaded
    latents, context = inputs(cfg, seed=1)
    eps = jax.jit(make_unet(cfg))(
        params, jnp.asarray(latents), jnp.asarray(TIMES), jnp.asarray(context)
    )
    with torch.no_grad():
        out = unet(nchw(latents), torch.from_numpy(TIMES), torch.from_numpy(context)).sample
    ref = nhwc(out)
    err = rel_err(eps, ref)
    print(f"\ntiny whole-net rel_err={err:.2e} (max|eps|={np.abs(ref).max():.3f})")
    assert err <= NET_RTOL
    # Both batch rows (different t, latents and context) must differ, or an input-ignoring net
    # would pass.
    assert np.abs(ref[0] - ref[1]).max() > 0.1


def test_cpu_query_block_rule() -> None:
    """On CPU, blocks of 32 queries (whole divisors of T); short sequences are not split."""
    assert jax.default_backend() == "cpu"
    assert sd_unet._query_block(1024) == 32
    assert sd_unet._query_block(96) == 32
    assert sd_unet._query_block(16) == 16  # one block: no loop
    assert sd_unet._query_block(77) == 1  # odd lengths: whole (see _attend)


def test_query_blocks_match_diffusers(
    unet: Any, loaded: tuple[SDUNetConfig, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long sequences attend in query blocks (bounded logits memory); exact vs diffusers."""
    cfg, params = loaded
    tokens = cfg.sample_size**2
    monkeypatch.setattr(sd_unet, "_QUERY_BLOCK", tokens // 4)  # the top level in 4 blocks
    latents, context = inputs(cfg, seed=2)
    lowered = jax.jit(make_unet(cfg)).lower(
        params, jnp.asarray(latents), jnp.asarray(TIMES), jnp.asarray(context)
    )
    assert "while" in lowered.as_text()  # the blocked path (lax.map) was taken
    eps = lowered.compile()(params, jnp.asarray(latents), jnp.asarray(TIMES), jnp.asarray(context))
    with torch.no_grad():
        out = unet(nchw(latents), torch.from_numpy(TIMES), torch.from_numpy(context)).sample
    err = rel_err(eps, nhwc(out))
    print(f"\ntiny whole-net rel_err with query blocks of {tokens // 4}: {err:.2e}")
    assert err <= NET_RTOL


# ---------------------------------------------------------------------------------------------
# Converter failures
# ---------------------------------------------------------------------------------------------


def test_bin_folder_loads(unet: Any, tmp_path: Path, loaded: tuple[SDUNetConfig, Any]) -> None:
    unet.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    cfg, params = load_diffusers_folder(tmp_path)
    assert cfg == loaded[0]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_folder_files(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(ConversionError, match=r"no config\.json"):
        load_diffusers_folder(tmp_path)
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ConversionError, match="diffusion_pytorch_model"):
        load_diffusers_folder(tmp_path)


def test_missing_key_is_named(state: dict[str, np.ndarray]) -> None:
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    sd = {k: v for k, v in state.items() if k != key}
    with pytest.raises(ConversionError, match=re.escape(f"missing keys: ['{key}']")):
        convert_diffusers_state_dict(sd, "tiny")


def test_extra_key_is_named(state: dict[str, np.ndarray]) -> None:
    sd = {**state, "class_embedding.linear_1.weight": np.zeros((128, 32), np.float32)}
    with pytest.raises(
        ConversionError, match=re.escape("unused keys: ['class_embedding.linear_1.weight']")
    ):
        convert_diffusers_state_dict(sd, "tiny")


def test_misshaped_key_is_named(state: dict[str, np.ndarray]) -> None:
    key = "mid_block.attentions.0.proj_in.weight"
    sd = {**state, key: state[key][:, :1]}  # a 1x1 conv kernel (OIHW) with too few inputs
    with pytest.raises(ConversionError, match=re.escape(f"key '{key}' has shape")):
        convert_diffusers_state_dict(sd, "tiny")


def test_wrong_config_fails(state: dict[str, np.ndarray]) -> None:
    other = dataclasses.replace(sd_unet.VARIANTS["tiny"], cross_attention_dim=16)
    with pytest.raises(ConversionError, match=re.escape("attn2.to_k.weight")):
        convert_diffusers_state_dict(state, other)
