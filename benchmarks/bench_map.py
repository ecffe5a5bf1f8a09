"""MAP train-step speed and memory per score-network size, compile time apart.

For each DDPM UNet variant, the jitted train step of :mod:`jaxcloak.methods.map.step` (6-step DDIM
regeneration, remat where memory needs it, identity loss on SFace, fer expression loss, quality
losses, DSM, GradVac, Adam) is AOT-compiled on the astronaut's face (compile seconds reported
apart), then run ``--steps`` times; we report the median step time and the compiled program's memory
(XLA's ``memory_analysis``: arguments, outputs and temporaries; the peak is about their sum).

  python benchmarks/bench_map.py                                # tiny and embedded
  python benchmarks/bench_map.py --variants celeba_hq --steps 2 # the paper-size UNet
  python benchmarks/bench_map.py --batched-backward both        # vmap(pullback) vs 3 calls
  python benchmarks/bench_map.py --variants embedded --unroll both  # unrolled vs looped DDIM
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from timing import environment

from jaxcloak.configs.map import get_config
from jaxcloak.diffusion import make_schedule
from jaxcloak.methods.map.step import MapBatch, MapInputs, init_state, invert_faces, make_map_step
from jaxcloak.nets import fer_xception
from jaxcloak.pipelines.map_photos import embedded_score_net, fer_expression_loss
from jaxcloak.zoo import load


def _face(side: int) -> jnp.ndarray:
    import skimage.data

    from jaxcloak.faces.align import estimate_similarity, warp_crop
    from jaxcloak.faces.detect import detect_faces
    from jaxcloak.objectives.map import FaceFrame

    rgb = skimage.data.astronaut()
    face = detect_faces(rgb).faces[0]
    frame = FaceFrame(side)
    m = estimate_similarity(np.asarray(face.landmarks, np.float64), frame.template())
    return jnp.asarray(warp_crop(rgb, m, side)[None], jnp.float32) / 127.5 - 1.0


def bench(variant: str, steps: int, batched: bool, unroll: bool) -> dict:
    score = embedded_score_net(variant)
    config = get_config("demo", batched_backward=batched, steps=steps, unroll=unroll)
    sface = load("sface")
    fer = fer_xception.load_fer()
    schedule = make_schedule()
    x0 = _face(score.config.resolution)
    x_lat = invert_faces(score.eps_fn, config)(score.params, x0, schedule)
    target = jnp.ones((128,), jnp.float32) / np.sqrt(128.0)
    inputs = MapInputs(sface.params, target, fer, jnp.asarray(5, jnp.int32), None)
    batch = MapBatch(x0, x_lat)
    step = make_map_step(score.eps_fn, schedule, sface.embed, fer_expression_loss(), config)
    state = init_state(jax.tree.map(jnp.copy, score.params), config, jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, inputs).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    state, m = compiled(state, batch, inputs)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = compiled(state, batch, inputs)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(score.params))
    mib = 1 << 20
    row = {
        "variant": variant,
        "resolution": score.config.resolution,
        "params": n_params,
        "backward": "vmap" if batched else "3 calls",
        "ddim": "unrolled" if unroll else "scan",
        "compile_s": round(compile_s, 1),
        "step_s_median": round(statistics.median(times), 3),
        "step_s_min": round(min(times), 3),
        "steps_timed": len(times),
        "args_MiB": round(mem.argument_size_in_bytes / mib, 1) if mem else None,
        "temp_MiB": round(mem.temp_size_in_bytes / mib, 1) if mem else None,
        "out_MiB": round(mem.output_size_in_bytes / mib, 1) if mem else None,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["tiny", "embedded"])
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up")
    p.add_argument("--batched-backward", choices=["yes", "no", "both"], default="no")
    p.add_argument(
        "--unroll",
        choices=["yes", "no", "both"],
        default="yes",
        help="unroll the DDIM chains (MapConfig.unroll) or keep them as lax.scan loops",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    choice = {"yes": [True], "no": [False], "both": [True, False]}
    modes = choice[args.batched_backward]
    env = environment()
    print(json.dumps(env), flush=True)
    rows = [
        bench(v, args.steps, b, u)
        for v in args.variants
        for b in modes
        for u in choice[args.unroll]
    ]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
