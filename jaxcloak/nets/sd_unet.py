"""diffusers' ``UNet2DConditionModel`` (the Stable Diffusion 1.5 latent UNet) in Flax NNX.

The denoiser of Stable Diffusion 1.5 and of Arc2Face (FaceCloak's stage-1 views), which swaps
SD's text encoder for ArcFace-conditioned CLIP tokens but keeps this UNet. Attribute names
mirror the diffusers module tree, so every key of a diffusers checkpoint is an NNX state path:
``"down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight"`` is
``('down_blocks', 0, 'attentions', 1, 'transformer_blocks', 0, 'attn2', 'to_k', 'weight')``::

    time_embedding.linear_{1,2}          Linear c0 -> 4 c0 -> 4 c0 (after the sinusoid time_proj)
    conv_in                              3x3, in_channels -> c0
    down_blocks.{i}.resnets.{j}          ResnetBlock2D (norm1, conv1, time_emb_proj, norm2, conv2,
                                         conv_shortcut when the width changes)
    down_blocks.{i}.attentions.{j}       Transformer2DModel (CrossAttnDownBlock2D only): norm,
                                         proj_in (1x1 conv), transformer_blocks.{k}, proj_out
        transformer_blocks.{k}           BasicTransformerBlock: norm1 + attn1 (self), norm2 +
                                         attn2 (cross, on encoder_hidden_states), norm3 + ff
                                         (ff.net.0.proj GEGLU, ff.net.2 Linear)
        attn{1,2}                        to_q, to_k, to_v (no bias), to_out.0
    down_blocks.{i}.downsamplers.0.conv  all levels but the last: 3x3 stride 2, padding 1
    mid_block.resnets.{0,1}, mid_block.attentions.0
    up_blocks.{i}...                     in execution order (diffusers numbers them so):
                                         up_blocks.0 is the lowest level; upsamplers.0.conv
                                         (nearest x2, then 3x3) on all but the last
    conv_norm_out, conv_out

The skip stack (``conv_in``, every down resnet/attention output, every downsample) is popped in
reverse and concatenated after the running activation on the channel axis, as diffusers does.

Head count: diffusers' ``attention_head_dim`` is, in this model, the number of heads (8 for
SD 1.5) and the head width is ``channels // heads`` (a naming quirk diffusers keeps for
backward compatibility, see ``UNet2DConditionModel.__init__``). We store it under diffusers'
name and expose :meth:`SDUNetConfig.heads`.

Layout is NHWC (latents (B, H, W, 4)); dropout is left out (inference, and dropout 0 in SD).

Typical use (weights are arguments, the network is a definition)::

    config, params = load_diffusers_folder("stable-diffusion-v1-5/unet")
    eps_fn = make_unet(config)
    eps = jax.jit(eps_fn)(params, latents, t, text_embeddings)
    # (B, 64, 64, 4), (B,), (B, 77, 768) -> (B, 64, 64, 4)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ..convert.torch import (
    ConversionError,
)
from ..typing import Params
from .common import Architecture, read_diffusers_folder
from .layers import Conv2d, GroupNorm, LayerNorm, Linear

__all__ = [
    "VARIANTS",
    "Attention",
    "BasicTransformerBlock",
    "CrossAttnDownBlock2D",
    "CrossAttnUpBlock2D",
    "DownBlock2D",
    "Downsample2D",
    "EpsFn",
    "LayerNorm",
    "ResnetBlock2D",
    "SDUNet",
    "SDUNetConfig",
    "TimestepEmbedding",
    "Transformer2DModel",
    "UNetMidBlock2DCrossAttn",
    "UpBlock2D",
    "Upsample2D",
    "build",
    "config_from_diffusers",
    "convert_diffusers_state_dict",
    "get_config",
    "init",
    "load_diffusers_folder",
    "make_unet",
    "timestep_embedding",
]


# Fixed inside diffusers, not configurable: Transformer2DModel's GroupNorm eps and the
# BasicTransformerBlock LayerNorm eps (Transformer2DModel's default norm_eps, which
# UNet2DConditionModel never overrides).
TRANSFORMER_GN_EPS = 1e-6
LAYER_NORM_EPS = 1e-5

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")

EpsFn = Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]
"""``eps_fn(params, latents, t, encoder_hidden_states)``: (B, H, W, C), (B,), (B, L, D) ->
(B, H, W, C_out)."""


@dataclass(frozen=True)
class SDUNetConfig:
    """Hyperparameters of one ``UNet2DConditionModel`` (diffusers' names and defaults).

    Attributes:
      block_out_channels: width per level; one level per entry, halving the side between levels.
      down_block_types: per level, ``CrossAttnDownBlock2D`` or ``DownBlock2D``.
      up_block_types: per up block in execution order (lowest level first), ``UpBlock2D`` or
        ``CrossAttnUpBlock2D``.
      layers_per_block: resnets per down block (up blocks have one more).
      cross_attention_dim: width D of ``encoder_hidden_states``.
      attention_head_dim: diffusers' name for the number of attention heads (int, or one per
        level); the head width is ``channels // heads``. See :meth:`heads`.
      sample_size: nominal latent side (64 for SD 1.5 at 512 px); any side divisible by
        ``2 ** (levels - 1)`` runs.
      in_channels: latent channels in.
      out_channels: predicted-noise channels out.
      norm_num_groups: GroupNorm groups of resnets, transformers and ``conv_norm_out``.
      norm_eps: eps of the resnet GroupNorms and ``conv_norm_out``.
      transformer_layers_per_block: BasicTransformerBlocks per Transformer2DModel.
      flip_sin_to_cos: sinusoid order ``[cos, sin]`` (True in SD) or ``[sin, cos]``.
      freq_shift: ``downscale_freq_shift`` of the sinusoid.
      downsample_padding: padding of the stride-2 downsampling convs.
      mid_block_scale_factor: the mid-block resnets divide their output by it.
    """

    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    layers_per_block: int = 2
    cross_attention_dim: int = 768
    attention_head_dim: int | tuple[int, ...] = 8
    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    transformer_layers_per_block: int = 1
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                f"{n} block_out_channels but block types {self.down_block_types} / "
                f"{self.up_block_types}"
            )
        for t in self.down_block_types:
            if t not in DOWN_BLOCK_TYPES:
                raise ValueError(f"unsupported down block {t!r}; supported: {DOWN_BLOCK_TYPES}")
        for t in self.up_block_types:
            if t not in UP_BLOCK_TYPES:
                raise ValueError(f"unsupported up block {t!r}; supported: {UP_BLOCK_TYPES}")
        if not isinstance(self.attention_head_dim, int) and len(self.attention_head_dim) != n:
            raise ValueError(f"attention_head_dim {self.attention_head_dim} is not one per level")
        for level, width in enumerate(self.block_out_channels):
            if width % self.heads(level):
                raise ValueError(f"level {level}: {width} channels, {self.heads(level)} heads")

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    def heads(self, level: int) -> int:
        """Attention heads at ``level`` (diffusers' ``attention_head_dim``, see the module doc)."""
        h = self.attention_head_dim
        return h if isinstance(h, int) else h[level]


VARIANTS: dict[str, SDUNetConfig] = {
    # runwayml/stable-diffusion-v1-5 unet/config.json (also Arc2Face's UNet): 859,520,964 params.
    "sd15": SDUNetConfig(
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        sample_size=64,
    ),
    # Not a released model: the SD 1.5 layout (cross-attention at all but the lowest level and
    # in the middle, a plain lowest level) at three levels, widths 32/64/64, 8 heads, for tests.
    "tiny": SDUNetConfig(
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        sample_size=16,
        norm_num_groups=8,
    ),
}


def timestep_embedding(
    t: jax.Array, dim: int, *, flip_sin_to_cos: bool = True, freq_shift: float = 0
) -> jax.Array:
    """diffusers' ``get_timestep_embedding`` (``Timesteps`` module), float32.

    ``f_k = exp(-ln(1e4) k / (h - freq_shift))`` for ``k < h = dim // 2``; the embedding is
    ``[sin(t f), cos(t f)]``, swapped to ``[cos, sin]`` when ``flip_sin_to_cos``; an odd ``dim``
    gets a zero last column.

    Args:
      t: (B,) timesteps (any real dtype; fractional values are fine).
      dim: embedding width (``block_out_channels[0]``).
      flip_sin_to_cos: True in SD.
      freq_shift: ``downscale_freq_shift``; 0 in SD.

    Returns:
      (B, dim) float32.
    """
    half = dim // 2
    # diffusers' operation order: float32 arange times float32(-ln 1e4), divided, then exp.
    exponent = jnp.arange(half, dtype=jnp.float32) * jnp.float32(-math.log(10000))
    freqs = jnp.exp(exponent / jnp.float32(half - freq_shift))
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=1)
    return jnp.pad(emb, ((0, 0), (0, 1))) if dim % 2 else emb


