"""The ``jaxcloak`` command line. The only module that reads flags and configs.

Examples:
  jaxcloak protect --demo -o jaxcloak-report     # protect the bundled astronaut, write a report
  jaxcloak protect me.jpg holiday/ -o out/       # learn from me.jpg, protect every photo
  jaxcloak mask fit me.jpg -o me.mask            # a personal mask, reusable in milliseconds
  jaxcloak map fit me.jpg --target them.jpg --expression happy -o run/   # MAP
  jaxcloak mask apply me.mask new.jpg -o out/
  jaxcloak models list              # registered face models and where their files are
  jaxcloak models check             # convert each, compare with ONNX Runtime on real faces
  jaxcloak models check --json out/models.json
  jaxcloak models import ir152.pth --arch ir152          # your own checkpoint of a paper model
  jaxcloak models import backbone.pth --arch iresnet --variant r50 --name my-r50
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__

#: jaxcloak.precision.NAMES, spelled out so that building the parser does not import JAX.
PRECISIONS = ("auto", "float32", "tf32", "bfloat16")

if TYPE_CHECKING:
    import numpy as np

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
    from .nets.registry import MODELS, imported_dir, imported_meta

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
    print(_table(rows, ["model", "kind", "arch", "input", "dim", "threshold", "weights"]))
    return 0


def _cmd_models_import(args: argparse.Namespace) -> int:
    from .convert.torch import ConversionError
    from .nets.registry import import_checkpoint, load

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


def check_model(name: str, *, use_cache: bool = True) -> dict:
    """Load one registered model and compare it with ONNX Runtime on the sample faces."""
    import jax
    import numpy as np

    from .convert.onnx.reference import ort_session
    from .nets.registry import get_spec, imported_meta, load
    from .samples import sample_faces

    spec = get_spec(name)
    row: dict = {"model": name}
    if spec.native and imported_meta(name) is None:
        row.update(status="not imported (skipped)")
        return row
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
        if spec.native:
            # No second runtime to compare with here (torch is optional): the port's parity
            # is proven by the test suite on reference models; check the output is sane.
            norms = np.linalg.norm(ours, axis=-1)
            ok = bool(np.isfinite(ours).all() and np.allclose(norms, 1.0, atol=1e-4))
            row.update(faces=len(faces), status="ok (native; no ONNX reference)" if ok else "BAD")
            return row
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
    # Native models nobody imported are skipped, not failures, unless asked for by name.
    passing = ("ok",) if args.model else ("ok", "not imported")
    return 0 if all(r["status"].startswith(passing) for r in rows) else 1


# --------------------------------------------------------------------------------------------
# protect / mask
# --------------------------------------------------------------------------------------------


def _faces_policy(value: str):
    if value in ("all", "largest"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected all, largest or an index, got {value!r}"
        ) from None


def _no_face_policy(value: str):
    if value in ("skip", "whole-image"):
        return value
    parts = value.split(",")
    try:
        box = tuple(float(v) for v in parts)
    except ValueError:
        box = ()
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise argparse.ArgumentTypeError(f"expected skip, whole-image or X,Y,W,H, got {value!r}")
    if box[0] < 0 or box[1] < 0 or box[2] < 16 or box[3] < 16:
        raise argparse.ArgumentTypeError(
            f"box {value!r}: X and Y must be >= 0 and W, H at least 16 pixels"
        )
    return box


def _add_rotations_arg(p) -> None:
    p.add_argument(
        "--rotations",
        choices=["auto", "off", "all"],
        default="auto",
        help="auto (default): when a photo shows no face, look again with it turned 90, 180 "
        "and 270 degrees (a sideways portrait without EXIF orientation) and protect it in its "
        "own orientation; all: always look at every orientation; off: never",
    )


def _number(kind: type, lo: float | None = None, hi: float | None = None, *, open_lo=False):
    """An argparse type: ``kind`` (int or float) in [lo, hi] (``open_lo``: lo excluded)."""

    def parse(value: str):
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {value!r}"
            ) from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
        below = lo is not None and (v <= lo if open_lo else v < lo)
        if below or (hi is not None and v > hi):
            left = "(" if open_lo else "["
            rng = f"{left}{'' if lo is None else lo}, {'' if hi is None else hi}]"
            raise argparse.ArgumentTypeError(f"{value} is out of range {rng}")
        return v

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _policy(args: argparse.Namespace):
    """The run's precision policy, resolved and set for the process at its first use: ``auto``
    asks JAX for its backend, which must wait until a multi-process job has been joined and
    need not start a device for commands that never compute."""
    if args._precision is None:
        from . import precision

        args._precision = precision.apply(precision.resolve(args.precision))
    return args._precision


def _add_precision_arg(g) -> None:
    g.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="auto",
        help="precision policy of every network (README, 'Precision'): float32 (true FP32), "
        "tf32 (TF32 matmuls on GPUs; same as float32 on CPUs), bfloat16 (the networks' "
        "weights and activations; masks, trained weights, optimisers and losses stay "
        "float32); default auto = float32 on every backend until a GPU measurement says "
        "otherwise (recorded in the manifest)",
    )


def _add_cloak_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("protection settings")
    g.add_argument(
        "--mode",
        choices=["fixed", "faithful"],
        default="fixed",
        help="fixed (default): jaxcloak's corrected FaceCloak; faithful: the "
        "reference code's update as shipped (needs --far-anchor)",
    )
    g.add_argument(
        "--strength",
        choices=["low", "mid", "high"],
        default="mid",
        help="fixed-mode preset: L-inf budget 16/20/24 grey levels, 40 steps, with momentum, "
        "input diversity and gradient smoothing for transfer; measured PSNR medians "
        "37.0/35.1/33.5 dB on real photos, mid the default (see README)",
    )
    g.add_argument(
        "--eps",
        type=_number(float, 0, 255, open_lo=True),
        metavar="LEVELS",
        help="override the L-inf budget, in grey levels (0..255)",
    )
    g.add_argument(
        "--steps", type=_number(int, 1, 10000), help="override the number of optimisation steps"
    )
    g.add_argument(
        "--views",
        default="8",
        metavar="[GEN:]N",
        help="stage-1 views per person and their generator: N (default 8) augmented views, "
        "or 'arc2face' / 'arc2face:N' for Arc2Face diffusion samples as published (needs "
        "--arc2face and --sd)",
    )
    g.add_argument("--arc2face", metavar="DIR", help="Arc2Face folder (arc2face/, encoder/)")
    g.add_argument("--sd", metavar="DIR", help="Stable Diffusion 1.5 folder (vae/, tokenizer/)")
    g.add_argument(
        "--id-model",
        default="arcface-r100",
        metavar="MODEL",
        help="512-d face model giving Arc2Face its identity (default arcface-r100: Arc2Face was "
        "trained on ArcFace IResNet-100 embeddings; import the weights with 'models import')",
    )
    g.add_argument(
        "--eot",
        default="",
        metavar="KINDS",
        help="robustness: comma list of resize,blur,jpeg applied while optimising",
    )
    g.add_argument(
        "--seed",
        type=_number(int, 0, 2**32 - 1),
        default=0,
        help="PRNG seed (recorded in the manifest)",
    )
    g.add_argument(
        "--model",
        default="sface",
        metavar="M[,M2...]",
        help="surrogate face model (default sface); a comma list is an ensemble whose cosine is "
        "the weighted mean of the members' ('sface:2,ir152:1' weights them); see 'models list'",
    )
    g.add_argument(
        "--pool",
        metavar="DIR",
        help="anchor pool folder (subfolder or filename prefix = identity); "
        "default: the built-in pool from installed packages",
    )
    g.add_argument(
        "--far-anchor",
        metavar="IMAGE",
        help="faithful mode: the fixed far-anchor photo the reference hard-codes",
    )
    g.add_argument(
        "--batch",
        type=_number(int, 1, 4096),
        default=8,
        help="people optimised together in one compiled call (default 8; rounded up to a "
        "multiple of the device count, the batch is split over all local devices)",
    )
    _add_precision_arg(g)
    f = p.add_argument_group("faces")
    f.add_argument(
        "--faces",
        type=_faces_policy,
        default="all",
        help="all (default), largest, or an index (0 = largest)",
    )
    f.add_argument(
        "--no-face",
        type=_no_face_policy,
        default="skip",
        metavar="POLICY",
        help="skip (default, reported), whole-image, or a box X,Y,W,H",
    )
    f.add_argument(
        "--min-face",
        type=_number(float, 0),
        default=20,
        help="smaller faces are reported, not protected (pixels, default 20)",
    )
    _add_rotations_arg(f)


def _make_cloaker(args: argparse.Namespace, extra_photos: np.ndarray | None = None):
    """The Cloaker the arguments ask for; ``extra_photos`` ((E, 112, 112, 3) uint8 aligned
    crops of the same person) feed the views besides the reference face."""
    import dataclasses

    from .anchors import builtin_pool, user_pool
    from .configs.facecloak import get_config
    from .nets.ensemble import load_surrogate
    from .protect import Cloaker

    overrides = {}
    if args.eps is not None:
        overrides["eps"] = args.eps / 255
    if args.steps is not None:
        overrides["steps" if args.mode == "fixed" else "passes"] = args.steps
    if args.eot:
        overrides["eot"] = tuple(k.strip() for k in args.eot.split(",") if k.strip())
    config = get_config(args.mode, args.strength if args.mode == "fixed" else "mid")
    config = dataclasses.replace(config, **overrides)
    policy = _policy(args)  # set before the pool, the views and the far anchor compute
    far = None
    if args.mode == "faithful":
        if not args.far_anchor:
            raise SystemExit(
                "error: --mode faithful needs --far-anchor IMAGE: the reference hard-codes one "
                "CelebA photo as every user's far anchor (defect D1); pass the photo to use"
            )
        far = _chosen_face(Path(args.far_anchor), "largest", args.min_face).faces[0].crop
    pool = user_pool(args.pool) if args.pool else builtin_pool()
    views = _view_generator(args)
    if extra_photos is not None and len(extra_photos):
        import numpy as np

        from .attacks.views import MultiPhotoViews

        views = MultiPhotoViews(views, np.asarray(extra_photos, np.float32) / 255.0)
        print(f"stage-1 views drawn from {len(extra_photos) + 1} photos of the person")
    print(f"stage-1 views: {views.name}, {views.n_views} per person", flush=True)
    return Cloaker(
        load_surrogate(args.model),
        config,
        views,
        pool,
        anchor_rule="faithful" if args.mode == "faithful" else "gallery_filtered",
        far_anchor_face=far,
        max_batch=args.batch,
        seed=args.seed,
        precision=policy,
        max_extra=MAX_GROUP_PHOTOS if getattr(args, "views_from", None) == "group" else 0,
    )


#: Other photos of a person that --views-from group feeds into the views (the program is
#: compiled for this many; a person with more uses the first ones).
MAX_GROUP_PHOTOS = 3


def _view_generator(args: argparse.Namespace):
    """The stage-1 generator --views asks for (augment unless arc2face is named)."""
    from .attacks.views import make_view_generator

    spec = args.views.strip().lower()
    name, sep, count = spec.partition(":")
    if not sep:
        name, count = ("augment", spec) if spec.isdigit() else (spec, "8")
    if name not in ("augment", "arc2face") or not count.isdigit() or int(count) < 1:
        raise SystemExit(f"error: --views: expected N, augment:N or arc2face[:N], got {spec!r}")
    n = int(count)
    if name == "augment":
        return make_view_generator("augment", n_views=n)
    if not (args.arc2face and args.sd):
        raise SystemExit(
            "error: --views arc2face needs --arc2face DIR (the Arc2Face weights: arc2face/, "
            "encoder/) and --sd DIR (Stable Diffusion 1.5: vae/, tokenizer/); without them use "
            "the default augmented views"
        )
    from .attacks.arc2face import Arc2FaceConfig, load_arc2face
    from .nets.registry import load

    try:
        nets, params = load_arc2face(args.arc2face, args.sd)
    except ImportError as e:
        raise SystemExit(
            f"error: --views arc2face reads the SD tokenizer with transformers ({e}); "
            'pip install "jaxcloak[arc2face]"'
        ) from e
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --views arc2face: {e}") from e
    fr = load(args.id_model)
    if fr.spec.embedding_dim != 512:
        raise SystemExit(
            f"error: --id-model {args.id_model} gives {fr.spec.embedding_dim}-d embeddings; "
            "Arc2Face takes 512-d ArcFace identities"
        )
    dtype = _policy(args).describe()["dtype"]
    return make_view_generator(
        "arc2face",
        nets=nets,
        params=params,
        embed=fr.embed,
        fr_params=fr.params,
        config=Arc2FaceConfig(n_views=n, dtype=dtype),
        fr_name=args.id_model,
    )


def _chosen_face(path: Path, faces, min_face: float, rotations: str = "auto"):
    """The photo with its first chosen face (the largest, unless ``faces`` is an index)."""
    from .faces import prepare_photo
    from .io import read_image

    return prepare_photo(read_image(path), faces=faces, min_face=min_face, rotations=rotations)


def _progress(it, desc: str, total: int):
    from tqdm import tqdm

    return tqdm(it, desc=desc, total=total, unit="it", disable=None, leave=False)


def _print_change(records, budget: float) -> None:
    """The largest pixel change in the written files, next to the budget it should keep."""
    written = [r for r in records if r.status == "protected" and r.linf is not None]
    if not written:
        return
    worst = max(r.linf for r in written)
    over = sum(r.linf > budget + 0.5 for r in written)
    tail = (
        f"; {over} photo(s) over it from lossy re-encoding (--format PNG keeps it exact)"
        if over
        else ""
    )
    print(
        f"largest pixel change in the written files: {worst} grey levels "
        f"(budget {budget:.0f}){tail}"
    )


def _print_failures(failed: list[tuple[str, str]], limit: int = 20) -> None:
    """Each failed photo once (its path, then the reason), grouped by reason."""
    by: dict[str, list[str]] = {}
    for path, msg in failed:
        reason = msg[len(path) + 2 :] if msg.startswith(f"{path}: ") else msg
        by.setdefault(reason, []).append(path)
    shown = 0
    for reason, paths in sorted(by.items(), key=lambda kv: -len(kv[1])):
        head = f"{len(paths)} photo(s): " if len(paths) > 1 else ""
        print(f"  FAILED {head}{reason}", file=sys.stderr)
        for path in paths[: max(limit - shown, 0)]:
            print(f"    {path}", file=sys.stderr)
        shown += len(paths)
    if shown > limit:
        print(f"  ({shown - limit} more paths in the manifest)", file=sys.stderr)


#: Exit status when every photo was written but some face is still recognised by the surrogate.
EXIT_STILL_RECOGNISED = 3


def _still_recognised(records) -> tuple[list[str], int]:
    """Outputs with a face the surrogate still matches to its clean self, and photos scored."""
    scored = [r for r in records if r.status in ("protected", "up-to-date") and r.faces]
    still = [str(r.output) for r in scored if any(f["same_person_after"] for f in r.faces)]
    return still, len(scored)


def _report_unprotected(records, surrogate: str, allow: bool) -> int:
    """Print the photos still recognised; the exit status they call for."""
    still, n = _still_recognised(records)
    if not still:
        if n:
            print(f"all {n} photo(s) are no longer recognised by {surrogate} (the surrogate)")
        return 0
    print(
        f"{len(still)} of {n} photo(s) are still recognised by {surrogate}: their faces still "
        "match the clean photo (manifest: same_person_after); try --strength high",
        file=sys.stderr,
    )
    for path in still[:20]:
        print(f"  STILL RECOGNISED {path}", file=sys.stderr)
    if len(still) > 20:
        print(f"  ... and {len(still) - 20} more (see the manifest)", file=sys.stderr)
    return 0 if allow else EXIT_STILL_RECOGNISED


def _print_summary(summary, outdir: Path, surrogate: str, allow: bool) -> int:
    done = [r for r in summary.records if r.status == "protected"]
    fresh = [r for r in summary.records if r.status == "up-to-date"]
    print(
        f"wrote {len(done)} photo(s), {len(fresh)} already up to date, "
        f"{len(summary.failed)} failed; {len(summary.masks)} mask(s) fitted"
    )
    for r in done:
        for face in r.faces:
            flag = "still matches!" if face["same_person_after"] else "no match"
            print(
                f"  {r.output}: face {face['index']} ({face['identity']}): surrogate cosine "
                f"{face['cos_after']:.3f} ({flag})"
            )
    _print_failures(summary.failed)
    s = summary.seconds
    print(
        f"time: fit {s['fit']:.1f} s (of which compile {s['compile']:.1f} s), "
        f"apply {s['apply']:.1f} s, total {s['total']:.1f} s; manifest {outdir / 'manifest.json'}"
    )
    status = _report_unprotected(summary.records, surrogate, allow)
    return 1 if summary.failed else status


def _read_file_list(path: str) -> list[str]:
    """Paths from a list file (one per line, blank lines and # comments ignored; - = stdin)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: --files-from {path}: cannot read: {e}") from e
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def _cmd_protect(args: argparse.Namespace) -> int:
    from .batch import (
        OutputConflict,
        check_output_folder,
        collect_inputs,
        common_root,
        plan_outputs,
        protect_files,
    )
    from .runtime import init_distributed, process_share

    if args.demo:
        from .demo import run_demo

        outdir = Path(args.output or "jaxcloak-report")
        rc = run_demo(outdir, _make_cloaker(args), evaluate=not args.no_eval)
        _print_compiles(args, outdir / "protected" / "manifest.json")
        return rc
    inputs = list(args.photos) + (_read_file_list(args.files_from) if args.files_from else [])
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
        return max(_run_map_cli(args, files, outdir, evaluate=not args.no_eval), 1 if errors else 0)
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
        _claim(outdir, [plan[f] for f in share], share)
        status = _protect_stream_cli(args, share, outdir, root, manifest)
        return 1 if errors else status
    from .batch import group_identities

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
    _claim(outdir, [plan[f] for f in share], share)
    cloaker = _make_cloaker(args)
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
        progress=_progress,
        root=root,
        manifest=f"{manifest}.json",
        views_from=args.views_from,
    )
    _print_compiles(args, outdir / f"{manifest}.json")
    _print_change(summary.records, cloaker.config.max_levels())
    status = _print_summary(summary, outdir, cloaker.recognizer.spec.name, args.allow_unprotected)
    return 1 if errors else status


