"""``jaxcloak protect``: check the job, claim the outputs, run the engine, report."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from ..args import read_file_list
from ..output import print_compiles, print_summary
from ..wiring import claim_outputs_or_exit, make_cloaker
from .map import run_map_cli


def cmd_protect(args: argparse.Namespace) -> int:
    from ...pipelines.inputs import collect_inputs, common_root, identity_units
    from ...pipelines.outputs import OutputConflict, check_output_folder, plan_outputs
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
    from ...io.locations import is_uri

    if args.engine == "ray":
        return _protect_on_ray(args, inputs)
    uris = [x for x in [*inputs, args.output] if is_uri(str(x))]
    if uris:
        raise SystemExit(f"error: {uris[0]}: URIs are read and written by --engine ray only")
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
    per_file = args.identity == "per-file"
    _check_identity_options(args)
    root = common_root(files + ([Path(args.reference)] if args.reference else []))
    try:  # over the whole job, before any process fits anything
        plan = plan_outputs(files, root, outdir, args.format)
        units = identity_units(files, args.identity, root)
    except ValueError as e:  # OutputConflict too
        raise SystemExit(f"error: {e}") from None
    mine = process_share(units, index, count)  # whole units (people, or photos) per process
    share = [f for _, fs in mine for f in fs]
    manifest = "manifest" if count == 1 else f"manifest.p{index}of{count}"
    who = f"process {index} of {count}: " if count > 1 else ""
    groups = f"{len(mine)} of {len(units)}" if count > 1 else f"{len(mine)}"
    people = "every face its own person" if per_file else f"{groups} identity group(s)"
    line = f"{who}{len(share)} photo(s), {people}"
    if not share:
        print(line)
        return 1 if errors else 0
    if args.reference:  # before any output is claimed or any model loads
        _check_reference(args)
    claim_outputs_or_exit(outdir, [plan[f] for f in share], share)
    cloaker = make_cloaker(args)
    bucket = cloaker.bucket(cloaker.max_batch)
    print(f"{line}; device step: {bucket} face(s) on {_devices()}", flush=True)
    summary = _run(args, cloaker, share, outdir, root, manifest)
    print_compiles(args, outdir / f"{manifest}.json")
    status = print_summary(
        summary,
        outdir / f"{manifest}.json",
        cloaker.recognizer.spec.name,
        cloaker.config.max_levels(),
        args.allow_unprotected,
    )
    return 1 if errors else status


def _check_identity_options(args: argparse.Namespace) -> None:
    if args.identity == "per-file" and args.reference:
        raise SystemExit("error: --reference does not apply to --identity per-file")
    if args.identity == "per-file" and args.views_from == "group":
        raise SystemExit("error: --views-from group needs groups: --identity per-folder or a CSV")


def _check_reference(args: argparse.Namespace) -> None:
    """--reference must be a readable photo the run's face policies accept (as the engine
    reads it: --faces, --no-face, --min-face, --rotations)."""
    from ...faces import prepare_photo
    from ...faces.photo import NoFaceError
    from ...io.images import ImageReadError, read_image

    policy = dict(
        faces=args.faces, no_face=args.no_face, min_face=args.min_face, rotations=args.rotations
    )
    try:
        prepare_photo(read_image(Path(args.reference)), **policy)
    except (ImageReadError, NoFaceError) as e:
        raise SystemExit(f"error: --reference {e}") from None


def _run(
    args: argparse.Namespace, cloaker, files: list[Path], outdir: Path, root: Path, manifest: str
):
    """The engine on this process's share, under a progress bar."""
    from ...pipelines.engine import protect
    from ...pipelines.records import ManifestError

    bar, progress = _progress_bar(len(files))
    try:
        return protect(
            files,
            outdir,
            cloaker,
            root=root,
            manifest=manifest,
            **_engine_options(args),
            progress=progress,
        )
    except ManifestError as e:
        raise SystemExit(
            f"error: {e}: the earlier run's log cannot be resumed from; move it away or pass "
            "--no-resume to start the log afresh (finished outputs are then redone)"
        ) from None
    finally:
        bar.close()


def _engine_options(args: argparse.Namespace) -> dict:
    """What the local and the Ray engine both take from the flags."""
    return dict(
        identity=args.identity,
        reference=Path(args.reference) if args.reference else None,
        views_from=args.views_from,
        faces=args.faces,
        no_face=args.no_face,
        min_face=args.min_face,
        rotations=args.rotations,
        fmt=args.format,
        quality=args.quality,
        resume=not args.no_resume,
        # --no-masks is per-file's (so its help says): a group's few masks are always written.
        save_masks=not (args.no_masks and args.identity == "per-file"),
        readers=args.readers,
        writers=args.writers,
    )