class ResnetBlock2D(nnx.Module):
    """GN-SiLU-conv3x3, + Linear(SiLU(temb)), GN-SiLU-conv3x3, plus a shortcut, / scale.

    The shortcut is the identity, or a 1x1 ``conv_shortcut`` when the width changes.

    Args:
      in_channels: input width.
      out_channels: output width.
      temb_channels: time-embedding width (``4 c0``).
      groups: GroupNorm groups.
      eps: GroupNorm eps.
      output_scale_factor: the sum is divided by it (the mid block's ``mid_block_scale_factor``).
      rngs: key source for the throwaway initial weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
        rngs: nnx.Rngs,
    ) -> None:
        self.norm1 = GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, bias=True, rngs=rngs)
        self.time_emb_proj = Linear(temb_channels, out_channels, rngs=rngs)
        self.norm2 = GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=True, rngs=rngs)
        self.conv_shortcut = (
            Conv2d(in_channels, out_channels, 1, bias=True, rngs=rngs)
            if in_channels != out_channels
            else None
        )
        self.output_scale_factor = output_scale_factor

    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        """(B, H, W, C_in), (B, temb_channels) -> (B, H, W, C_out)."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class Attention(nnx.Module):
    """diffusers' ``Attention`` as SD uses it: multi-head, q/k/v without bias, ``to_out.0``.

    Args:
      query_dim: width of the queries' input (and of the output).
      heads: number of heads.
      dim_head: width per head; ``heads * dim_head`` is the inner width.
      cross_attention_dim: width of the keys'/values' input; None is self-attention.
      rngs: key source for the throwaway initial weights.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None = None,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        inner = heads * dim_head
        kv_dim = query_dim if cross_attention_dim is None else cross_attention_dim
        self.to_q = Linear(query_dim, inner, bias=False, rngs=rngs)
        self.to_k = Linear(kv_dim, inner, bias=False, rngs=rngs)
        self.to_v = Linear(kv_dim, inner, bias=False, rngs=rngs)
        self.to_out = nnx.List([Linear(inner, query_dim, rngs=rngs)])  # to_out.1 is dropout
        self.heads = heads

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """(B, N, query_dim), optional (B, M, kv_dim) context -> (B, N, query_dim)."""
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x)
        k, v = self.to_k(context), self.to_v(context)
        d = q.shape[-1] // self.heads
        q, k, v = (a.reshape(b, a.shape[1], self.heads, d) for a in (q, k, v))
        return self.to_out[0](_attend(q, k, v).reshape(b, n, self.heads * d))


# Attention materialises the (B, heads, T, S) logits (XLA has no fused kernel for it here).
# Softmax is per query row, so attending in query blocks is exact and bounds that memory: at
# SD's 64x64 latents (T = S = 4096) with 64 images (32 views, CFG) in float32 the whole
# logits are 34 GB, twice over with the softmax. On a GPU, blocks of 1024 queries (measured on
# an H100 with Arc2Face's shapes). On a CPU, small blocks keep the logits in cache: a
# 32x32-latent UNet forward (T = 1024, 2 cores) took 3.0 / 1.2 / 1.1 / 1.4 s at batch 16
# with blocks of 1024 / 64 / 32 / 16 queries, and 15.0 / 8.2 / 5.9 / 8.4 s at batch 64 with
# 1024 / 128 / 32 / 8.
_GPU_QUERY_BLOCK = 1024
_CPU_QUERY_BLOCK = 32
_QUERY_BLOCK: int | None = None  # a fixed block size (tests); None: by backend, as above


def _query_block(t: int) -> int:
    """Queries attended per block out of ``t`` (divides ``t``)."""
    block = _QUERY_BLOCK
    if block is None:
        block = _GPU_QUERY_BLOCK if jax.default_backend() != "cpu" else _CPU_QUERY_BLOCK
    return math.gcd(t, block)


def attention_implementation(
    dtype: jax.typing.DTypeLike, head_dim: int, platform: str | None = None
) -> str:
    """``"cudnn"`` (fused flash attention, no logits in memory) for half precision on an
    NVIDIA GPU, else ``"xla"``: cuDNN's kernel takes only bf16/fp16 and head sizes that are
    multiples of 8 up to 128 (SD-1.5's 160-wide heads run at 8x8 latents, where XLA is
    fine); CPUs, TPUs and ROCm GPUs have none. ``platform``: ``cuda``, ``rocm``, ``tpu``
    or ``cpu`` (default: where JAX runs, :func:`_platform`)."""
    platform = platform or _platform()
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    fits = head_dim % 8 == 0 and head_dim <= 128
    return "cudnn" if platform == "cuda" and half and fits and _CUDNN_ATTENTION else "xla"


def _platform() -> str:
    """JAX's default backend, GPUs told apart: ``cuda`` or ``rocm`` (else the backend)."""
    backend = jax.default_backend()
    if backend != "gpu":
        return backend
    version = str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
    return "rocm" if "rocm" in version else "cuda"


