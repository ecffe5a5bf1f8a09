"""SD VAE (``jaxcloak.nets.sd_vae``) against diffusers' own ``AutoencoderKL``.

The oracle is a tiny seeded ``AutoencoderKL`` (the ``tiny`` variant's layout) with randomised
GroupNorm affine and biases, saved with ``save_pretrained`` and read back through
:func:`load_diffusers_folder`. Tolerance (``rel = max|ours - ref| / max|ref|``): <= 1e-4 for the
whole encoder and decoder (measured: about 1e-6), <= 2e-5 for the decoder mid block fed
torch's own input.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxcloak.convert.torch import ConversionError  # noqa: E402
from jaxcloak.nets import sd_vae  # noqa: E402

NET_RTOL = 1e-4
PIECE_RTOL = 2e-5
TINY_DIFFUSERS = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=32,
)


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(**TINY_DIFFUSERS).eval().float()
    with torch.no_grad():  # non-trivial norm affine and biases, so a swapped pair shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or (p.ndim == 1 and "norm" in name):
                p.add_(0.2 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("vae")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def converted(oracle: tuple[object, Path]) -> tuple[sd_vae.VAEConfig, object]:
    return sd_vae.load_diffusers_folder(oracle[1])


def test_config_from_folder(converted: tuple[sd_vae.VAEConfig, object]) -> None:
    config, _ = converted
    tiny = sd_vae.VARIANTS["tiny"]
    assert config.block_out_channels == tiny.block_out_channels
    assert config.layers_per_block == tiny.layers_per_block
    assert config.latent_channels == tiny.latent_channels
    assert config.norm_num_groups == tiny.norm_num_groups
    assert config.scaling_factor == pytest.approx(0.18215)


def test_encode_decode_parity(oracle: tuple[object, Path], converted: tuple) -> None:
    model, _ = oracle
    config, params = converted
    vae = sd_vae.make_vae(config)
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    latents = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    with torch.no_grad():
        dist = model.encode(nchw(images)).latent_dist
        ref_mean, ref_logvar = nhwc(dist.mean), nhwc(dist.logvar)
        ref_img = nhwc(model.decode(nchw(latents)).sample)

    post = vae.encode(params, jnp.asarray(images))
    dec = vae.decode(params, jnp.asarray(latents))
    errs = {
        "mean": rel_err(post.mean, ref_mean),
        "logvar": rel_err(post.logvar, ref_logvar),
        "decode": rel_err(dec, ref_img),
    }
    print("sd_vae rel errs:", errs)
    assert post.mean.shape == ref_mean.shape and dec.shape == ref_img.shape
    assert all(e <= NET_RTOL for e in errs.values()), errs
    assert post.sample is None

    # With a key: mean + std * N(0, 1), so (sample - mean) / std is standard normal.
    drawn = vae.encode(params, jnp.asarray(images), key=jax.random.key(0))
    z = (drawn.sample - drawn.mean) / jnp.exp(0.5 * drawn.logvar)
    assert abs(float(jnp.mean(z))) < 0.2 and abs(float(jnp.std(z)) - 1) < 0.2


def test_decoder_mid_block(oracle: tuple[object, Path], converted: tuple) -> None:
    model, _ = oracle
    config, params = converted
    seen = {}
    hook = model.decoder.mid_block.register_forward_hook(
        lambda mod, args, out: seen.update(x=args[0].clone(), y=out.clone())
    )
    latents = np.random.default_rng(2).standard_normal((1, 8, 8, 4)).astype(np.float32)
    with torch.no_grad():
        model.decode(nchw(latents))
    hook.remove()
    graphdef, _ = sd_vae.build(config)
    net = nnx.merge(graphdef, params)
    ours = net.decoder.mid_block(jnp.asarray(nhwc(seen["x"])))
    err = rel_err(ours, nhwc(seen["y"]))
    print("sd_vae decoder.mid_block rel err:", err)
    assert err <= PIECE_RTOL


def _state_dict(model: object) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_converter_names_bad_keys(oracle: tuple[object, Path]) -> None:
    sd = _state_dict(oracle[0])
    missing = dict(sd)
    del missing["decoder.mid_block.attentions.0.to_q.weight"]
    with pytest.raises(ConversionError, match=r"missing.*decoder\.mid_block\.attentions\.0\.to_q"):
        sd_vae.convert_diffusers_state_dict(missing, "tiny")
    extra = dict(sd, **{"encoder.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ConversionError, match=r"unused.*encoder\.extra\.weight"):
        sd_vae.convert_diffusers_state_dict(extra, "tiny")
    bad = dict(sd, **{"quant_conv.weight": np.zeros((8, 8, 3, 3), np.float32)})
    with pytest.raises(ConversionError, match=r"quant_conv\.weight.*shape"):
        sd_vae.convert_diffusers_state_dict(bad, "tiny")


def test_converter_accepts_deprecated_attention_names(oracle: tuple[object, Path]) -> None:
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    sd = {}
    for k, v in _state_dict(oracle[0]).items():
        for new, dep in old.items():
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{dep}.")
        sd[k] = v
    params = sd_vae.convert_diffusers_state_dict(sd, "tiny")
    graphdef, _ = sd_vae.build("tiny")
    w = nnx.merge(graphdef, params).encoder.mid_block.attentions[0].to_out[0].weight[...]
    ref = oracle[0].encoder.mid_block.attentions[0].to_out[0].weight.detach().numpy().T
    np.testing.assert_array_equal(np.asarray(w), ref)


def test_config_rejects_unsupported(oracle: tuple[object, Path]) -> None:
    cfg = json.loads((oracle[1] / "config.json").read_text())
    for name, value in [
        ("use_quant_conv", False),
        ("shift_factor", 0.1159),
        ("latents_mean", [0.0] * 4),
        ("act_fn", "gelu"),
        ("down_block_types", ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]),
        ("mid_block_add_attention", False),
    ]:
        with pytest.raises(ConversionError, match=name):
            sd_vae.config_from_diffusers(dict(cfg, **{name: value}))


def test_sd15_shapes() -> None:
    _, abstract = sd_vae.build("sd15")
    n = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(abstract))
    assert n == 83_653_863  # diffusers AutoencoderKL of stable-diffusion-v1-5
