"""The CLIP text transformer (transformers' ``CLIPTextModel``) and Arc2Face's identity prompt.

Stable Diffusion 1.5's text encoder, fine-tuned by Arc2Face, turns the prompt ``photo of a id
person`` into the UNet's cross-attention context, with the token embedding of ``id`` replaced by
the ArcFace identity (Arc2Face's ``project_face_embs``; docs/facecloak.md, "Stage 1: views of
the person"). Attribute names mirror the transformers (< 5) module tree, which is also the key
layout of the released SD-1.5 and Arc2Face checkpoints, so every key is an NNX state path::

    text_model.embeddings.token_embedding          Embedding (vocab, D)
    text_model.embeddings.position_embedding       Embedding (positions, D)
    text_model.encoder.layers.{i}.layer_norm1      LayerNorm
    text_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj   Linear D -> D
    text_model.encoder.layers.{i}.layer_norm2      LayerNorm
    text_model.encoder.layers.{i}.mlp.{fc1,fc2}    Linear D -> MLP -> D
    text_model.final_layer_norm                    LayerNorm

Each layer is pre-LN: ``h += attn(ln1(h))`` with a causal mask, then ``h += mlp(ln2(h))``.
transformers >= 5 saves the same tensors without the ``text_model.`` prefix; the converter
accepts both, and drops the ``position_ids`` buffer older versions saved (after checking it is
``arange``, the only position ids we model).

Typical use (weights are arguments, the network is a definition)::

    config, params = load_transformers_folder("stable-diffusion-v1-5")  # text_encoder/ inside
    clip = make_clip_text(config)
    out = jax.jit(clip.encode_ids)(params, input_ids)       # (B, 77) int -> (B, 77, 768)
    cond = jax.jit(clip.arc2face_prompt_embeds)(params, e0, input_ids, id_position)

The input ids come from the SD-1.5 CLIP tokenizer in the user's model folder (no vocabulary is
bundled or hard-coded here): :func:`load_tokenizer` and :func:`arc2face_input_ids` wrap it when
transformers is installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..convert.torch import (
    ConversionError,
    KeyMapEntry,
    fill_params,
    key_map,
    load_checkpoint,
    strip_prefix,
)
from ..typing import Params
from .common import Architecture
from .layers import LayerNorm, Linear, unit_rows

__all__ = [
    "ARC2FACE_PROMPT",
    "VARIANTS",
    "ClipTextConfig",
    "ClipTextFns",
    "ClipTextModel",
    "ClipTextOutput",
    "Embedding",
    "LayerNorm",
    "arc2face_input_ids",
    "build",
    "config_from_transformers",
    "convert_state_dict",
    "get_config",
    "init",
    "load_tokenizer",
    "load_transformers_folder",
    "make_clip_text",
    "pad_identity",
    "torch_key_map",
]

ARC2FACE_PROMPT = "photo of a id person"
"""Arc2Face's fixed prompt; the token embedding of ``id`` carries the identity."""


def _quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


# transformers' ACT2FN names of the activations CLIP text encoders use.
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": _quick_gelu,  # OpenAI CLIP, SD-1.x
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # OpenCLIP (SD-2.x)
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


@dataclass(frozen=True)
class ClipTextConfig:
    """Hyperparameters of one CLIP text transformer (transformers' ``CLIPTextConfig``).

    Attributes:
      vocab_size: rows of the token embedding.
      max_position_embeddings: longest sequence (77 for every released CLIP).
      hidden_size: width D.
      num_hidden_layers: encoder layers.
      num_attention_heads: heads; must divide ``hidden_size``.
      intermediate_size: MLP width.
      hidden_act: a key of the supported activations (``quick_gelu``, ``gelu``, ...).
      layer_norm_eps: eps of every LayerNorm.
      eos_token_id: picks the pooled token. 2 is the legacy value of configs written before
        transformers PR #24773 (SD-1.5's among them): pool at ``argmax(input_ids)``, the
        end-of-text token having the largest id; otherwise pool at the first ``eos_token_id``.
    """

    vocab_size: int
    max_position_embeddings: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 2

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} not divisible by {self.num_attention_heads} heads"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; {sorted(_ACTIVATIONS)}")


