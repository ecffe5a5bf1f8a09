"""jaxcloak vs the PyTorch reference, side by side: same algorithm, weights and inputs, one run.

  python benchmarks/run.py                 # default size (about 15-20 min on a 2-core CPU)
  python benchmarks/run.py --quick         # the whole harness at small sizes (about 2-3 min)
  python benchmarks/run.py --json r.json --md r.md
  python benchmarks/run.py --torch-device cuda --json r.json --md r.md

On a GPU: JAX's workers use its default device (the GPU when a CUDA jaxlib is installed);
``--torch-device cuda`` puts every PyTorch module and input on the GPU too (default ``cpu``).
Both sides run at the same stated precision (``--precision``): float32 (default) is true
float32 (the JAX workers run under jaxcloak's float32 precision policy, HIGHEST matmuls, and
torch's TF32 is off), tf32 lets both use TF32 on a GPU (JAX's tf32 policy, torch's
``allow_tf32`` for matmuls and cuDNN); on a CPU the two are the same. The harness process itself
keeps JAX on the CPU (it only prepares inputs and scores outcomes), so each worker has the GPU
to itself; the devices, GPU name and precision are recorded with the environment.

Workloads (each row runs in its own subprocess, so its peak RSS and cold time are its own):

- FaceCloak stage 2, faithful (``afog_cloak_multi``: T passes x 9 views of sequential batch-1
  steps, alpha/rho updates, no projection) on SFace (real weights) and IR-50 (shared seeded
  random weights). JAX: jaxcloak's compiled ``lax.scan``, vmapped over identities. PyTorch
  eager "as coded" (``torch_reference.facecloak.afog_cloak_multi``: batch 1, parameter
  gradients on, per-step syncs; the reference has no identity batch, so its throughput is
  its batch-1 time) and "tuned" (identities batched, no parameter gradients, optionally
  ``torch.compile``). Parity: the masks from the same initial rho.
- MAP train step (DiffAM style: DDIM regeneration through the score network with gradients,
  SFace identity loss, fer expression loss, L1 + smoothness, Adam; no projection, no score
  matching, so both sides compute the same sum). Parity: the loss terms of the first 3 steps.
- The machine: attainable float32 matmul and 3x3-conv throughput (best of JAX and PyTorch),
  against which each workload's achieved FLOP/s (XLA's cost analysis of the JAX program,
  the same count for the PyTorch rows) is reported.

Times: "compile" is JAX's AOT compile (or torch.compile's first-call overhead), apart; then
one warm-up call and ``repeats`` timed calls: median and p10-p90 spread. Long FaceCloak rows
time fewer passes than the shipped 10 and report seconds per identity scaled to 90 steps
(the cost is linear in the steps; the column says which passes were timed).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # torch_reference: the PyTorch baselines

PASSES = 10  # the shipped afog_cloak_multi schedule: 10 passes over 9 views = 90 steps
N_VIEWS = 9


@dataclasses.dataclass(frozen=True)
class Size:
    """What one harness run measures."""

    fc_surrogates: tuple[str, ...]
    fc_batches: tuple[int, ...]  # identity batches; batch 1 also runs eager PyTorch
    fc_passes: int  # passes timed at batch 1 (sface)
    fc_batch_passes: int  # passes timed at larger batches and for IR-50
    fc_compile_torch: bool  # also time PyTorch under torch.compile (--torch-compile)
    map_variant: str
    map_n_train: int
    repeats: int
    map_unroll: bool | None = None  # MapConfig.unroll (None: by backend)
    machine_small: bool = False  # the machine row at sizes that only check the code


SIZES = {
    "default": Size(("sface", "ir50"), (1, 8, 32), PASSES, 1, False, "embedded", 6, 5),
    "quick": Size(("sface",), (1, 2), 1, 1, False, "tiny", 2, 3),
    # benchmarks/gpu_suite.py: faithful per identity at batch 1 and 32, the paper-size MAP
    # score network; and its --tiny mode (the script's correctness, in seconds on a CPU).
    "gpu": Size(("sface", "ir50"), (1, 32), PASSES, 1, False, "celeba_hq", 6, 3),
    # tiny: the rolled DDIM chain compiles in a third of the time (same values)
    "tiny": Size(("sface",), (1,), 1, 1, False, "tiny", 2, 1, map_unroll=False, machine_small=True),
}


# --------------------------------------------------------------------------- inputs


@functools.cache
def _face_crops():
    """Nine distinct aligned 112 px faces from package-shipped photos (uint8 RGB)."""
    import importlib.util

    import numpy as np
    import skimage.data

    from jaxcloak.faces import align_face, detect_faces
    from jaxcloak.io import read_image

    photos = [skimage.data.astronaut(), skimage.data.astronaut()[:, ::-1].copy()]
    spec = importlib.util.find_spec("insightface")
    if spec is not None:
        data = Path(spec.origin).parent / "data" / "images"
        photos += [read_image(data / n).rgb for n in ("t1.jpg", "Tom_Hanks_54745.png")]
    crops = [align_face(p, f.landmarks)[0] for p in photos for f in detect_faces(p)]
    while len(crops) < N_VIEWS:  # without insightface: jittered copies, still distinct
        crops.append(np.roll(crops[len(crops) % 2], len(crops), axis=1))
    return np.stack(crops[:N_VIEWS])


def _ir50_torch(requires_grad: bool):
    """The IR-50 of AdvCloak/AMT-GAN (tests/torch_reference/irse.py) with seeded random weights."""
    import torch
    from bench_nets import _irse
    from torch_reference.nets import randomise_

    torch.manual_seed(0)
    net = randomise_(_irse("ir50")(), seed=1).eval()
    for p in net.parameters():
        p.requires_grad_(requires_grad)
    return net


def surrogate(name: str, framework: str, requires_grad: bool = True, device: str = "cpu"):
    """``embed`` on (N, 112, 112, 3) RGB [0, 1] faces -> unit (N, D), and its params (JAX).

    ``device``: where the PyTorch module lives (JAX places its arrays itself).
    """
    if framework == "jax":
        if name == "sface":
            from jaxcloak.zoo import load

            rec = load("sface")
            return rec.embed, rec.params
        from jaxcloak.nets import irse
        from jaxcloak.zoo.archs import convert_state_dict

        state = {k: v.numpy() for k, v in _ir50_torch(False).state_dict().items()}
        return irse.make_embed("ir50"), convert_state_dict(state, "irse", "ir50")
    import torch

    if name == "sface":
        from torch_reference.onnx_torch import sface_torch

        return sface_torch(requires_grad, device=device)[1], None
    net = _ir50_torch(requires_grad).to(device)  # seeded on the host, then moved

    def embed_t(images):  # irse.preprocess: (255 x - 127.5) / 127.5
        x = (images.permute(0, 3, 1, 2) * 255.0 - 127.5) / 127.5
        return torch.nn.functional.normalize(net(x), dim=-1, eps=1e-12)

    return embed_t, None


@functools.cache
def embedder(name: str):
    """The JAX surrogate as ``images -> NumPy unit embeddings``, loaded and jitted once per
    harness run (inputs, anchors and every row's final-loss check use it)."""
    import jax
    import numpy as np

    embed, params = surrogate(name, "jax")
    fn = jax.jit(embed)
    return lambda images: np.asarray(fn(params, images))


def facecloak_inputs(name: str, batch: int) -> dict:
    """Views, anchors, keys and initial rho of ``batch`` identities (host NumPy).

    Identity i sees the nine crops rolled by i (the last one is its "real" face); its close
    anchor e+ is the crop after it, its far anchor e- the crop four further on, embedded by
    the surrogate itself. rho0 is what jaxcloak's faithful scan draws from key i.
    """
    import jax
    import numpy as np

    crops = _face_crops().astype(np.float32) / 255.0
    emb = embedder(name)(crops)
    idx = [np.roll(np.arange(N_VIEWS), -i) for i in range(batch)]
    eps = 8 / 255  # faithful: mask scale 255, so eps in reference units is eps itself
    rho0 = []
    for i in range(batch):
        k_init, _ = jax.random.split(jax.random.key(i))
        rho0.append(2.0 * eps * (np.asarray(jax.random.uniform(k_init, (112, 112, 3))) - 0.5))
    return {
        "views": np.stack([crops[j] for j in idx]),  # (B, V, S, S, 3) [0, 1]
        "e_sim": np.stack([emb[(i + 1) % N_VIEWS] for i in range(batch)]),
        "e_dist": np.stack([emb[(i + 4) % N_VIEWS] for i in range(batch)]),
        "rho0": np.stack(rho0).astype(np.float32),  # (B, S, S, 3) reference units
    }


# --------------------------------------------------------------------------- workers


def _timed(fn, repeats: int) -> dict:
    """First call (cold) apart, then ``repeats`` calls; ``fn`` must block until done."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    times = sorted(times) or [first]
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) >= 2 else times * 9
    return {
        "first_s": first,
        "median_s": statistics.median(times),
        "p10_s": q[0],
        "p90_s": q[-1],
        "repeats": len(times),
        "out": out,
    }


def _flops(fn, *args) -> float | None:
    """XLA's FLOP count of ``jax.jit(fn)(*args)`` (None if the backend does not say)."""
    import jax

    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def _jax_setup(row: dict) -> str:
    """The row's precision policy (``row["precision"]``, default float32) for this worker's
    JAX programs; return its device as ``platform:kind``."""
    import jax

    from jaxcloak import precision

    precision.apply(row.get("precision", "float32"))
    dev = jax.devices()[0]
    return f"{dev.platform}:{getattr(dev, 'device_kind', '')}"


def _torch_setup(row: dict, autotune: bool = False):
    """The row's torch device (``row["torch_device"]``), TF32 on CUDA as the row's precision
    says (off for float32, as the JAX side); a clear error if CUDA was asked for and is not
    there.

    ``autotune`` (the tuned rows): cuDNN picks its convolution algorithms by timing them, as
    XLA does when it compiles the JAX side; the as-coded rows keep torch's defaults.
    """
    import torch

    device = torch.device(row.get("torch_device", "cpu"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            what = " ".join(str(row[k]) for k in ("kind", "side", "surrogate", "batch") if k in row)
            raise RuntimeError(
                f"row {what}: --torch-device cuda, but torch {torch.__version__} sees no CUDA "
                "device"
            )
        tf32 = row.get("precision", "float32") == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32  # torch's default is True for convolutions
        torch.backends.cudnn.benchmark = autotune
    return device


def _synced(fn, device):
    """``fn`` ending with a device sync on CUDA: kernels run asynchronously, so an unsynced
    call would time only their launches (``_timed`` needs calls that block until done)."""
    if device.type != "cuda":
        return fn
    import torch

    def call():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


def worker_facecloak_jax(row: dict, inputs: dict) -> dict:
    """The faithful JAX scan: timed main run; with ``extras``, also the 2-step parity run and
    the e+-nudged run (same compiled program, e+ scaled by 1 + 1e-7, the size of float32
    rounding: how far the chaotic faithful update carries a difference that small)."""
    import dataclasses as dc

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcloak.configs.facecloak import FAITHFUL
    from jaxcloak.faces.chain import identity_taps
    from jaxcloak.methods.facecloak.attack import make_batched_cloak

    _jax_setup(row)
    b = row["batch"]
    embed, params = surrogate(row["surrogate"], "jax")
    taps = identity_taps()

    def program(passes: int, nv: int, nudge: float = 1.0):
        cfg = dc.replace(FAITHFUL, passes=passes, stickers=False, highpass=False)
        args = (
            params,
            jnp.asarray(inputs["views"][:b, :nv]),
            jnp.asarray(inputs["e_sim"][:b] * np.float32(nudge)),
            jnp.asarray(inputs["e_dist"][:b]),
            jnp.zeros((b, 112, 112, 3), jnp.float32),
            (np.repeat(taps[0][None], b, 0), np.repeat(taps[1][None], b, 0)),
            jnp.stack([jax.random.key(i) for i in range(b)]),
        )
        t0 = time.perf_counter()
        compiled = make_batched_cloak(embed, cfg).lower(*args).compile()
        return compiled, args, time.perf_counter() - t0

    def arrays(out, tag=""):
        return {
            f"mask{tag}": np.asarray(out.mask),
            f"alpha{tag}": np.asarray(out.alpha),
            f"rho{tag}": np.asarray(out.rho),
        }

    compiled, args, compile_s = program(row["passes"], N_VIEWS)
    res = _timed(lambda: jax.block_until_ready(compiled(*args)), row["repeats"])
    out = res.pop("out")
    result = {**res, "compile_s": compile_s, **arrays(out)}
    if row.get("extras"):
        nudged = (*args[:2], args[2] * np.float32(1 + 1e-7), *args[3:])
        result.update(arrays(compiled(*nudged), "_nudged"))
        short, short_args, _ = program(1, 2)
        result.update(arrays(short(*short_args), "_short"))

    # FLOPs of one step (forward + input gradient at batch b); the scan repeats it.
    def step_loss(x):
        e = embed(params, x)
        return jnp.sum(e * args[2]) - jnp.sum(e * args[3])

    step = _flops(jax.grad(step_loss), args[1][:, 0])
    result["flops"] = None if step is None else step * row["passes"] * N_VIEWS
    return result


def _nchw_ref(x, device):
    """(..., S, S, 3) [0, 1] NumPy -> (..., 3, S, S) torch tensor in [-1, 1] on ``device``."""
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(2.0 * x - 1.0, -1, -3))).to(device)


def worker_facecloak_torch(row: dict, inputs: dict) -> dict:
    import numpy as np
    import torch
    from torch_reference.facecloak import afog_cloak_multi, afog_cloak_multi_tuned

    from jaxcloak.objectives.facecloak import highpass_mask, sticker_boxes

    b, passes, tuned = row["batch"], row["passes"], row["side"] != "torch-eager"
    device = _torch_setup(row, autotune=tuned)
    embed01, _ = surrogate(row["surrogate"], "torch", not tuned, str(device))

    def embed(x):  # reference units, NCHW -> unit rows
        return embed01(((x + 1.0) * 0.5).permute(0, 2, 3, 1))

    # Inputs (rho0 included) are the host arrays of the CPU run, moved: the same draws.
    views = _nchw_ref(inputs["views"][:b], device).float()
    e_sim = torch.from_numpy(inputs["e_sim"][:b]).to(device)
    e_dist = torch.from_numpy(inputs["e_dist"][:b]).to(device)
    rho0 = torch.from_numpy(np.ascontiguousarray(np.moveaxis(inputs["rho0"][:b], -1, 1)))
    rho0 = rho0.to(device)
    if tuned:

        def run(passes=passes, nv=N_VIEWS):
            return afog_cloak_multi_tuned(
                embed, views[:, :nv], e_sim, e_dist, rho0, passes=passes, compile=row["compile"]
            )

    else:  # as coded: one identity at a time, its handlers from the real face (last view)
        real = (inputs["views"][0, -1] * 255).astype(np.uint8)
        boxes = torch.from_numpy(sticker_boxes(112))[:, None].to(device)
        hp = torch.from_numpy(np.moveaxis(highpass_mask(real), -1, 0).copy()).to(device)

        def run(passes=passes, nv=N_VIEWS):
            outs = [
                afog_cloak_multi(
                    embed,
                    views[i, :nv],
                    e_sim[i],
                    e_dist[i],
                    rho0[i],
                    passes=passes,
                    boxes=boxes,
                    highpass=hp,
                )
                for i in range(b)
            ]
            return tuple(torch.cat(t) for t in zip(*outs, strict=True))

    def arrays(out, tag=""):
        mask, alpha, rho = out
        return {
            f"mask{tag}": mask.cpu().numpy(),
            f"alpha{tag}": alpha.permute(0, 2, 3, 1).cpu().numpy(),
            f"rho{tag}": rho.permute(0, 2, 3, 1).cpu().numpy(),
        }

    res = _timed(_synced(run, device), row["repeats"])
    out = res.pop("out")
    result = {
        **res,
        "compile_s": max(0.0, res["first_s"] - res["median_s"]) if row.get("compile") else 0.0,
        **arrays(out),
    }
    if row.get("extras"):
        result.update(arrays(run(1, 2), "_short"))
    return result


def worker_machine(row: dict, inputs: dict) -> dict:
    """Attainable float32 matmul and 3x3 conv throughput, JAX and PyTorch (GFLOP/s), each on
    the device (and at the GPU precision) its workload rows use; also those devices."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    jax_device = _jax_setup(row)
    device = _torch_setup(row)
    n, (cb, cs, cc) = row["matmul_n"], row["conv"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), np.float32)
    x = rng.standard_normal((cb, cs, cs, cc), np.float32)
    w = rng.standard_normal((3, 3, cc, cc), np.float32) * 0.05
    mm_flops, conv_flops = 2.0 * n**3, 2.0 * cb * cs * cs * cc * cc * 9
    out = {}
    aj = jnp.asarray(a)
    f = jax.jit(lambda u: u @ u)
    out["jax_matmul"] = mm_flops / _timed(lambda: f(aj).block_until_ready(), 5)["median_s"]
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    g = jax.jit(
        lambda u, k: jax.lax.conv_general_dilated(
            u, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    out["jax_conv"] = conv_flops / _timed(lambda: g(xj, wj).block_until_ready(), 5)["median_s"]
    with torch.no_grad():
        at = torch.from_numpy(a).to(device)
        out["torch_matmul"] = mm_flops / _timed(_synced(lambda: at @ at, device), 5)["median_s"]
        xt = (
            torch.from_numpy(np.moveaxis(x, -1, 1).copy())
            .to(device)
            .contiguous(memory_format=torch.channels_last)
        )
        wt = torch.from_numpy(np.transpose(w, (3, 2, 0, 1)).copy()).to(device)
        conv = _synced(lambda: torch.nn.functional.conv2d(xt, wt, padding=1), device)
        out["torch_conv"] = conv_flops / _timed(conv, 5)["median_s"]
    out = {k: v / 1e9 for k, v in out.items()}
    out["torch_threads"] = torch.get_num_threads()
    out["torch_version"] = torch.__version__
    out["torch_device"] = str(device)
    out["jax_device"] = jax_device
    out["jax_platform"] = jax_device.split(":")[0]
    out["gpu_name"] = None
    if device.type == "cuda":
        out["gpu_name"] = torch.cuda.get_device_name(device)
    elif out["jax_platform"] != "cpu":  # JAX on the GPU, torch on the CPU: JAX names it
        out["gpu_name"] = jax_device.split(":", 1)[1]
    return out


def _run_worker(row: dict, inputs: Path | None, out: Path) -> dict:
    """Run one row in a fresh interpreter; arrays come back in ``out`` (npz), scalars as JSON."""
    cmd = [sys.executable, __file__, "--worker", json.dumps(row), "--worker-out", str(out)]
    if inputs is not None:
        cmd += ["--worker-inputs", str(inputs)]
    # A fresh inductor cache per harness run, so torch.compile's cold time is a cold time.
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(out.parent / "inductor")}
    if row["kind"].endswith("-torch"):
        # JAX only converts weights there: keep it off the GPU, whose memory it would
        # otherwise preallocate (75%) under the PyTorch row being measured.
        env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"row {row} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _worker_main(row_json: str, inputs: str | None, out: str) -> None:
    import numpy as np

    row = json.loads(row_json)
    data = dict(np.load(inputs)) if inputs else {}
    res = WORKERS[row["kind"]](row, data)
    arrays = {k: v for k, v in res.items() if isinstance(v, np.ndarray)}
    np.savez(out, **arrays)
    scalars = {k: v for k, v in res.items() if k not in arrays}
    scalars["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(scalars))


# --------------------------------------------------------------------------- parity, tables


def mask_parity(a: dict, b: dict, tag_a: str = "", tag_b: str = "") -> dict:
    """Agreement of two runs' masks (grey levels) and final alpha * rho."""
    import numpy as np

    ma, mb = a["mask" + tag_a], b["mask" + tag_b]
    n = min(len(ma), len(mb))
    ma, mb = ma[:n], mb[:n]
    pa = (a["alpha" + tag_a] * a["rho" + tag_a])[:n]
    pb = (b["alpha" + tag_b] * b["rho" + tag_b])[:n]
    aa, ab = a["alpha" + tag_a][:n], b["alpha" + tag_b][:n]
    return {
        "mask_equal": float(np.mean(ma == mb)),
        "mask_max_diff": float(np.abs(ma - mb).max()),
        "p_rel_err": float(np.abs(pa - pb).max() / max(np.abs(pa).max(), 1e-12)),
        "alpha_rel_err": float(np.abs(aa - ab).max() / max(np.abs(aa).max(), 1e-12)),
        # sign(alpha * G) of a gradient entry at rounding level can flip between runtimes,
        # moving that rho entry by 2 eta: counted here rather than hidden in a max.
        "rho_equal": float(np.mean(np.isclose(a["rho" + tag_a][:n], b["rho" + tag_b][:n]))),
    }


def _fmt_s(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _fc_row(kind_side: str, name: str, b: int, passes: int, repeats: int, **kw) -> dict:
    return {
        "kind": "facecloak-jax" if kind_side.startswith("jax") else "facecloak-torch",
        "side": kind_side,
        "surrogate": name,
        "batch": b,
        "passes": passes,
        "repeats": repeats,
        "compile": kind_side == "torch-compiled",
        **kw,
    }


def final_losses(name: str, inputs: dict, masks) -> list[float]:
    """Triplet loss cos(e+) - cos(e-) of each identity's real face plus its final mask,
    measured by the JAX surrogate (the outcome both sides optimise)."""
    import numpy as np

    real = inputs["views"][: len(masks), -1]
    x = np.clip(real + np.asarray(masks) / 255.0, 0.0, 1.0).astype(np.float32)
    e = embedder(name)(x)
    n = len(masks)
    return list(np.sum(e * inputs["e_sim"][:n], 1) - np.sum(e * inputs["e_dist"][:n], 1))


def facecloak_rows(size: Size, tmp: Path, log, devices: dict | None = None) -> list[dict]:
    """Timing rows per surrogate and identity batch, with their parity columns.

    ``devices`` (``torch_device``) goes into every worker row.

    The faithful update is chaotic (lambda_alpha 10 with the 0.01 std guard and the sign
    step amplify float32 rounding by orders of magnitude per step), so a 90-step mask cannot
    agree bit for bit between frameworks, or even between two JAX runs whose e+ differs by
    1e-7. Parity is therefore checked where it is meaningful: (1) the first 2 steps, started
    from the same rho (alpha relative error, mask agreement); (2) the outcome of the full run
    (the triplet loss its mask reaches), next to (3) JAX against the nudged JAX run.
    """
    import numpy as np

    rows = []
    for name in size.fc_surrogates:
        big = max(size.fc_batches)
        inputs_path = tmp / f"fc_{name}.npz"
        inputs = facecloak_inputs(name, big)
        np.savez(inputs_path, **inputs)

        def run(row: dict, tag: str, name=name, inputs_path=inputs_path) -> dict:
            out = tmp / f"fc_{name}_{tag}.npz"
            res = _run_worker(row, inputs_path, out)
            return {**res, **dict(np.load(out))}

        # IR-50 is ~3x SFace's cost per image: its largest batch would dominate the run.
        batches = size.fc_batches if name == "sface" else size.fc_batches[:2]
        for b in batches:
            passes = size.fc_passes if (b == 1 and name == "sface") else size.fc_batch_passes
            sides = ["jax", "torch-tuned"]
            if b == 1:
                sides[1:1] = ["torch-eager"]
                if size.fc_compile_torch:
                    sides.append("torch-compiled")
            results = {}
            for side in sides:
                log(f"facecloak {name} batch {b} {side} ({passes} pass(es))...")
                fc_row = _fc_row(
                    side, name, b, passes, size.repeats, extras=b == 1, **(devices or {})
                )
                results[side] = run(fc_row, f"{b}_{side}")
                r = results[side]
                rows.append(
                    {
                        "workload": "facecloak",
                        "surrogate": name,
                        "batch": b,
                        "side": side,
                        "passes_timed": passes,
                        "compile_s": r["compile_s"],
                        "median_s": r["median_s"],
                        "p10_s": r["p10_s"],
                        "p90_s": r["p90_s"],
                        "repeats": r["repeats"],
                        "s_per_identity_90": r["median_s"] * PASSES / passes / b,
                        "peak_rss_mib": r["peak_rss_mib"],
                        "final_loss": float(np.mean(final_losses(name, inputs, r["mask"]))),
                    }
                )
                log(f"  median {r['median_s']:.2f} s")
            if b == 1:
                chaos = mask_parity(results["jax"], results["jax"], "", "_nudged")
                short = {k: v for k, v in results.items() if "mask_short" in v}
            for r in rows[-len(sides) :]:
                r["flops"] = results["jax"].get("flops")
                r["chaos_mask_equal"] = chaos["mask_equal"]
                if r["side"] == "jax":
                    continue
                full = mask_parity(results["jax"], results[r["side"]])
                other = short.get(r["side"], short["torch-tuned"])
                first = mask_parity(short["jax"], other, "_short", "_short")
                r["parity"] = {
                    "first2_alpha_rho_rel": first["p_rel_err"],
                    "first2_alpha_rel": first["alpha_rel_err"],
                    "first2_rho_equal": first["rho_equal"],
                    "first2_mask_equal": first["mask_equal"],
                    "full_mask_equal": full["mask_equal"],
                }
    return rows


def _ratios(rows: list[dict]) -> None:
    """JAX's speed-up over each PyTorch row of the same surrogate (per identity, 90 steps).

    The eager reference has no identity batch: its per-identity time is the batch-1 one.
    """
    jax_rows = {(r["surrogate"], r["batch"]): r for r in rows if r["side"] == "jax"}
    eager = {r["surrogate"]: r for r in rows if r["side"] == "torch-eager"}
    tuned = {(r["surrogate"], r["batch"]): r for r in rows if r["side"] == "torch-tuned"}
    for key, j in jax_rows.items():
        e, t = eager.get(key[0]), tuned.get(key)
        j["speedup_vs_eager"] = e["s_per_identity_90"] / j["s_per_identity_90"] if e else None
        j["speedup_vs_tuned"] = t["s_per_identity_90"] / j["s_per_identity_90"] if t else None


def markdown(result: dict) -> str:
    m, env = result["machine"], result["env"]
    peak_mm = max(m["jax_matmul"], m["torch_matmul"])
    peak_conv = max(m["jax_conv"], m["torch_conv"])
    devices = f"JAX on {env.get('device', '?')}, torch on {env.get('torch_device', 'cpu')}"
    if env.get("gpu_name"):
        prec = env.get("precision", "float32")
        tf32 = "TF32 allowed" if prec == "tf32" else "float32 without TF32"
        devices += f" ({env['gpu_name']}; {tf32} on both sides)"
    lines = [
        f"Machine: attainable float32 matmul {peak_mm:.1f} GFLOP/s (JAX {m['jax_matmul']:.1f}, "
        f"torch {m['torch_matmul']:.1f}), 3x3 conv {peak_conv:.1f} GFLOP/s (JAX "
        f"{m['jax_conv']:.1f}, torch {m['torch_conv']:.1f}); torch threads "
        f"{m['torch_threads']}. {devices}.",
        "",
        "FaceCloak stage 2, faithful (`afog_cloak_multi`, 90 steps per identity):",
        "",
        "| surrogate | identities | side | passes timed | compile s | median s (p10-p90) | "
        "s/identity (90 steps) | identities/min | JAX speed-up | peak RSS MiB | GFLOP/s "
        "(% conv peak) | final loss | parity vs JAX |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["facecloak"]:
        gf = r["flops"] / r["median_s"] / 1e9 if r.get("flops") else None
        gf_s = f"{gf:.1f} ({100 * gf / peak_conv:.0f}%)" if gf else "n/a"
        if r["side"] == "jax":
            sp = " / ".join(
                f"{v:.2f}x vs {k}" if v else f"- vs {k}"
                for k, v in (
                    ("eager", r.get("speedup_vs_eager")),
                    ("tuned", r.get("speedup_vs_tuned")),
                )
            )
            par = f"(JAX vs JAX with e+ x(1+1e-7): mask equal {100 * r['chaos_mask_equal']:.0f}%)"
        else:
            sp = ""
            p = r["parity"]
            par = (
                f"first 2 steps: alpha rel {p['first2_alpha_rel']:.1e}, rho equal "
                f"{100 * p['first2_rho_equal']:.2f}%, mask equal "
                f"{100 * p['first2_mask_equal']:.1f}%; full run: mask equal "
                f"{100 * p['full_mask_equal']:.0f}%"
            )
        lines.append(
            f"| {r['surrogate']} | {r['batch']} | {r['side']} | {r['passes_timed']} | "
            f"{r['compile_s']:.1f} | {_fmt_s(r['median_s'])} ({_fmt_s(r['p10_s'])}-"
            f"{_fmt_s(r['p90_s'])}) | {r['s_per_identity_90']:.2f} | "
            f"{60 / r['s_per_identity_90']:.1f} | {sp} | {r['peak_rss_mib']:.0f} | {gf_s} | "
            f"{r['final_loss']:.3f} | {par} |"
        )
    if result.get("map"):
        lines += ["", *map_markdown(result["map"], peak_conv)]
    return "\n".join(lines) + "\n"


MAP_TERMS = ("loss_id", "loss_expr", "loss_l1", "loss_smooth", "loss_total")
MAP_PARITY_STEPS = 3


def map_config(n_train: int, unroll: bool | None = None):
    """The demo preset made DiffAM-style: no projection, no score matching (both sides then
    optimise the same weighted sum); ``unroll`` as :class:`MapConfig`'s."""
    from jaxcloak.configs.map import get_config

    # One fused backward of the summed loss and no remat: what the PyTorch step computes
    # (DiffAM keeps every DDIM step's activations and calls backward once).
    return get_config(
        "demo",
        projection="none",
        sm_variant="none",
        conflict_stats=False,
        remat=False,
        n_train=n_train,
        unroll=unroll,
    )


def map_inputs(size: Size) -> dict:
    """The astronaut's face in the score net's frame, its DDIM latent under the shared
    weights, and a target identity (another face's SFace embedding)."""
    import numpy as np
    from bench_map import _face
    from torch_reference.map_step import shared_score_net

    from jaxcloak.diffusion import make_schedule
    from jaxcloak.methods.map.step import invert_faces

    net = shared_score_net(size.map_variant, seed=0, zero_out=True)
    x0 = _face(net.config.resolution)
    config = map_config(size.map_n_train, size.map_unroll)
    x_lat = invert_faces(net.eps_fn, config)(net.params, x0, make_schedule())
    target = embedder("sface")(_face_crops()[4:5].astype(np.float32) / 255)[0]
    return {"x0": np.asarray(x0), "x_lat": np.asarray(x_lat), "target": target}


HAPPY = 3  # fer_xception.EMOTIONS.index("happy")


def jax_map_step(variant: str, n_train: int, inputs: dict, unroll: bool | None = None):
    """The JAX MAP step and its arguments: ``(step, config, (state, batch, args))``."""
    import jax
    import jax.numpy as jnp
    from torch_reference.map_step import shared_score_net

    from jaxcloak.diffusion import make_schedule
    from jaxcloak.methods.map.step import MapBatch, MapInputs, init_state, make_map_step
    from jaxcloak.nets import fer_xception
    from jaxcloak.pipelines.map_photos import fer_expression_loss

    config = map_config(n_train, unroll)
    net = shared_score_net(variant, seed=0, zero_out=True)
    embed, fr_params = surrogate("sface", "jax")
    step = make_map_step(net.eps_fn, make_schedule(), embed, fer_expression_loss(), config)
    state = init_state(jax.tree.map(jnp.copy, net.params), config, jax.random.PRNGKey(0))
    batch = MapBatch(jnp.asarray(inputs["x0"]), jnp.asarray(inputs["x_lat"]))
    args = MapInputs(
        fr_params, jnp.asarray(inputs["target"]), fer_xception.load_fer(), jnp.asarray(HAPPY), None
    )
    return step, config, (state, batch, args)


def worker_map_jax(row: dict, inputs: dict) -> dict:
    import jax
    import numpy as np

    _jax_setup(row)
    step, config, (state, batch, args) = jax_map_step(
        row["variant"], row["n_train"], inputs, row.get("unroll")
    )
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, args).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    losses = []
    for _ in range(MAP_PARITY_STEPS):
        state, m = compiled(state, batch, args)
        m = {k: float(v) for k, v in m.items() if np.ndim(v) == 0}
        m["loss_total"] = (
            config.lambda_id * m["loss_id"]
            + config.lambda_expr * m["loss_expr"]
            + m["loss_quality"]
        )
        losses.append([m[k] for k in MAP_TERMS])
    holder = {"state": state}

    def one():
        holder["state"], m = compiled(holder["state"], batch, args)
        jax.block_until_ready(m)

    res = _timed(one, row["repeats"])
    res.pop("out")
    return {
        **res,
        "compile_s": compile_s,
        "flops": float(cost["flops"]) if cost and "flops" in cost else None,
        "losses": np.asarray(losses),
    }


def worker_map_torch(row: dict, inputs: dict) -> dict:
    import numpy as np
    import torch
    from torch_reference.fer_torch import load_fer_torch
    from torch_reference.map_step import make_torch_map_step, shared_score_net, to_nchw
    from torch_reference.onnx_torch import sface_torch

    tuned = row["side"] != "torch-eager"
    device = _torch_setup(row, autotune=tuned)
    # Built (and seeded) on the host, as the JAX side's weights, then moved.
    net = shared_score_net(row["variant"], seed=0, zero_out=True).torch_net.to(device)
    module, embed = sface_torch(requires_grad=not tuned, device=device)
    step = make_torch_map_step(
        net,
        [(module, embed, 1.0)],
        load_fer_torch(requires_grad=not tuned, device=device),
        map_config(row["n_train"], row.get("unroll")),
        tuned=tuned,
        compile=row["side"] == "torch-compiled",
    )
    x0, x_lat = to_nchw(inputs["x0"]).to(device), to_nchw(inputs["x_lat"]).to(device)
    target = torch.from_numpy(inputs["target"]).to(device)
    one = _synced(lambda: step.step(x0, x_lat, target, HAPPY), device)
    t0 = time.perf_counter()
    losses = [one()]
    first = time.perf_counter() - t0
    losses += [one() for _ in range(MAP_PARITY_STEPS - 1)]
    res = _timed(one, row["repeats"])
    res.pop("out")
    return {
        **res,
        "first_s": first,
        "compile_s": max(0.0, first - res["median_s"]) if step.compiled else 0.0,
        "compiled": bool(step.compiled),
        "losses": np.asarray([[m[k] for k in MAP_TERMS] for m in losses]),
    }


def map_rows(size: Size, tmp: Path, log, devices: dict | None = None) -> list[dict]:
    """One train step of MAP per side; parity: the loss terms of the first 3 steps.

    ``devices`` (``torch_device``) goes into every worker row.
    """
    import numpy as np

    log(f"map: inputs ({size.map_variant} score network)...")
    inputs_path = tmp / "map.npz"
    np.savez(inputs_path, **map_inputs(size))
    sides = ["jax", "torch-eager", "torch-tuned"] + (
        ["torch-compiled"] if size.fc_compile_torch else []
    )
    rows, results = [], {}
    for side in sides:
        log(f"map {size.map_variant} {side}...")
        row = {
            "kind": "map-jax" if side == "jax" else "map-torch",
            "side": side,
            "variant": size.map_variant,
            "n_train": size.map_n_train,
            "unroll": size.map_unroll,
            "repeats": size.repeats,
            **(devices or {}),
        }
        out = tmp / f"map_{side}.npz"
        res = {**_run_worker(row, inputs_path, out), **dict(np.load(out))}
        results[side] = res
        r = {
            "workload": "map",
            "variant": size.map_variant,
            "side": side,
            "compile_s": res["compile_s"],
            "median_s": res["median_s"],
            "p10_s": res["p10_s"],
            "p90_s": res["p90_s"],
            "repeats": res["repeats"],
            "peak_rss_mib": res["peak_rss_mib"],
            "losses": res["losses"].tolist(),
        }
        if side != "jax":
            a, b = results["jax"]["losses"], res["losses"]
            main = [MAP_TERMS.index(k) for k in ("loss_id", "loss_expr", "loss_total")]
            # L1 and smoothness start at float32 rounding (~1e-5: the zero-output prior
            # reconstructs), so they are compared in absolute terms; the rest relatively.
            r["parity"] = {
                "max_rel_loss_diff": float(np.max(np.abs(a - b)[:, main] / np.abs(a[:, main]))),
                "max_abs_loss_diff": float(np.max(np.abs(a - b))),
                "steps": MAP_PARITY_STEPS,
            }
            r["compiled"] = res.get("compiled", False)
        rows.append(r)
        log(f"  median {res['median_s']:.2f} s {r.get('parity', '')}")
    flops = results["jax"].get("flops")
    for r in rows:
        r["flops"] = flops
        r["speedup"] = r["median_s"] / rows[0]["median_s"]  # JAX's speed-up over this row
    return rows


def map_markdown(rows: list[dict], peak_conv: float) -> list[str]:
    lines = [
        f"MAP train step (DiffAM style; `{rows[0]['variant']}` score network, "
        f"{MAP_PARITY_STEPS} parity steps, then timed steps):",
        "",
        "| side | compile s | median s (p10-p90) | JAX speed-up | peak RSS MiB | "
        "GFLOP/s (% conv peak) | parity vs JAX (loss terms, first 3 steps) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gf = r["flops"] / r["median_s"] / 1e9 if r.get("flops") else None
        gf_s = f"{gf:.1f} ({100 * gf / peak_conv:.0f}%)" if gf else "n/a"
        par = (
            "-"
            if r["side"] == "jax"
            else f"L_A, L_E, total: max rel diff {r['parity']['max_rel_loss_diff']:.1e}; all "
            f"terms: max abs diff {r['parity']['max_abs_loss_diff']:.1e}"
            + ("" if r["side"] != "torch-compiled" or r["compiled"] else " (compile failed)")
        )
        sp = "" if r["side"] == "jax" else f"{r['speedup']:.2f}x"
        lines.append(
            f"| {r['side']} | {r['compile_s']:.1f} | {_fmt_s(r['median_s'])} "
            f"({_fmt_s(r['p10_s'])}-{_fmt_s(r['p90_s'])}) | {sp} | "
            f"{r['peak_rss_mib']:.0f} | {gf_s} | {par} |"
        )
    return lines


WORKERS = {
    "machine": worker_machine,
    "facecloak-jax": worker_facecloak_jax,
    "facecloak-torch": worker_facecloak_torch,
    "map-jax": worker_map_jax,
    "map-torch": worker_map_torch,
}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes: the harness in ~3 min")
    p.add_argument(
        "--size",
        choices=sorted(SIZES),
        help="a named size (overrides --quick): gpu and tiny are benchmarks/gpu_suite.py's",
    )
    p.add_argument("--only", choices=["facecloak", "map"], help="run one workload")
    p.add_argument(
        "--precision",
        choices=["float32", "tf32"],
        default="float32",
        help="both sides' precision: float32 (true FP32, default) or tf32 (TF32 on a GPU)",
    )
    p.add_argument(
        "--torch-compile",
        action="store_true",
        help="also time PyTorch under torch.compile (inductor; slower than eager for these "
        "workloads on a 2-core CPU, and minutes of compilation)",
    )
    p.add_argument(
        "--torch-device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the PyTorch rows run (default cpu); JAX uses its default device",
    )
    p.add_argument("--json", type=Path, help="write all figures here")
    p.add_argument("--md", type=Path, help="write the tables here (markdown)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-inputs", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker_main(args.worker, args.worker_inputs, args.worker_out)
        return
    import jax

    # This process only prepares inputs and scores outcomes: on the CPU it leaves the GPU
    # (which JAX would 75%-preallocate) to the worker being measured, and its inputs are
    # those of a CPU-only run.
    jax.config.update("jax_platforms", "cpu")
    from timing import environment

    devices = {"torch_device": args.torch_device, "precision": args.precision}
    size = SIZES[args.size or ("quick" if args.quick else "default")]
    if args.torch_compile:
        size = dataclasses.replace(size, fc_compile_torch=True)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    result: dict = {"env": environment(), "size": dataclasses.asdict(size)}
    result["env"]["command"] = " ".join(["python", "benchmarks/run.py", *sys.argv[1:]])
    result["env"]["precision"] = args.precision
    with tempfile.TemporaryDirectory(prefix="jaxcloak-bench-") as d:
        tmp = Path(d)
        log("machine: attainable matmul / conv throughput...")
        machine = {
            "kind": "machine",
            "matmul_n": 1024 if args.quick else 2048,
            "conv": (8, 56, 128),
        }
        if size.machine_small:
            machine.update(matmul_n=256, conv=(1, 16, 32))
        elif args.torch_device == "cuda":  # the CPU sizes take a GPU well under a millisecond
            machine.update(matmul_n=8192, conv=(64, 56, 128))
        m = result["machine"] = _run_worker({**machine, **devices}, None, tmp / "machine.npz")
        result["env"].update(
            device=m["jax_device"],  # the JAX workers' device, not this process's CPU
            jax_platform=m["jax_platform"],
            torch=m["torch_version"],
            torch_device=m["torch_device"],
            gpu_name=m["gpu_name"],
        )
        result["facecloak"] = facecloak_rows(size, tmp, log, devices) if args.only != "map" else []
        _ratios(result["facecloak"])
        result["map"] = map_rows(size, tmp, log, devices) if args.only != "facecloak" else []
    result["seconds"] = time.perf_counter() - t_start
    md = markdown(result)
    print(md)
    log(f"done in {result['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.md:
        args.md.write_text(md)


if __name__ == "__main__":
    main()
