"""``jaxcloak protect``: check the job, claim the outputs, run the bulk engine, report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...pipelines.progress import progress_bar
from ..args import read_file_list
from ..output import (
    print_change,
    print_compiles,
    print_failures,
    print_summary,
    report_unprotected,
)
from ..wiring import make_cloaker
from .map import run_map_cli


def cmd_protect(args: argparse.Namespace) -> int:
    from ...pipelines.bulk import (
        OutputConflict,
        check_output_folder,
        collect_inputs,
        common_root,
        plan_outputs,
        protect_files,
    )
    from ...runtime import init_distributed, process_share

    if args.demo:
        from ...pipelines.demo import run_demo

        outdir = Path(args.output or "jaxcloak-report")
        rc = run_demo(outdir, make_cloaker(args), evaluate=not args.no_eval)
        print_compiles(args, outdir / "protected" / "manifest.json")
        return rc
    inputs = list(args.photos) + (read_file_list(args.files_from) if args.files_from else [])
    if not inputs:
        raise SystemExit("error: give photos or folders to protect (or --files-from, or --demo)")
    if not args.output:
        raise SystemExit("error: -o/--output OUTDIR is required")
    try:  # before anything touches a device (the precision policy too): join the job first
        index, count = init_distributed(args.coordinator, args.num_processes, args.process_id)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    outdir = Path(args.output)
    try:
        check_output_folder(outdir, inputs)
    except OutputConflict as e:
        raise SystemExit(f"error: {e}") from None
    files, errors = collect_inputs(inputs, exclude=outdir)
    for _, msg in errors:
        print(f"error: {msg}", file=sys.stderr)
    if not files:
        return 1
    if args.method == "map":
        if count > 1:
            raise SystemExit("error: --method map runs as one process (no --coordinator)")
        return max(run_map_cli(args, files, outdir, evaluate=not args.no_eval), 1 if errors else 0)
    root = common_root(files + ([Path(args.reference)] if args.reference else []))
    try:  # over the whole job, before any process fits anything
        plan = plan_outputs(files, root, outdir, args.format)
    except OutputConflict as e:
        raise SystemExit(f"error: {e}") from None
    manifest = "manifest" if count == 1 else f"manifest.p{index}of{count}"
    if count > 1:
        print(f"process {index} of {count}: ", end="")
    if args.identity == "per-file":
        share = process_share(files, index, count)
        claim_outputs_or_exit(outdir, [plan[f] for f in share], share)
        status = _protect_stream_cli(args, share, outdir, root, manifest)
        return 1 if errors else status
    from ...pipelines.bulk import group_identities

    try:
        groups = group_identities(files, args.identity)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    mine = process_share(sorted(groups), index, count)  # whole people per process
    share = [f for g in mine for f in groups[g]]
    if count > 1:
        print(f"{len(mine)} of {len(groups)} identity group(s), {len(share)} photo(s)")
    if not share:
        return 1 if errors else 0
    claim_outputs_or_exit(outdir, [plan[f] for f in share], share)
    cloaker = make_cloaker(args)
    summary = protect_files(
        share,
        outdir,
        cloaker,
        identity=args.identity,
        reference=Path(args.reference) if args.reference else None,
        faces=args.faces,
        no_face=args.no_face,
        min_face=args.min_face,
        rotations=args.rotations,
        fmt=args.format,
        quality=args.quality,
        resume=not args.no_resume,
        progress=progress_bar,
        root=root,
        manifest=f"{manifest}.json",
        views_from=args.views_from,
    )
    print_compiles(args, outdir / f"{manifest}.json")
    print_change(summary.records, cloaker.config.max_levels())
    status = print_summary(summary, outdir, cloaker.recognizer.spec.name, args.allow_unprotected)
    return 1 if errors else status


def claim_outputs_or_exit(
    outdir: Path, outputs: list[Path], inputs: list[Path] | None = None
) -> None:
    """Before any model loads: refuse to replace files in OUTDIR that jaxcloak did not write,
    and refuse a destination without room for about the inputs' size again."""
    import shutil

    from ...pipelines.bulk import OutputConflict, claim_outputs

    try:
        outdir.mkdir(parents=True, exist_ok=True)
        need = sum(f.stat().st_size for f in inputs or []) + (1 << 20) * len(inputs or [])
        free = shutil.disk_usage(outdir).free
        if need > free:
            raise SystemExit(
                f"error: -o {outdir}: {free / 1e6:.0f} MB free, the outputs and masks need "
                f"about {need / 1e6:.0f} MB; free some space or choose another folder"
            )
        claim_outputs(outdir, outputs)
    except OutputConflict as e:
        raise SystemExit(f"error: {e}") from None
    except OSError as e:
        raise SystemExit(f"error: -o {outdir}: cannot write there ({e.strerror or e})") from None


def _protect_stream_cli(
    args: argparse.Namespace, files: list[Path], outdir: Path, root: Path, manifest: str
) -> int:
    import threading

    from tqdm import tqdm

    from ...pipelines.stream import device_summary, protect_stream

    if args.reference:
        raise SystemExit("error: --reference does not apply to --identity per-file")
    if args.views_from == "group":
        raise SystemExit("error: --views-from group needs groups: --identity per-folder or a CSV")
    cloaker = make_cloaker(args)
    bucket = cloaker.bucket(cloaker.max_batch)
    print(
        f"{len(files)} photo(s), every face its own person; device step: {bucket} face(s) on "
        f"{device_summary()}",
        flush=True,
    )
    bar = tqdm(total=len(files), unit="photo", disable=None, smoothing=0.05)
    lock = threading.Lock()

    def progress(done: int, total: int, postfix: dict) -> None:
        with lock:
            bar.update(done - bar.n)
            bar.set_postfix(postfix, refresh=False)

    try:
        summary = protect_stream(
            files,
            outdir,
            cloaker,
            root=root,
            faces=args.faces,
            no_face=args.no_face,
            min_face=args.min_face,
            rotations=args.rotations,
            fmt=args.format,
            quality=args.quality,
            resume=not args.no_resume,
            save_masks=not args.no_masks,
            readers=args.readers,
            writers=args.writers,
            manifest=manifest,
            progress=progress,
        )
    finally:
        bar.close()
    print_compiles(args, outdir / f"{manifest}.json")
    by = {}
    for r in summary.records:
        by[r.status] = by.get(r.status, 0) + 1
    n_faces = sum(len(r.faces) for r in summary.records if r.status == "protected")
    still = sum(
        f["same_person_after"] for r in summary.records if r.status == "protected" for f in r.faces
    )
    print(
        f"wrote {by.get('protected', 0)} photo(s) ({n_faces} face(s), {still} still matched "
        f"by the surrogate), {by.get('up-to-date', 0)} already up to date, "
        f"{len(summary.failed)} failed"
    )
    print_failures(summary.failed)
    print_change(summary.records, cloaker.config.max_levels())
    s = summary.seconds
    done = by.get("protected", 0)
    rate = done / s["total"] if s["total"] > 0 else 0.0
    print(
        f"time: {s['total']:.1f} s, {rate:.2f} photo/s; device step busy "
        f"{100 * s['device_busy_share']:.0f}% of the time; compile {s['compile']:.1f} s; "
        f"manifest {outdir / (manifest + '.json')}"
    )
    status = report_unprotected(
        summary.records, cloaker.recognizer.spec.name, args.allow_unprotected
    )
    return 1 if summary.failed else status
