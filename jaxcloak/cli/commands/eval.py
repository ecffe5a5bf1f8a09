"""``jaxcloak eval``: score protected photos against the surrogate and the dlib black box."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...pipelines.evaluation import run_eval


def cmd_eval(args: argparse.Namespace) -> int:
    from ...evaluate.robustness import TRANSFORMS

    transforms = (
        None
        if args.transforms is None
        else [t.strip() for t in args.transforms.split(",") if t.strip()]
    )
    unknown = sorted(set(transforms or []) - set(TRANSFORMS))
    if unknown:
        raise SystemExit(
            f"error: --transforms: unknown {', '.join(unknown)}; known: {', '.join(TRANSFORMS)}"
        )
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: -o {out}: exists and is not a folder")
    for name, folder in (("--clean", args.clean), ("--protected", args.protected)):
        if not Path(folder).is_dir():
            raise SystemExit(f"error: {name} {folder}: not a folder")
    report = run_eval(
        Path(args.clean),
        Path(args.protected),
        Path(args.output),
        models=args.model or ["sface"],
        dlib=not args.no_dlib,
        transforms=transforms,
        gallery=Path(args.gallery) if args.gallery else None,
    )
    for p in report["problems"]:
        print(f"  problem: {p}", file=sys.stderr)
    return 1 if report["problems"] or report["n_faces"] == 0 else 0
