"""The Stable Diffusion 1.5 VAE (diffusers ``AutoencoderKL``) in Flax NNX.

Arc2Face generates in the SD-1.5 latent space; this is the network that maps images to latents
and back. Attribute names mirror diffusers' module tree, so every key of a diffusers
``vae/diffusion_pytorch_model.safetensors`` is literally an NNX state path
(``"decoder.up_blocks.0.resnets.2.conv1.weight"`` is
``('decoder', 'up_blocks', 0, 'resnets', 2, 'conv1', 'weight')``)::

    encoder.conv_in                           3x3, in_channels -> C_0
    encoder.down_blocks.{i}.resnets.{j}       ResnetBlock2D (norm1, conv1, norm2, conv2,
                                              conv_shortcut when the width changes)
    encoder.down_blocks.{i}.downsamplers.0    pad (0, 1, 0, 1), 3x3 stride-2 conv (not last)
    encoder.mid_block.{resnets.0, attentions.0, resnets.1}
    encoder.conv_norm_out, encoder.conv_out   -> 2 * latent_channels (mean, logvar)
    quant_conv, post_quant_conv               1x1
    decoder.conv_in, decoder.mid_block
    decoder.up_blocks.{i}.resnets.{j}         layers_per_block + 1 per block, widest first
    decoder.up_blocks.{i}.upsamplers.0        nearest x2, 3x3 conv (not last)
    decoder.conv_norm_out, decoder.conv_out

Layout is NHWC; images are in [-1, 1]; latents are *unscaled* (multiply by
``config.scaling_factor`` before the UNet and divide before :func:`decode`, as diffusers'
pipelines do). Every GroupNorm uses eps 1e-6 and ``norm_num_groups`` groups.

Typical use (weights are arguments, the network is a definition)::

    config, params = load_diffusers_folder("stable-diffusion-v1-5/vae")
    vae = make_vae(config)
    post = jax.jit(vae.encode)(params, images)        # (B, 512, 512, 3) -> (B, 64, 64, 4) x 2
    images = jax.jit(vae.decode)(params, post.mean)   # (B, 64, 64, 4) -> (B, 512, 512, 3)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ..convert.torch import ConversionError
from ..typing import Params, PRNGKey
from .common import Architecture, read_diffusers_folder
from .ddpm_unet import _undeprecate
from .layers import Conv2d, GroupNorm, Linear

__all__ = [
    "VARIANTS",
    "AutoencoderKL",
    "Posterior",
    "VAEConfig",
    "VAEFns",
    "build",
    "config_from_diffusers",
    "convert_diffusers_state_dict",
    "get_config",
    "init",
    "load_diffusers_folder",
    "make_vae",
]

# diffusers hard-codes eps 1e-6 for every norm of the VAE (resnets, attention, conv_norm_out).
NORM_EPS = 1e-6
# diffusers' DiagonalGaussianDistribution clamps logvar to this range.
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class VAEConfig:
    """Hyperparameters of one ``AutoencoderKL`` (the subset of diffusers' config we support).

    Attributes:
      block_out_channels: width per level; the encoder halves the side between levels, the
        decoder doubles it. Every width must be divisible by ``norm_num_groups``.
      layers_per_block: ResnetBlock2Ds per encoder level (decoder levels have one more).
      latent_channels: channels of the latent (4 for SD).
      norm_num_groups: GroupNorm groups everywhere.
      sample_size: nominal image side (informational; any side divisible by
        ``2 ** (levels - 1)`` works).
      scaling_factor: latent scale used by the diffusion model (0.18215 for SD-1.5).
      in_channels: image channels.
      out_channels: decoded image channels.
    """

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 512
    scaling_factor: float = 0.18215
    in_channels: int = 3
    out_channels: int = 3

    @property
    def downscale(self) -> int:
        """Image side / latent side."""
        return 2 ** (len(self.block_out_channels) - 1)


VARIANTS: dict[str, VAEConfig] = {
    # stable-diffusion-v1-5/vae (also Arc2Face's): 83,653,863 params, 512 px -> 64 x 64 x 4.
    "sd15": VAEConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512),
    # Not a released model: two levels, one block each, for fast parity tests.
    "tiny": VAEConfig(block_out_channels=(32, 64), layers_per_block=1, sample_size=32),
}


# ---------------------------------------------------------------------------------------------
# Modules (names mirror diffusers)


class ResnetBlock2D(nnx.Module):
    """diffusers ``ResnetBlock2D`` without time embedding: GN-SiLU-conv3x3 twice, plus shortcut."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, *, rngs: nnx.Rngs):
        self.norm1 = GroupNorm(groups, in_channels, eps=NORM_EPS)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, bias=True, rngs=rngs)
        self.norm2 = GroupNorm(groups, out_channels, eps=NORM_EPS)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=True, rngs=rngs)
        self.conv_shortcut = (
            Conv2d(in_channels, out_channels, 1, bias=True, rngs=rngs)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C_in) -> (B, H, W, C_out)."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nnx.Module):
    """diffusers ``Attention`` as the VAE mid block uses it: one head over all H*W positions.

    GroupNorm, Linear ``to_q``/``to_k``/``to_v``, ``softmax(q k^T / sqrt(C)) v``, Linear
    ``to_out.0``, plus the input (``residual_connection=True``, rescale factor 1).
    """

    def __init__(self, channels: int, groups: int, *, rngs: nnx.Rngs):
        self.group_norm = GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = Linear(channels, channels, rngs=rngs)
        self.to_k = Linear(channels, channels, rngs=rngs)
        self.to_v = Linear(channels, channels, rngs=rngs)
        self.to_out = nnx.List([Linear(channels, channels, rngs=rngs)])  # [1] is a Dropout

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        hn = self.group_norm(x).reshape(b, h * w, c)
        q, k, v = self.to_q(hn), self.to_k(hn), self.to_v(hn)
        logits = jnp.einsum("bic,bjc->bij", q, k) * (c**-0.5)
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)  # upcast
        out = jnp.einsum("bij,bjc->bic", attn, v)
        return x + self.to_out[0](out).reshape(b, h, w, c)