VARIANTS: dict[str, ClipTextConfig] = {
    # OpenAI CLIP ViT-L/14's text tower: SD-1.5's text encoder and Arc2Face's fine-tune of it
    # (123,060,480 params). eos_token_id 2: SD-1.5's text_encoder/config.json predates the fix.
    "vit_l14": ClipTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
    ),
    # Not a released model: the vit_l14 layout at 77 positions but 1/12 the width and two
    # layers, for fast tests.
    "tiny": ClipTextConfig(
        vocab_size=512,
        max_position_embeddings=77,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
    ),
}


class Embedding(nnx.Module):
    """``torch.nn.Embedding``: ``weight`` is (num_embeddings, dim), as in torch (no transpose)."""

    def __init__(self, num_embeddings: int, dim: int, *, rngs: nnx.Rngs) -> None:
        init = jax.nn.initializers.normal(0.02)
        self.weight = nnx.Param(init(rngs.params(), (num_embeddings, dim)))

    def __call__(self, ids: jax.Array) -> jax.Array:
        """(...) int -> (..., dim)."""
        return jnp.take(self.weight[...], ids, axis=0)


class ClipAttention(nnx.Module):
    """Multi-head causal self-attention with separate ``q/k/v/out_proj`` Linears."""

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs) -> None:
        self.k_proj = Linear(dim, dim, rngs=rngs)
        self.v_proj = Linear(dim, dim, rngs=rngs)
        self.q_proj = Linear(dim, dim, rngs=rngs)
        self.out_proj = Linear(dim, dim, rngs=rngs)
        self.num_heads = num_heads

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, L, D) -> (B, L, D); position i attends to positions <= i."""
        b, length, d = x.shape
        h = self.num_heads
        q, k, v = (
            m(x).reshape(b, length, h, d // h) for m in (self.q_proj, self.k_proj, self.v_proj)
        )
        logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) * ((d // h) ** -0.5)
        causal = jnp.tril(jnp.ones((length, length), bool))
        # torch adds finfo.min above the diagonal; the diagonal is never masked, so every row
        # keeps a finite maximum and the masked weights are exactly 0 either way.
        logits = jnp.where(causal, logits.astype(jnp.float32), -jnp.inf)
        weights = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
        out = jnp.einsum("bhqk,bkhc->bqhc", weights, v)
        return self.out_proj(out.reshape(b, length, d))


class ClipMLP(nnx.Module):
    """``fc2(act(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int, act: str, *, rngs: nnx.Rngs) -> None:
        self.fc1 = Linear(dim, hidden, rngs=rngs)
        self.fc2 = Linear(hidden, dim, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., D) -> (..., D)."""
        return self.fc2(_ACTIVATIONS[self.act](self.fc1(x)))


class ClipEncoderLayer(nnx.Module):
    """Pre-LN transformer layer: ``h += attn(ln1(h)); h += mlp(ln2(h))``."""

    def __init__(self, config: ClipTextConfig, *, rngs: nnx.Rngs) -> None:
        d, eps = config.hidden_size, config.layer_norm_eps
        self.self_attn = ClipAttention(d, config.num_attention_heads, rngs=rngs)
        self.layer_norm1 = LayerNorm(d, eps=eps)
        self.mlp = ClipMLP(d, config.intermediate_size, config.hidden_act, rngs=rngs)
        self.layer_norm2 = LayerNorm(d, eps=eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, L, D) -> (B, L, D)."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipEncoder(nnx.Module):
    """torch's ``CLIPEncoder``: holds ``layers``."""

    def __init__(self, config: ClipTextConfig, *, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List(
            [ClipEncoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)]
        )


class ClipTextEmbeddings(nnx.Module):
    """torch's ``CLIPTextEmbeddings``: token and learnt absolute position embeddings."""

    def __init__(self, config: ClipTextConfig, *, rngs: nnx.Rngs) -> None:
        d = config.hidden_size
        self.token_embedding = Embedding(config.vocab_size, d, rngs=rngs)
        self.position_embedding = Embedding(config.max_position_embeddings, d, rngs=rngs)


class ClipTextTransformer(nnx.Module):
    """transformers' ``CLIPTextTransformer`` (the ``text_model`` of ``CLIPTextModel``)."""

    def __init__(self, config: ClipTextConfig, *, rngs: nnx.Rngs) -> None:
        self.embeddings = ClipTextEmbeddings(config, rngs=rngs)
        self.encoder = ClipEncoder(config, rngs=rngs)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, token_embeds: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """(B, L, D) token embeddings -> final-LN output and the L+1 pre-LN hidden states.

        The hidden states are transformers' ``output_hidden_states``: the embeddings output
        (tokens + positions), then each layer's output.
        """
        length = token_embeds.shape[1]
        positions = self.embeddings.position_embedding.weight[...][:length]
        h = token_embeds + positions[None].astype(token_embeds.dtype)
        hidden = [h]
        # Unrolled, not scanned: the layers must stay separate modules for the torch key names.
        for layer in self.encoder.layers:
            h = layer(h)
            hidden.append(h)
        return self.final_layer_norm(h), tuple(hidden)


class ClipTextModel(nnx.Module):
    """transformers' ``CLIPTextModel`` (no projection head).

    Args:
      config: hyperparameters (see :data:`VARIANTS`).
      rngs: key source for the throwaway initial weights (real ones come from conversion).
    """

    def __init__(self, config: ClipTextConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        self.text_model = ClipTextTransformer(config, rngs=rngs)


ARCH = Architecture(
    "CLIP text", ClipTextModel, ClipTextConfig, VARIANTS, host_random=True, embedding_std=0.02
)
get_config, build, init = ARCH.get_config, ARCH.build, ARCH.init


# ---------------------------------------------------------------------------------------------
# Pure apply functions
# ---------------------------------------------------------------------------------------------


class ClipTextOutput(NamedTuple):
    """What :func:`make_clip_text`'s ``encode_ids`` returns (transformers' names).

    Attributes:
      last_hidden_state: (B, L, D) final-LayerNorm output: SD's cross-attention context.
      pooler_output: (B, D) ``last_hidden_state`` at the end-of-text token.
    """

    last_hidden_state: jax.Array
    pooler_output: jax.Array


class ClipTextFns(NamedTuple):
    """The pure functions of one text encoder; none is jitted (jit at the edge).

    Attributes:
      encode_ids: ``(params, input_ids (B, L) int) -> ClipTextOutput``.
      encode_embeds: ``(params, token_embeds (B, L, D)) -> (B, L, D)``: positions added,
        causal encoder, final LayerNorm.
      hidden_states: ``(params, token_embeds) -> L+1 arrays (B, L, D)``: the embeddings output
        and every layer's output, before the final LayerNorm (for per-layer checks).
      token_embeds: ``(params, input_ids) -> (B, L, D)`` token-embedding lookup.
      arc2face_prompt_embeds: ``(params, id_emb, input_ids, id_position) -> (B, L, D)``;
        see :func:`make_clip_text`.
    """

    encode_ids: Callable[[Params, jax.Array], ClipTextOutput]
    encode_embeds: Callable[[Params, jax.Array], jax.Array]
    hidden_states: Callable[[Params, jax.Array], tuple[jax.Array, ...]]
    token_embeds: Callable[[Params, jax.Array], jax.Array]
    arc2face_prompt_embeds: Callable[[Params, jax.Array, jax.Array, Any], jax.Array]


def pad_identity(id_emb: jax.Array, dim: int) -> jax.Array:
    """L2-normalise identity rows and zero-pad them to the text width (Arc2Face's injection).

    Args:
      id_emb: (..., d) ArcFace embeddings (d = 512 for the real model), d <= ``dim``.
      dim: the text encoder width D (768).

    Returns:
      (..., dim): ``[e / ||e||, 0, ..., 0]``.
    """
    d = id_emb.shape[-1]
    if d > dim:
        raise ValueError(f"identity embedding width {d} exceeds the text width {dim}")
    return jnp.pad(unit_rows(id_emb), [(0, 0)] * (id_emb.ndim - 1) + [(0, dim - d)])


def make_clip_text(variant: str | ClipTextConfig) -> ClipTextFns:
    """The pure functions of a text-encoder variant: close over structure, take params.

    ``arc2face_prompt_embeds(params, id_emb, input_ids, id_position)`` is Arc2Face's
    ``project_face_embs``: look up the token embeddings of
    ``input_ids``, replace the one at ``id_position`` by :func:`pad_identity` of ``id_emb``
    (normalised, zero-padded to D), then :func:`encode_embeds`. Shapes: ``id_emb`` (B, d);
    ``input_ids`` (B, L) or (1, L) (one prompt broadcast over the identities); ``id_position``
    an int or (B,) ints (the ``id`` token's index; 4 for ``photo of a id person`` after BOS,
    see :func:`arc2face_input_ids`). Returns the (B, L, D) conditioning, ``[B, 77, 768]`` for
    the real model.

    Args:
      variant: a :data:`VARIANTS` name or a config.

    Returns:
      A :class:`ClipTextFns`.
    """
    config = get_config(variant)
    graphdef, _ = build(config)

    def check_ids(input_ids: jax.Array) -> None:
        if input_ids.ndim != 2 or input_ids.shape[1] > config.max_position_embeddings:
            raise ValueError(
                f"input_ids must be (B, L<={config.max_position_embeddings}), got {input_ids.shape}"
            )

    def token_embeds(params: Params, input_ids: jax.Array) -> jax.Array:
        input_ids = jnp.asarray(input_ids)
        check_ids(input_ids)
        return nnx.merge(graphdef, params).text_model.embeddings.token_embedding(input_ids)

    def run(params: Params, embeds: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        if embeds.ndim != 3 or embeds.shape[1] > config.max_position_embeddings:
            raise ValueError(
                f"token_embeds must be (B, L<={config.max_position_embeddings}, "
                f"{config.hidden_size}), got {embeds.shape}"
            )
        return nnx.merge(graphdef, params).text_model(embeds)

    def encode_embeds(params: Params, embeds: jax.Array) -> jax.Array:
        return run(params, embeds)[0]

    def hidden_states(params: Params, embeds: jax.Array) -> tuple[jax.Array, ...]:
        return run(params, embeds)[1]

    def encode_ids(params: Params, input_ids: jax.Array) -> ClipTextOutput:
        input_ids = jnp.asarray(input_ids)
        last = encode_embeds(params, token_embeds(params, input_ids))
        if config.eos_token_id == 2:
            # Legacy configs (transformers PR #24773): end-of-text has the largest id.
            eos = jnp.argmax(input_ids, axis=-1)
        else:
            # First occurrence: the SD tokenizer pads with the end-of-text token itself.
            eos = jnp.argmax(input_ids == config.eos_token_id, axis=-1)
        return ClipTextOutput(last, last[jnp.arange(last.shape[0]), eos])

    def arc2face_prompt_embeds(
        params: Params, id_emb: jax.Array, input_ids: jax.Array, id_position: Any
    ) -> jax.Array:
        input_ids = jnp.asarray(input_ids)
        check_ids(input_ids)
        if id_emb.ndim != 2:
            raise ValueError(f"id_emb must be (B, d), got {id_emb.shape}")
        b, length = id_emb.shape[0], input_ids.shape[1]
        ids = jnp.broadcast_to(input_ids, (b, length))
        embeds = token_embeds(params, ids)  # (B, L, D)
        ident = pad_identity(id_emb, config.hidden_size).astype(embeds.dtype)  # (B, D)
        pos = jnp.broadcast_to(jnp.asarray(id_position), (b,))
        at_id = jnp.arange(length)[None, :] == pos[:, None]  # (B, L)
        embeds = jnp.where(at_id[:, :, None], ident[:, None, :], embeds)
        return encode_embeds(params, embeds)

    return ClipTextFns(
        encode_ids, encode_embeds, hidden_states, token_embeds, arc2face_prompt_embeds
    )


# ---------------------------------------------------------------------------------------------
# Tokenizer helpers (optional: need transformers and the user's SD-1.5 tokenizer files)
# ---------------------------------------------------------------------------------------------


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """``transformers.CLIPTokenizer`` from a local folder (SD layout: its ``tokenizer/``).

    Nothing is downloaded: the folder must hold ``vocab.json`` and ``merges.txt``.

    Raises:
      ImportError: transformers is not installed.
    """
    from transformers import CLIPTokenizer

    root = Path(path)
    if (root / "tokenizer").is_dir():
        root = root / "tokenizer"
    return CLIPTokenizer.from_pretrained(str(root), local_files_only=True)


def arc2face_input_ids(
    tokenizer: Any,
    prompt: str = ARC2FACE_PROMPT,
    id_word: str = "id",
    *,
    max_length: int | None = None,
) -> tuple[np.ndarray, int]:
    """Tokenise Arc2Face's prompt as ``project_face_embs`` does; find the ``id`` token.

    Args:
      tokenizer: a CLIP tokenizer (:func:`load_tokenizer`).
      prompt: the prompt, padded (and truncated) to ``max_length``.
      id_word: the word whose token embedding carries the identity.
      max_length: defaults to ``tokenizer.model_max_length`` (77 in SD's
        ``tokenizer_config.json``), as Arc2Face pads.

    Returns:
      ``(input_ids (1, L) int32, id_position)``.

    Raises:
      ValueError: ``id_word`` is not a single token occurring exactly once in the prompt.
    """
    if max_length is None:
        max_length = int(tokenizer.model_max_length)
        # transformers' "unset" sentinel is ~1e30: a folder without tokenizer_config.json.
        if max_length > 100_000:
            raise ValueError("tokenizer has no model_max_length; pass max_length (77)")
    ids = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True).input_ids
    word = tokenizer.encode(id_word, add_special_tokens=False)
    if len(word) != 1:
        raise ValueError(f"{id_word!r} is {len(word)} tokens, expected one")
    positions = [i for i, t in enumerate(ids) if t == word[0]]
    # Arc2Face replaces every match; one match keeps id_position a single index.
    if len(positions) != 1:
        raise ValueError(f"{id_word!r} occurs {len(positions)} times in {prompt!r}")
    return np.asarray([ids], np.int32), positions[0]


# ---------------------------------------------------------------------------------------------
# Conversion (host-side NumPy, never jitted)
# ---------------------------------------------------------------------------------------------

_PREFIX = "text_model."
_POSITION_IDS = "text_model.embeddings.position_ids"


def torch_key_map(variant: str | ClipTextConfig) -> dict[str, KeyMapEntry]:
    """transformers key (``text_model.`` layout) -> :class:`KeyMapEntry` for a variant.

    Linear weights are transposed; embedding tables are (rows, D) in both and kept as is.
    """
    _, abstract = build(variant)
    entries = key_map(abstract)
    for name, entry in entries.items():
        if name.endswith("_embedding.weight"):  # nn.Embedding, not nn.Linear: no transpose
            entries[name] = replace(entry, torch_shape=entry.shape, transform=lambda a: a)
    return entries


def _normalise_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Bring a state dict to the ``text_model.`` layout and drop a default ``position_ids``."""
    sd = strip_prefix(state_dict)
    if not any(k.startswith(_PREFIX) for k in sd):  # transformers >= 5 saves without it
        sd = {_PREFIX + k: v for k, v in sd.items()}
    if _POSITION_IDS in sd:
        ids = np.asarray(sd.pop(_POSITION_IDS))
        if not np.array_equal(ids.reshape(-1), np.arange(ids.size)):
            raise ConversionError(f"key {_POSITION_IDS!r} is not arange: custom positions")
    return sd


def convert_state_dict(
    state_dict: Mapping[str, Any],
    variant: str | ClipTextConfig,
    *,
    dtype: jnp.dtype = jnp.float32,
) -> Params:
    """Convert a transformers ``CLIPTextModel`` state dict to params.

    Accepts the ``text_model.``-prefixed layout (transformers < 5, SD-1.5 and Arc2Face
    checkpoints) and the unprefixed one (transformers >= 5), with or without the
    ``position_ids`` buffer, and a ``module.`` prefix on every key.

    Args:
      state_dict: key -> array (NumPy, or anything ``np.asarray`` accepts).
      variant: a :data:`VARIANTS` name or a config (:func:`config_from_transformers`).
      dtype: dtype of the returned params.

    Returns:
      A concrete NNX state matching ``build(variant)[1]`` leaf for leaf.

    Raises:
      ConversionError: naming every missing, unused or mis-shaped key (``text_model.`` names).
    """
    _, abstract = build(variant)
    entries = torch_key_map(variant)
    return fill_params(_normalise_keys(state_dict), entries, abstract, dtype=dtype)


def config_from_transformers(cfg: Mapping[str, Any]) -> ClipTextConfig:
    """Map a transformers ``CLIPTextConfig`` ``config.json`` (or a ``CLIPConfig``'s
    ``text_config``) onto a :class:`ClipTextConfig`; absent fields take transformers' defaults.

    Raises:
      ConversionError: an unsupported model type or activation, or inconsistent sizes.
    """
    if cfg.get("model_type") == "clip" and "text_config" in cfg:
        cfg = cfg["text_config"]
    if cfg.get("model_type", "clip_text_model") != "clip_text_model":
        raise ConversionError(f"model_type {cfg.get('model_type')!r} is not clip_text_model")

    def get(name: str, default: Any) -> Any:
        value = cfg.get(name)
        return default if value is None else value

    try:
        return ClipTextConfig(
            vocab_size=int(get("vocab_size", 49408)),
            max_position_embeddings=int(get("max_position_embeddings", 77)),
            hidden_size=int(get("hidden_size", 512)),
            num_hidden_layers=int(get("num_hidden_layers", 12)),
            num_attention_heads=int(get("num_attention_heads", 8)),
            intermediate_size=int(get("intermediate_size", 2048)),
            hidden_act=str(get("hidden_act", "quick_gelu")),
            layer_norm_eps=float(get("layer_norm_eps", 1e-5)),
            eos_token_id=int(get("eos_token_id", 49407)),
        )
    except ValueError as e:
        raise ConversionError(f"CLIP text config not supported: {e}") from None


# Weight files in the order tried; an ``.index.json`` lists the shards of a split checkpoint.
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "model.fp16.safetensors",
    "pytorch_model.fp16.bin",
)
# Subfolders holding the text encoder: diffusers' SD layout, Arc2Face's Hub repo.
_SUBFOLDERS = ("text_encoder", "encoder")


def _read_weights(root: Path) -> dict[str, np.ndarray]:
    for name in _WEIGHT_FILES:
        path = root / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            state_dict: dict[str, np.ndarray] = {}
            for shard in shards:
                state_dict.update(load_checkpoint(root / shard))
            return state_dict
        return load_checkpoint(path)
    raise ConversionError(f"{root}: none of {list(_WEIGHT_FILES)}")


def load_transformers_folder(
    path: str | os.PathLike[str], *, dtype: jnp.dtype = jnp.float32
) -> tuple[ClipTextConfig, Params]:
    """Read a transformers ``CLIPTextModel`` folder (``save_pretrained`` output).

    ``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin`` (sharded or fp16
    variants too); an SD pipeline folder whose ``text_encoder/`` holds them, or Arc2Face's repo
    with ``encoder/``, works too.

    Args:
      path: the folder.
      dtype: dtype of the returned params.

    Returns:
      ``(config, params)``; ``make_clip_text(config)`` gives the matching functions.

    Raises:
      ConversionError: a missing file, an unsupported config, or any key problem.
    """
    root = Path(path)
    if not (root / "config.json").is_file():
        for sub in _SUBFOLDERS:
            if (root / sub / "config.json").is_file():
                root = root / sub
                break
        else:
            raise ConversionError(f"{root}: no config.json (nor in {list(_SUBFOLDERS)})")
    config = config_from_transformers(json.loads((root / "config.json").read_text()))
    return config, convert_state_dict(_read_weights(root), config, dtype=dtype)
