"""Arc2Face "8 views of 4 identities": jaxcloak's compiled sampler vs the diffusers pipeline.

The same random weights on both sides (a diffusers ``UNet2DConditionModel`` and
``AutoencoderKL`` are built in torch, written with ``save_pretrained`` and read into JAX with
``load_diffusers_folder``), the same conditioning (cond/uncond from jaxcloak's CLIP text
encoder, fed to torch too; the text encoder is a negligible share), 25 DPM-Solver++ 2M steps
(diffusers' ``DPMSolverMultistepScheduler`` configured as SD-1.5's), guidance 3.0. Rows:

- jax: ``make_sampler`` AOT-compiled (compile seconds apart), one call = N=4 people x V=8
  views, median and p10-p90 of ``--repeats`` calls after one warm-up;
- torch (reference): as the FaceCloak reference codes it (docs/facecloak.md, "Defect: sampling
  with autograd on"): one batch-1 sampling loop per view (2 CFG branches per UNet call),
  autograd ON (the graph is kept, never back-propagated), then a batch-1 VAE decode, 4 x 8 =
  32 sequential loops per call. Only ``--ref-samples`` of the 32 loops are timed and the
  per-sample median is scaled x32 (stated in the output);
- torch (tuned): all 32 views in one batch (64 with CFG), ``torch.no_grad``, one loop, one
  batched decode.

Configs are random-weight stand-ins, not Arc2Face itself: ``tiny`` is exactly
``tests/test_arc2face.py``'s, ``mid`` is ~16x its UNet compute (stated in the output), ``sd15``
has Arc2Face's real shapes (SD-1.5 UNet and VAE, CLIP ViT-L/14 text encoder, 512x512 images;
for a GPU). torch runs with ``torch.set_num_threads(--torch-threads)`` (2 by default).

On a GPU (``--device cuda``; JAX uses its default device): every torch call ends with
``torch.cuda.synchronize()``; torch rows run first and free their memory before the JAX rows
(start with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so the two share the card). The reference
as published runs float16 with attention slicing (``--torch-dtypes float16
--attention-slicing``); JAX's half-precision rows are bfloat16 (``--jax-dtypes``) and attend
with cuDNN's fused kernel on a GPU (``--jax-attention xla`` for the XLA path, blocked queries).
Float32 is true float32 on both sides: JAX's float32 rows run under the float32 precision
policy (``jaxcloak.precision``) and torch's TF32 is off; ``--torch-tf32`` switches TF32 on
for both (the tf32 policy on the JAX side).

  python benchmarks/bench_arc2face.py                        # tiny and mid, 3 repeats
  python benchmarks/bench_arc2face.py --configs tiny --repeats 5
  python benchmarks/bench_arc2face.py --ref-samples 8 --md out.md --json out.json
  XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/bench_arc2face.py --device cuda \
      --configs tiny,mid,sd15 --jax-dtypes float32,bfloat16 --torch-dtypes float32,float16 \
      --attention-slicing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
# the PyTorch references the tests share
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from timing import environment, time_calls
from torch_reference.sd_twins import SD15_DPM_SCHEDULER, arc2face_twins, unet_kwargs, vae_kwargs

from jaxcloak import precision
from jaxcloak.diffusion.dpm_solver import make_dpm_solver
from jaxcloak.methods.facecloak import arc2face
from jaxcloak.nets import clip_text, sd_unet, sd_vae


def _configs() -> dict[str, dict]:
    tiny_text = clip_text.get_config("tiny")
    mid_text = dataclasses.replace(
        tiny_text,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
    )
    return {
        "tiny": dict(  # exactly tests/test_arc2face.py
            text=tiny_text,
            unet=dataclasses.replace(
                sd_unet.get_config("tiny"), cross_attention_dim=tiny_text.hidden_size
            ),
            vae=sd_vae.get_config("tiny"),
            id_dim=48,
        ),
        "mid": dict(
            text=mid_text,
            unet=dataclasses.replace(
                sd_unet.get_config("tiny"),
                block_out_channels=(64, 128, 256),
                cross_attention_dim=mid_text.hidden_size,
                attention_head_dim=8,
                layers_per_block=1,
                sample_size=32,
                norm_num_groups=32,
            ),
            vae=sd_vae.VAEConfig(
                block_out_channels=(64, 128, 128), layers_per_block=1, sample_size=128
            ),
            id_dim=192,
        ),
        "sd15": dict(  # Arc2Face's shapes: SD-1.5 UNet/VAE, CLIP ViT-L/14, 512-d identity
            text=clip_text.get_config("vit_l14"),
            unet=sd_unet.get_config("sd15"),
            vae=sd_vae.get_config("sd15"),
            id_dim=512,
        ),
    }


@dataclasses.dataclass(frozen=True)
class Job:
    """What one row samples and how it is timed."""

    n_ids: int = 4
    n_views: int = 8
    steps: int = 25
    guidance: float = 3.0
    repeats: int = 3
    warmup: int = 1

    @property
    def total(self) -> int:
        return self.n_ids * self.n_views


def build(cfg: dict, folder: Path):
    """Torch UNet + VAE, their JAX twins loaded from save_pretrained, nets and params."""
    return arc2face_twins(cfg["text"], unet_kwargs(cfg["unet"]), vae_kwargs(cfg["vae"]), folder)


def _n_params(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def bench_jax(nets, params, ids, job: Job, dtype: str, check: bool):
    config = arc2face.Arc2FaceConfig(
        steps=job.steps, guidance=job.guidance, n_views=job.n_views, dtype=dtype
    )
    sampler = arc2face.make_sampler(nets, config)
    keys = jax.random.split(jax.random.key(0), job.n_ids)
    ids_j = jnp.asarray(ids)
    params = jax.device_put(params)  # weights on the device once, as the Cloaker holds them
    t0 = time.perf_counter()
    compiled = sampler.lower(params, ids_j, keys).compile()
    compile_s = time.perf_counter() - t0
    t = time_calls(
        lambda: jax.block_until_ready(compiled(params, ids_j, keys)),
        warmup=job.warmup,
        iters=job.repeats,
    )
    side = sd_unet.get_config(nets.unet).sample_size * sd_vae.get_config(nets.vae).downscale
    shape = (job.n_ids, job.n_views, side, side, 3)
    err = None
    if check:  # the vmapped program = the one-identity pipeline on the same initial latents
        u = sd_unet.get_config(nets.unet)
        lat = (job.n_views, u.sample_size, u.sample_size, u.in_channels)
        sigma = make_dpm_solver(job.steps).init_noise_sigma
        x_t = jax.random.normal(keys[0], lat, jnp.float32) * sigma
        views = jax.jit(arc2face.make_views_from_latents(nets, config))
        one = np.asarray(views(params, ids_j[0], x_t)[0])
        imgs = compiled(params, ids_j, keys)
        err = float(np.abs(one - np.asarray(imgs[0], np.float32)).max())
    return compile_s, t, tuple(shape), err


def _conditioning(nets, params, ids):
    text = clip_text.make_clip_text(nets.text)
    cond = np.asarray(
        text.arc2face_prompt_embeds(
            params.text, jnp.asarray(ids), nets.prompt_ids, nets.id_position
        )
    )
    uncond = np.asarray(text.encode_ids(params.text, nets.empty_ids)[0])
    return cond, uncond  # (N, L, D), (1, L, D)


def _loop(torch, sched, unet_t, vae_t, z, ctx, steps, guidance):
    sched.set_timesteps(steps)
    z = z * sched.init_noise_sigma
    for t in sched.timesteps:  # the reference's loop: [x, x] with [neg, cond]
        x_in = sched.scale_model_input(torch.cat([z, z]), t)
        eps_u, eps_c = unet_t(x_in, t, encoder_hidden_states=ctx).sample.chunk(2)
        z = sched.step(eps_u + guidance * (eps_c - eps_u), t, z).prev_sample
    return (vae_t.decode(z / 0.18215).sample / 2 + 0.5).clamp(0, 1)


def _sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_torch_reference(unet_t, vae_t, cond, uncond, side, job: Job, n_samples, device):
    """Batch-1 loops with autograd on; times ``n_samples`` of the N x V (after warm-up)."""
    import diffusers
    import torch

    dtype = next(unet_t.parameters()).dtype
    sched = diffusers.DPMSolverMultistepScheduler(**SD15_DPM_SCHEDULER)
    unc = torch.from_numpy(uncond.copy()).to(device, dtype)
    gen = torch.Generator().manual_seed(0)
    per_sample = []
    for k in range(n_samples + job.warmup):
        i = k % job.n_ids  # cycle identities; the cost does not depend on whose
        ctx = torch.cat([unc, torch.from_numpy(cond[i : i + 1]).to(device, dtype)])
        z = torch.randn((1, 4, side, side), generator=gen).to(device, dtype)
        _sync(torch, device)
        t0 = time.perf_counter()
        img = _loop(torch, sched, unet_t, vae_t, z, ctx, job.steps, job.guidance)
        _sync(torch, device)
        dt = time.perf_counter() - t0
        assert img.requires_grad  # the graph is kept, as in the reference (never backward)
        del img
        if k >= job.warmup:
            per_sample.append(dt)
    per_sample.sort()
    q = (
        statistics.quantiles(per_sample, n=10, method="inclusive")
        if len(per_sample) >= 2
        else per_sample * 9
    )
    return {
        "median": job.total * statistics.median(per_sample),
        "p10": job.total * q[0],
        "p90": job.total * q[-1],
        "n": len(per_sample),
    }


def bench_torch_tuned(unet_t, vae_t, cond, uncond, side, job: Job, device):
    import diffusers
    import torch

    dtype = next(unet_t.parameters()).dtype
    sched = diffusers.DPMSolverMultistepScheduler(**SD15_DPM_SCHEDULER)
    v = job.total
    ctx = np.concatenate([np.repeat(uncond, v, 0), np.repeat(cond, job.n_views, 0)])
    ctx = torch.from_numpy(ctx).to(device, dtype)
    z = torch.randn((v, 4, side, side), generator=torch.Generator().manual_seed(0))
    z = z.to(device, dtype)

    def call():
        with torch.no_grad():
            out = _loop(torch, sched, unet_t, vae_t, z, ctx, job.steps, job.guidance)
        _sync(torch, device)
        return out

    return time_calls(call, warmup=job.warmup, iters=job.repeats)


def _describe(name: str, cfg: dict, unet_t, vae_t) -> str:
    t, u, v = cfg["text"], cfg["unet"], cfg["vae"]
    side = u.sample_size * 2 ** (len(v.block_out_channels) - 1)
    return (
        f"- `{name}`: text CLIP width {t.hidden_size}, {t.num_hidden_layers} layers, "
        f"{t.num_attention_heads} heads, MLP {t.intermediate_size}, {t.max_position_embeddings} "
        f"positions; identity dim {cfg['id_dim']}. UNet block_out {u.block_out_channels}, "
        f"down {u.down_block_types}, up {u.up_block_types}, layers_per_block "
        f"{u.layers_per_block}, cross_attention_dim {u.cross_attention_dim}, heads "
        f"{u.attention_head_dim}, norm groups {u.norm_num_groups}, latents "
        f"{u.sample_size}x{u.sample_size}x{u.in_channels} ({_n_params(unet_t):.2f}M params). "
        f"VAE block_out {v.block_out_channels}, layers_per_block {v.layers_per_block}, norm "
        f"groups {v.norm_num_groups} ({_n_params(vae_t):.2f}M params, decoder used). "
        f"Images {side}x{side}."
    )


def _row(r: dict) -> str:
    comp = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
    speedup = "-" if r["impl"].startswith("jax") else f"{r['jax_speedup']:.1f}x vs {r['vs']}"
    return (
        f"| {r['config']} | {r['impl']} | {comp} | {r['call_s']:.2f} | "
        f"{r['p10_s']:.2f}-{r['p90_s']:.2f} | {r['s_per_view']:.3f} | {speedup} |"
    )


_HALF = {"float16": "bfloat16", "bfloat16": "bfloat16", "float32": "float32"}


def _ref_samples(spec: str, config: str) -> int:
    """``--ref-samples``: N for every config, or NAME=N pairs (default 4)."""
    if spec.strip().isdigit():
        return int(spec)
    pairs = dict(kv.split("=", 1) for kv in spec.split(",") if "=" in kv)
    return int(pairs.get(config, 4))


def _torch_rows(cfg, unet_t, vae_t, cond, uncond, job, args, name, dtypes, notes):
    """Reference and tuned torch rows per dtype, on ``args.device``; memory freed after."""
    import torch

    side, out = cfg["unet"].sample_size, []
    n_ref = _ref_samples(args.ref_samples, name)
    for dt in dtypes:
        tdt = getattr(torch, dt)
        unet_t.to(args.device, tdt)
        vae_t.to(args.device, tdt)
        if args.attention_slicing:  # the reference pipeline's enable_attention_slicing()
            unet_t.set_attention_slice("auto")
        try:
            t_ref = bench_torch_reference(
                unet_t, vae_t, cond, uncond, side, job, n_ref, args.device
            )
            print(f"  torch {dt} reference: {t_ref['median']:.2f} s (x{job.total})", flush=True)
        except torch.OutOfMemoryError as e:  # the kept autograd graph grows with every step
            t_ref = None
            notes.append(f"`{name}` torch {dt} (reference): out of memory ({str(e)[:160]}).")
            print(f"  torch {dt} reference: out of memory", flush=True)
            torch.cuda.empty_cache()
        if args.attention_slicing:
            unet_t.set_attention_slice(None)  # back to diffusers' default processor (SDPA)
        t_tuned = bench_torch_tuned(unet_t, vae_t, cond, uncond, side, job, args.device)
        print(f"  torch {dt} tuned: {t_tuned['median']:.2f} s", flush=True)
        slicing = ", attention slicing" if args.attention_slicing else ""
        if t_ref is not None:
            ref_impl = f"torch {dt} (reference: {job.total} x batch-1, autograd on{slicing})"
            out.append((ref_impl, t_ref, dt))
        out.append((f"torch {dt} (tuned: batch {job.total}, no_grad)", t_tuned, dt))
    notes.append(
        f"`{name}` torch (reference): {n_ref} of the {job.total} batch-1 loops timed "
        f"(after {job.warmup} warm-up loop(s)); s per call = {job.total} x their median "
        "(p10-p90 likewise)."
    )
    unet_t.to("cpu", torch.float32)
    vae_t.to("cpu", torch.float32)
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--configs", default="tiny,mid", help="comma-separated: tiny, mid, sd15")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per row (median)")
    ap.add_argument(
        "--ref-samples",
        default="tiny=32,mid=4,sd15=4",
        help="batch-1 loops timed (of N x V) for the torch reference row, per config",
    )
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls (loops) before timing")
    ap.add_argument("--ids", type=int, default=4, help="identities N (default 4)")
    ap.add_argument("--views", type=int, default=8, help="views per identity V (default 8)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default cpu)")
    ap.add_argument("--jax-dtypes", default="float32", help="JAX rows: float32, bfloat16")
    ap.add_argument("--torch-dtypes", default="float32", help="torch rows: float32, float16")
    ap.add_argument(
        "--attention-slicing",
        action="store_true",
        help="the reference row slices attention as the published pipeline does",
    )
    ap.add_argument(
        "--torch-tf32",
        action="store_true",
        help="TF32 on a GPU for both sides (torch's allow_tf32, JAX's tf32 precision policy)",
    )
    ap.add_argument(
        "--jax-attention",
        choices=["auto", "xla"],
        default="auto",
        help="auto: cuDNN fused attention for JAX's half-precision rows on a GPU; xla: always "
        "XLA's attention in query blocks (the A/B)",
    )
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--check", default="tiny", help="configs whose JAX output is checked")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--md", help="also write the markdown here")
    args = ap.parse_args()

    import diffusers
    import torch

    torch.set_num_threads(args.torch_threads)
    torch.backends.cuda.matmul.allow_tf32 = args.torch_tf32
    torch.backends.cudnn.allow_tf32 = args.torch_tf32
    precision.apply("tf32" if args.torch_tf32 else "float32")  # the JAX side, the same
    sd_unet._CUDNN_ATTENTION = args.jax_attention == "auto"
    all_cfgs = _configs()
    names = [c for c in args.configs.split(",") if c]
    checks = set(args.check.split(","))
    jax_dtypes = [d for d in args.jax_dtypes.split(",") if d]
    torch_dtypes = [d for d in args.torch_dtypes.split(",") if d]
    job = Job(args.ids, args.views, args.steps, args.guidance, args.repeats, args.warmup)
    env = {
        **environment(),
        "torch": torch.__version__,
        "torch_threads": args.torch_threads,
        "torch_device": args.device,
        "torch_tf32": args.torch_tf32,
        "jax_attention": args.jax_attention,
        "diffusers": diffusers.__version__,
    }
    if args.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    lines = [f"# bench_arc2face  {json.dumps(env)}", ""]
    lines.append(
        f"Sample {job.n_views} views for {job.n_ids} identities: {job.steps} DPM-Solver++ 2M "
        f"steps, CFG {job.guidance}, random weights shared by both sides. Configs:"
    )
    print("\n".join(lines), flush=True)
    rows, descs, notes = [], [], []
    header = [
        "",
        "| config | implementation | compile s | s per call (median) | p10-p90 | s per view "
        "| JAX speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        cfg = all_cfgs[name]
        with tempfile.TemporaryDirectory() as tmp:
            unet_t, vae_t, nets, params = build(cfg, Path(tmp))
        desc = _describe(name, cfg, unet_t, vae_t)
        descs.append(desc)
        print(desc, flush=True)
        ids = np.random.default_rng(0).standard_normal((job.n_ids, cfg["id_dim"]))
        ids = ids.astype(np.float32)
        cond, uncond = _conditioning(nets, params, ids)
        torch_rows = _torch_rows(
            cfg, unet_t, vae_t, cond, uncond, job, args, name, torch_dtypes, notes
        )
        del unet_t, vae_t
        jax_rows = {}
        for dt in jax_dtypes:
            c_s, t_jax, shape, err = bench_jax(nets, params, ids, job, dt, name in checks)
            print(
                f"  jax {dt}: compile {c_s:.1f} s, call {t_jax['median']:.2f} s, out {shape}",
                flush=True,
            )
            jax_rows[dt] = (f"jax {dt} (compiled sampler)", t_jax, c_s)
            if err is not None:
                notes.append(
                    f"`{name}` {dt}: JAX sampler output of identity 0 vs jitted "
                    f"`make_views_from_latents` on the same latents: max abs diff {err:.1e}."
                )
        for impl, t, comp in jax_rows.values():
            rows.append(_row_dict(name, impl, t, comp, job, None, None))
        for impl, t, dt in torch_rows:  # speed-up vs the JAX row of the same width
            ref = _HALF[dt] if _HALF[dt] in jax_rows else next(iter(jax_rows))
            rows.append(_row_dict(name, impl, t, None, job, jax_rows[ref][1], f"jax {ref}"))
    table = header + [_row(r) for r in rows]
    tail = ["", *[f"- {n}" for n in notes]]
    print("\n".join(table + tail), flush=True)
    if args.md:
        Path(args.md).write_text("\n".join(lines + descs + table + tail) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "configs": descs, "rows": rows, "notes": notes}, f, indent=2)


def _row_dict(name, impl, t, comp, job: Job, t_jax, vs) -> dict:
    return {
        "config": name,
        "impl": impl,
        "compile_s": None if comp is None else round(comp, 2),
        "call_s": round(t["median"], 3),
        "p10_s": round(t["p10"], 3),
        "p90_s": round(t["p90"], 3),
        "timed": t["n"],
        "s_per_view": round(t["median"] / job.total, 4),
        "jax_speedup": None if t_jax is None else round(t["median"] / t_jax["median"], 2),
        "vs": vs,
    }


if __name__ == "__main__":
    main()
