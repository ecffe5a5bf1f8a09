"""``jaxcloak models list | check | import``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ... import __version__
from ..output import format_table


def cmd_models_list(args: argparse.Namespace) -> int:
    from ...zoo.registry import MODELS, imported_dir, imported_meta

    rows = []
    names = list(MODELS)
    # Custom-named imports (models import --name) are listed too.
    if imported_dir().is_dir():
        names += sorted(p.stem for p in imported_dir().glob("*.json") if p.stem not in MODELS)
    for name in names:
        spec = MODELS.get(name)
        meta = imported_meta(name)
        if spec is not None and not spec.native:
            try:
                where = str(spec.locate())
            except FileNotFoundError as e:
                where = f"MISSING ({e})"
        elif meta is not None:
            where = f"imported from {meta['source']}"
        else:
            where = f"not imported: jaxcloak models import CHECKPOINT --arch {name}"
        thr = (meta or {}).get("threshold") or (spec.threshold if spec else None)
        rows.append(
            {
                "model": name,
                "kind": "onnx" if spec is not None and not spec.native else "flax",
                "arch": f"{spec.arch}/{spec.variant}"
                if spec is not None and spec.native
                else (f"{meta['arch']}/{meta['variant']}" if meta else "onnx graph"),
                "input": f"{spec.input_size[0]}x{spec.input_size[1]} {spec.colour}"
                if spec
                else "112x112 RGB",
                "dim": spec.embedding_dim if spec else "",
                "threshold": f"cos>={thr}" if thr is not None else "none (calibrate)",
                "weights": where,
            }
        )
    print(format_table(rows, ["model", "kind", "arch", "input", "dim", "threshold", "weights"]))
    return 0


def cmd_models_import(args: argparse.Namespace) -> int:
    from ...convert.torch import ConversionError
    from ...zoo.registry import import_checkpoint, load

    try:
        name, stored = import_checkpoint(
            args.checkpoint,
            args.arch,
            variant=args.variant,
            name=args.name,
            threshold=args.threshold,
            overwrite=args.force,
        )
    except (ConversionError, FileNotFoundError, FileExistsError, OSError) as e:
        print(f"error: {args.checkpoint}: {e}", file=sys.stderr)
        return 1
    model = load(name)
    print(
        f"imported {args.checkpoint} as {name!r} ({model.spec.arch}/{model.spec.variant}, "
        f"{model.spec.embedding_dim}-d): every key matched; stored at {stored}"
    )
    return 0


def cmd_models_check(args: argparse.Namespace) -> int:
    import jax

    from ...zoo.check import MAX_ABS_DIFF_REL, MIN_COSINE, check_model
    from ...zoo.registry import MODELS

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
    print(format_table(rows, cols))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps({"jaxcloak": __version__, "models": rows}, indent=2))
        os.replace(tmp, out)
        print(f"wrote {out}")
    # Native models nobody imported are skipped, not failures, unless asked for by name.
    passing = ("ok",) if args.model else ("ok", "not imported")
    return 0 if all(r["status"].startswith(passing) for r in rows) else 1