def _progress_bar(total: int | None = None):
    """A tqdm bar and a thread-safe ``progress(done, total, postfix)`` that moves it."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="photo", disable=None, smoothing=0.05)
    lock = threading.Lock()

    def progress(done: int, total: int, postfix: dict) -> None:
        with lock:
            bar.total = total
            bar.update(done - bar.n)
            bar.set_postfix(postfix, refresh=False)

    return bar, progress


def _devices() -> str:
    """e.g. ``"4 x cpu"``: what this process computes on."""
    import jax

    devs = jax.local_devices()
    return f"{len(devs)} x {devs[0].platform}"


def _protect_on_ray(args: argparse.Namespace, inputs: list[str]) -> int:
    """``--engine ray``: the job on a Ray cluster (:mod:`jaxcloak.pipelines.ray_engine`)."""
    import copy
    import functools

    from ...io.locations import is_uri
    from ...pipelines.inputs import collect_inputs, collect_uris
    from ...pipelines.outputs import OutputConflict, check_output_folder
    from ...pipelines.records import ManifestError

    if args.method == "map":
        raise SystemExit("error: --engine ray runs --method facecloak (MAP fine-tunes one model)")
    if args.coordinator or args.num_processes or args.process_id is not None:
        raise SystemExit("error: --engine ray spreads the job itself; drop --coordinator & co.")
    _check_identity_options(args)
    remote_out = is_uri(args.output)
    uris = [x for x in inputs if is_uri(str(x))]
    errors: list = []
    if uris:
        if len(uris) != len(inputs):
            raise SystemExit("error: give either local paths or URIs as inputs, not both")
        if any(u.rstrip("/") == args.output.rstrip("/") for u in uris):
            raise SystemExit(f"error: -o {args.output} is an input folder; choose another")
        sources, errors = collect_uris(uris, exclude=args.output if remote_out else None)
        for _, msg in errors:
            print(f"error: {msg}", file=sys.stderr)
        if not sources:
            return 1
    else:
        if not remote_out:
            try:
                check_output_folder(Path(args.output), inputs)
            except OutputConflict as e:
                raise SystemExit(f"error: {e}") from None
        sources, errors = collect_inputs(inputs, exclude=None if remote_out else args.output)
        for _, msg in errors:
            print(f"error: {msg}", file=sys.stderr)
        if not sources:
            return 1
        if not remote_out:  # room for the outputs, before any model loads
            claim_outputs_or_exit(Path(args.output), [], sources)
    if args.reference:
        _check_reference(args)
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise SystemExit("error: --engine ray needs Ray Data: pip install 'jaxcloak[ray]'")
    from ...pipelines.ray_engine import RayOptions, protect_ray

    shipped = copy.copy(args)  # what each actor builds its Cloaker from, in its own folder
    shipped._precision, shipped._compiles = None, None
    for name in ("pool", "far_anchor", "arc2face", "sd", "_cache_dir"):
        if getattr(shipped, name, None):
            setattr(shipped, name, Path(getattr(shipped, name)).resolve())
    # The driver builds a Cloaker only for the run's settings: on a GPU head node it must not
    # take the memory its actors need (JAX would reserve most of every GPU up front).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    options = RayOptions(
        address=args.ray_address, actors=args.actors, gpus_per_actor=args.gpus_per_actor
    )
    print(f"Ray: {args.actors} actor(s), {args.gpus_per_actor:g} GPU(s) each", flush=True)
    cloaker = make_cloaker(args)
    bar, progress = _progress_bar()
    try:
        summary = protect_ray(
            sources,
            args.output,
            cloaker,
            functools.partial(_actor_cloaker, shipped),
            options=options,
            **_engine_options(args),
            progress=progress,
        )
    except ManifestError as e:
        raise SystemExit(f"error: {e}: move the earlier log away or pass --no-resume") from None
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # OutputConflict too
        raise SystemExit(f"error: {e}") from None
    finally:
        bar.close()
    s = summary.seconds
    print(
        f"Ray: {s['ray_start']:.1f} s to start, {s['first_batch']:.1f} s to the first batch "
        "(actors, models, compile)"
    )
    manifest = f"{args.output.rstrip('/')}/manifest.json" if remote_out else None
    status = print_summary(
        summary,
        manifest or Path(args.output) / "manifest.json",
        cloaker.recognizer.spec.name,
        cloaker.config.max_levels(),
        args.allow_unprotected,
    )
    return 1 if errors else status


def _actor_cloaker(args: argparse.Namespace):
    """An actor's Cloaker: the driver's settings, with the shared persistent compile cache."""
    from ...runtime import enable_compile_cache

    enable_compile_cache(args._cache_dir)
    return make_cloaker(args)
