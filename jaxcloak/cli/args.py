"""Argument types and the flag groups the commands share."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

#: jaxcloak.precision.NAMES, spelled out so that building the parser does not import JAX.
PRECISIONS = ("auto", "float32", "tf32", "bfloat16")


def faces_policy(value: str):
    if value in ("all", "largest"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected all, largest or an index, got {value!r}"
        ) from None


def no_face_policy(value: str):
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


def add_rotations_arg(p) -> None:
    p.add_argument(
        "--rotations",
        choices=["auto", "off", "all"],
        default="auto",
        help="auto (default): when a photo shows no face, look again with it turned 90, 180 "
        "and 270 degrees (a sideways portrait without EXIF orientation) and protect it in its "
        "own orientation; all: always look at every orientation; off: never",
    )


def number_in(kind: type, lo: float | None = None, hi: float | None = None, *, open_lo=False):
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


def add_precision_arg(g) -> None:
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


def add_cloak_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("protection settings")
    from ..configs.facecloak import STRENGTHS

    levels = "/".join(f"{round(s['eps'] * 255)}" for s in STRENGTHS.values())
    steps = "/".join(sorted({str(s["steps"]) for s in STRENGTHS.values()}))
    g.add_argument(
        "--mode",
        choices=["fixed", "faithful"],
        help="fixed (default): jaxcloak's corrected FaceCloak; faithful: the "
        "reference code's update as shipped (needs --far-anchor)",
    )
    g.add_argument(
        "--strength",
        choices=list(STRENGTHS),
        help=f"fixed-mode preset {'/'.join(STRENGTHS)}: L-inf budget {levels} grey levels, "
        f"{steps} steps, with momentum, input diversity and gradient smoothing for transfer; "
        "measured PSNR medians 37.0/35.1/33.5 dB on real photos; default mid (see README)",
    )
    g.add_argument(
        "--eps",
        type=number_in(float, 0, 255, open_lo=True),
        metavar="LEVELS",
        help="override the L-inf budget, in grey levels (0..255)",
    )
    g.add_argument(
        "--steps", type=number_in(int, 1, 10000), help="override the number of optimisation steps"
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
        type=number_in(int, 0, 2**32 - 1),
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
        type=number_in(int, 1, 4096),
        default=8,
        help="people optimised together in one compiled call (default 8; rounded up to a "
        "multiple of the device count, the batch is split over all local devices)",
    )
    add_precision_arg(g)
    f = p.add_argument_group("faces")
    f.add_argument(
        "--faces",
        type=faces_policy,
        default="all",
        help="all (default), largest, or an index (0 = largest)",
    )
    f.add_argument(
        "--no-face",
        type=no_face_policy,
        default="skip",
        metavar="POLICY",
        help="skip (default, reported), whole-image, or a box X,Y,W,H",
    )
    f.add_argument(
        "--min-face",
        type=number_in(float, 0),
        default=20,
        help="smaller faces are reported, not protected (pixels, default 20)",
    )
    add_rotations_arg(f)


def add_map_args(p: argparse.ArgumentParser) -> None:
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
    from ..configs.map import DEMO, PAPER, PRESETS

    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=f"demo (default without --score-net): {DEMO.steps} steps, lr "
        f"{DEMO.learning_rate:g}; paper (default with --score-net): {PAPER.steps} steps, lr "
        f"{PAPER.learning_rate:g} x{PAPER.lr_growth:g}/epoch",
    )
    g.add_argument(
        "--map-steps",
        type=number_in(int, 1, 100000),
        metavar="N",
        help="override the number of steps",
    )
    g.add_argument(
        "--projection",
        choices=["gradvac", "pcgrad", "none"],
        help=f"gradient projection between identity and expression (default {PAPER.projection})",
    )
    g.add_argument(
        "--t0", type=number_in(int, 1, 1000), help=f"DDIM inversion depth (default {PAPER.t0})"
    )
    g.add_argument(
        "--no-eval",
        action="store_true",
        help="protect --method map and --demo: skip the evaluation report (OUTDIR/eval: "
        "dodging and impersonation rates for SFace and the dlib black box, quality, "
        "robustness)",
    )


def add_scale_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "large jobs, several devices or hosts",
        "Every --identity mode streams: photos are read, fitted in full device batches and "
        "written as they go, with a manifest.jsonl that a rerun resumes from; per-file (every "
        "face its own person) keeps memory flat however many photos, a group holds its "
        "person's photos together. The identity batch is split over every "
        "local device. Several processes or hosts split the (sorted) input list: start the "
        "same command on each with "
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
        type=number_in(int, 1, 64),
        default=2,
        metavar="N",
        help="decode/detect threads (default 2)",
    )
    g.add_argument(
        "--writers",
        type=number_in(int, 1, 64),
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
        "--num-processes", type=number_in(int, 1), metavar="N", help="multi-process: job size"
    )
    g.add_argument(
        "--process-id", type=number_in(int, 0), metavar="I", help="multi-process: this one, 0..N-1"
    )


def add_ray_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "Ray cluster (pip install 'jaxcloak[ray]')",
        "--engine ray runs the job on Ray Data: tasks fetch, decode and detect; a pool of "
        "actors, each holding one compiled model, fits and writes. Outputs equal a local run's "
        "with the same --seed, a rerun resumes, a dead actor is restarted and its batch retried "
        "(3 times). Inputs and -o may be fsspec URIs (s3://, gs://, file://...; credentials "
        "from the usual environment). See README, 'Running on a Ray cluster'.",
    )
    g.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: a Ray cluster",
    )
    g.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="cluster to join: 'auto' (the one `ray start` made here) or ray://HOST:10001; "
        "default: start a private one on this machine for the job",
    )
    g.add_argument(
        "--actors",
        type=number_in(int, 1, 4096),
        default=1,
        metavar="N",
        help="actors, each with its own compiled model (default 1; on GPUs: one per GPU)",
    )
    g.add_argument(
        "--gpus-per-actor",
        type=number_in(float, 0, 64),
        default=0.0,
        metavar="G",
        help="GPUs Ray reserves for each actor (default 0: CPUs; 1: one actor per GPU)",
    )


def add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile-cache",
        metavar="DIR",
        help="persistent XLA compilation cache, so a rerun compiles nothing (default: "
        "$JAXCLOAK_COMPILE_CACHE, else the jaxcloak cache folder's xla-cache)",
    )
    p.add_argument(
        "--no-compile-cache", action="store_true", help="compile everything afresh, store nothing"
    )


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=["JPEG", "PNG", "WEBP", "TIFF"],
        type=str.upper,
        help="output format (default: same as each input)",
    )
    p.add_argument(
        "--quality", type=number_in(int, 1, 100), default=95, help="JPEG/WebP quality (default 95)"
    )


def read_file_list(path: str) -> list[str]:
    """Paths from a list file (one per line, blank lines and # comments ignored; - = stdin)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: --files-from {path}: cannot read: {e}") from e
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run settings from a file (configs/README.md)")
    g.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML file of settings: [facecloak] (any CloakConfig field, plus mode and "
        "strength), [map] (any MapConfig field, plus preset), [protect] (this command's "
        "options); flags given here win over the file (examples in the repository's configs/)",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set facecloak.steps=60 or --set map.t0=40 "
        "(repeatable; wins over the file and the flags; values in TOML syntax)",
    )
    g.add_argument(
        "--print-config",
        action="store_true",
        help="print the settings this run would use, as a TOML file --config reads, and exit",
    )
