"""Arc2Face sampling (``jaxcloak.methods.facecloak.arc2face``): one compiled program for V
views of N people, and a full 25-step guided sampling against diffusers' UNet, DPM-Solver++
scheduler and VAE driven the way the reference's ``pipeline_forward_with_grad`` drives them.

The text encoder's own parity (and the identity injection against a re-declared
``CLIPTextModelWrapper``) is tested in ``test_clip_text.py``; here its outputs condition both
sides, so the comparison isolates the UNet, classifier-free guidance, the solver and the VAE.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from test_sd_vae import TINY_DIFFUSERS  # noqa: E402
from torch_reference.sd_twins import SD15_DPM_SCHEDULER, arc2face_twins, unet_kwargs  # noqa: E402

from jaxcloak.diffusion.dpm_solver import make_dpm_solver  # noqa: E402
from jaxcloak.methods.facecloak import arc2face  # noqa: E402
from jaxcloak.nets import clip_text, sd_unet  # noqa: E402

TEXT = clip_text.get_config("tiny")
ID_DIM = 48  # the tiny text width is 64; the real model pads 512 -> 768
UNET = dataclasses.replace(sd_unet.get_config("tiny"), cross_attention_dim=TEXT.hidden_size)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(torch unet, torch vae, Arc2FaceNets, Arc2FaceParams) on tiny random configs."""
    root = tmp_path_factory.mktemp("arc2face")
    return arc2face_twins(TEXT, unet_kwargs(UNET), TINY_DIFFUSERS, root)


def test_views_of_many_people_are_one_compiled_call(models, monkeypatch):
    _, _, nets, params = models
    traces = []
    make_unet = sd_unet.make_unet

    def counting(variant):
        eps = make_unet(variant)

        def traced(*args):
            traces.append(args[1].shape)
            return eps(*args)

        return traced

    monkeypatch.setattr(arc2face.sd_unet, "make_unet", counting)
    sampler = arc2face.make_sampler(nets, arc2face.Arc2FaceConfig(n_views=8))
    ids = np.random.default_rng(0).standard_normal((4, ID_DIM)).astype(np.float32)
    keys = jax.random.split(jax.random.key(0), 4)
    imgs = np.asarray(sampler(params, ids, keys))
    assert imgs.shape == (4, 8, 32, 32, 3) and imgs.min() >= 0 and imgs.max() <= 1
    # One trace of the UNet: 25 solver steps in a scan, 4 people x 8 views x 2 branches
    # batched; one program.
    assert traces == [(64, 16, 16, 4)]
    again = np.asarray(sampler(params, ids[::-1].copy(), jax.random.split(jax.random.key(1), 4)))
    assert len(traces) == 1 and sampler._cache_size() == 1
    assert not np.array_equal(again, imgs)
    # Views of one person differ (their own initial latents), people differ.
    assert np.abs(imgs[0, 0] - imgs[0, 1]).max() > 1e-3
    assert np.abs(imgs[0] - imgs[1]).max() > 1e-3
    # Rows are not mixed up between people: person 2 = the one-person pipeline on the
    # latents drawn from their key.
    config = arc2face.Arc2FaceConfig(n_views=8)
    x_t = jax.random.normal(keys[2], (8, 16, 16, 4)) * make_dpm_solver(25).init_noise_sigma
    one = jax.jit(arc2face.make_views_from_latents(nets, config))(params, ids[2], x_t)[0]
    assert np.abs(np.asarray(one) - imgs[2]).max() < 1e-5


