"""The DDPM score network of SDEdit/DiffusionCLIP/DiffAM (``models/ddpm/diffusion.py``) in Flax NNX.

This is the UNet of Ho et al.'s DDPM as ported to PyTorch for SDEdit's ``celeba_hq.ckpt``, the
network MAP and DiffAM fine-tune (docs/map.md, "The base: DiffAM's pipeline"). Attribute names
mirror the torch module tree, so every key of that checkpoint is an NNX state path:
``"down.0.block.1.norm1.weight"`` is ``('down', 0, 'block', 1, 'norm1', 'weight')``::

    temb.dense.{0,1}                    Linear ch -> 4ch -> 4ch
    conv_in                             3x3, in_channels -> ch
    down.{i}.block.{j}                  ResnetBlock (norm1, conv1, temb_proj, norm2, conv2,
                                        nin_shortcut when the width changes)
    down.{i}.attn.{j}                   AttnBlock (norm, q, k, v, proj_out: 1x1 convs)
    down.{i}.downsample.conv            all levels but the last
    mid.{block_1, attn_1, block_2}
    up.{i}.block.{j} (j <= num_res_blocks), up.{i}.attn.{j}, up.{i}.upsample.conv (i > 0)
    norm_out, conv_out

``up`` is indexed by level (as ``down``) but executed from the last level to the first, and the
skip stack (``conv_in``, every down block, every downsample) is popped in reverse and
concatenated after the running activation on the channel axis, exactly as torch does.
Layout is NHWC; dropout is left out (MAP and DiffAM fine-tune with dropout 0).

Two converters fill the params: :func:`convert_ddpm_state_dict` for the original checkpoint's
keys, :func:`convert_diffusers_state_dict` / :func:`load_diffusers_folder` for a diffusers
``UNet2DModel`` in the ``google/ddpm-celebahq-256`` layout (whose config maps onto ours with
:func:`config_from_diffusers`). Both raise :class:`ConversionError` naming every missing,
unused or mis-shaped key.

Typical use (weights are arguments, the network is a definition)::

    params = convert_ddpm_state_dict(load_checkpoint("celeba_hq.ckpt"), "celeba_hq")
    eps_fn = make_score("celeba_hq")
    eps = jax.jit(eps_fn)(params, x_t, t)   # (B, 256, 256, 3) in [-1, 1], (B,) -> (B, 256, 256, 3)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..convert.torch import (
    ConversionError,
    KeyMapEntry,
    fill_params,
    key_map,
    strip_prefix,
)
from ..typing import Params
from .common import Architecture, read_diffusers_folder
from .layers import Conv2d, GroupNorm, Linear

__all__ = [
    "VARIANTS",
    "AttnBlock",
    "DDPMConfig",
    "DDPMUNet",
    "Downsample",
    "ResnetBlock",
    "ScoreFn",
    "Upsample",
    "build",
    "config_from_diffusers",
    "convert_ddpm_state_dict",
    "convert_diffusers_state_dict",
    "diffusers_key",
    "get_config",
    "init",
    "load_diffusers_folder",
    "make_score",
    "timestep_embedding",
]

# DiffusionCLIP's ``Normalize``: 32 groups, eps 1e-6, everywhere.
NUM_GROUPS = 32
NORM_EPS = 1e-6


ScoreFn = Callable[[Params, jax.Array, jax.Array], jax.Array]
"""``eps_fn(params, x, t)``: (B, R, R, C) noisy images and (B,) float timesteps -> (B, R, R, C)."""


@dataclass(frozen=True)
class DDPMConfig:
    """Hyperparameters of one DDPM UNet (DiffusionCLIP ``config.model`` plus the image size).

    Attributes:
      ch: base width; level ``i`` has ``ch * ch_mult[i]`` channels, the time embedding ``4 ch``.
        Every width must be divisible by the 32 GroupNorm groups.
      ch_mult: width multiplier per level; one level per entry, halving the side between levels.
      num_res_blocks: ResnetBlocks per down level (up levels have one more).
      attn_resolutions: sides at which every ResnetBlock is followed by an AttnBlock.
      resolution: input side R (square); fixes which levels carry attention.
      out_ch: output channels (3: the predicted noise).
      in_channels: input channels.
      resamp_with_conv: 3x3 convs in Down/Upsample (True in every released config); False is
        2x2 average pooling and plain nearest upsampling.
      dropout: training-only; kept so configs read like DiffusionCLIP's, ignored here.
    """

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    resolution: int
    out_ch: int = 3
    in_channels: int = 3
    resamp_with_conv: bool = True
    dropout: float = 0.0

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)

    def level_side(self, level: int) -> int:
        """Spatial side of ``level`` (torch halves with ``//`` after each level)."""
        side = self.resolution
        for _ in range(level):
            side //= 2
        return side

    def has_attn(self, level: int) -> bool:
        return self.level_side(level) in self.attn_resolutions


VARIANTS: dict[str, DDPMConfig] = {
    # SDEdit/DiffusionCLIP/DiffAM celeba_hq.ckpt (configs/celeba.yml): 113,673,219 params.
    "celeba_hq": DDPMConfig(
        ch=128,
        ch_mult=(1, 1, 2, 2, 4, 4),
        num_res_blocks=2,
        attn_resolutions=(16,),
        resolution=256,
    ),
    # Not a released model: the celeba_hq layout (six levels, attention at 16 px and in the
    # middle, 256 px input) at a quarter of the width and one block per level: 4,849,987
    # params; one 256x256 forward takes about 0.65 s on a 2-core CPU (celeba_hq: about 8 s).
    # For demos and smoke runs of the MAP loop at the real image size.
    "small": DDPMConfig(
        ch=32,
        ch_mult=(1, 1, 2, 2, 4, 4),
        num_res_blocks=1,
        attn_resolutions=(16,),
        resolution=256,
    ),
    # Not a released model: the score network `jaxcloak protect --method map` embeds when the
    # user gives none (pipelines.map_photos): four levels at 128 px, attention at 16 px, small
    # enough that a MAP train step runs in seconds on a 2-core CPU.
    "embedded": DDPMConfig(
        ch=32,
        ch_mult=(1, 2, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(16,),
        resolution=128,
    ),
    # Not a released model: two levels at 32 px (attention at 16 px) for fast tests; widths are
    # multiples of 32 because of the 32-group GroupNorm.
    "tiny": DDPMConfig(
        ch=32,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(16,),
        resolution=32,
    ),
}


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """DDPM sinusoidal embedding, float32: ``[sin(t f_k), cos(t f_k)]``, ``f_k = 1e4^(-k/(h-1))``.

    Args:
      t: (B,) timesteps (any real dtype; fractional values are fine).
      dim: embedding width (``ch``); ``h = dim // 2``; an odd ``dim`` gets a zero last column.

    Returns:
      (B, dim) float32.
    """
    half = dim // 2
    # Same operation order as torch: float32 arange times the float32-rounded scale, then exp.
    freqs = jnp.exp(
        jnp.arange(half, dtype=jnp.float32) * jnp.float32(-math.log(10000) / (half - 1))
    )
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    return jnp.pad(emb, ((0, 0), (0, 1))) if dim % 2 else emb


def _norm(channels: int) -> GroupNorm:
    return GroupNorm(NUM_GROUPS, channels, eps=NORM_EPS)


class ResnetBlock(nnx.Module):
    """GN-swish-conv3x3, + Linear(swish(temb)), GN-swish-conv3x3, plus a shortcut.

    The shortcut is the identity, or a 1x1 ``nin_shortcut`` conv when the width changes.

    Args:
      in_channels: input width.
      out_channels: output width; a 1x1 ``nin_shortcut`` is added when it differs.
      temb_channels: time-embedding width (``4 ch``).
      rngs: key source for the throwaway initial weights.
    """

    def __init__(
        self, in_channels: int, out_channels: int, temb_channels: int, *, rngs: nnx.Rngs
    ) -> None:
        self.norm1 = _norm(in_channels)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, bias=True, rngs=rngs)
        self.temb_proj = Linear(temb_channels, out_channels, rngs=rngs)
        self.norm2 = _norm(out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=True, rngs=rngs)
        self.nin_shortcut = (
            Conv2d(in_channels, out_channels, 1, bias=True, rngs=rngs)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        """(B, H, W, C_in), (B, temb_channels) -> (B, H, W, C_out)."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.temb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))  # torch's dropout sits before conv2
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nnx.Module):
    """Single-head self-attention over all H*W positions, with a residual.

    ``softmax(q k^T / sqrt(C)) v`` with 1x1-conv ``q``, ``k``, ``v`` on the GroupNormed input,
    then a 1x1 ``proj_out``.
    """

    def __init__(self, channels: int, *, rngs: nnx.Rngs) -> None:
        self.norm = _norm(channels)
        self.q = Conv2d(channels, channels, 1, bias=True, rngs=rngs)
        self.k = Conv2d(channels, channels, 1, bias=True, rngs=rngs)
        self.v = Conv2d(channels, channels, 1, bias=True, rngs=rngs)
        self.proj_out = Conv2d(channels, channels, 1, bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        hn = self.norm(x)
        q, k, v = (m(hn).reshape(b, h * w, c) for m in (self.q, self.k, self.v))
        # Scaled after the product, as torch does.
        logits = jnp.einsum("bic,bjc->bij", q, k) * (c**-0.5)
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)  # upcast
        out = jnp.einsum("bij,bjc->bic", attn, v)
        return x + self.proj_out(out.reshape(b, h, w, c))


class Downsample(nnx.Module):
    """Halve H and W: zero-pad right and bottom by one, then a 3x3 stride-2 VALID conv.

    (2x2 average pooling when ``with_conv`` is False.)
    """

    def __init__(self, channels: int, with_conv: bool = True, *, rngs: nnx.Rngs) -> None:
        self.conv = (
            Conv2d(channels, channels, 3, stride=2, bias=True, rngs=rngs) if with_conv else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H // 2, W // 2, C)."""
        if self.conv is None:
            window = (1, 2, 2, 1)
            zero = jnp.zeros((), x.dtype)
            return jax.lax.reduce_window(x, zero, jax.lax.add, window, window, "VALID") / 4
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
    """Double H and W: nearest-neighbour, then a 3x3 conv (padding 1) when ``with_conv``."""

    def __init__(self, channels: int, with_conv: bool = True, *, rngs: nnx.Rngs) -> None:
        self.conv = (
            Conv2d(channels, channels, 3, padding=1, bias=True, rngs=rngs) if with_conv else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, 2H, 2W, C)."""
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return x if self.conv is None else self.conv(x)


class TimeEmbedding(nnx.Module):
    """torch's bare ``temb`` module: holds ``dense = [Linear(ch, 4ch), Linear(4ch, 4ch)]``."""

    def __init__(self, ch: int, *, rngs: nnx.Rngs) -> None:
        self.dense = nnx.List([Linear(ch, 4 * ch, rngs=rngs), Linear(4 * ch, 4 * ch, rngs=rngs)])

    def __call__(self, t: jax.Array, ch: int) -> jax.Array:
        """(B,) timesteps -> (B, 4 ch)."""
        return self.dense[1](jax.nn.silu(self.dense[0](timestep_embedding(t, ch))))


class Level(nnx.Module):
    """One resolution level: torch's bare ``nn.Module`` holding ``block``, ``attn`` and a resampler.

    ``attn`` is empty at levels without attention; ``resample`` is stored under torch's name,
    ``downsample`` or ``upsample``, and is None at the level that has none.
    """

    def __init__(
        self,
        blocks: list[ResnetBlock],
        attns: list[AttnBlock],
        resample: Downsample | Upsample | None,
        resample_name: str,
    ) -> None:
        self.block = nnx.List(blocks)
        self.attn = nnx.List(attns)
        setattr(self, resample_name, resample)


class Mid(nnx.Module):
    """torch's bare ``mid`` module: ResnetBlock, AttnBlock, ResnetBlock at the lowest level."""

    def __init__(self, channels: int, temb_channels: int, *, rngs: nnx.Rngs) -> None:
        self.block_1 = ResnetBlock(channels, channels, temb_channels, rngs=rngs)
        self.attn_1 = AttnBlock(channels, rngs=rngs)
        self.block_2 = ResnetBlock(channels, channels, temb_channels, rngs=rngs)

    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        return self.block_2(self.attn_1(self.block_1(x, temb)), temb)


class DDPMUNet(nnx.Module):
    """DiffusionCLIP's ``DDPM``: predicts the noise of ``x_t`` at timestep ``t``.

    Args:
      config: hyperparameters (see :data:`VARIANTS`).
      rngs: key source for the throwaway initial weights (real ones come from conversion).
    """

    def __init__(self, config: DDPMConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        ch, mult, nblocks = config.ch, config.ch_mult, config.num_res_blocks
        in_mult = (1, *mult)
        temb_ch = 4 * ch
        self.temb = TimeEmbedding(ch, rngs=rngs)
        self.conv_in = Conv2d(config.in_channels, ch, 3, padding=1, bias=True, rngs=rngs)

        down = []
        block_in = ch
        for i in range(config.num_levels):
            block_in, block_out = ch * in_mult[i], ch * mult[i]
            blocks, attns = [], []
            for _ in range(nblocks):
                blocks.append(ResnetBlock(block_in, block_out, temb_ch, rngs=rngs))
                block_in = block_out
                if config.has_attn(i):
                    attns.append(AttnBlock(block_in, rngs=rngs))
            last = i == config.num_levels - 1
            resample = None if last else Downsample(block_in, config.resamp_with_conv, rngs=rngs)
            down.append(Level(blocks, attns, resample, "downsample"))
        self.down = nnx.List(down)

        self.mid = Mid(block_in, temb_ch, rngs=rngs)

        # Built top level first (each level's input width is the previous level's output), then
        # stored by level like torch's ``self.up.insert(0, up)``.
        up = []
        for i in reversed(range(config.num_levels)):
            block_out = ch * mult[i]
            blocks, attns = [], []
            for j in range(nblocks + 1):
                # The last block of a level takes the skip saved before this level's blocks ran.
                skip_in = ch * (in_mult[i] if j == nblocks else mult[i])
                blocks.append(ResnetBlock(block_in + skip_in, block_out, temb_ch, rngs=rngs))
                block_in = block_out
                if config.has_attn(i):
                    attns.append(AttnBlock(block_in, rngs=rngs))
            resample = Upsample(block_in, config.resamp_with_conv, rngs=rngs) if i else None
            up.append(Level(blocks, attns, resample, "upsample"))
        self.up = nnx.List(up[::-1])

        self.norm_out = _norm(block_in)
        self.conv_out = Conv2d(block_in, config.out_ch, 3, padding=1, bias=True, rngs=rngs)

    def time_embedding(self, t: jax.Array) -> jax.Array:
        """(B,) timesteps -> (B, 4 ch) after both dense layers."""
        return self.temb(t, self.config.ch)

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """(B, R, R, in_channels) noisy images, (B,) timesteps -> (B, R, R, out_ch) noise."""
        nblocks = self.config.num_res_blocks
        # The sinusoids are computed from float32 timesteps (bf16 cannot hold t = 999) and
        # then join the activations' dtype (a no-op in float32).
        temb = self.time_embedding(t).astype(x.dtype)

        hs = [self.conv_in(x)]
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if len(level.attn):
                    h = level.attn[i](h)
                hs.append(h)
            if level.downsample is not None:
                hs.append(level.downsample(hs[-1]))

        h = self.mid(hs[-1], temb)

        for level in reversed(self.up):
            for i in range(nblocks + 1):
                h = level.block[i](jnp.concatenate([h, hs.pop()], axis=-1), temb)
                if len(level.attn):
                    h = level.attn[i](h)
            if level.upsample is not None:
                h = level.upsample(h)

        return self.conv_out(jax.nn.silu(self.norm_out(h)))


ARCH = Architecture("DDPM", DDPMUNet, DDPMConfig, VARIANTS, host_random=True)
get_config, build, init = ARCH.get_config, ARCH.build, ARCH.init


def make_score(variant: str | DDPMConfig) -> ScoreFn:
    """The pure noise predictor of a variant: closes over structure only.

    Args:
      variant: a :data:`VARIANTS` name or a config.

    Returns:
      ``eps_fn(params, x, t)``: ``x`` (B, R, R, in_channels) in [-1, 1], ``t`` (B,) float
      timesteps in [0, T) -> predicted noise (B, R, R, out_ch), the ``eps_theta(x_t, t)`` of the
      DDIM step (:func:`jaxcloak.diffusion.ddim_step`). Not jitted (jit at the edge).
    """
    config = get_config(variant)
    graphdef, _ = build(config)
    r = config.resolution

    def eps_fn(params: Params, x: jax.Array, t: jax.Array) -> jax.Array:
        # torch asserts the side too: attention placement is tied to the configured resolution.
        if x.ndim != 4 or x.shape[1:] != (r, r, config.in_channels):
            raise ValueError(
                f"DDPM UNet expects (B, {r}, {r}, {config.in_channels}), got {x.shape}"
            )
        if jnp.shape(t) != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {jnp.shape(t)}")
        return nnx.merge(graphdef, params)(x, t)

    return eps_fn


# ---------------------------------------------------------------------------------------------
# Conversion (host-side NumPy, never jitted)
# ---------------------------------------------------------------------------------------------


def convert_ddpm_state_dict(
    state_dict: Mapping[str, Any], variant: str | DDPMConfig, *, dtype: jnp.dtype = jnp.float32
) -> Params:
    """Convert a DiffusionCLIP/SDEdit ``DDPM`` state dict (``celeba_hq.ckpt`` keys) to params.

    Conv kernels OIHW -> HWIO, linear weights transposed, GroupNorm affine unchanged.

    Args:
      state_dict: torch key -> array (NumPy, or anything ``np.asarray`` accepts); a ``module.``
        prefix on every key (``nn.DataParallel`` fine-tunes) is dropped first.
      variant: a :data:`VARIANTS` name or a config.
      dtype: dtype of the returned params.

    Returns:
      A concrete NNX state matching ``build(variant)[1]`` leaf for leaf.

    Raises:
      ConversionError: naming every missing, unused or mis-shaped key.
    """
    return ARCH.convert(state_dict, variant, dtype=dtype)


_RESNET_NAMES = {"temb_proj": "time_emb_proj", "nin_shortcut": "conv_shortcut"}
_ATTN_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
# Names diffusers < 0.15 saved attention weights under (google/ddpm-* on the Hub still has them).
_DEPRECATED_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_DEPRECATED_RE = re.compile(r"(^|\.)(attentions\.\d+\.)(query|key|value|proj_attn)\.")


def diffusers_key(ddpm_key: str, num_levels: int) -> str:
    """The diffusers ``UNet2DModel`` name of a DDPM state-dict key.

    ``up.{i}`` is diffusers' ``up_blocks.{num_levels - 1 - i}`` (diffusers numbers up blocks in
    execution order); ``mid.block_1/attn_1/block_2`` is ``mid_block.resnets.0/attentions.0/
    resnets.1``; ResnetBlock ``temb_proj``/``nin_shortcut`` are ``time_emb_proj``/
    ``conv_shortcut``; AttnBlock ``norm, q, k, v, proj_out`` are ``group_norm, to_q, to_k, to_v,
    to_out.0``.

    Args:
      ddpm_key: e.g. ``"up.4.attn.2.proj_out.weight"``.
      num_levels: ``len(ch_mult)``.
    """
    parts = ddpm_key.split(".")
    head, rest = parts[0], parts[1:]
    if head == "temb":  # temb.dense.{0,1}.X
        return f"time_embedding.linear_{int(rest[1]) + 1}.{rest[2]}"
    if head == "norm_out":
        return "conv_norm_out." + ".".join(rest)
    if head in ("conv_in", "conv_out"):
        return ddpm_key

    def inner(kind: str, index: str, tail: list[str]) -> str:
        names = _RESNET_NAMES if kind == "block" else _ATTN_NAMES
        tail = [names.get(tail[0], tail[0]), *tail[1:]]
        return f"{'resnets' if kind == 'block' else 'attentions'}.{index}." + ".".join(tail)

    if head == "mid":  # mid.{block_1, attn_1, block_2}.X
        kind, index = {
            "block_1": ("block", "0"),
            "attn_1": ("attn", "0"),
            "block_2": ("block", "1"),
        }[rest[0]]
        return "mid_block." + inner(kind, index, rest[1:])
    level, kind = int(rest[0]), rest[1]
    # diffusers numbers up blocks in execution order, we (and torch) by level.
    index = level if head == "down" else num_levels - 1 - level
    prefix = f"{head}_blocks.{index}."
    if kind in ("downsample", "upsample"):  # {down,up}sample.conv.X
        return prefix + f"{kind}rs.0." + ".".join(rest[2:])
    return prefix + inner(kind, rest[2], rest[3:])


def _attn_linear_to_hwio(a: np.ndarray) -> np.ndarray:
    """diffusers' attention ``Linear`` (out, in) -> our 1x1 conv kernel (1, 1, in, out)."""
    return a.T[None, None]


def _diffusers_entries(abstract: Params, num_levels: int) -> dict[str, KeyMapEntry]:
    entries = {}
    for name, entry in key_map(abstract).items():
        dname = diffusers_key(name, num_levels)
        is_attn_matrix = ".attn" in name and entry.path[-1] == "weight" and len(entry.shape) == 4
        if is_attn_matrix:  # diffusers holds q/k/v/proj_out as Linear layers
            entry = replace(
                entry, torch_shape=entry.shape[2:][::-1], transform=_attn_linear_to_hwio
            )
        entries[dname] = entry
    return entries


def _undeprecate(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rename pre-0.15 attention keys (``query``, ``key``, ``value``, ``proj_attn``) to today's."""
    out: dict[str, Any] = {}
    for k, v in state_dict.items():
        new = _DEPRECATED_RE.sub(lambda m: f"{m[1]}{m[2]}{_DEPRECATED_ATTN[m[3]]}.", k)
        if new in out:
            raise ConversionError(f"key {k!r} duplicates {new!r} (old and new attention names)")
        out[new] = v
    return out


def convert_diffusers_state_dict(
    state_dict: Mapping[str, Any], variant: str | DDPMConfig, *, dtype: jnp.dtype = jnp.float32
) -> Params:
    """Convert a diffusers ``UNet2DModel`` state dict (``google/ddpm-celebahq-256`` layout).

    Keys are matched through :func:`diffusers_key`; attention projections, ``Linear`` in
    diffusers, become our 1x1 convs. Both current (``to_q``...) and pre-0.15 (``query``...)
    attention names are accepted.

    Args:
      state_dict: diffusers key -> array; a ``module.`` prefix on every key is dropped first.
      variant: the matching :data:`VARIANTS` name or config (see :func:`config_from_diffusers`).
      dtype: dtype of the returned params.

    Returns:
      A concrete NNX state matching ``build(variant)[1]``.

    Raises:
      ConversionError: naming (by diffusers name) every missing, unused or mis-shaped key.
    """
    config = get_config(variant)
    _, abstract = build(config)
    entries = _diffusers_entries(abstract, config.num_levels)
    return fill_params(_undeprecate(strip_prefix(state_dict)), entries, abstract, dtype=dtype)


def config_from_diffusers(cfg: Mapping[str, Any]) -> DDPMConfig:
    """Map a diffusers ``UNet2DModel`` ``config.json`` onto a :class:`DDPMConfig`.

    Only the DDPM layout is accepted (positional time embedding with ``flip_sin_to_cos=False``
    and ``freq_shift=1``, right/bottom-padded downsampling ``downsample_padding=0``, 32-group
    GroupNorm with eps 1e-6, single-head attention, DownBlock2D/AttnDownBlock2D mirrored by
    UpBlock2D/AttnUpBlock2D); anything else raises rather than converting to a different network.

    Raises:
      ConversionError: naming the first setting that does not fit.
    """

    def get(name: str, default: Any = None) -> Any:
        return cfg.get(name, default)

    def require(name: str, expected: Any, default: Any = None) -> None:
        if get(name, default) != expected:
            raise ConversionError(
                f"diffusers config {name}={get(name, default)!r} is not the DDPM layout "
                f"(needs {expected!r})"
            )

    if "_class_name" in cfg:
        require("_class_name", "UNet2DModel")
    require("time_embedding_type", "positional", "positional")
    require("flip_sin_to_cos", False, True)
    require("freq_shift", 1, 0)
    require("downsample_padding", 0, 1)
    require("act_fn", "silu", "silu")
    require("norm_num_groups", NUM_GROUPS, NUM_GROUPS)
    require("center_input_sample", False, False)
    require("resnet_time_scale_shift", "default", "default")
    require("class_embed_type", None)
    require("num_class_embeds", None)
    require("add_attention", True, True)
    require("downsample_type", "conv", "conv")
    require("upsample_type", "conv", "conv")
    require("mid_block_type", "UNetMidBlock2D", "UNetMidBlock2D")
    require("attn_norm_num_groups", None)
    if float(get("mid_block_scale_factor", 1)) != 1.0:
        require("mid_block_scale_factor", 1)
    if not math.isclose(float(get("norm_eps", 1e-5)), NORM_EPS, rel_tol=1e-6):
        require("norm_eps", NORM_EPS, 1e-5)

    widths = [int(c) for c in get("block_out_channels", (224, 448, 672, 896))]
    ch = widths[0]
    if any(w % ch for w in widths):
        raise ConversionError(f"block_out_channels {widths} are not multiples of {ch}")
    if get("time_embedding_dim") not in (None, 4 * ch):
        require("time_embedding_dim", 4 * ch)
    down = list(get("down_block_types", ()))
    up = list(get("up_block_types", ()))
    if len(down) != len(widths) or len(up) != len(widths):
        raise ConversionError(f"{len(widths)} widths but block types {down} / {up}")
    attn_levels = []
    for i, (d, u) in enumerate(zip(down, reversed(up), strict=True)):
        if (d, u) not in (("DownBlock2D", "UpBlock2D"), ("AttnDownBlock2D", "AttnUpBlock2D")):
            raise ConversionError(f"level {i}: blocks {d!r}/{u!r} are not the DDPM layout")
        if d.startswith("Attn"):
            attn_levels.append(i)
    head_dim = get("attention_head_dim")
    if head_dim is not None and any(head_dim != widths[i] for i in [*attn_levels, -1]):
        raise ConversionError(f"attention_head_dim={head_dim} means multi-head attention")
    size = get("sample_size")
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise ConversionError(f"sample_size {size} is not square")
        size = size[0]
    if size is None:
        raise ConversionError("diffusers config has no sample_size")
    config = DDPMConfig(
        ch=ch,
        ch_mult=tuple(w // ch for w in widths),
        num_res_blocks=int(get("layers_per_block", 2)),
        attn_resolutions=(),
        resolution=int(size),
        out_ch=int(get("out_channels", 3)),
        in_channels=int(get("in_channels", 3)),
        dropout=float(get("dropout", 0.0)),
    )
    return replace(config, attn_resolutions=tuple(config.level_side(i) for i in attn_levels))


def load_diffusers_folder(
    path: str | os.PathLike[str], *, dtype: jnp.dtype = jnp.float32
) -> tuple[DDPMConfig, Params]:
    """Read a diffusers ``UNet2DModel`` folder, or a pipeline's ``unet/``.

    Returns ``(config, params)`` (the files :func:`~jaxcloak.nets.common.read_diffusers_folder`
    looks for); ``make_score(config)`` is the matching noise predictor.

    Raises:
      ConversionError: a missing file, a config outside the DDPM layout, or any key problem.
    """
    return read_diffusers_folder(
        path, "unet", config_from_diffusers, convert_diffusers_state_dict, dtype=dtype
    )
