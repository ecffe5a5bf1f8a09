"""SFace converted to JAX vs ONNX Runtime, side by side in one run.

Reports per batch size: JAX forward, JAX forward + gradient w.r.t. the input pixels, ONNX
Runtime forward (all medians of synchronised calls after warm-up), and JAX compile times
apart. Inputs are identical for both runtimes.

  python benchmarks/bench_convert.py                  # batch 1 and 32
  python benchmarks/bench_convert.py --batch 8 --iters 50 --json out/bench.json
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
from timing import compile_jax, environment, time_calls

from jaxcloak.convert.onnx.reference import ort_session, with_dynamic_batch
from jaxcloak.nets import load


def bench(batch: int, iters: int, model, session) -> dict:
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
    return {
        "batch": batch,
        "min_cosine_vs_ort": cos,
        "jax_forward_ms": 1e3 * t_fwd["median"],
        "jax_forward_grad_ms": 1e3 * t_grad["median"],
        "ort_forward_ms": 1e3 * t_ort["median"],
        "jax_over_ort": t_fwd["median"] / t_ort["median"],
        "jax_forward_compile_s": fwd_compile,
        "jax_grad_compile_s": grad_compile,
        "p10_p90_ms": {
            k: [1e3 * t["p10"], 1e3 * t["p90"]]
            for k, t in (("jax_fwd", t_fwd), ("jax_grad", t_grad), ("ort", t_ort))
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 32)")
    ap.add_argument("--iters", type=int, default=20, help="timed calls per measurement")
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()
    model = load("sface")
    session = ort_session(with_dynamic_batch(onnx.load(model.path)))
    env = environment()
    rows = [bench(b, args.iters, model, session) for b in (args.batch or [1, 32])]
    print(f"# {env}")
    print(
        "| batch | JAX fwd ms | JAX fwd+grad ms | ORT fwd ms | JAX/ORT | compile fwd s | "
        "compile grad s | min cos |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['jax_forward_ms']:.1f} | {r['jax_forward_grad_ms']:.1f} | "
            f"{r['ort_forward_ms']:.1f} | {r['jax_over_ort']:.2f} | "
            f"{r['jax_forward_compile_s']:.2f} | {r['jax_grad_compile_s']:.2f} | "
            f"{r['min_cosine_vs_ort']:.6f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