def _claim(outdir: Path, outputs: list[Path], inputs: list[Path] | None = None) -> None:
    """Before any model loads: refuse to replace files in OUTDIR that jaxcloak did not write,
    and refuse a destination without room for about the inputs' size again."""
    import shutil

    from .batch import OutputConflict, claim_outputs

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

    from .stream import device_summary, protect_stream

    if args.reference:
        raise SystemExit("error: --reference does not apply to --identity per-file")
    if args.views_from == "group":
        raise SystemExit("error: --views-from group needs groups: --identity per-folder or a CSV")
    cloaker = _make_cloaker(args)
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
    _print_compiles(args, outdir / f"{manifest}.json")
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
    _print_failures(summary.failed)
    _print_change(summary.records, cloaker.config.max_levels())
    s = summary.seconds
    done = by.get("protected", 0)
    rate = done / s["total"] if s["total"] > 0 else 0.0
    print(
        f"time: {s['total']:.1f} s, {rate:.2f} photo/s; device step busy "
        f"{100 * s['device_busy_share']:.0f}% of the time; compile {s['compile']:.1f} s; "
        f"manifest {outdir / (manifest + '.json')}"
    )
    status = _report_unprotected(
        summary.records, cloaker.recognizer.spec.name, args.allow_unprotected
    )
    return 1 if summary.failed else status