def test_guided_25_step_sampling_matches_diffusers(models):
    unet_t, vae_t, nets, params = models
    config = arc2face.Arc2FaceConfig()
    rng = np.random.default_rng(3)
    x_t = rng.standard_normal((2, UNET.sample_size, UNET.sample_size, 4)).astype(np.float32)
    id_emb = rng.standard_normal(ID_DIM).astype(np.float32)
    views = jax.jit(arc2face.make_views_from_latents(nets, config))
    img, z = (np.asarray(a) for a in views(params, jnp.asarray(id_emb), jnp.asarray(x_t)))

    # Both sides get the same conditioning (our text encoder; its parity is tested apart).
    text = clip_text.make_clip_text(TEXT)
    cond = np.asarray(
        text.arc2face_prompt_embeds(params.text, id_emb[None], nets.prompt_ids, nets.id_position)
    )
    uncond = np.asarray(text.encode_ids(params.text, nets.empty_ids)[0])
    sched = diffusers.DPMSolverMultistepScheduler(**SD15_DPM_SCHEDULER)
    sched.set_timesteps(config.steps)
    v = len(x_t)
    ctx = torch.from_numpy(np.concatenate([np.repeat(uncond, v, 0), np.repeat(cond, v, 0)]))
    zt = torch.from_numpy(x_t.transpose(0, 3, 1, 2).copy()) * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:  # the reference's loop: [x, x] with [neg, cond], CFG 3.0
            x_in = sched.scale_model_input(torch.cat([zt, zt]), t)
            eps_u, eps_c = unet_t(x_in, t, encoder_hidden_states=ctx).sample.chunk(2)
            zt = sched.step(eps_u + config.guidance * (eps_c - eps_u), t, zt).prev_sample
        ref = (vae_t.decode(zt / 0.18215).sample / 2 + 0.5).clamp(0, 1)
    z_ref = zt.numpy().transpose(0, 2, 3, 1)
    img_ref = ref.numpy().transpose(0, 2, 3, 1)
    z_err = np.abs(z - z_ref).max() / np.abs(z_ref).max()
    img_err = np.abs(img - img_ref).max()
    print(f"latents rel err {z_err:.2e}, images max abs err {img_err:.2e}")
    assert z_err <= 1e-4, z_err
    assert img_err <= 1e-4, img_err


def test_stage2_fits_masks_on_arc2face_views(models):
    """The generator plugs into the Cloaker: its weights are program arguments."""
    from jaxcloak.configs.facecloak import get_config
    from jaxcloak.faces.samples import sample_faces
    from jaxcloak.methods.facecloak.anchors import builtin_pool
    from jaxcloak.methods.facecloak.cloaker import Cloaker
    from jaxcloak.methods.facecloak.views import ViewGenerator, make_view_generator
    from jaxcloak.zoo.registry import load

    _, _, nets, params = models
    rec = load("sface")

    def embed(p, x):  # stand-in identity model: the tiny text encoder is 64 wide
        return rec.embed(p, x)[:, :ID_DIM]

    views = make_view_generator(
        "arc2face",
        nets=nets,
        params=params,
        embed=embed,
        fr_params=rec.params,
        config=arc2face.Arc2FaceConfig(n_views=2, steps=3),
        fr_name="sface[:48]",
    )
    assert isinstance(views, ViewGenerator) and views.config()["id_model"] == "sface[:48]"
    faces = np.stack(list(sample_faces(1).values()))  # astronaut, one LFW face
    face01 = jnp.asarray(faces[0], jnp.float32) / 255
    out = jax.jit(lambda f, k: views(f, key=k))(face01, jax.random.key(0))
    assert out.shape == (3, 112, 112, 3)
    np.testing.assert_array_equal(out[-1], face01)  # the real face last, unchanged
    assert float(jnp.abs(out[0] - out[1]).max()) > 1e-3

    cloaker = Cloaker(rec, get_config("fixed", "mid", steps=1), views, builtin_pool(), max_batch=2)
    fitted = cloaker.fit(faces, ["a", "b"])
    assert [f.delta.shape for f in fitted] == [(112, 112, 3)] * 2
    assert all(np.abs(f.delta).max() > 0 for f in fitted)
    assert cloaker.describe()["views"]["name"] == "arc2face"


def test_load_arc2face_from_the_published_folder_layouts(models, tmp_path):
    """Arc2Face (arc2face/ UNet, encoder/ text encoder) + SD-1.5 (vae/, tokenizer/) folders."""
    from test_clip_text import torch_model, write_tiny_tokenizer

    unet_t, vae_t, _, _ = models
    a2f, sd = tmp_path / "Arc2Face", tmp_path / "sd15"
    unet_t.save_pretrained(a2f / "arc2face")
    text_t = torch_model(TEXT)
    text_t.save_pretrained(a2f / "encoder")
    vae_t.save_pretrained(sd / "vae")
    vocab = write_tiny_tokenizer(sd)
    nets, params = arc2face.load_arc2face(a2f, sd)
    assert nets.id_position == 4 and nets.prompt_ids[0, 4] == vocab["id</w>"]
    eos = vocab["<|endoftext|>"]
    assert nets.empty_ids[0, 0] == vocab["<|startoftext|>"] and set(nets.empty_ids[0, 1:]) == {eos}
    tower = getattr(text_t, "text_model", text_t)  # transformers 5 has no nested tower
    emb = tower.embeddings.token_embedding.weight.detach().numpy()
    ours = np.asarray(params.text["text_model"]["embeddings"]["token_embedding"]["weight"][...])
    np.testing.assert_array_equal(ours, emb)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        arc2face.load_arc2face(tmp_path / "missing", sd)
