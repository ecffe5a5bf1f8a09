"""Face-recognition networks: JAX (Flax ports) vs PyTorch (reference modules), same weights.

For each network and batch size, one run measures, side by side:

* JAX: AOT compile time (reported apart), then the median of ``--repeats`` calls of the jitted
  forward (``embed``: preprocessing + network + L2 normalisation) and of forward + input
  gradient (the attack's inner step: d/dx of ``sum(embed(x) * target)``);
* PyTorch: the same two computations on the reference module from ``tests/`` (eval mode,
  parameter gradients off, ``torch.no_grad`` for the forward), after a warm-up call;
* a parity column: the minimum cosine between the two implementations' embeddings.

Each side gets its native layout (JAX NHWC, torch NCHW); both use every core of the machine.
``--device cuda`` puts the torch side on the GPU (each timed call ends with
``torch.cuda.synchronize()``, TF32 off: jaxcloak's layers compute in true float32 too); JAX
uses its default device.

  python benchmarks/bench_nets.py                          # all nets, batches 1 and 32
  python benchmarks/bench_nets.py --nets r50 mobile_face --batches 1 --repeats 3
  python benchmarks/bench_nets.py --json out/nets.json
  python benchmarks/bench_nets.py --device cuda --batches 1 32 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the torch reference modules
from timing import compile_jax, environment, time_calls  # noqa: E402

from jaxcloak.zoo.archs import arch_module, convert_state_dict  # noqa: E402


@dataclass(frozen=True)
class Net:
    """One benchmarked network: its torch reference and our arch/variant."""

    arch: str
    variant: str
    make_torch: Callable[[], torch.nn.Module]
    side: int
    mean: float = 127.5
    std: float = 127.5
    # He-initialised convs: FaceNet's default torch init washes the input out (every image
    # embeds alike); the IR nets must keep torch's default, or 50 un-normalised residual
    # additions blow activations up until float32 rounding decides the embedding.
    he_init: bool = False


def _iresnet(variant: str) -> Callable[[], torch.nn.Module]:
    def make() -> torch.nn.Module:
        from torch_reference.nets import IResNet

        from jaxcloak.nets import iresnet

        cfg = iresnet.VARIANTS[variant]
        return IResNet(
            layers=cfg.layers,
            widths=cfg.widths,
            num_features=cfg.num_features,
            input_size=cfg.input_size,
        )

    return make


def _irse(variant: str) -> Callable[[], torch.nn.Module]:
    def make() -> torch.nn.Module:
        from torch_reference.irse import Backbone

        from jaxcloak.nets import irse

        cfg = irse.VARIANTS[variant]
        return Backbone(
            mode=cfg.mode,
            units=cfg.layers,
            widths=cfg.widths,
            num_features=cfg.num_features,
            input_size=cfg.input_size,
            normalise=False,
        )

    return make


def _mobilefacenet() -> torch.nn.Module:
    from torch_reference.mobilefacenet import MobileFaceNet

    return MobileFaceNet(512)


def _facenet() -> torch.nn.Module:
    from torch_reference.facenet import InceptionResnetV1

    return InceptionResnetV1(num_classes=8631)


NETS: dict[str, Net] = {
    "r50": Net("iresnet", "r50", _iresnet("r50"), 112),
    "r100": Net("iresnet", "r100", _iresnet("r100"), 112),
    "ir152": Net("irse", "ir152", _irse("ir152"), 112),
    "irse50": Net("irse", "irse50", _irse("irse50"), 112),
    "mobile_face": Net("mobilefacenet", "mobilefacenet", _mobilefacenet, 112),
    "facenet": Net("facenet", "vggface2", _facenet, 160, std=128.0, he_init=True),
}
DEFAULT_NETS = ("r50", "ir152", "irse50", "mobile_face", "facenet")


def _torch_model(net: Net, seed: int) -> torch.nn.Module:
    from torch_reference.nets import randomise_

    torch.manual_seed(seed)
    model = net.make_torch()
    for m in model.modules():
        if net.he_init and isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    model = randomise_(model, seed=seed + 1)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _time(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    return time_calls(fn, warmup=min(2, repeats), iters=repeats)


def _time_jax(compiled: Callable, args: tuple, repeats: int) -> dict[str, float]:
    return _time(lambda: jax.block_until_ready(compiled(*args)), repeats)


def bench_net(
    name: str, batches: list[int], repeats: int, seed: int = 0, device: str = "cpu"
) -> list[dict]:
    net = NETS[name]
    model = _torch_model(net, seed)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    model.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    params = convert_state_dict(state, net.arch, net.variant)
    embed = arch_module(net.arch).make_embed(net.variant)
    rng = np.random.default_rng(seed)
    rows = []
    for b in batches:
        x = rng.random((b, net.side, net.side, 3), dtype=np.float32)
        target = rng.standard_normal((b, 512)).astype(np.float32)
        target /= np.linalg.norm(target, axis=-1, keepdims=True)
        xj, tj = jnp.asarray(x), jnp.asarray(target)

        def loss(p, im, t):
            return jnp.sum(embed(p, im) * t)

        fwd, fwd_compile = compile_jax(embed, params, xj)
        grad, grad_compile = compile_jax(jax.grad(loss, argnums=1), params, xj, tj)

        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
        tt = torch.from_numpy(target).to(device)

        def torch_fwd(xin=xt):
            with torch.no_grad():
                out = model((xin * 255.0 - net.mean) / net.std)
                out = torch.nn.functional.normalize(out, dim=-1)
            sync()
            return out

        def torch_grad(xin=xt, t=tt):
            xg = xin.clone().requires_grad_(True)
            out = torch.nn.functional.normalize(model((xg * 255.0 - net.mean) / net.std), dim=-1)
            (out * t).sum().backward()
            sync()
            return xg.grad

        cos = np.sum(np.asarray(fwd(params, xj)) * torch_fwd().cpu().numpy(), axis=-1).min()
        g_j = np.asarray(grad(params, xj, tj)).transpose(0, 3, 1, 2).ravel()
        g_t = torch_grad().cpu().numpy().ravel()
        g_cos = float(g_j @ g_t / np.linalg.norm(g_j) / np.linalg.norm(g_t))
        timings = {
            "fwd": (fwd_compile, _time_jax(fwd, (params, xj), repeats), _time(torch_fwd, repeats)),
            "fwd+grad": (
                grad_compile,
                _time_jax(grad, (params, xj, tj), repeats),
                _time(torch_grad, repeats),
            ),
        }
        for mode, (comp, tj_, tt_) in timings.items():
            row = {
                "net": name,
                "batch": b,
                "mode": mode,
                "jax_compile_s": round(comp, 2),
                "jax_ms": round(1e3 * tj_["median"], 2),
                "jax_p10_p90_ms": f"{1e3 * tj_['p10']:.1f}-{1e3 * tj_['p90']:.1f}",
                "torch_ms": round(1e3 * tt_["median"], 2),
                "torch_p10_p90_ms": f"{1e3 * tt_['p10']:.1f}-{1e3 * tt_['p90']:.1f}",
                "torch/jax": round(tt_["median"] / tj_["median"], 2),
                "parity": f"cos {cos:.6f}" if mode == "fwd" else f"grad cos {g_cos:.6f}",
            }
            rows.append(row)
            print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", default=list(DEFAULT_NETS), choices=sorted(NETS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument("--json", help="also write rows and environment here")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    env = {**environment(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    env["torch_device"] = args.device
    if args.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(env), flush=True)
    rows = []
    t0 = time.perf_counter()
    for name in args.nets:
        rows += bench_net(name, args.batches, args.repeats, device=args.device)
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[c]).ljust(widths[c]) for c in cols) + " |")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