def _print_compiles(args: argparse.Namespace, manifest: Path) -> None:
    """Report (and record in the manifest) how many programs were compiled vs cache-loaded."""
    counter = getattr(args, "_compiles", None)
    if counter is None:
        return
    c = counter.as_dict()
    where = args._cache_dir or "off"
    print(
        f"compilation: {c['compiled']} program(s) compiled, {c['cache_hits']} loaded from the "
        f"persistent cache ({where}); {c['xla_seconds']:.1f} s in XLA"
    )
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return
    from .io.atomic import atomic_write_json

    data["compilation"] = {**c, "cache_dir": str(args._cache_dir) if args._cache_dir else None}
    atomic_write_json(manifest, data)


def _add_map_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MAP settings (--method map, map fit)")
    g.add_argument("--target", metavar="PHOTO", help="photo of the target identity (required)")
    g.add_argument(
        "--expression",
        default="happy",
        choices=["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
        help="target emotion for the fer expression model (default happy)",
    )
    g.add_argument(
        "--expression-loss",
        choices=["fer_ce", "fer_align"],
        default="fer_ce",
        help="fer_ce: cross-entropy to the emotion (default); fer_align: cosine to the fer "
        "features of --expression-ref",
    )
    g.add_argument("--expression-ref", metavar="PHOTO", help="face showing the expression")
    g.add_argument(
        "--score-net",
        metavar="PATH",
        help="score network: a DiffusionCLIP/SDEdit state dict (celeba_hq.ckpt) or a diffusers "
        "UNet2DModel folder; default: the small embedded network (untrained prior)",
    )
    g.add_argument(
        "--score-variant",
        default="celeba_hq",
        help="architecture of a --score-net state dict (default celeba_hq)",
    )
    g.add_argument(
        "--preset",
        choices=["demo", "paper"],
        help="demo (default without --score-net): 60 steps, lr 2e-4; paper (default with "
        "--score-net): 800 steps, lr 8e-6 x1.3/epoch",
    )
    g.add_argument(
        "--map-steps",
        type=_number(int, 1, 100000),
        metavar="N",
        help="override the number of steps",
    )
    g.add_argument(
        "--projection",
        choices=["gradvac", "pcgrad", "none"],
        help="gradient projection between identity and expression (default gradvac)",
    )
    g.add_argument("--t0", type=_number(int, 1, 1000), help="DDIM inversion depth (default 60)")
    g.add_argument(
        "--no-eval",
        action="store_true",
        help="protect --method map and --demo: skip the evaluation report (OUTDIR/eval: "
        "dodging and impersonation rates for SFace and the dlib black box, quality, "
        "robustness)",
    )


def _map_config(args: argparse.Namespace):
    from .configs.map import get_config

    preset = args.preset or ("paper" if args.score_net else "demo")
    overrides = {}
    if args.map_steps is not None:
        overrides["steps"] = args.map_steps
    if args.projection:
        overrides["projection"] = args.projection
    if args.t0 is not None:
        overrides["t0"] = args.t0
    return get_config(preset, **overrides)


def _run_map_cli(
    args: argparse.Namespace, photos: list[Path], run_dir: Path, *, evaluate: bool = False
) -> int:
    from .map_run import load_score_net
    from .nets.ensemble import load_surrogate

    if not args.target:
        raise SystemExit("error: --target PHOTO (the identity to be recognised as) is required")
    _policy(args)  # set before the score network and the surrogate load and compute
    config = _map_config(args)
    score = load_score_net(args.score_net, variant=args.score_variant, seed=args.seed)
    if not score.trained:
        print(
            "note: no --score-net given: using the small embedded score network, whose prior "
            "is untrained (the fine-tuning is real, photorealism is not).",
            flush=True,
        )
    from .convert.onnx.errors import ConversionError
    from .faces.photo import NoFaceError
    from .io import ImageReadError

    try:
        result = _run_map_call(args, photos, run_dir, config, score, load_surrogate)
    except (ImageReadError, NoFaceError, ConversionError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rc = _print_map_result(args, result, run_dir)
    pairs = [(Path(r["photo"]), Path(r["output"])) for r in result["faces"] if "error" not in r]
    if evaluate and pairs:
        print("evaluating the protected photos (issue-5 report, with the target)...", flush=True)
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
    from .map_run import run_map

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
        progress=_progress,
        out_format=args.format,
        precision=_policy(args),
    )


def _print_map_result(args: argparse.Namespace, result: dict, run_dir: Path) -> int:
    thr = result["threshold"]
    for r in result["faces"]:
        if "error" in r:
            print(f"  {r['output']}: could not re-measure: {r['error']}", file=sys.stderr)
            continue
        hit = thr is not None and r["cos_target_protected"] >= thr
        print(
            f"  {r['output']}: cosine to target {r['cos_target_clean']:.3f} -> "
            f"{r['cos_target_protected']:.3f} ({'recognised as target' if hit else 'not target'}),"
            f" p({args.expression}) {r['p_expression_clean']:.3f} -> "
            f"{r['p_expression_protected']:.3f}, PSNR "
            + ("identical" if r["psnr_photo"] is None else f"{r['psnr_photo']:.1f} dB")
        )
    print(
        f"time: compile {result['compile_s'] or 0:.1f} s, {result['seconds_per_step']:.2f} s per "
        f"step; report {run_dir / 'report.md'}"
    )
    return 1 if any("error" in r for r in result["faces"]) else 0


def _cmd_map_fit(args: argparse.Namespace) -> int:
    return _run_map_cli(args, [Path(p) for p in args.photos], Path(args.output))


def _cmd_mask_fit(args: argparse.Namespace) -> int:
    import numpy as np

    from .faces import NoFaceError
    from .io import ImageReadError
    from .masks import save_mask

    target = Path(args.output)
    if target.exists() and not args.overwrite:  # before the fit, not after it
        raise SystemExit(f"error: {target} exists; pass --overwrite to replace it")
    if target.is_dir() or not target.parent.is_dir():
        raise SystemExit(f"error: -o {target}: expected a file path in an existing folder")
    if not os.access(target.parent, os.W_OK):
        raise SystemExit(f"error: -o {target}: folder {target.parent} is not writable")
    try:
        rot = getattr(args, "rotations", "auto")
        photo, *others = [
            _chosen_face(Path(p), args.faces, args.min_face, rot) for p in args.photos
        ]
    except (ImageReadError, NoFaceError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    extra = np.stack([o.faces[0].crop for o in others]) if others else None
    cloaker = _make_cloaker(args, extra)
    face = photo.faces[0]
    (res,) = cloaker.fit(face.crop[None], [f"{photo.image.sha256}#0"])
    out = save_mask(args.output, res.delta, res.meta, traces=res.trace, overwrite=args.overwrite)
    print(
        f"wrote {out}: surrogate cosine clean vs masked reference face {res.cos_after:.3f} "
        f"(threshold {cloaker.recognizer.spec.threshold})"
    )
    return 0


def _cmd_mask_apply(args: argparse.Namespace) -> int:
    from .batch import (
        OutputConflict,
        check_output_folder,
        collect_inputs,
        common_root,
        plan_outputs,
    )
    from .faces import NoFaceError, prepare_photo
    from .io import ImageReadError, read_image, write_image
    from .masks import MaskFileError, load_mask
    from .protect import apply_mask

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
    _claim(outdir, list(plan.values()), files)
    failed = [msg for _, msg in errors]
    n = 0
    for f in _progress(files, "applying", len(files)):
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


def _add_scale_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "large jobs, several devices or hosts",
        "--identity per-file streams: photos are read, fitted in full device batches and "
        "written as they go, with bounded memory and a manifest.jsonl that a rerun resumes "
        "from. The identity batch is split over every local device. Several processes or "
        "hosts split the (sorted) input list: start the same command on each with "
        "--coordinator/--num-processes/--process-id (or JAX's JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID); each writes its own manifest.pIofN.json.",
    )
    g.add_argument(
        "--files-from",
        metavar="LIST",
        help="also read input paths from LIST, one per line (- reads stdin)",
    )
    g.add_argument(
        "--readers",
        type=_number(int, 1, 64),
        default=2,
        metavar="N",
        help="decode/detect threads (default 2)",
    )
    g.add_argument(
        "--writers",
        type=_number(int, 1, 64),
        default=2,
        metavar="N",
        help="encode/write threads (default 2)",
    )
    g.add_argument(
        "--no-masks",
        action="store_true",
        help="per-file runs: do not write each face's mask file (saves ~0.2 MB per face)",
    )
    g.add_argument("--coordinator", metavar="HOST:PORT", help="multi-process: process 0's address")
    g.add_argument(
        "--num-processes", type=_number(int, 1), metavar="N", help="multi-process: job size"
    )
    g.add_argument(
        "--process-id", type=_number(int, 0), metavar="I", help="multi-process: this one, 0..N-1"
    )


def _add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile-cache",
        metavar="DIR",
        help="persistent XLA compilation cache, so a rerun compiles nothing (default: "
        "$JAXCLOAK_COMPILE_CACHE, else the jaxcloak cache folder's xla-cache)",
    )
    p.add_argument(
        "--no-compile-cache", action="store_true", help="compile everything afresh, store nothing"
    )