class Downsample2D(nnx.Module):
    """Halve H and W: zero-pad right and bottom by one (diffusers' padding=0 path), 3x3 s2 conv."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv2d(channels, channels, 3, stride=2, bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H // 2, W // 2, C)."""
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample2D(nnx.Module):
    """Double H and W: nearest-neighbour, then a 3x3 conv (padding 1)."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv2d(channels, channels, 3, padding=1, bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, 2H, 2W, C)."""
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class _ResnetStack(nnx.Module):
    """``resnets``: ``n`` ResnetBlock2Ds, the first from ``c_in``, all to ``c_out``."""

    def __init__(self, c_in: int, c_out: int, n: int, groups: int, *, rngs: nnx.Rngs):
        self.resnets = nnx.List(
            [ResnetBlock2D(c_in if j == 0 else c_out, c_out, groups, rngs=rngs) for j in range(n)]
        )

    def _resnets(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        return x


class DownEncoderBlock2D(_ResnetStack):
    """``resnets`` then an optional ``downsamplers.0``."""

    def __init__(self, c_in: int, c_out: int, n: int, groups: int, down: bool, *, rngs: nnx.Rngs):
        super().__init__(c_in, c_out, n, groups, rngs=rngs)
        self.downsamplers = nnx.List([Downsample2D(c_out, rngs=rngs)]) if down else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self._resnets(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpDecoderBlock2D(_ResnetStack):
    """``resnets`` then an optional ``upsamplers.0``."""

    def __init__(self, c_in: int, c_out: int, n: int, groups: int, up: bool, *, rngs: nnx.Rngs):
        super().__init__(c_in, c_out, n, groups, rngs=rngs)
        self.upsamplers = nnx.List([Upsample2D(c_out, rngs=rngs)]) if up else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self._resnets(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class UNetMidBlock2D(nnx.Module):
    """``resnets.0``, ``attentions.0``, ``resnets.1`` at constant width."""

    def __init__(self, channels: int, groups: int, *, rngs: nnx.Rngs):
        self.attentions = nnx.List([Attention(channels, groups, rngs=rngs)])
        self.resnets = nnx.List(
            [ResnetBlock2D(channels, channels, groups, rngs=rngs) for _ in range(2)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Encoder(nnx.Module):
    """diffusers ``Encoder`` with ``double_z=True``: image -> 2 * latent_channels moments."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        widths, g = config.block_out_channels, config.norm_num_groups
        self.conv_in = Conv2d(config.in_channels, widths[0], 3, padding=1, bias=True, rngs=rngs)
        self.down_blocks = nnx.List(
            [
                DownEncoderBlock2D(
                    widths[max(i - 1, 0)],
                    widths[i],
                    config.layers_per_block,
                    g,
                    i < len(widths) - 1,
                    rngs=rngs,
                )
                for i in range(len(widths))
            ]
        )
        self.mid_block = UNetMidBlock2D(widths[-1], g, rngs=rngs)
        self.conv_norm_out = GroupNorm(g, widths[-1], eps=NORM_EPS)
        self.conv_out = Conv2d(
            widths[-1], 2 * config.latent_channels, 3, padding=1, bias=True, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, in_channels) -> (B, H / f, W / f, 2 * latent_channels)."""
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """diffusers ``Decoder`` (``norm_type="group"``): latent -> image."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        rev, g = config.block_out_channels[::-1], config.norm_num_groups
        self.conv_in = Conv2d(config.latent_channels, rev[0], 3, padding=1, bias=True, rngs=rngs)
        self.mid_block = UNetMidBlock2D(rev[0], g, rngs=rngs)
        self.up_blocks = nnx.List(
            [
                UpDecoderBlock2D(
                    rev[max(i - 1, 0)],
                    rev[i],
                    config.layers_per_block + 1,
                    g,
                    i < len(rev) - 1,
                    rngs=rngs,
                )
                for i in range(len(rev))
            ]
        )
        self.conv_norm_out = GroupNorm(g, rev[-1], eps=NORM_EPS)
        self.conv_out = Conv2d(rev[-1], config.out_channels, 3, padding=1, bias=True, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        """(B, h, w, latent_channels) -> (B, h * f, w * f, out_channels)."""
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
    """diffusers ``AutoencoderKL`` (``use_quant_conv`` and ``use_post_quant_conv`` on).

    Args:
      config: hyperparameters (see :data:`VARIANTS`).
      rngs: key source for the throwaway initial weights (real ones come from conversion).
    """

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        self.config = config
        for w in config.block_out_channels:
            if w % config.norm_num_groups:
                raise ValueError(f"width {w} not divisible by {config.norm_num_groups} groups")
        lat = config.latent_channels
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)
        self.quant_conv = Conv2d(2 * lat, 2 * lat, 1, bias=True, rngs=rngs)
        self.post_quant_conv = Conv2d(lat, lat, 1, bias=True, rngs=rngs)

    def moments(self, images: jax.Array) -> jax.Array:
        """(B, H, W, C) images in [-1, 1] -> (B, h, w, 2 * latent) ``[mean, logvar]`` moments."""
        return self.quant_conv(self.encoder(images))

    def decode(self, latents: jax.Array) -> jax.Array:
        """(B, h, w, latent) unscaled latents -> (B, H, W, out_channels) images in ~[-1, 1]."""
        return self.decoder(self.post_quant_conv(latents))


# ---------------------------------------------------------------------------------------------
# Pure functions


class Posterior(NamedTuple):
    """The diagonal Gaussian ``q(z | x)`` (diffusers' ``DiagonalGaussianDistribution``).

    Attributes:
      mean: (B, h, w, latent) unscaled latent mean.
      logvar: same shape, clamped to [-30, 20] as diffusers does.
      sample: ``mean + exp(logvar / 2) * N(0, 1)`` when a key was given, else None.
    """

    mean: jax.Array
    logvar: jax.Array
    sample: jax.Array | None = None


@dataclass(frozen=True)
class VAEFns:
    """Pure ``encode``/``decode`` of one variant; they close over structure only (no jit).

    Attributes:
      config: the variant's config.
      encode: ``encode(params, images, *, key=None) -> Posterior``; images (B, H, W, C) in
        [-1, 1] with H, W divisible by ``config.downscale``.
      decode: ``decode(params, latents) -> images``; latents unscaled (B, h, w, latent).
    """

    config: VAEConfig
    encode: Callable[..., Posterior]
    decode: Callable[[Params, jax.Array], jax.Array]


def make_vae(variant: str | VAEConfig) -> VAEFns:
    """The pure encoder and decoder of a variant (jit them at the edge).

    Args:
      variant: a :data:`VARIANTS` name or a config.
    """
    config = get_config(variant)
    graphdef, _ = build(config)
    lat = config.latent_channels

    def encode(params: Params, images: jax.Array, *, key: PRNGKey | None = None) -> Posterior:
        if (
            images.ndim != 4
            or images.shape[1] % config.downscale
            or images.shape[2] % config.downscale
        ):
            raise ValueError(
                f"VAE expects (B, H, W, C) with H, W divisible by {config.downscale}, "
                f"got {images.shape}"
            )
        moments = nnx.merge(graphdef, params).moments(images)
        mean, logvar = moments[..., :lat], jnp.clip(moments[..., lat:], *LOGVAR_RANGE)
        sample = None
        if key is not None:
            noise = jax.random.normal(key, mean.shape, mean.dtype)
            sample = mean + jnp.exp(0.5 * logvar) * noise
        return Posterior(mean, logvar, sample)

    def decode(params: Params, latents: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params).decode(latents)

    return VAEFns(config, encode, decode)


ARCH = Architecture("VAE", AutoencoderKL, VAEConfig, VARIANTS, host_random=True)
get_config, build, init = ARCH.get_config, ARCH.build, ARCH.init


# ---------------------------------------------------------------------------------------------
# Conversion (host-side NumPy, never jitted)


def convert_diffusers_state_dict(
    state_dict: Mapping[str, Any], variant: str | VAEConfig, *, dtype: jnp.dtype = jnp.float32
) -> Params:
    """Convert a diffusers ``AutoencoderKL`` state dict into our params.

    Names match one to one; conv kernels OIHW -> HWIO, linear weights transposed. Pre-0.15
    attention names (``query``, ``key``, ``value``, ``proj_attn``, still in many Hub VAEs) are
    renamed to today's first.

    Args:
      state_dict: diffusers key -> array; a ``module.`` prefix on every key is dropped first.
      variant: the matching :data:`VARIANTS` name or config (see :func:`config_from_diffusers`).
      dtype: dtype of the returned params.

    Returns:
      A concrete NNX state matching ``build(variant)[1]``.

    Raises:
      ConversionError: naming every missing, unused or mis-shaped key.
    """
    return ARCH.convert(state_dict, variant, dtype=dtype, rename=_undeprecate)


def config_from_diffusers(cfg: Mapping[str, Any]) -> VAEConfig:
    """Map a diffusers ``AutoencoderKL`` ``config.json`` onto a :class:`VAEConfig`.

    Only the SD layout is accepted (DownEncoderBlock2D/UpDecoderBlock2D, SiLU, both quant convs,
    mid-block attention, no shift factor or latent statistics); anything else raises rather
    than silently converting to a different network.

    Raises:
      ConversionError: naming the first setting that does not fit.
    """

    def require(name: str, ok: Callable[[Any], bool], default: Any, needs: str) -> Any:
        value = cfg.get(name, default)
        if not ok(value):
            raise ConversionError(
                f"diffusers VAE config {name}={value!r} is not supported (needs {needs})"
            )
        return value

    require("_class_name", lambda v: v == "AutoencoderKL", "AutoencoderKL", "'AutoencoderKL'")
    require("act_fn", lambda v: v == "silu", "silu", "'silu'")
    require("shift_factor", lambda v: v in (None, 0, 0.0), None, "None")
    require("latents_mean", lambda v: v is None, None, "None")
    require("latents_std", lambda v: v is None, None, "None")
    require("use_quant_conv", lambda v: v is True, True, "True")
    require("use_post_quant_conv", lambda v: v is True, True, "True")
    require("mid_block_add_attention", lambda v: v is True, True, "True")
    widths = tuple(int(c) for c in cfg.get("block_out_channels", (64,)))
    n = len(widths)
    require(
        "down_block_types",
        lambda v: list(v) == ["DownEncoderBlock2D"] * n,
        ("DownEncoderBlock2D",),
        f"{n} x 'DownEncoderBlock2D'",
    )
    require(
        "up_block_types",
        lambda v: list(v) == ["UpDecoderBlock2D"] * n,
        ("UpDecoderBlock2D",),
        f"{n} x 'UpDecoderBlock2D'",
    )
    groups = int(cfg.get("norm_num_groups", 32))
    if any(w % groups for w in widths):
        raise ConversionError(f"block_out_channels {widths} not divisible by {groups} groups")
    size = cfg.get("sample_size", 32)
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise ConversionError(f"sample_size {size} is not square")
        size = size[0]
    return VAEConfig(
        block_out_channels=widths,
        layers_per_block=int(cfg.get("layers_per_block", 1)),
        latent_channels=int(cfg.get("latent_channels", 4)),
        norm_num_groups=groups,
        sample_size=int(size),
        scaling_factor=float(cfg.get("scaling_factor", 0.18215)),
        in_channels=int(cfg.get("in_channels", 3)),
        out_channels=int(cfg.get("out_channels", 3)),
    )


def load_diffusers_folder(
    path: str | os.PathLike[str], *, dtype: jnp.dtype = jnp.float32
) -> tuple[VAEConfig, Params]:
    """Read a diffusers ``AutoencoderKL`` folder, or a pipeline's ``vae/``.

    Returns ``(config, params)`` (the files :func:`~jaxcloak.nets.common.read_diffusers_folder`
    looks for); ``make_vae(config)`` gives the matching functions.

    Raises:
      ConversionError: a missing file, an unsupported config, or any key problem.
    """
    return read_diffusers_folder(
        path, "vae", config_from_diffusers, convert_diffusers_state_dict, dtype=dtype
    )
