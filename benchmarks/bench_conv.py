"""The custom-gradient convolutions (``jaxcloak.ops.conv``) against autodiff, in one run.

Each row times the attack's inner computation (forward + gradient with respect to the input)
two ways in the same process, at the same float32 precision:

* ``autodiff``: ``lax.conv_general_dilated`` and the shifted-slice depthwise differentiated by
  JAX itself (the backward-input convolutions XLA derives);
* ``custom``: jaxcloak's ``conv2d`` / ``depthwise_conv2d``, whose input gradient is an
  ordinary forward convolution with the transposed, flipped kernel (and whose weight
  gradient is phrased as forward ops too).

Workloads: a 4-layer 3x3 conv stack (outside any loop, and per step inside a ``lax.scan`` of
gradient steps, the shape of every attack; ``train``: gradient steps on its *weights* in a
scan, the shape of MAP's training through its DDIM chain), and the real SFace graph from the
ONNX converter and MobileFaceNet (Flax) per step inside a scan, at batch 1 and 9 (FaceCloak's
nine views).
Compile time apart (AOT), then warm-up and medians (``benchmarks/timing.py``).

  python benchmarks/bench_conv.py                     # all rows (a few minutes on 2 cores)
  python benchmarks/bench_conv.py --rows stack sface --steps 4 --json conv.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from timing import compile_jax, environment, time_calls  # noqa: E402

import jaxcloak.convert.onnx.ops as onnx_ops  # noqa: E402
import jaxcloak.nets.layers as layers  # noqa: E402

_DIMS = ("NHWC", "HWIO", "NHWC")


def plain_conv2d(
    x, w, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1, precision=None
):
    """What jaxcloak did before: lax's convolution, differentiated by autodiff."""
    return jax.lax.conv_general_dilated(
        x,
        w,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=_DIMS,
        feature_group_count=groups,
        precision=precision,
    )


def plain_depthwise(x, taps, strides, dilation, pads, *, channels_last=True):
    """The shifted-slice depthwise differentiated by autodiff, in the layout it is given."""
    ax_h, ax_w = (1, 2) if channels_last else (2, 3)
    width = [(0, 0)] * 4
    width[ax_h], width[ax_w] = tuple(pads[0]), tuple(pads[1])
    xp = jnp.pad(x, width)
    kh, kw = taps.shape[:2]
    oh = (xp.shape[ax_h] - (kh - 1) * dilation[0] - 1) // strides[0] + 1
    ow = (xp.shape[ax_w] - (kw - 1) * dilation[1] - 1) // strides[1] + 1
    shape = (-1,) if channels_last else (-1, 1, 1)
    y = 0.0
    for i in range(kh):
        for j in range(kw):
            ix = [slice(None)] * 4
            ix[ax_h] = slice(
                i * dilation[0], i * dilation[0] + (oh - 1) * strides[0] + 1, strides[0]
            )
            ix[ax_w] = slice(
                j * dilation[1], j * dilation[1] + (ow - 1) * strides[1] + 1, strides[1]
            )
            y = y + xp[tuple(ix)] * taps[i, j].reshape(shape)
    return y


@contextlib.contextmanager
def implementation(kind: str):
    """Trace with jaxcloak's convolutions (``custom``) or the plain autodiff ones."""
    if kind == "custom":
        yield
        return
    saved = [
        (m, n, getattr(m, n)) for m in (onnx_ops, layers) for n in ("conv2d", "depthwise_conv2d")
    ]
    try:
        for m in (onnx_ops, layers):
            m.conv2d, m.depthwise_conv2d = plain_conv2d, plain_depthwise
        yield
    finally:
        for m, n, f in saved:
            setattr(m, n, f)


def scan_steps(loss, x0, steps: int):
    """``steps`` signed gradient steps on the input, in one ``lax.scan`` (an attack's shape)."""

    def body(x, _):
        return x - 1e-3 * jnp.sign(jax.grad(loss)(x)), None

    return jax.lax.scan(body, x0, None, length=steps)[0]


def stack_weights(channels: int = 32) -> list[jax.Array]:
    keys = jax.random.split(jax.random.key(0), 4)
    return [jax.random.normal(k, (3, 3, channels, channels)) * 0.06 for k in keys]