def _compile_cache_dir(args: argparse.Namespace):
    from .runtime import default_cache_dir

    if getattr(args, "no_compile_cache", False):
        return None
    if getattr(args, "compile_cache", None):
        return Path(args.compile_cache)
    env = os.environ.get("JAXCLOAK_COMPILE_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "no", "false") else Path(env)
    return default_cache_dir()


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=["JPEG", "PNG", "WEBP", "TIFF"],
        type=str.upper,
        help="output format (default: same as each input)",
    )
    p.add_argument(
        "--quality", type=_number(int, 1, 100), default=95, help="JPEG/WebP quality (default 95)"
    )


# --------------------------------------------------------------------------------------------
# eval / calibrate
# --------------------------------------------------------------------------------------------


def _dlib_or_none(enabled: bool):
    if not enabled:
        return None
    from .evaluate.dlib_bb import DlibRecognizer

    rec = DlibRecognizer()
    if not rec.available():
        print(
            "warning: dlib black box unavailable (pip install dlib-bin face-recognition-models);"
            " reporting the surrogate only",
            file=sys.stderr,
        )
        return None
    return rec


def run_eval(
    clean: Path | None,
    protected: Path,
    outdir: Path,
    *,
    models=("sface",),
    dlib=True,
    transforms=None,
    gallery: Path | None = None,
    pairs=None,
    target: Path | None = None,
) -> dict:
    """Evaluate and print the five-line summary (shared by `eval` and `protect --demo`)."""
    from .evaluate.robustness import TRANSFORMS
    from .evaluate.run import evaluate, summary_lines
    from .nets.registry import load

    report = evaluate(
        clean,
        protected,
        outdir,
        [load(m) for m in models],
        dlib=_dlib_or_none(dlib),
        transforms=list(TRANSFORMS) if transforms is None else transforms,
        gallery=gallery,
        progress=_progress,
        pairs=pairs,
        target=target,
    )
    for line in summary_lines(report):
        print(line)
    print(f"report: {outdir / 'report.md'} (and report.json, figures)")
    return report


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate.robustness import TRANSFORMS

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


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from .anchors import embed_faces, user_pool
    from .evaluate.metrics import calibrate_threshold
    from .nets.registry import load

    pool = user_pool(args.folder)
    rec = load(args.model)
    emb = embed_faces(rec, pool.faces)
    sims = emb @ emb.T
    ids = np.asarray(pool.ids)
    iu = np.triu_indices(len(ids), 1)
    same = ids[iu[0]] == ids[iu[1]]
    genuine, impostor = sims[iu][same], sims[iu][~same]
    thr = calibrate_threshold(genuine, impostor, args.far)
    tar = float(np.mean(genuine >= thr)) if len(genuine) else float("nan")
    print(
        f"{args.model}: threshold {thr:.4f} at FAR {args.far:g} from {len(impostor)} impostor "
        f"and {len(genuine)} genuine pairs ({len(set(ids))} identities); TAR {tar:.3f}; "
        f"registry threshold {rec.spec.threshold}"
    )
    for path, reason in pool.skipped:
        print(f"  skipped {path}: {reason}", file=sys.stderr)
    return 0


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
    p_imp = msub.add_parser(
        "import",
        help="import your own PyTorch checkpoint of a native model (IResNet, IR-SE, ...)",
        description="Check every key of a PyTorch state dict (.pth/.pt with torch installed, "
        ".safetensors, .npz) against jaxcloak's Flax port and store it under $JAXCLOAK_HOME, "
        "after which --model NAME uses it. Missing, unused or mis-shaped keys are named and "
        "nothing is stored. A DataParallel 'module.' prefix is dropped.",
        epilog="ARCH is a registered native model (ir50, ir152, irse50, mobile_face, facenet, "
        "arcface-r18 ... arcface-r200), which fixes the variant, or an architecture "
        "(iresnet, irse, mobilefacenet, facenet) with --variant. 'jaxcloak models list' shows "
        "what is imported.",
    )
    p_imp.add_argument("checkpoint", metavar="PATH", help="the state dict file")
    p_imp.add_argument("--arch", required=True, help="registered model name or architecture")
    p_imp.add_argument("--variant", help="architecture variant (e.g. r50, irse50, vggface2)")
    p_imp.add_argument("--name", help="registry name to store it under (default: from --arch)")
    p_imp.add_argument(
        "--threshold",
        type=_number(float, -1, 1),
        help="a same-person cosine threshold you calibrated",
    )
    p_imp.add_argument("--force", action="store_true", help="replace an earlier import")
    p_imp.set_defaults(func=_cmd_models_import)
    models.set_defaults(func=lambda a: (models.print_help(), 2)[1])

    p_prot = sub.add_parser(
        "protect",
        help="protect photos: learn a personal mask per person and apply it to every face",
        description="Detect and align every face, learn one FaceCloak mask per person from a "
        "reference photo (stages 1-2 as one compiled JAX program, many people at once), paste it "
        "back at full resolution, and write the photos, the masks and manifest.json to OUTDIR. "
        "Inputs are never modified; a rerun skips photos already done. Exit status 1 if any "
        "photo failed.",
        epilog="--demo protects scikit-image's public-domain astronaut photo and writes a "
        "report (report.md, comparison.png) to -o (default jaxcloak-report).",
    )
    p_prot.add_argument("photos", nargs="*", help="photos and/or folders (searched recursively)")
    p_prot.add_argument("-o", "--output", metavar="OUTDIR", help="output folder")
    p_prot.add_argument("--demo", action="store_true", help="protect the bundled demo photo")
    p_prot.add_argument(
        "--method",
        choices=["facecloak", "map"],
        default="facecloak",
        help="facecloak (default): a personal mask per person; map: fine-tune a diffusion score "
        "network so each face is recognised as --target with an edited --expression",
    )
    p_prot.add_argument(
        "--reference",
        metavar="PHOTO",
        help="learn from this photo instead of each group's first photo",
    )
    p_prot.add_argument(
        "--identity",
        default="single",
        metavar="RULE",
        help="which photos show the same person: single (default: one person, "
        "plus anyone else found), per-file, per-folder, or a CSV of path,identity",
    )
    p_prot.add_argument(
        "--views-from",
        choices=["reference", "group"],
        default="reference",
        help="reference (default): fit each person's mask on one photo; group: also draw the "
        f"views from up to {MAX_GROUP_PHOTOS} other photos of the same group (--identity "
        "per-folder or a CSV) whose face the surrogate matches, so the mask is fitted on the "
        "person's photos rather than one",
    )
    p_prot.add_argument(
        "--no-resume",
        action="store_true",
        help="redo photos even if the manifest says they are done",
    )
    p_prot.add_argument(
        "--allow-unprotected",
        action="store_true",
        help=f"exit 0 even when some photo is still recognised by the surrogate after "
        f"protection (by default such photos are listed and the exit status is "
        f"{EXIT_STILL_RECOGNISED}; failed photos give 1)",
    )
    _add_output_args(p_prot)
    _add_cloak_args(p_prot)
    _add_scale_args(p_prot)
    _add_cache_args(p_prot)
    _add_map_args(p_prot)
    p_prot.set_defaults(func=_cmd_protect)

    p_map = sub.add_parser("map", help="MAP: fine-tune a score network toward a target identity")
    msub2 = p_map.add_subparsers(dest="map_command", metavar="ACTION")
    p_mfit = msub2.add_parser(
        "fit",
        help="fine-tune on PHOTOS toward --target and --expression, write RUN_DIR",
        description="Align each photo's largest face into the score network's frame, invert it "
        "with DDIM, fine-tune the score network (one jitted step: DDIM chain, remat where memory "
        "needs it, "
        "identity/expression/quality gradients from one batched backward, score matching, "
        "GradVac projection, Adam; orbax checkpoints, resumable), regenerate each face and "
        "paste the edit back. RUN_DIR gets protected/, traces.json, result.json, report.md.",
    )
    p_mfit.add_argument("photos", nargs="+", help="photos of the person to protect")
    p_mfit.add_argument("-o", "--output", required=True, metavar="RUN_DIR")
    p_mfit.add_argument(
        "--model",
        default="sface",
        metavar="M[,M2...]",
        help="surrogate recogniser or ensemble (default sface)",
    )
    p_mfit.add_argument(
        "--seed", type=_number(int, 0, 2**32 - 1), default=0, help="PRNG seed (recorded)"
    )
    p_mfit.add_argument("--no-resume", action="store_true", help="start over in RUN_DIR")
    _add_output_args(p_mfit)
    _add_cache_args(p_mfit)
    _add_map_args(p_mfit)
    _add_precision_arg(p_mfit)
    p_mfit.set_defaults(func=_cmd_map_fit)
    p_map.set_defaults(func=lambda a: (p_map.print_help(), 2)[1])

    p_mask = sub.add_parser("mask", help="fit a reusable personal mask, or apply one")
    ksub = p_mask.add_subparsers(dest="mask_command", metavar="ACTION")
    p_fit = ksub.add_parser(
        "fit",
        help="learn a personal mask from one photo",
        description="Learn a personal mask from the largest face in PHOTO "
        "(or --faces N) and save it as a versioned .mask file.",
    )
    p_fit.add_argument(
        "photos",
        nargs="+",
        metavar="PHOTO",
        help="photo(s) of the person: the first is the reference the mask is fitted on, any "
        "others (their largest face) add real variety to the views, for a mask that holds on "
        "the person's other photos",
    )
    p_fit.add_argument("-o", "--output", required=True, metavar="MASK", help="mask file to write")
    p_fit.add_argument("--overwrite", action="store_true", help="replace an existing mask file")
    _add_cloak_args(p_fit)
    _add_cache_args(p_fit)
    p_fit.set_defaults(func=_cmd_mask_fit, faces="largest")
    p_apply = ksub.add_parser(
        "apply",
        help="apply a personal mask to photos",
        description="Align each face, warp the mask onto it and paste it "
        "back at full resolution. By default only the largest face of each "
        "photo gets the mask (it is one person's mask).",
    )
    p_apply.add_argument("mask")
    p_apply.add_argument("photos", nargs="+")
    p_apply.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p_apply.add_argument(
        "--faces", type=_faces_policy, default="largest", help="largest (default), all, or an index"
    )
    p_apply.add_argument("--no-face", type=_no_face_policy, default="skip", metavar="POLICY")
    p_apply.add_argument("--min-face", type=_number(float, 0), default=20)
    _add_rotations_arg(p_apply)
    _add_output_args(p_apply)
    p_apply.set_defaults(func=_cmd_mask_apply)
    p_mask.set_defaults(func=lambda a: (p_mask.print_help(), 2)[1])

    p_eval = sub.add_parser(
        "eval",
        help="measure protected photos: PSR (surrogate and dlib black box), quality, robustness",
        description="Pair each clean photo with its protected version (same relative path, any "
        "format), re-detect every face on the protected file, and report: verification PSR for "
        "the surrogate (cosine threshold) and for dlib's ResNet descriptor (a black box never "
        "used to build the protection; L2 < 0.6 = same person), PSNR/SSIM/L-inf/L2, and PSR "
        "after JPEG 95/85/75/50, downscale 0.75/0.5, blur, 90% crop and greyscale. Writes "
        "report.json, report.md and PNG figures. Exit 1 if any file was reported as a problem.",
    )
    p_eval.add_argument("--clean", required=True, metavar="DIR", help="the original photos")
    p_eval.add_argument("--protected", required=True, metavar="DIR", help="jaxcloak's outputs")
    p_eval.add_argument("-o", "--output", required=True, metavar="REPORT_DIR")
    p_eval.add_argument("--model", action="append", help="surrogate(s) to score (default sface)")
    p_eval.add_argument(
        "--gallery",
        metavar="DIR",
        help="labelled gallery (subfolder or filename prefix = identity) for "
        "top-1/top-5 identification PSR; probe identities from the clean names",
    )
    p_eval.add_argument("--no-dlib", action="store_true", help="skip the dlib black box")
    p_eval.add_argument(
        "--transforms",
        metavar="LIST",
        help="comma list of robustness transforms (default: all; '' for none)",
    )
    p_eval.set_defaults(func=_cmd_eval)

    p_cal = sub.add_parser(
        "calibrate",
        help="threshold of a face model at a given false-accept rate, from a labelled folder",
        description="Embed the largest face of every photo in FOLDER (identity = subfolder, or "
        "the filename up to the first '_'), and print the cosine threshold whose false-accept "
        "rate over all impostor pairs is at most --far.",
    )
    p_cal.add_argument("folder")
    p_cal.add_argument(
        "--far",
        type=_number(float, 0, 1, open_lo=True),
        default=1e-2,
        help="false-accept rate (default 0.01)",
    )
    p_cal.add_argument("--model", default="sface")
    p_cal.set_defaults(func=_cmd_calibrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from . import precision
    from .runtime import CompileCounter, enable_compile_cache

    args._cache_dir = enable_compile_cache(_compile_cache_dir(args))
    args._compiles = CompileCounter()
    if hasattr(args, "precision"):
        args._precision = None  # resolved at its first use: _policy(args)
    else:  # commands that only measure: true FP32, without starting a device to ask
        args._precision = precision.apply(precision.get("float32"))
    try:
        return int(args.func(args))
    except OSError as e:
        # The machine, not the photo: disk full, a folder gone read-only, a lost mount. Each
        # photo finished before it keeps its output and manifest line; a rerun resumes.
        where = f"{e.filename}: " if e.filename else ""
        print(
            f"error: {where}{e.strerror or e}; nothing already written was lost, and a rerun "
            "resumes where this one stopped",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