#: Whether half-precision attention on a GPU may use cuDNN (tests and A/B benchmarks switch it
#: off to measure the XLA path).
_CUDNN_ATTENTION = True


def _attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v on (B, T, heads, d) / (B, S, heads, d)."""
    if attention_implementation(q.dtype, q.shape[-1]) == "cudnn":
        # Fused: nothing of size T x S is materialised, so no query blocking either.
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    # JAX's attention op (in the layout we already have): 2.3x faster than two einsums on CPU
    # at 256 tokens, same values to 1e-6. Queries in blocks bound the logits' memory.
    b, t, h, d = q.shape
    block = _query_block(t)
    if block == t or block < 8:  # one block, or a length without a useful divisor
        return jax.nn.dot_product_attention(q, k, v)
    blocks = q.reshape(b, t // block, block, h, d).swapaxes(0, 1)
    out = jax.lax.map(lambda qb: jax.nn.dot_product_attention(qb, k, v), blocks)
    return out.swapaxes(0, 1).reshape(b, t, h, d)


class GEGLU(nnx.Module):
    """``proj`` to twice the width, then ``value * gelu(gate)`` (exact erf GELU, as torch)."""

    def __init__(self, dim_in: int, dim_out: int, *, rngs: nnx.Rngs) -> None:
        self.proj = Linear(dim_in, 2 * dim_out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., dim_in) -> (..., dim_out)."""
        value, gate = jnp.split(self.proj(x), 2, axis=-1)
        return value * jax.nn.gelu(gate, approximate=False)