def stack_loss(batch: int, channels: int = 32, side: int = 56):
    """A 4-layer 3x3 conv stack's loss; ``loss(x, conv, ws)`` differentiates in x or ws."""
    x0 = jax.random.normal(jax.random.key(5), (batch, side, side, channels))
    default = stack_weights(channels)

    def loss(x, conv, ws=None):
        for w in default if ws is None else ws:
            x = jax.nn.relu(conv(x, w, (1, 1), ((1, 1), (1, 1))))
        return jnp.sum(x)

    return loss, x0


def _network(name: str):
    """SFace (the packaged ONNX model through the converter) or MobileFaceNet (Flax, random
    weights: speed does not depend on their values)."""
    if name == "sface":
        from jaxcloak.zoo import load

        rec = load("sface")
        return rec.embed, rec.params
    from jaxcloak.nets import mobilefacenet

    return mobilefacenet.make_embed("mobilefacenet"), mobilefacenet.init("mobilefacenet")[1]


def time_row(name: str, make, steps: int, repeats: int, log) -> list[dict]:
    rows = []
    for kind in ("autodiff", "custom"):
        with implementation(kind):
            fn, args = make(kind)
            compiled, compile_s = compile_jax(fn, *args)
        t = time_calls(
            lambda c=compiled, a=args: jax.block_until_ready(c(*a)), warmup=1, iters=repeats
        )
        per_step = t["median"] / steps
        row = {
            "workload": name,
            "impl": kind,
            "compile_s": compile_s,
            "median_s": t["median"],
            "p10": t["p10"],
            "p90": t["p90"],
            "ms_per_step": 1e3 * per_step,
        }
        rows.append(row)
        log(
            f"{name:28s} {kind:9s} compile {compile_s:6.1f} s  {1e3 * per_step:8.1f} ms/step "
            f"(p10-p90 {1e3 * t['p10'] / steps:.1f}-{1e3 * t['p90'] / steps:.1f})"
        )
    rows[-1]["speedup"] = rows[0]["median_s"] / rows[1]["median_s"]
    log(f"{'':28s} custom / autodiff: {rows[-1]['speedup']:.2f}x faster")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--rows",
        nargs="+",
        default=["stack", "train", "sface", "mobile"],
        choices=["stack", "train", "sface", "mobile"],
    )
    p.add_argument("--batches", nargs="+", type=int, default=[1, 9])
    p.add_argument("--steps", type=int, default=4, help="gradient steps per scan")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args()

    out: list[dict] = []

    def log(msg: str) -> None:
        print(msg, flush=True)

    env = environment()
    log(json.dumps(env))
    for b in a.batches:
        if "stack" in a.rows:
            loss, x0 = stack_loss(b)

            def outside(kind, loss=loss, x0=x0):
                conv = layers.conv2d if kind == "custom" else plain_conv2d
                return jax.grad(lambda x: loss(x, conv)), (x0,)

            def inside(kind, loss=loss, x0=x0):
                conv = layers.conv2d if kind == "custom" else plain_conv2d
                return (lambda x: scan_steps(lambda y: loss(y, conv), x, a.steps)), (x0,)

            out += time_row(f"3x3 stack b{b}, no loop", outside, 1, a.repeats, log)
            out += time_row(f"3x3 stack b{b}, in scan", inside, a.steps, a.repeats, log)
        if "train" in a.rows:
            loss, x0 = stack_loss(b)

            def train(kind, loss=loss, x0=x0):
                conv = layers.conv2d if kind == "custom" else plain_conv2d
                ws0 = stack_weights()

                def fit(ws):
                    def body(ws, _):
                        g = jax.grad(lambda ws: loss(x0, conv, ws))(ws)
                        return jax.tree.map(lambda w, d: w - 1e-3 * jnp.sign(d), ws, g), None

                    return jax.lax.scan(body, ws, None, length=a.steps)[0]

                return fit, (ws0,)

            out += time_row(f"3x3 stack b{b}, train in scan", train, a.steps, a.repeats, log)
        for net in ("sface", "mobile"):
            if net not in a.rows:
                continue
            embed, params = _network(net)
            target = jnp.ones((embed(params, jnp.zeros((1, 112, 112, 3))).shape[-1],))
            x0 = jax.random.uniform(jax.random.key(1), (b, 112, 112, 3))

            def make(kind, embed=embed, params=params, target=target, x0=x0):
                def net_loss(x):
                    return jnp.sum(embed(params, x) @ target)

                return (lambda x: scan_steps(net_loss, x, a.steps)), (x0,)

            out += time_row(f"{net} b{b}, in scan", make, a.steps, a.repeats, log)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"environment": env, "rows": out}, f, indent=1)


if __name__ == "__main__":
    main()
