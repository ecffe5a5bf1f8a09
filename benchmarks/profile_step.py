"""Where a compiled step spends its time: convolutions, transposes/copies, reductions, other.

Traces a few calls of one compiled program with ``jax.profiler``, reads the trace back
(``jax.profiler.ProfileData``, no TensorBoard needed), and sums the time of every XLA thunk
event by the HLO instruction it runs. Each instruction is put in one category by what it (or
the fusion it names) computes, in this order of precedence:

- ``convolution``: a convolution (or a fusion containing one);
- ``dot``: a dot/matmul;
- ``reduction``: reduce, reduce-window, select-and-scatter;
- ``transpose/copy``: a transpose or copy (or a fusion containing one, e.g. a transpose
  fused with the elementwise op next to it: the cost of a layout change);
- ``elementwise/other``: everything else (loop fusions, pads, slices, dynamic updates).

Times are summed over all threads (CPU time, not wall time), control-flow thunks (while,
conditional, call) excluded since their bodies' thunks are counted themselves. The wall time
per call is reported apart.

  python benchmarks/profile_step.py facecloak --surrogate sface --batch 1
  python benchmarks/profile_step.py map --variant embedded
  python benchmarks/profile_step.py facecloak --json out.json --top 15
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

CATEGORIES = ("convolution", "dot", "reduction", "transpose/copy", "elementwise/other")
_CONTROL = ("while", "conditional", "call")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][a-z0-9\-]*)\((.*)$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def _parse_hlo(text: str) -> tuple[dict[str, str], dict[str, set[str]], dict[str, str]]:
    """(instruction -> opcode, computation -> opcodes in it, instruction -> called comp)."""
    opcode: dict[str, str] = {}
    comp_ops: dict[str, set[str]] = collections.defaultdict(set)
    calls: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = _COMP.match(line)
        if m and "=" not in line.split("{")[0]:
            current = m.group(1)
            continue
        m = _INSTR.match(line)
        if not m or current is None:
            continue
        name, op, rest = m.groups()
        opcode[name] = op
        comp_ops[current].add(op)
        c = _CALLS.search(rest)
        if c:
            calls[name] = c.group(1)
    return opcode, comp_ops, calls


def _ops_of(name: str, opcode: dict, comp_ops: dict, calls: dict) -> set[str]:
    """The opcodes an instruction runs: its own, plus those of the computation it calls (a
    fusion's body)."""
    return {opcode[name]} | comp_ops.get(calls.get(name), set())


def category(ops: set[str]) -> str:
    """The category of an instruction computing ``ops``."""
    if "convolution" in ops or any("conv" in o for o in ops if o.startswith("custom")):
        return "convolution"
    if "dot" in ops:
        return "dot"
    if ops & {"reduce", "reduce-window", "select-and-scatter"}:
        return "reduction"
    if ops & {"transpose", "copy"}:
        return "transpose/copy"
    return "elementwise/other"


def profile(compiled, call, calls: int = 3) -> dict:
    """Trace ``calls`` calls of ``call()`` (which runs ``compiled`` and blocks); time by
    category and by instruction."""
    import jax
    from jax.profiler import ProfileData

    hlo = compiled.as_text()
    opcode, comp_ops, called = _parse_hlo(hlo)
    call()  # warm
    walls = []
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(calls):
                t0 = time.perf_counter()
                call()
                walls.append(time.perf_counter() - t0)
        trace = next(Path(d).rglob("*.xplane.pb"))
        data = ProfileData.from_file(str(trace))
    per_instr: dict[str, float] = collections.Counter()
    for plane in data.planes:
        if not plane.name.startswith("/host:CPU") and not plane.name.startswith("/device"):
            continue
        for line in plane.lines:
            for ev in line.events:
                if ev.name in opcode and opcode[ev.name] not in _CONTROL:
                    per_instr[ev.name] += ev.duration_ns * 1e-9
    by_cat = dict.fromkeys(CATEGORIES, 0.0)
    for name, t in per_instr.items():
        by_cat[category(_ops_of(name, opcode, comp_ops, called))] += t
    total = sum(by_cat.values()) or 1.0
    return {
        "wall_s_per_call": sorted(walls)[len(walls) // 2],
        "thunk_s_per_call": total / calls,
        "share": {k: v / total for k, v in by_cat.items()},
        "top": [
            (n, t / calls, category(_ops_of(n, opcode, comp_ops, called)))
            for n, t in sorted(per_instr.items(), key=lambda kv: -kv[1])
        ],
    }


def facecloak_program(surrogate: str, batch: int, passes: int):
    """The faithful stage-2 scan of ``benchmarks/run.py`` (the same inputs)."""
    import dataclasses as dc

    import jax
    import jax.numpy as jnp
    import numpy as np
    from run import N_VIEWS, facecloak_inputs
    from run import surrogate as load_surrogate

    from jaxcloak.configs.facecloak import FAITHFUL
    from jaxcloak.faces.chain import identity_taps
    from jaxcloak.methods.facecloak.attack import make_batched_cloak

    inputs = facecloak_inputs(surrogate, batch)
    embed, params = load_surrogate(surrogate, "jax")
    taps = identity_taps()
    cfg = dc.replace(FAITHFUL, passes=passes, stickers=False, highpass=False)
    args = (
        params,
        jnp.asarray(inputs["views"][:batch, :N_VIEWS]),
        jnp.asarray(inputs["e_sim"][:batch]),
        jnp.asarray(inputs["e_dist"][:batch]),
        jnp.zeros((batch, 112, 112, 3), jnp.float32),
        (np.repeat(taps[0][None], batch, 0), np.repeat(taps[1][None], batch, 0)),
        jnp.stack([jax.random.key(i) for i in range(batch)]),
    )
    compiled = make_batched_cloak(embed, cfg).lower(*args).compile()
    return compiled, lambda: jax.block_until_ready(compiled(*args))


def map_program(variant: str, n_train: int):
    """The MAP train step of ``benchmarks/run.py`` (DiffAM style, the same inputs)."""
    import jax
    from run import SIZES, jax_map_step, map_inputs

    size = SIZES["default"]
    size = type(size)(**{**size.__dict__, "map_variant": variant, "map_n_train": n_train})
    step, _, (state, batch, args) = jax_map_step(variant, n_train, map_inputs(size))
    compiled = step.lower(state, batch, args).compile()
    holder = {"state": state}  # the step donates its state: thread it through

    def call():
        holder["state"], metrics = compiled(holder["state"], batch, args)
        jax.block_until_ready(metrics)

    return compiled, call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("workload", choices=("facecloak", "map"))
    ap.add_argument("--surrogate", default="sface", choices=("sface", "ir50"))
    ap.add_argument("--batch", type=int, default=1, help="identities (facecloak)")
    ap.add_argument("--passes", type=int, default=1, help="passes over the 9 views (facecloak)")
    ap.add_argument("--variant", default="embedded", help="score network (map)")
    ap.add_argument("--n-train", type=int, default=6, help="DDIM steps with gradients (map)")
    ap.add_argument("--calls", type=int, default=3, help="traced calls")
    ap.add_argument("--top", type=int, default=10, help="instructions listed")
    ap.add_argument("--json", type=Path, help="write the result here")
    a = ap.parse_args()

    t0 = time.perf_counter()
    if a.workload == "facecloak":
        compiled, call = facecloak_program(a.surrogate, a.batch, a.passes)
        what = f"FaceCloak faithful scan, {a.surrogate}, batch {a.batch}, {a.passes} pass(es)"
    else:
        compiled, call = map_program(a.variant, a.n_train)
        what = f"MAP train step, {a.variant}, n_train {a.n_train}"
    compile_s = time.perf_counter() - t0
    res = profile(compiled, call, a.calls)
    res.update(workload=what, compile_and_setup_s=compile_s)
    print(
        f"{what}: {res['wall_s_per_call']:.3f} s/call wall, "
        f"{res['thunk_s_per_call']:.3f} s/call summed thunk time (all threads)"
    )
    for k, v in res["share"].items():
        print(f"  {k:18s} {100 * v:5.1f}%")
    print("  top instructions (s/call, category):")
    for n, t, c in res["top"][: a.top]:
        print(f"    {t:8.4f}  {c:18s} {n}")
    if a.json:
        res["top"] = res["top"][:50]
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
