"""FaceCloak stage 1 as published: Arc2Face views of a person, sampled as one compiled program.

Arc2Face (``../shared/specs/facecloak.md`` section 2) is Stable Diffusion 1.5 conditioned on an
ArcFace identity: the prompt "photo of a id person" goes through a fine-tuned CLIP text encoder
with the ``id`` token's embedding replaced by the normalised 512-d identity vector
(:func:`jaxcloak.nets.clip_text.make_clip_text`'s ``arc2face_prompt_embeds``); the SD-1.5 UNet
(:mod:`jaxcloak.nets.sd_unet`) denoises latents with DPM-Solver++ 2M (25 steps,
:mod:`jaxcloak.diffusion.dpm_solver`) and classifier-free guidance 3.0 against the empty
prompt's encoding; the SD VAE (:mod:`jaxcloak.nets.sd_vae`) decodes to 512x512.

:func:`make_sampler` writes this for ONE identity (V views from one PRNG key; the conditional
and unconditional branches of all V views in one batched UNet call per step) and returns it
``vmap``-ed over identities, so V views of N people are a single program: no gradients, no
host round-trips, the reference's 8 sequential batch-1 samples with an autograd graph (D14)
become one ``lax.scan``. ``dtype="bfloat16"`` runs the three networks in bf16 (the solver
update stays float32, as diffusers upcasts it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..diffusion.dpm_solver import Guidance, make_dpm_solver, sample
from ..nets import clip_text, sd_unet, sd_vae
from ..typing import Params


@dataclass(frozen=True)
class Arc2FaceConfig:
    """Sampling settings (the reference's: 25 steps, guidance 3.0, 8 views, 512 px)."""

    steps: int = 25
    guidance: float = 3.0
    n_views: int = 8
    dtype: str = "float32"  # or "bfloat16"
    unroll: int = 1


class Arc2FaceParams(NamedTuple):
    """The three networks' weights (arguments of the compiled sampler, never constants)."""

    text: Params
    unet: Params
    vae: Params


class Arc2FaceNets(NamedTuple):
    """Network definitions and the tokenised prompts they are driven with."""

    text: str | clip_text.ClipTextConfig
    unet: str | sd_unet.SDUNetConfig
    vae: str | sd_vae.VAEConfig
    prompt_ids: np.ndarray  # (1, L) int32: "photo of a id person", padded
    id_position: int  # index of the "id" token in prompt_ids
    empty_ids: np.ndarray  # (1, L) int32: the empty prompt, padded (negative branch)


def _cast(tree: Any, dtype: jnp.dtype) -> Any:
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def make_views_from_latents(
    nets: Arc2FaceNets, config: Arc2FaceConfig
) -> Callable[[Arc2FaceParams, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """The pipeline for ONE identity from given initial latents (not jitted, not vmapped).

    Returns ``views(params, id_emb (d,), x_T (V, h, w, 4)) -> (images, z_0)``: images
    (V, H, W, 3) in [0, 1] and the final latents (before the VAE), for parity checks.
    """
    text = clip_text.make_clip_text(nets.text)
    unet_cfg = sd_unet.get_config(nets.unet)
    eps_net = sd_unet.make_unet(unet_cfg)
    vae_cfg = sd_vae.get_config(nets.vae)
    vae = sd_vae.make_vae(vae_cfg)
    schedule = make_dpm_solver(config.steps)
    dtype = jnp.dtype(config.dtype)
    prompt = jnp.asarray(nets.prompt_ids, jnp.int32)
    empty = jnp.asarray(nets.empty_ids, jnp.int32)

    def views(params: Arc2FaceParams, id_emb: jax.Array, x_t: jax.Array):
        p = _cast(params, dtype)
        v = x_t.shape[0]
        cond = text.arc2face_prompt_embeds(
            p.text, id_emb[None].astype(dtype), prompt, nets.id_position
        )
        uncond = text.encode_ids(p.text, empty)[0]

        def eps_fn(x: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
            return eps_net(p.unet, x, jnp.full((x.shape[0],), t), context)

        guidance = Guidance(
            jnp.repeat(cond, v, axis=0), jnp.repeat(uncond, v, axis=0), config.guidance
        )
        z = sample(eps_fn, x_t.astype(dtype), schedule, guidance, unroll=config.unroll)
        img = vae.decode(p.vae, z / vae_cfg.scaling_factor).astype(jnp.float32)
        return jnp.clip(img / 2 + 0.5, 0.0, 1.0), z.astype(jnp.float32)

    return views


def make_sampler(nets: Arc2FaceNets, config: Arc2FaceConfig) -> Callable[..., jax.Array]:
    """``sampler(params, id_embs, keys) -> images``: V views of N people, one jitted program.

    Args (of the returned function):
      params: :class:`Arc2FaceParams`.
      id_embs: (N, d) identity embeddings, d <= the text width (512 into 768 for Arc2Face),
        normalised and zero-padded inside, as Arc2Face does.
      keys: (N,) PRNG keys, one per identity; its V initial latents ``N(0, 1) x
        init_noise_sigma`` derive from it (the reference leaves them unseeded).

    Returns:
      (N, V, H, W, 3) float32 RGB in [0, 1] (H = W = the VAE's upsampling x the UNet side).
    """
    views = make_views_from_latents(nets, config)
    unet_cfg = sd_unet.get_config(nets.unet)
    shape = (config.n_views, unet_cfg.sample_size, unet_cfg.sample_size, unet_cfg.in_channels)
    sigma = make_dpm_solver(config.steps).init_noise_sigma

    def one(params: Arc2FaceParams, id_emb: jax.Array, key: jax.Array) -> jax.Array:
        x_t = jax.random.normal(key, shape, jnp.float32) * sigma
        return views(params, id_emb, x_t)[0]

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))


def to_uint8(images: jax.Array | np.ndarray) -> np.ndarray:
    """As the reference stores samples: ``uint8(255 x)``, truncating."""
    return (np.asarray(images) * 255).astype(np.uint8)
