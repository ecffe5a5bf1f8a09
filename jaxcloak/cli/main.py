"""The ``jaxcloak`` command line: the parser and the entry point (the ``cli`` package is the
only one that reads flags and settings files).

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
import sys
from collections.abc import Sequence

from .. import __version__
from .args import (
    add_cache_args,
    add_cloak_args,
    add_config_args,
    add_map_args,
    add_output_args,
    add_precision_arg,
    add_ray_args,
    add_rotations_arg,
    add_scale_args,
    faces_policy,
    no_face_policy,
    number_in,
)
from .commands.calibrate import cmd_calibrate
from .commands.eval import cmd_eval
from .commands.map import cmd_map_fit
from .commands.mask import cmd_mask_apply, cmd_mask_fit
from .commands.models import cmd_models_check, cmd_models_import, cmd_models_list
from .commands.protect import cmd_protect
from .commands.serve import cmd_serve
from .output import EXIT_STILL_RECOGNISED
from .wiring import (
    MAX_GROUP_PHOTOS,
    cloak_config,
    compile_cache_dir,
    config_errors,
    file_config,
    map_config,
)


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
    p_list.set_defaults(func=cmd_models_list)
    p_check = msub.add_parser(
        "check",
        help="convert every model and compare it with ONNX Runtime on real faces",
        description="Locate each model file, convert it to JAX (cached), embed real sample faces "
        "and compare with ONNX Runtime. Exits 1 if any model is missing or mismatches.",
    )
    p_check.add_argument("--model", action="append", help="check only this model (repeatable)")
    p_check.add_argument("--no-cache", action="store_true", help="convert afresh, ignore the cache")
    p_check.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p_check.set_defaults(func=cmd_models_check)
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
        type=number_in(float, -1, 1),
        help="a same-person cosine threshold you calibrated",
    )
    p_imp.add_argument("--force", action="store_true", help="replace an earlier import")
    p_imp.set_defaults(func=cmd_models_import)
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
    p_prot.add_argument(
        "photos",
        nargs="*",
        help="photos and/or folders (searched recursively); with --engine ray also URIs",
    )
    p_prot.add_argument(
        "-o", "--output", metavar="OUTDIR", help="output folder (with --engine ray also a URI)"
    )
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
    add_output_args(p_prot)
    add_cloak_args(p_prot)
    add_config_args(p_prot)
    add_scale_args(p_prot)
    add_ray_args(p_prot)
    add_cache_args(p_prot)
    add_map_args(p_prot)
    p_prot.set_defaults(func=cmd_protect)

    p_serve = sub.add_parser(
        "serve",
        help="a local web app and HTTP API: protect photos from a browser",
        description="Start a web server with one warm, compiled model: a page to protect photos "
        "by drag and drop (before/after, verdicts, downloads) and an HTTP API (POST "
        "/api/protect, GET /api/jobs/ID, POST /api/masks; OpenAPI docs at /docs). Binds to "
        "127.0.0.1; another address needs --token. Needs pip install 'jaxcloak[serve]'.",
    )
    p_serve.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    p_serve.add_argument("--port", type=number_in(int, 1, 65535), default=8000)
    p_serve.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' (needed off localhost; or set "
        "JAXCLOAK_SERVE_TOKEN, which other users cannot see in the process list)",
    )
    p_serve.add_argument(
        "--workers-queue",
        type=number_in(int, 1, 1000),
        default=4,
        metavar="N",
        help="jobs waiting or running at once; more get HTTP 429 (default 4)",
    )
    p_serve.add_argument("--jobs-dir", metavar="DIR", help="job files (default: a temp folder)")
    p_serve.add_argument(
        "--ttl-minutes",
        type=number_in(float, 1),
        default=60,
        help="finished jobs and their photos are deleted after this (default 60)",
    )
    p_serve.add_argument("--max-files", type=number_in(int, 1, 10000), default=20)
    p_serve.add_argument("--max-mb", type=number_in(int, 1, 4096), default=25, help="per photo")
    p_serve.add_argument("--max-total-mb", type=number_in(int, 1, 65536), default=100)
    p_serve.add_argument("--max-megapixels", type=number_in(float, 0.01, 500), default=40)
    p_serve.add_argument(
        "--cold", action="store_true", help="compile on the first request, not at start"
    )
    add_cloak_args(p_serve)
    add_config_args(p_serve)
    add_cache_args(p_serve)
    p_serve.set_defaults(func=cmd_serve)

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
        "--seed", type=number_in(int, 0, 2**32 - 1), default=0, help="PRNG seed (recorded)"
    )
    p_mfit.add_argument("--no-resume", action="store_true", help="start over in RUN_DIR")
    add_output_args(p_mfit)
    add_cache_args(p_mfit)
    add_map_args(p_mfit)
    add_config_args(p_mfit)
    add_precision_arg(p_mfit)
    p_mfit.set_defaults(func=cmd_map_fit)
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
    add_cloak_args(p_fit)
    add_config_args(p_fit)
    add_cache_args(p_fit)
    p_fit.set_defaults(func=cmd_mask_fit, faces="largest")
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
        "--faces", type=faces_policy, default="largest", help="largest (default), all, or an index"
    )
    p_apply.add_argument("--no-face", type=no_face_policy, default="skip", metavar="POLICY")
    p_apply.add_argument("--min-face", type=number_in(float, 0), default=20)
    add_rotations_arg(p_apply)
    add_output_args(p_apply)
    p_apply.set_defaults(func=cmd_mask_apply)
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
    p_eval.set_defaults(func=cmd_eval)

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
        type=number_in(float, 0, 1, open_lo=True),
        default=1e-2,
        help="false-accept rate (default 0.01)",
    )
    p_cal.add_argument("--model", default="sface")
    p_cal.set_defaults(func=cmd_calibrate)
    return parser


def _with_protect_options(parser, args: argparse.Namespace, argv: list[str]):
    """``protect`` with --config's [protect] table as defaults (the user's flags win) and
    --set protect.* on top; every value checked by its option's own type and choices."""
    options, sets = _protect_settings(args)
    if not options and not sets:
        return args
    protect = parser._subparsers._group_actions[0].choices["protect"]
    settable = [a for a in protect._actions if a.option_strings]
    skip = {"help", "config", "set", "print_config"}
    actions = {a.dest: a for a in settable if a.dest not in skip}
    defaults = {k: _option_value(actions, k, v, "--config [protect]") for k, v in options.items()}
    protect.set_defaults(**defaults)
    again = parser.parse_args(argv)
    for key, value in sets.items():
        setattr(again, key, _option_value(actions, key, value, "--set protect."))
    again._file_config = args._file_config
    again._protect_options = {**options, **sets}
    return again


