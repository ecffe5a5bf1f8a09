"""The ``jaxcloak`` command line. The only module that reads flags and configs.

Examples:
  jaxcloak models list              # registered face models and where their files are
  jaxcloak models check             # convert each, compare with ONNX Runtime on real faces
  jaxcloak models check --json out/models.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__

# Parity bounds for `models check` (same as the test suite's for SFace).
MIN_COSINE = 0.99999
MAX_ABS_DIFF_REL = 1e-3  # of the largest |embedding| entry


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    sep = "  ".join("-" * widths[c] for c in columns)
    body = ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([line, sep, *body])


def _cmd_models_list(args: argparse.Namespace) -> int:
    from .nets.registry import MODELS

    rows = []
    for spec in MODELS.values():
        try:
            where = str(spec.locate())
        except FileNotFoundError as e:
            where = f"MISSING ({e})"
        rows.append(
            {
                "model": spec.name,
                "input": f"{spec.input_size[0]}x{spec.input_size[1]} {spec.colour}",
                "dim": spec.embedding_dim,
                "threshold": f"cos>={spec.threshold}",
                "licence": spec.licence,
                "file": where,
            }
        )
    print(_table(rows, ["model", "input", "dim", "threshold", "licence", "file"]))
    return 0


def check_model(name: str, *, use_cache: bool = True) -> dict:
    """Load one registered model and compare it with ONNX Runtime on the sample faces."""
    import jax
    import numpy as np

    from .convert.onnx.reference import ort_session
    from .nets.registry import get_spec, load
    from .samples import sample_faces

    spec = get_spec(name)
    row: dict = {"model": name}
    try:
        t0 = time.perf_counter()
        model = load(name, use_cache=use_cache)
        row.update(
            load_s=round(time.perf_counter() - t0, 2),
            cached=model.from_cache,
            sha256=model.sha256[:12],
            file=str(model.path),
        )
        faces = sample_faces()
        images = np.stack(list(faces.values())).astype(np.float32) / 255.0
        ours = np.asarray(jax.jit(model.embed)(model.params, images))
        session = ort_session(model.path)
        net_in = np.asarray(spec.to_network_input(images))
        ref = np.concatenate(
            [session.run(None, {session.get_inputs()[0].name: x[None]})[0] for x in net_in]
        )
        ref_unit = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
        cos = np.sum(ours * ref_unit, axis=-1)
        diff = np.abs(ours - ref_unit).max() / np.abs(ref_unit).max()
        ok = bool(cos.min() >= MIN_COSINE and diff <= MAX_ABS_DIFF_REL)
        row.update(
            faces=len(faces),
            min_cosine=f"{cos.min():.7f}",
            max_rel_diff=f"{diff:.1e}",
            status="ok" if ok else "MISMATCH",
        )
    except FileNotFoundError as e:
        row.update(status=f"MISSING: {e}")
    except Exception as e:  # report and continue with the next model
        row.update(status=f"ERROR: {type(e).__name__}: {e}")
    return row


def _cmd_models_check(args: argparse.Namespace) -> int:
    import jax

    from .nets.registry import MODELS

    print(
        f"jaxcloak {__version__}, jax {jax.__version__} on {jax.devices()[0].platform}; "
        f"parity bounds: cosine >= {MIN_COSINE}, max|diff| <= {MAX_ABS_DIFF_REL} "
        "of the embedding scale",
        flush=True,
    )
    names = args.model or list(MODELS)
    rows = []
    for name in names:
        print(f"checking {name} ...", flush=True)
        rows.append(check_model(name, use_cache=not args.no_cache))
    cols = [
        "model",
        "status",
        "faces",
        "min_cosine",
        "max_rel_diff",
        "load_s",
        "cached",
        "sha256",
        "file",
    ]
    print(_table(rows, cols))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps({"jaxcloak": __version__, "models": rows}, indent=2))
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxcloak",
        description="Fast face-privacy protection in JAX. Models are read from installed "
        "packages and converted once into a cache ($JAXCLOAK_HOME).",
        epilog="Run 'jaxcloak models check' to verify the converted models against ONNX Runtime.",
    )
    parser.add_argument("--version", action="version", version=f"jaxcloak {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = sub.add_parser("models", help="list and verify face-recognition models")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    p_list = msub.add_parser("list", help="registered models, their input spec and file location")
    p_list.set_defaults(func=_cmd_models_list)
    p_check = msub.add_parser(
        "check",
        help="convert every model and compare it with ONNX Runtime on real faces",
        description="Locate each model file, convert it to JAX (cached), embed real sample faces "
        "and compare with ONNX Runtime. Exits 1 if any model is missing or mismatches.",
    )
    p_check.add_argument("--model", action="append", help="check only this model (repeatable)")
    p_check.add_argument("--no-cache", action="store_true", help="convert afresh, ignore the cache")
    p_check.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p_check.set_defaults(func=_cmd_models_check)
    models.set_defaults(func=lambda a: (models.print_help(), 2)[1])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
