"""diffusers twins of jaxcloak's Stable Diffusion configs, with seeded random weights.

The Arc2Face parity tests (``tests/test_arc2face.py``, ``tests/test_sd_unet.py``) and the
sampler benchmark (``benchmarks/bench_arc2face.py``) build the same thing: a diffusers
``UNet2DConditionModel`` and ``AutoencoderKL`` in one of our layouts, with non-trivial norm
affines and biases, written with ``save_pretrained`` and read back into JAX through our
converters, plus a CLIP text encoder and Arc2Face prompt ids for the JAX side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch

from jaxcloak.diffusion.dpm_solver import SD15_SCHEDULE
from jaxcloak.methods.facecloak import arc2face
from jaxcloak.nets import clip_text, sd_unet, sd_vae

#: diffusers ``DPMSolverMultistepScheduler`` kwargs of the Arc2Face pipeline (SD-1.5's
#: scheduler config, DPM-Solver++ 2M with ``lower_order_final``).
SD15_DPM_SCHEDULER: dict[str, Any] = dict(
    **SD15_SCHEDULE, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True
)


def unet_kwargs(cfg: sd_unet.SDUNetConfig) -> dict[str, Any]:
    """``UNet2DConditionModel`` kwargs of one of our configs."""
    return {
        "sample_size": cfg.sample_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "block_out_channels": cfg.block_out_channels,
        "down_block_types": cfg.down_block_types,
        "up_block_types": cfg.up_block_types,
        "layers_per_block": cfg.layers_per_block,
        "cross_attention_dim": cfg.cross_attention_dim,
        "attention_head_dim": cfg.attention_head_dim,
        "norm_num_groups": cfg.norm_num_groups,
        "norm_eps": cfg.norm_eps,
        "transformer_layers_per_block": cfg.transformer_layers_per_block,
    }


def vae_kwargs(cfg: sd_vae.VAEConfig) -> dict[str, Any]:
    """``AutoencoderKL`` kwargs of one of our configs (plain encoder/decoder blocks)."""
    levels = len(cfg.block_out_channels)
    return {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": ("DownEncoderBlock2D",) * levels,
        "up_block_types": ("UpDecoderBlock2D",) * levels,
        "block_out_channels": cfg.block_out_channels,
        "layers_per_block": cfg.layers_per_block,
        "latent_channels": cfg.latent_channels,
        "norm_num_groups": cfg.norm_num_groups,
        "sample_size": cfg.sample_size,
    }


def perturbed(net: torch.nn.Module) -> torch.nn.Module:
    """Seeded module with non-trivial norm affines and biases (every 1-d parameter moved), so
    a swapped scale/shift pair cannot pass a parity check."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return net.eval().float()


def arc2face_twins(
    text: clip_text.ClipTextConfig,
    unet: dict[str, Any],
    vae: dict[str, Any],
    folder: Path,
) -> tuple[torch.nn.Module, torch.nn.Module, arc2face.Arc2FaceNets, arc2face.Arc2FaceParams]:
    """(torch UNet, torch VAE, Arc2FaceNets, Arc2FaceParams) sharing one set of weights.

    ``unet``/``vae`` are diffusers kwargs (:func:`unet_kwargs`, :func:`vae_kwargs`); the torch
    models are written under ``folder`` and loaded back with our converters; the text encoder
    is our own random ``text`` config, with "photo of a id person" (id at 4) and the empty
    prompt as token ids (bos 1, eos 2).
    """
    torch.manual_seed(0)
    unet_t = perturbed(diffusers.UNet2DConditionModel(**unet))
    vae_t = perturbed(diffusers.AutoencoderKL(**vae))
    unet_t.save_pretrained(folder / "unet")
    vae_t.save_pretrained(folder / "vae")
    unet_cfg, unet_p = sd_unet.load_diffusers_folder(folder / "unet")
    vae_cfg, vae_p = sd_vae.load_diffusers_folder(folder / "vae")
    _, text_p = clip_text.init(text, seed=0)
    n = text.max_position_embeddings
    bos, eos = 1, 2
    prompt = np.full((1, n), eos, np.int32)
    prompt[0, :7] = [bos, 10, 11, 12, 13, 14, eos]  # "photo of a id person", id at 4
    empty = np.full((1, n), eos, np.int32)
    empty[0, 0] = bos
    nets = arc2face.Arc2FaceNets(text, unet_cfg, vae_cfg, prompt, 4, empty)
    return unet_t, vae_t, nets, arc2face.Arc2FaceParams(text_p, unet_p, vae_p)
