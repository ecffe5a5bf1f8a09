"""From parsed flags to ready objects: the precision policy, the Cloaker, view generators and
MAP configs."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def precision_policy(args: argparse.Namespace):
    """The run's precision policy, resolved and set for the process at its first use: ``auto``
    asks JAX for its backend, which must wait until a multi-process job has been joined and
    need not start a device for commands that never compute."""
    if args._precision is None:
        from .. import precision

        args._precision = precision.apply(precision.resolve(args.precision))
    return args._precision


@contextlib.contextmanager
def config_errors(prefix: str = ""):
    """A settings error (unknown key, wrong type, unreadable file) ends the run with its
    message, like a bad flag."""
    from ..configs.files import ConfigError

    try:
        yield
    except ConfigError as e:
        raise SystemExit(f"error: {prefix}{e}") from None


def cloak_config(args: argparse.Namespace):
    """The CloakConfig of a run: preset < --config [facecloak] < flags < --set facecloak.*."""
    from ..configs.files import resolve_facecloak

    with config_errors():
        return resolve_facecloak(
            file_config(args),
            args.set,
            mode=args.mode,
            # --strength names fixed-mode presets; with --mode faithful it has no effect
            strength=None if args.mode == "faithful" else args.strength,
            explicit={"eps_levels": args.eps, "iterations": args.steps, "eot": args.eot or None},
        )


def make_cloaker(args: argparse.Namespace, extra_photos: np.ndarray | None = None):
    """The Cloaker the arguments ask for; ``extra_photos`` ((E, 112, 112, 3) uint8 aligned
    crops of the same person) feed the views besides the reference face."""
    from ..methods.facecloak.anchors import builtin_pool, user_pool
    from ..methods.facecloak.cloaker import Cloaker
    from ..zoo.ensemble import load_surrogate

    config = cloak_config(args)
    policy = precision_policy(args)  # set before the pool, the views and the far anchor compute
    far = None
    if config.mode == "faithful":
        if not args.far_anchor:
            raise SystemExit(
                "error: --mode faithful needs --far-anchor IMAGE: the reference hard-codes one "
                "CelebA photo as every user's far anchor (docs/facecloak.md); pass the photo to use"
            )
        far = chosen_face(Path(args.far_anchor), "largest", args.min_face).faces[0].crop
    pool = user_pool(args.pool) if args.pool else builtin_pool()
    views = _view_generator(args)
    if extra_photos is not None and len(extra_photos):
        import numpy as np

        from ..methods.facecloak.views import MultiPhotoViews

        views = MultiPhotoViews(views, np.asarray(extra_photos, np.float32) / 255.0)
        print(f"stage-1 views drawn from {len(extra_photos) + 1} photos of the person")
    print(f"stage-1 views: {views.name}, {views.n_views} per person", flush=True)
    return Cloaker(
        load_surrogate(args.model),
        config,
        views,
        pool,
        anchor_rule="faithful" if config.mode == "faithful" else "gallery_filtered",
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
    from ..methods.facecloak.views import make_view_generator

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
    from ..methods.facecloak.arc2face import Arc2FaceConfig, load_arc2face
    from ..zoo.registry import load

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
    dtype = precision_policy(args).describe()["dtype"]
    return make_view_generator(
        "arc2face",
        nets=nets,
        params=params,
        embed=fr.embed,
        fr_params=fr.params,
        config=Arc2FaceConfig(n_views=n, dtype=dtype),
        fr_name=args.id_model,
    )


def chosen_face(path: Path, faces, min_face: float, rotations: str = "auto"):
    """The photo with its first chosen face (the largest, unless ``faces`` is an index)."""
    from ..faces import prepare_photo
    from ..io import read_image

    return prepare_photo(read_image(path), faces=faces, min_face=min_face, rotations=rotations)


def map_config(args: argparse.Namespace):
    """The MapConfig of a run: preset < --config [map] < flags < --set map.*."""
    from ..configs.files import resolve_map

    with config_errors():
        return resolve_map(
            file_config(args),
            args.set,
            preset=args.preset,
            explicit={"steps": args.map_steps, "projection": args.projection, "t0": args.t0},
            default_preset="paper" if args.score_net else "demo",
        )


def file_config(args: argparse.Namespace) -> dict | None:
    """The --config file, read and checked once per run (None without one)."""
    if not hasattr(args, "_file_config"):
        from ..configs.files import load_config

        with config_errors("--config "):
            args._file_config = load_config(args.config) if args.config else None
    return args._file_config


def compile_cache_dir(args: argparse.Namespace):
    from ..runtime import default_cache_dir

    if getattr(args, "no_compile_cache", False):
        return None
    if getattr(args, "compile_cache", None):
        return Path(args.compile_cache)
    env = os.environ.get("JAXCLOAK_COMPILE_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "no", "false") else Path(env)
    return default_cache_dir()


def claim_outputs_or_exit(
    outdir: Path, outputs: list[Path], inputs: list[Path] | None = None
) -> None:
    """Before any model loads: refuse to replace files in OUTDIR that jaxcloak did not write,
    and refuse a destination without room for about the inputs' size again."""
    import shutil

    from ..pipelines.outputs import OutputConflict, claim_outputs

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
