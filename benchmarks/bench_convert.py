"""SFace converted to JAX vs ONNX Runtime and PyTorch, side by side in one run.

Reports per batch size: JAX forward, JAX forward + gradient w.r.t. the input pixels, ONNX
Runtime forward (its CUDA provider with ``--device cuda`` when the installed ORT has one), and
the same graph as a PyTorch module (``torch_reference.onnx_torch``, no parameter gradients)
forward and forward + input gradient; all medians of synchronised calls after warm-up, JAX
compile times apart, identical inputs, true float32 everywhere (JAX's float32 precision
policy, torch's TF32 off).

  python benchmarks/bench_convert.py                  # batch 1 and 32, on the CPU
  python benchmarks/bench_convert.py --batch 8 --iters 50 --json out/bench.json
  python benchmarks/bench_convert.py --device cuda --batch 256   # JAX's GPU, ORT CUDA, torch cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(__file__))
# the PyTorch references the tests share
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from timing import compile_jax, environment, time_calls

from jaxcloak import precision
from jaxcloak.convert.onnx.reference import ort_session, with_dynamic_batch
from jaxcloak.zoo import load


def bench(batch: int, iters: int, model, session, torch_embed, device: str) -> dict:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, 112, 112, 3)).astype(np.float32)
    xj = jax.device_put(x)
    embed = model.embed

    def loss(params, images):  # what an attack differentiates: similarity to a fixed target
        e = embed(params, images)
        return jnp.sum(e * e[::-1])

    fwd, fwd_compile = compile_jax(embed, model.params, xj)
    grad, grad_compile = compile_jax(jax.grad(loss, argnums=1), model.params, xj)
    net_in = np.asarray(model.spec.to_network_input(x))
    name = session.get_inputs()[0].name

    # Same numbers from both runtimes before timing anything.
    ref = session.run(None, {name: net_in})[0]
    ref = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
    cos = float(np.min(np.sum(np.asarray(fwd(model.params, xj)) * ref, axis=-1)))

    t_fwd = time_calls(lambda: fwd(model.params, xj).block_until_ready(), iters=iters)
    t_grad = time_calls(lambda: grad(model.params, xj).block_until_ready(), iters=iters)
    t_ort = time_calls(lambda: session.run(None, {name: net_in}), iters=iters)
    t_torch, t_torch_grad, torch_cos = _torch_times(torch_embed, x, ref, device, iters)
    return {
        "batch": batch,
        "min_cosine_vs_ort": cos,
        "jax_forward_ms": 1e3 * t_fwd["median"],
        "jax_forward_grad_ms": 1e3 * t_grad["median"],
        "ort_forward_ms": 1e3 * t_ort["median"],
        "jax_over_ort": t_fwd["median"] / t_ort["median"],
        "ort_providers": session.get_providers()[:1],
        "torch_forward_ms": 1e3 * t_torch["median"],
        "torch_forward_grad_ms": 1e3 * t_torch_grad["median"],
        "torch_over_jax_grad": t_torch_grad["median"] / t_grad["median"],
        "min_cosine_torch_vs_ort": torch_cos,
        "jax_forward_compile_s": fwd_compile,
        "jax_grad_compile_s": grad_compile,
        "p10_p90_ms": {
            k: [1e3 * t["p10"], 1e3 * t["p90"]]
            for k, t in (
                ("jax_fwd", t_fwd),
                ("jax_grad", t_grad),
                ("ort", t_ort),
                ("torch_fwd", t_torch),
                ("torch_grad", t_torch_grad),
            )
        },
    }


def _torch_times(embed, x: np.ndarray, ref: np.ndarray, device: str, iters: int):
    """PyTorch forward and forward + input-gradient times (synchronised on CUDA), and the
    smallest cosine between its embeddings and ORT's."""
    import torch

    xt = torch.from_numpy(x).to(device)

    def sync(fn):
        def call():
            out = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return out

        return call

    def fwd():
        with torch.no_grad():
            return embed(xt)

    def grad():
        xg = xt.detach().requires_grad_(True)
        e = embed(xg)
        (g,) = torch.autograd.grad(torch.sum(e * e.flip(0)), xg)
        return g

    cos = float(np.min(np.sum(fwd().cpu().numpy() * ref, axis=-1)))
    return time_calls(sync(fwd), iters=iters), time_calls(sync(grad), iters=iters), cos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 32)")
    ap.add_argument("--iters", type=int, default=20, help="timed calls per measurement")
    ap.add_argument(
        "--device",
        default="cpu",
        help="cpu (default) or cuda: where ORT (its CUDA provider, if installed) and torch run; "
        "JAX uses its default device",
    )
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()
    import torch
    from torch_reference.onnx_torch import sface_torch

    precision.apply("float32")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model = load("sface")
    cuda = args.device.startswith("cuda")
    session = ort_session(with_dynamic_batch(onnx.load(model.path)), cuda=cuda)
    _, torch_embed = sface_torch(requires_grad=False, device=args.device)
    env = {**environment(), "torch": torch.__version__, "torch_device": args.device}
    batches = args.batch or [1, 32]
    rows = [bench(b, args.iters, model, session, torch_embed, args.device) for b in batches]
    print(f"# {env}")
    print(
        "| batch | JAX fwd ms | JAX fwd+grad ms | ORT fwd ms (provider) | JAX/ORT | torch fwd ms "
        "| torch fwd+grad ms | JAX grad speed-up vs torch | compile fwd s | compile grad s "
        "| min cos |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['jax_forward_ms']:.1f} | {r['jax_forward_grad_ms']:.1f} | "
            f"{r['ort_forward_ms']:.1f} ({r['ort_providers'][0]}) | {r['jax_over_ort']:.2f} | "
            f"{r['torch_forward_ms']:.1f} | {r['torch_forward_grad_ms']:.1f} | "
            f"{r['torch_over_jax_grad']:.2f} | "
            f"{r['jax_forward_compile_s']:.2f} | {r['jax_grad_compile_s']:.2f} | "
            f"{min(r['min_cosine_vs_ort'], r['min_cosine_torch_vs_ort']):.6f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
