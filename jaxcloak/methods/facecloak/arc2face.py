"""FaceCloak stage 1 as published: Arc2Face views of a person, sampled as one compiled program.

Arc2Face (docs/facecloak.md, "Stage 1: views of the person") is Stable Diffusion 1.5
conditioned on an ArcFace identity: the prompt "photo of a id person" goes through a fine-tuned
CLIP text encoder with the ``id`` token's embedding replaced by the normalised 512-d identity
vector (:func:`jaxcloak.nets.clip_text.make_clip_text`'s ``arc2face_prompt_embeds``); the
SD-1.5 UNet (:mod:`jaxcloak.nets.sd_unet`) denoises latents with DPM-Solver++ 2M (25 steps,
:mod:`jaxcloak.diffusion.dpm_solver`) and classifier-free guidance 3.0 against the empty
prompt's encoding; the SD VAE (:mod:`jaxcloak.nets.sd_vae`) decodes to 512x512.

:func:`make_views_from_latents` is the pipeline for ONE identity (V views; the conditional and
unconditional branches of all V views in one batched UNet call per step). :func:`make_sampler`
runs V views of N people as a single program: each person's V initial latents from their own
PRNG key, the N x V rows (2 N V with guidance) in one UNet call per step. No gradients, no
host round-trips: the reference's 8 sequential batch-1 samples with an autograd graph
(docs/facecloak.md, "Defect: sampling with autograd on") become one ``lax.scan``.
``dtype="bfloat16"`` runs the three networks in bf16 (the solver update stays float32, as
diffusers upcasts it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ...diffusion.dpm_solver import Guidance, make_dpm_solver, sample
from ...nets import clip_text, sd_unet, sd_vae
from ...parallel import cast_floating
from ...typing import Params


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


def _pipeline(nets: Arc2FaceNets, config: Arc2FaceConfig):
    """``(encode, run)`` on weights already cast to ``config.dtype``:

    ``encode(p, id_embs (N, d)) -> (N, L, D)`` conditional prompt encodings;
    ``run(p, cond (B, L, D), x_T (B, h, w, 4)) -> (images (B, H, W, 3) in [0, 1], z_0)``,
    each row sampled with its own conditioning against the empty prompt.
    """
    text = clip_text.make_clip_text(nets.text)
    eps_net = sd_unet.make_unet(sd_unet.get_config(nets.unet))
    vae_cfg = sd_vae.get_config(nets.vae)
    vae = sd_vae.make_vae(vae_cfg)
    schedule = make_dpm_solver(config.steps)
    dtype = jnp.dtype(config.dtype)
    prompt = jnp.asarray(nets.prompt_ids, jnp.int32)
    empty = jnp.asarray(nets.empty_ids, jnp.int32)

    def encode(p: Arc2FaceParams, id_embs: jax.Array) -> jax.Array:
        return text.arc2face_prompt_embeds(p.text, id_embs.astype(dtype), prompt, nets.id_position)

    def run(p: Arc2FaceParams, cond: jax.Array, x_t: jax.Array):
        uncond = text.encode_ids(p.text, empty)[0]  # (1, L, D)

        def eps_fn(x: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
            return eps_net(p.unet, x, jnp.full((x.shape[0],), t), context)

        guidance = Guidance(cond, jnp.repeat(uncond, x_t.shape[0], axis=0), config.guidance)
        z = sample(eps_fn, x_t.astype(dtype), schedule, guidance, unroll=config.unroll)
        img = vae.decode(p.vae, z / vae_cfg.scaling_factor).astype(jnp.float32)
        return jnp.clip(img / 2 + 0.5, 0.0, 1.0), z.astype(jnp.float32)

    return encode, run


def make_views_from_latents(
    nets: Arc2FaceNets, config: Arc2FaceConfig
) -> Callable[[Arc2FaceParams, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """The pipeline for ONE identity from given initial latents (not jitted, not vmapped).

    Returns ``views(params, id_emb (d,), x_T (V, h, w, 4)) -> (images, z_0)``: images
    (V, H, W, 3) in [0, 1] and the final latents (before the VAE), for parity checks.
    """
    encode, run = _pipeline(nets, config)

    def views(params: Arc2FaceParams, id_emb: jax.Array, x_t: jax.Array):
        p = cast_floating(params, jnp.dtype(config.dtype))
        return run(p, jnp.repeat(encode(p, id_emb[None]), x_t.shape[0], axis=0), x_t)

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
    encode, run = _pipeline(nets, config)
    unet_cfg = sd_unet.get_config(nets.unet)
    shape = (config.n_views, unet_cfg.sample_size, unet_cfg.sample_size, unet_cfg.in_channels)
    sigma = make_dpm_solver(config.steps).init_noise_sigma

    # People are rows of one batch rather than a vmap of the one-person pipeline: on XLA:CPU
    # the vmapped UNet ran 1.7x slower than the same rows unvmapped (a 32x32-latent UNet at
    # 4 x 16 rows: 9.9 vs 5.9 s per call), the blocked attention's loop being batched badly.
    def sampler(params: Arc2FaceParams, id_embs: jax.Array, keys: jax.Array) -> jax.Array:
        p = cast_floating(params, jnp.dtype(config.dtype))
        x_t = jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys) * sigma
        n, v = x_t.shape[:2]
        cond = jnp.repeat(encode(p, id_embs), v, axis=0)  # person-major, as x_t's rows
        images, _ = run(p, cond, x_t.reshape(n * v, *shape[1:]))
        return images.reshape(n, v, *images.shape[1:])

    return jax.jit(sampler)


def load_arc2face(
    arc2face: str | os.PathLike, sd: str | os.PathLike
) -> tuple[Arc2FaceNets, Arc2FaceParams]:
    """Arc2Face's networks from the folders users download (diffusers/transformers layouts).

    Args:
      arc2face: the Arc2Face model folder: ``arc2face/`` (the UNet: config.json +
        diffusion_pytorch_model.safetensors) and ``encoder/`` (the CLIP text encoder).
      sd: a Stable Diffusion 1.5 folder for the ``vae/`` and the ``tokenizer/``.

    Raises:
      FileNotFoundError / ConversionError: naming the folder or key that is wrong.
    """
    a, s = Path(arc2face), Path(sd)
    for folder in (a, s):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder (Arc2Face needs --arc2face, --sd)")
    unet_dir = a / "arc2face" if (a / "arc2face").is_dir() else a
    text_cfg, text_p = clip_text.load_transformers_folder(a)
    unet_cfg, unet_p = sd_unet.load_diffusers_folder(unet_dir)
    vae_cfg, vae_p = sd_vae.load_diffusers_folder(s)
    tok = clip_text.load_tokenizer(s)
    prompt, id_position = clip_text.arc2face_input_ids(tok)
    n = prompt.shape[1]
    empty = np.asarray(
        tok("", padding="max_length", max_length=n, truncation=True).input_ids, np.int32
    )[None]
    nets = Arc2FaceNets(text_cfg, unet_cfg, vae_cfg, prompt, id_position, empty)
    return nets, Arc2FaceParams(text_p, unet_p, vae_p)


class Arc2FaceViews:
    """Stage-1 view generator (:class:`.views.ViewGenerator`) from Arc2Face.

    The face's identity comes from ``embed`` (an FR model with a 512-d output; Arc2Face was
    trained on antelopev2's glintr100 ArcFace embeddings, so an ArcFace IResNet-100 is the
    closest registered model), the V samples from the compiled sampler; each 512x512 sample is
    an ArcFace-template-aligned face (Arc2Face is trained on aligned crops upscaled to 512), so
    it is resized to the crop side rather than re-detected (the reference runs MTCNN on it).
    All weights travel in :attr:`params` as arguments of the compiled stage-2 program.

    Args:
      nets, params: from :func:`load_arc2face`.
      embed: ``embed(fr_params, faces (B, S, S, 3) RGB [0, 1]) -> (B, d)``.
      fr_params: its weights.
      config: sampling settings (``n_views`` views per face).
      fr_name: the FR model's name, for :meth:`config`.
    """

    name = "arc2face"

    def __init__(
        self,
        nets: Arc2FaceNets,
        params: Arc2FaceParams,
        embed: Callable[[Params, jax.Array], jax.Array],
        fr_params: Params,
        config: Arc2FaceConfig = Arc2FaceConfig(),
        fr_name: str = "",
    ):
        self.nets = nets
        self.n_views = config.n_views
        self.sample_config = config
        self.fr_name = fr_name
        self.params = (params, fr_params)
        self._embed = embed
        self._views = make_views_from_latents(nets, config)
        cfg = sd_unet.get_config(nets.unet)
        self._shape = (config.n_views, cfg.sample_size, cfg.sample_size, cfg.in_channels)
        self._sigma = make_dpm_solver(config.steps).init_noise_sigma

    def config(self) -> dict[str, Any]:
        c = self.sample_config
        return {
            "name": self.name,
            "n_views": c.n_views,
            "steps": c.steps,
            "guidance": c.guidance,
            "dtype": c.dtype,
            "id_model": self.fr_name,
        }

    def __call__(self, face: jax.Array, *, key: jax.Array, params: Any = None) -> jax.Array:
        """(S, S, 3) float32 [0, 1] face -> (V + 1, S, S, 3): V Arc2Face samples, the face last."""
        a2f, fr = self.params if params is None else params
        id_emb = self._embed(fr, face[None])[0]
        x_t = jax.random.normal(key, self._shape, jnp.float32) * self._sigma
        images = self._views(a2f, id_emb, x_t)[0]
        s = face.shape[0]
        crops = jax.image.resize(images, (self.n_views, s, s, 3), "linear", antialias=True)
        return jnp.concatenate([jnp.clip(crops, 0, 1), face[None].astype(crops.dtype)])