class Dropout(nnx.Module):
    """Placeholder for torch's parameter-free ``Dropout`` slot in ``ff.net`` (identity here)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class FeedForward(nnx.Module):
    """``net = [GEGLU(dim -> 4 dim), Dropout, Linear(4 dim -> dim)]``."""

    def __init__(self, dim: int, *, mult: int = 4, rngs: nnx.Rngs) -> None:
        inner = mult * dim
        self.net = nnx.List(
            [GEGLU(dim, inner, rngs=rngs), Dropout(), Linear(inner, dim, rngs=rngs)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nnx.Module):
    """Pre-LN self-attention, cross-attention on the context, then a GEGLU feed-forward.

    Args:
      dim: token width (the channels of the feature map).
      heads: attention heads.
      dim_head: width per head.
      cross_attention_dim: width of ``encoder_hidden_states``.
      rngs: key source for the throwaway initial weights.
    """

    def __init__(
        self, dim: int, heads: int, dim_head: int, cross_attention_dim: int, *, rngs: nnx.Rngs
    ) -> None:
        self.norm1 = LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn1 = Attention(dim, heads, dim_head, rngs=rngs)
        self.norm2 = LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim, rngs=rngs)
        self.norm3 = LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ff = FeedForward(dim, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """(B, N, dim), (B, M, cross_attention_dim) -> (B, N, dim)."""
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nnx.Module):
    """GroupNorm, 1x1 ``proj_in``, BasicTransformerBlocks over the H*W tokens, 1x1 ``proj_out``,
    plus the input (SD 1.5's ``use_linear_projection=False`` form).

    Args:
      channels: feature-map width (= ``heads * dim_head``).
      heads: attention heads.
      cross_attention_dim: width of ``encoder_hidden_states``.
      groups: GroupNorm groups (its eps is diffusers' fixed 1e-6).
      num_layers: BasicTransformerBlocks.
      rngs: key source for the throwaway initial weights.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        cross_attention_dim: int,
        *,
        groups: int,
        num_layers: int = 1,
        rngs: nnx.Rngs,
    ) -> None:
        self.norm = GroupNorm(groups, channels, eps=TRANSFORMER_GN_EPS)
        self.proj_in = Conv2d(channels, channels, 1, bias=True, rngs=rngs)
        self.transformer_blocks = nnx.List(
            [
                BasicTransformerBlock(
                    channels, heads, channels // heads, cross_attention_dim, rngs=rngs
                )
                for _ in range(num_layers)
            ]
        )
        self.proj_out = Conv2d(channels, channels, 1, bias=True, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """(B, H, W, C), (B, M, D) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        tokens = self.proj_in(self.norm(x)).reshape(b, h * w, c)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return self.proj_out(tokens.reshape(b, h, w, c)) + x


class Downsample2D(nnx.Module):
    """3x3 stride-2 conv with symmetric ``padding`` (1 in SD): (H, W) -> (H/2, W/2)."""

    def __init__(self, channels: int, *, padding: int = 1, rngs: nnx.Rngs) -> None:
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=padding, bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample2D(nnx.Module):
    """Nearest-neighbour x2, then a 3x3 conv (padding 1)."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs) -> None:
        self.conv = Conv2d(channels, channels, 3, padding=1, bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class TimestepEmbedding(nnx.Module):
    """``linear_1``, SiLU, ``linear_2``: sinusoid width c0 -> 4 c0 -> 4 c0."""

    def __init__(self, in_channels: int, time_embed_dim: int, *, rngs: nnx.Rngs) -> None:
        self.linear_1 = Linear(in_channels, time_embed_dim, rngs=rngs)
        self.linear_2 = Linear(time_embed_dim, time_embed_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


def _resnets(
    in_widths: list[int],
    out_channels: int,
    config: SDUNetConfig,
    *,
    scale: float = 1.0,
    rngs: nnx.Rngs,
) -> nnx.List:
    """One ResnetBlock2D per input width, all to ``out_channels``, with the config's norms."""
    return nnx.List(
        [
            ResnetBlock2D(
                w,
                out_channels,
                config.time_embed_dim,
                groups=config.norm_num_groups,
                eps=config.norm_eps,
                output_scale_factor=scale,
                rngs=rngs,
            )
            for w in in_widths
        ]
    )


def _transformers(
    channels: int, heads: int, config: SDUNetConfig, count: int, *, rngs: nnx.Rngs
) -> nnx.List:
    """``count`` Transformer2DModels at ``channels`` with ``heads`` heads (the config's rest)."""
    return nnx.List(
        [
            Transformer2DModel(
                channels,
                heads,
                config.cross_attention_dim,
                groups=config.norm_num_groups,
                num_layers=config.transformer_layers_per_block,
                rngs=rngs,
            )
            for _ in range(count)
        ]
    )


class _Block(nnx.Module):
    """Shared storage of the four block kinds: ``resnets``, ``attentions`` (empty in the plain
    kinds) and ``downsamplers``/``upsamplers`` (an empty list at the level that has none)."""

    resnets: nnx.List
    attentions: nnx.List

    def _run(self, i: int, x: jax.Array, temb: jax.Array, context: jax.Array | None) -> jax.Array:
        x = self.resnets[i](x, temb)
        return self.attentions[i](x, context) if len(self.attentions) else x


class DownBlock2D(_Block):
    """``layers_per_block`` resnets (each followed by a Transformer2DModel in the CrossAttn
    kind), then an optional downsampler; every output joins the skip stack.

    Args:
      in_channels: input width.
      out_channels: width of every resnet output.
      config: the network config (norms, heads, cross-attention width).
      heads: attention heads of this level; 0 builds the plain ``DownBlock2D``.
      add_downsample: all levels but the last.
      rngs: key source for the throwaway initial weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        config: SDUNetConfig,
        *,
        heads: int,
        add_downsample: bool,
        rngs: nnx.Rngs,
    ) -> None:
        c = config
        ins = [in_channels if j == 0 else out_channels for j in range(c.layers_per_block)]
        self.resnets = _resnets(ins, out_channels, c, rngs=rngs)
        self.attentions = _transformers(out_channels, heads, c, len(ins) if heads else 0, rngs=rngs)
        self.downsamplers = nnx.List(
            [Downsample2D(out_channels, padding=c.downsample_padding, rngs=rngs)]
            if add_downsample
            else []
        )

    def __call__(
        self, x: jax.Array, temb: jax.Array, context: jax.Array | None = None
    ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """(B, H, W, C_in) -> (output, skips pushed by this block), as diffusers returns."""
        skips = []
        for i in range(len(self.resnets)):
            x = self._run(i, x, temb, context)
            skips.append(x)
        for down in self.downsamplers:
            x = down(x)
            skips.append(x)
        return x, tuple(skips)


class CrossAttnDownBlock2D(DownBlock2D):
    """:class:`DownBlock2D` with a Transformer2DModel after every resnet."""


class UpBlock2D(_Block):
    """``layers_per_block + 1`` resnets on ``concat(x, skip)`` (each followed by a
    Transformer2DModel in the CrossAttn kind), then an optional upsampler.

    Args:
      in_channels: the width of the skip the level's *last* resnet takes (the input width of
        the matching down level), diffusers' ``in_channels``.
      out_channels: this level's width.
      prev_output_channel: the width coming up from the level below.
      config: the network config.
      heads: attention heads of this level; 0 builds the plain ``UpBlock2D``.
      add_upsample: all up blocks but the last.
      rngs: key source for the throwaway initial weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        prev_output_channel: int,
        config: SDUNetConfig,
        *,
        heads: int,
        add_upsample: bool,
        rngs: nnx.Rngs,
    ) -> None:
        c = config
        n = c.layers_per_block + 1
        ins = [
            (prev_output_channel if j == 0 else out_channels)
            + (in_channels if j == n - 1 else out_channels)
            for j in range(n)
        ]
        self.resnets = _resnets(ins, out_channels, c, rngs=rngs)
        self.attentions = _transformers(out_channels, heads, c, n if heads else 0, rngs=rngs)
        self.upsamplers = nnx.List([Upsample2D(out_channels, rngs=rngs)] if add_upsample else [])

    def __call__(
        self,
        x: jax.Array,
        skips: tuple[jax.Array, ...],
        temb: jax.Array,
        context: jax.Array | None = None,
    ) -> jax.Array:
        """(B, H, W, C), this block's skips (oldest first; consumed last-first) -> output."""
        for i in range(len(self.resnets)):
            x = self._run(i, jnp.concatenate([x, skips[-1 - i]], axis=-1), temb, context)
        for up in self.upsamplers:
            x = up(x)
        return x


class CrossAttnUpBlock2D(UpBlock2D):
    """:class:`UpBlock2D` with a Transformer2DModel after every resnet."""


class UNetMidBlock2DCrossAttn(nnx.Module):
    """resnets.0, then (attentions.k, resnets.k+1) pairs; ``mid_block_scale_factor`` applies."""

    def __init__(self, channels: int, config: SDUNetConfig, *, heads: int, rngs: nnx.Rngs) -> None:
        scale = config.mid_block_scale_factor
        self.resnets = _resnets([channels] * 2, channels, config, scale=scale, rngs=rngs)
        self.attentions = _transformers(channels, heads, config, 1, rngs=rngs)

    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
        x = self.resnets[0](x, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:], strict=True):
            x = resnet(attn(x, context), temb)
        return x


class SDUNet(nnx.Module):
    """``UNet2DConditionModel``: predicts the noise of latents at timestep ``t`` given context.

    Args:
      config: hyperparameters (see :data:`VARIANTS`).
      rngs: key source for the throwaway initial weights (real ones come from conversion).
    """

    def __init__(self, config: SDUNetConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        c, widths, n = config, config.block_out_channels, config.num_levels
        self.time_embedding = TimestepEmbedding(widths[0], c.time_embed_dim, rngs=rngs)
        self.conv_in = Conv2d(c.in_channels, widths[0], 3, padding=1, bias=True, rngs=rngs)

        down = []
        for i, kind in enumerate(c.down_block_types):
            cls = CrossAttnDownBlock2D if kind == "CrossAttnDownBlock2D" else DownBlock2D
            heads = c.heads(i) if cls is CrossAttnDownBlock2D else 0
            block_in = widths[i - 1] if i else widths[0]
            down.append(
                cls(block_in, widths[i], c, heads=heads, add_downsample=i < n - 1, rngs=rngs)
            )
        self.down_blocks = nnx.List(down)

        self.mid_block = UNetMidBlock2DCrossAttn(widths[-1], c, heads=c.heads(n - 1), rngs=rngs)

        up = []
        prev = widths[-1]
        for i, kind in enumerate(c.up_block_types):
            level = n - 1 - i  # up_blocks.0 is the lowest level
            cls = CrossAttnUpBlock2D if kind == "CrossAttnUpBlock2D" else UpBlock2D
            heads = c.heads(level) if cls is CrossAttnUpBlock2D else 0
            up.append(
                cls(
                    widths[max(level - 1, 0)],
                    widths[level],
                    prev,
                    c,
                    heads=heads,
                    add_upsample=i < n - 1,
                    rngs=rngs,
                )
            )
            prev = widths[level]
        self.up_blocks = nnx.List(up)

        self.conv_norm_out = GroupNorm(c.norm_num_groups, widths[0], eps=c.norm_eps)
        self.conv_out = Conv2d(widths[0], c.out_channels, 3, padding=1, bias=True, rngs=rngs)

    def time_embed(self, t: jax.Array) -> jax.Array:
        """(B,) timesteps -> (B, 4 c0): the sinusoid, then ``time_embedding``."""
        c = self.config
        sinusoid = timestep_embedding(
            t,
            c.block_out_channels[0],
            flip_sin_to_cos=c.flip_sin_to_cos,
            freq_shift=c.freq_shift,
        )
        return self.time_embedding(sinusoid)

    def __call__(self, x: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
        """(B, H, W, in_channels) latents, (B,) timesteps, (B, L, D) encoder_hidden_states ->
        (B, H, W, out_channels) predicted noise."""
        temb = self.time_embed(t).astype(x.dtype)
        x = self.conv_in(x)
        skips: list[jax.Array] = [x]
        for block in self.down_blocks:
            x, pushed = block(x, temb, context)
            skips.extend(pushed)
        x = self.mid_block(x, temb, context)
        for block in self.up_blocks:
            k = len(block.resnets)
            x = block(x, tuple(skips[-k:]), temb, context)
            del skips[-k:]
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


ARCH = Architecture("SD UNet", SDUNet, SDUNetConfig, VARIANTS, host_random=True)
get_config, build, init = ARCH.get_config, ARCH.build, ARCH.init


def make_unet(variant: str | SDUNetConfig) -> EpsFn:
    """The pure noise predictor of a variant: closes over structure only.

    Args:
      variant: a :data:`VARIANTS` name or a config.

    Returns:
      ``eps_fn(params, latents, t, encoder_hidden_states)``: latents (B, H, W, in_channels)
      with H and W divisible by ``2 ** (levels - 1)``, ``t`` (B,) timesteps, context
      (B, L, cross_attention_dim) -> predicted noise (B, H, W, out_channels). Not jitted (jit
      at the edge).
    """
    config = get_config(variant)
    graphdef, _ = build(config)
    step = 2 ** (config.num_levels - 1)

    def eps_fn(
        params: Params, latents: jax.Array, t: jax.Array, encoder_hidden_states: jax.Array
    ) -> jax.Array:
        b = latents.shape[0]
        if latents.ndim != 4 or latents.shape[-1] != config.in_channels:
            raise ValueError(
                f"latents must be (B, H, W, {config.in_channels}), got {latents.shape}"
            )
        # diffusers passes an explicit upsample size for other sides; we do not support that.
        if latents.shape[1] % step or latents.shape[2] % step:
            raise ValueError(f"latent side {latents.shape[1:3]} is not divisible by {step}")
        if jnp.shape(t) != (b,):
            raise ValueError(f"t must have shape ({b},), got {jnp.shape(t)}")
        ctx_shape = jnp.shape(encoder_hidden_states)
        if len(ctx_shape) != 3 or ctx_shape[0] != b or ctx_shape[2] != config.cross_attention_dim:
            raise ValueError(
                f"encoder_hidden_states must be ({b}, L, {config.cross_attention_dim}), "
                f"got {ctx_shape}"
            )
        return nnx.merge(graphdef, params)(latents, t, encoder_hidden_states)

    return eps_fn


# ---------------------------------------------------------------------------------------------
# Conversion (host-side NumPy, never jitted)
# ---------------------------------------------------------------------------------------------


def convert_diffusers_state_dict(
    state_dict: Mapping[str, Any], variant: str | SDUNetConfig, *, dtype: jnp.dtype = jnp.float32
) -> Params:
    """Convert a diffusers ``UNet2DConditionModel`` state dict to params.

    Names are identical; conv kernels go OIHW -> HWIO, linear weights are transposed.

    Args:
      state_dict: diffusers key -> array; a ``module.`` prefix on every key is dropped first.
      variant: the matching :data:`VARIANTS` name or config (see :func:`config_from_diffusers`).
      dtype: dtype of the returned params.

    Returns:
      A concrete NNX state matching ``build(variant)[1]`` leaf for leaf.

    Raises:
      ConversionError: naming every missing, unused or mis-shaped key.
    """
    return ARCH.convert(state_dict, variant, dtype=dtype)


# diffusers settings we do not implement: name -> the only value (or default) we accept.
_REQUIRED: dict[str, Any] = {
    "center_input_sample": False,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "only_cross_attention": False,
    "act_fn": "silu",
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "reverse_transformer_layers_per_block": None,
}


def config_from_diffusers(cfg: Mapping[str, Any]) -> SDUNetConfig:
    """Map a diffusers ``UNet2DConditionModel`` ``config.json`` onto an :class:`SDUNetConfig`.

    Accepts the SD 1.x layout and the options around it that we implement (any number of
    levels, Cross/plain block kinds per level, per-level head counts, the sinusoid options,
    ``downsample_padding``, ``mid_block_scale_factor``, an integer
    ``transformer_layers_per_block``). Anything else (``use_linear_projection=True``, class or
    addition embeddings, ``upcast_attention``, ...) raises rather than silently converting to a
    different network. ``dropout`` is training-only and ignored.

    Raises:
      ConversionError: naming the first setting that does not fit.
    """

    def unsupported(name: str, value: Any, why: str) -> ConversionError:
        return ConversionError(
            f"diffusers UNet2DConditionModel config {name}={value!r} is not supported ({why})"
        )

    if "_class_name" in cfg and cfg["_class_name"] != "UNet2DConditionModel":
        raise unsupported("_class_name", cfg["_class_name"], "needs 'UNet2DConditionModel'")
    for name, expected in _REQUIRED.items():
        value = cfg.get(name, expected)
        if isinstance(value, list | tuple) and len(set(value)) == 1:
            value = value[0]  # per-block settings (only_cross_attention) saved as a list
        same = (
            math.isclose(float(value), float(expected))
            if isinstance(expected, float) and isinstance(value, int | float)
            else value == expected
        )
        if not same:
            raise unsupported(name, value, f"only {expected!r} is implemented")

    def integer(name: str, default: int) -> int:
        value = cfg.get(name, default)
        if isinstance(value, list | tuple):
            if len(set(value)) != 1 or isinstance(value[0], list | tuple):
                raise unsupported(name, value, "only one value for every block is implemented")
            value = value[0]
        return int(value)

    widths = tuple(int(c) for c in cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    heads = cfg.get("attention_head_dim", 8)
    heads = int(heads) if isinstance(heads, int) else tuple(int(h) for h in heads)
    size = cfg.get("sample_size")
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise unsupported("sample_size", size, "only square latents are implemented")
        size = size[0]
    try:
        return SDUNetConfig(
            block_out_channels=widths,
            down_block_types=tuple(cfg.get("down_block_types", VARIANTS["sd15"].down_block_types)),
            up_block_types=tuple(cfg.get("up_block_types", VARIANTS["sd15"].up_block_types)),
            layers_per_block=integer("layers_per_block", 2),
            cross_attention_dim=integer("cross_attention_dim", 1280),
            attention_head_dim=heads,
            sample_size=int(size) if size is not None else 64,
            in_channels=int(cfg.get("in_channels", 4)),
            out_channels=int(cfg.get("out_channels", 4)),
            norm_num_groups=int(cfg.get("norm_num_groups", 32)),
            norm_eps=float(cfg.get("norm_eps", 1e-5)),
            transformer_layers_per_block=integer("transformer_layers_per_block", 1),
            flip_sin_to_cos=bool(cfg.get("flip_sin_to_cos", True)),
            freq_shift=int(cfg.get("freq_shift", 0)),
            downsample_padding=int(cfg.get("downsample_padding", 1)),
            mid_block_scale_factor=float(cfg.get("mid_block_scale_factor", 1.0)),
        )
    except ValueError as e:  # block types, head counts
        raise ConversionError(f"diffusers UNet2DConditionModel config not supported: {e}") from e


def load_diffusers_folder(
    path: str | os.PathLike[str], *, dtype: jnp.dtype = jnp.float32
) -> tuple[SDUNetConfig, Params]:
    """Read a diffusers ``UNet2DConditionModel`` folder, or a pipeline's ``unet/``.

    Returns ``(config, params)`` (the files :func:`~jaxcloak.nets.common.read_diffusers_folder`
    looks for); ``make_unet(config)`` is the matching noise predictor.

    Raises:
      ConversionError: a missing file, an unsupported config, or any key problem.
    """
    return read_diffusers_folder(
        path, "unet", config_from_diffusers, convert_diffusers_state_dict, dtype=dtype
    )
