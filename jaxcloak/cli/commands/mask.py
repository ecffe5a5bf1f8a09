"""``jaxcloak mask fit | apply``: a personal mask file, fitted once, applied in milliseconds."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ...pipelines.progress import progress_bar
from ..wiring import chosen_face, claim_outputs_or_exit, make_cloaker


def cmd_mask_fit(args: argparse.Namespace) -> int:
    import numpy as np

    from ...faces import NoFaceError
    from ...io import ImageReadError
    from ...methods.facecloak.masks import save_mask

    target = Path(args.output)
    if target.exists() and not args.overwrite:  # before the fit, not after it
        raise SystemExit(f"error: {target} exists; pass --overwrite to replace it")
    if target.is_dir() or not target.parent.is_dir():
        raise SystemExit(f"error: -o {target}: expected a file path in an existing folder")
    if not os.access(target.parent, os.W_OK):
        raise SystemExit(f"error: -o {target}: folder {target.parent} is not writable")
    try:
        rot = getattr(args, "rotations", "auto")
        photo, *others = [chosen_face(Path(p), args.faces, args.min_face, rot) for p in args.photos]
    except (ImageReadError, NoFaceError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    extra = np.stack([o.faces[0].crop for o in others]) if others else None
    cloaker = make_cloaker(args, extra)
    face = photo.faces[0]
    (res,) = cloaker.fit(face.crop[None], [f"{photo.image.sha256}#0"])
    out = save_mask(args.output, res.delta, res.meta, traces=res.trace, overwrite=args.overwrite)
    print(
        f"wrote {out}: surrogate cosine clean vs masked reference face {res.cos_after:.3f} "
        f"(threshold {cloaker.recognizer.spec.threshold})"
    )
    return 0


def cmd_mask_apply(args: argparse.Namespace) -> int:
    from ...faces import NoFaceError, prepare_photo
    from ...io import ImageReadError, read_image, write_image
    from ...methods.facecloak.cloaker import apply_mask
    from ...methods.facecloak.masks import MaskFileError, load_mask
    from ...pipelines.inputs import collect_inputs, common_root
    from ...pipelines.outputs import OutputConflict, check_output_folder, plan_outputs

    try:
        mask = load_mask(args.mask)
    except MaskFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    outdir = Path(args.output)
    try:
        check_output_folder(outdir, args.photos)
        files, errors = collect_inputs(args.photos, exclude=outdir)
        plan = plan_outputs(files, common_root(files), outdir, args.format) if files else {}
    except OutputConflict as e:
        raise SystemExit(f"error: {e}") from None
    claim_outputs_or_exit(outdir, list(plan.values()), files)
    failed = [msg for _, msg in errors]
    n = 0
    for f in progress_bar(files, "applying", len(files)):
        try:
            photo = prepare_photo(
                read_image(f),
                faces=args.faces,
                no_face=args.no_face,
                min_face=args.min_face,
                rotations=args.rotations,
                size=mask.size,
            )
            rgb = apply_mask(photo, [mask.delta] * len(photo.faces))
            out = plan[f]
            out.parent.mkdir(parents=True, exist_ok=True)
            write_image(
                out, rgb, like=photo.image, format=args.format, quality=args.quality, overwrite=True
            )
            n += 1
        except (ImageReadError, NoFaceError, ValueError, OSError) as e:
            failed.append(str(e))
    print(f"applied {Path(args.mask).name} to {n} photo(s) in {outdir}; {len(failed)} failed")
    for msg in failed:
        print(f"  FAILED {msg}", file=sys.stderr)
    return 1 if failed else 0
