"""``jaxcloak map fit`` and ``protect --method map``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...pipelines.evaluation import run_eval
from ...pipelines.progress import progress_bar
from ..output import print_map_result
from ..wiring import map_config, precision_policy


def run_map_cli(
    args: argparse.Namespace, photos: list[Path], run_dir: Path, *, evaluate: bool = False
) -> int:
    from ...pipelines.map_photos import load_score_net
    from ...zoo.ensemble import load_surrogate

    if not args.target:
        raise SystemExit("error: --target PHOTO (the identity to be recognised as) is required")
    precision_policy(args)  # set before the score network and the surrogate load and compute
    config = map_config(args)
    score = load_score_net(args.score_net, variant=args.score_variant, seed=args.seed)
    if not score.trained:
        print(
            "note: no --score-net given: using the small embedded score network, whose prior "
            "is untrained (the fine-tuning is real, photorealism is not).",
            flush=True,
        )
    from ...convert.onnx.errors import ConversionError
    from ...faces.photo import NoFaceError
    from ...io import ImageReadError

    try:
        result = _run_map_call(args, photos, run_dir, config, score, load_surrogate)
    except (ImageReadError, NoFaceError, ConversionError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rc = print_map_result(args, result, run_dir)
    pairs = [(Path(r["photo"]), Path(r["output"])) for r in result["faces"] if "error" not in r]
    if evaluate and pairs:
        print(
            "evaluating the protected photos (recognisers, image quality and robustness, "
            "against the target)...",
            flush=True,
        )
        report = run_eval(
            None,
            run_dir / "protected",
            run_dir / "eval",
            pairs=pairs,
            target=Path(args.target),
        )
        rc = max(rc, 1 if report["n_faces"] == 0 else 0)
    return rc


def _run_map_call(args, photos, run_dir, config, score, load_surrogate):
    from ...pipelines.map_photos import run_map

    return run_map(
        photos,
        Path(args.target),
        run_dir,
        recognizer=load_surrogate(args.model),
        expression=args.expression,
        expression_loss=args.expression_loss,
        expression_ref=Path(args.expression_ref) if args.expression_ref else None,
        config=config,
        score=score,
        seed=args.seed,
        resume=not args.no_resume,
        progress=progress_bar,
        out_format=args.format,
        precision=precision_policy(args),
    )


def cmd_map_fit(args: argparse.Namespace) -> int:
    return run_map_cli(args, [Path(p) for p in args.photos], Path(args.output))