def _protect_settings(args: argparse.Namespace) -> tuple[dict, dict]:
    """The run's ``[protect]`` table (--config) and its ``--set protect.*`` values."""
    from ..configs.files import parse_sets, protect_options

    with config_errors():
        return protect_options(file_config(args)), parse_sets(args.set)["protect"]


def _warn_unused_protect_options(args: argparse.Namespace) -> None:
    """A [protect] table or --set protect.* given to another command does nothing: say so."""
    options, sets = _protect_settings(args)
    unused = {**options, **sets}
    if unused:
        print(
            f"warning: [protect] options ({', '.join(sorted(unused))}) apply to "
            f"'jaxcloak protect' only; 'jaxcloak {args.command}' ignores them",
            file=sys.stderr,
        )


def _option_value(actions: dict, key: str, value, where: str):
    """A settings-file value for protect's option ``key``, as argparse would have made it."""
    import difflib

    action = actions.get(key)
    if action is None:
        near = difflib.get_close_matches(key, list(actions), n=2)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        raise SystemExit(
            f"error: {where}{key}: not an option of 'jaxcloak protect' (its flags, with _ for "
            f"-){hint}"
        )
    flag = action.option_strings[-1]
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise SystemExit(f"error: {where}{key}: expected true or false, got {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    items = value if isinstance(value, list | tuple) else [value]
    text = ",".join(str(v) for v in items)
    try:
        out = action.type(text) if action.type else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
        raise SystemExit(f"error: {where}{key} ({flag}): {e}") from None
    if action.choices is not None and out not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise SystemExit(f"error: {where}{key} ({flag}): {out!r} is not one of {choices}")
    return [out] if isinstance(action, argparse._AppendAction) else out


def _print_config(args: argparse.Namespace) -> int:
    """--print-config: the resolved settings (presets, file, flags, --set) as TOML."""
    from ..configs.files import dump_config

    print(
        dump_config(
            facecloak=cloak_config(args) if hasattr(args, "strength") else None,
            protect=getattr(args, "_protect_options", None),
            map_config=map_config(args) if hasattr(args, "preset") else None,
            header=f"jaxcloak {__version__}: the settings of 'jaxcloak {args.command} ...'",
        ),
        end="",
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    if args.command == "protect":
        args = _with_protect_options(parser, args, list(sys.argv[1:] if argv is None else argv))
    elif hasattr(args, "set"):
        _warn_unused_protect_options(args)
    if getattr(args, "print_config", False):
        return _print_config(args)
    from .. import precision
    from ..runtime import CompileCounter, enable_compile_cache

    args._cache_dir = enable_compile_cache(compile_cache_dir(args))
    args._compiles = CompileCounter()
    if hasattr(args, "precision"):
        args._precision = None  # resolved at its first use: precision_policy(args)
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
