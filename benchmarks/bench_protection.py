"""Protection as people use it: a mask from one photo, scored on the person's other photos.

For every person in a folder of people (``PEOPLE/NAME/*.jpg``, several photos each, e.g.
``../shared/dev-faces/people``), a personal mask is fitted from ONE reference photo and pasted
into every photo of that person. Each protected photo is then re-detected and scored against
each of the person's *other clean* photos (the scraper's gallery), for the surrogate SFace and
for the dlib ResNet black box (which never enters a loss):

- *universal*: protected photos other than the reference (the mask never saw them);
- *per-photo*: the reference photo itself (the mask was fitted on it).

A pair counts as protected when the recogniser no longer matches it (a face the recogniser no
longer detects counts as protected and is counted apart). Every robustness transform is
applied to the protected photo before re-detection. One row per configuration, appended to
``--out`` (JSON lines) as soon as it is measured, so a stopped run loses nothing.

  python benchmarks/bench_protection.py --people ../shared/dev-faces/people \
      --configs base,mi,di,ti,lf --out /tmp/protection.jsonl
  python benchmarks/bench_protection.py --people DIR --configs base --refs all   # every photo

Configurations are named overrides of the ``--strength`` preset (see ``CONFIGS``); ``+``
combines them (``mi+di+ti``). Photos are only read; nothing is written next to them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from timing import environment

from jaxcloak.configs.facecloak import get_config
from jaxcloak.evaluate.dlib_bb import DlibRecognizer
from jaxcloak.evaluate.metrics import psnr, ssim
from jaxcloak.evaluate.robustness import apply_transform, map_box
from jaxcloak.faces import NoFaceError, prepare_photo
from jaxcloak.io import read_image
from jaxcloak.io.images import IMAGE_SUFFIXES
from jaxcloak.methods.facecloak.anchors import builtin_pool
from jaxcloak.methods.facecloak.cloaker import Cloaker, FitResult, apply_mask
from jaxcloak.methods.facecloak.views import MultiPhotoViews, make_view_generator
from jaxcloak.zoo import load
from jaxcloak.zoo.embed import embed_faces

#: Named CloakConfig overrides; "+" joins several.
CONFIGS: dict[str, dict] = {
    "clean": {},  # no mask at all: every PSR must be 0
    "base": {},
    "mi": {"momentum": 1.0},
    "ni": {"momentum": 1.0, "nesterov": True},
    "di": {"diversity": 0.7},
    "ti": {"ti_sigma": 1.5},
    "ti3": {"ti_sigma": 3.0},
    "di8": {"diversity": 0.9, "diversity_scale": 0.8},
    "lf2": {"lowfreq": 2},
    "lf4": {"lowfreq": 4},
    "pb": {"perceptual": True},
    "eps12": {"eps": 12 / 255},
    "eps16": {"eps": 16 / 255},
    "eps20": {"eps": 20 / 255},
    "eps24": {"eps": 24 / 255},
    "vt2": {"variance": 2},
    "vt4": {"variance": 4},
    "si3": {"si_copies": 3},
    "lin3": {"linbp": 0.3},
    "lin5": {"linbp": 0.5},
    "lin8": {"linbp": 0.8},
    "drop02": {"act_dropout": 0.02},
    "drop1": {"act_dropout": 0.1},
    "drop2": {"act_dropout": 0.2},
    "feat": {"feature_weight": 1.0},
    "featw3": {"feature_weight": 0.3},
    "feat3w3": {"feature_weight": 0.3, "feature_depth": 0.3},
    "feat3": {"feature_weight": 1.0, "feature_depth": 0.3},
    "feat7": {"feature_weight": 1.0, "feature_depth": 0.7},
    "s40": {"steps": 40},
    "dodge0": {"dodge_weight": 0.0},
    "dodge2": {"dodge_weight": 2.0},
    "rw2": {"real_weight": 0.2},
    "rw8": {"real_weight": 0.8},
    "smoke": {"steps": 1},
}

_ZERO = FitResult("clean", np.zeros(0), {}, {}, 1.0, np.zeros(0))

TRANSFORMS = ("none", "jpeg75", "jpeg50", "down0.5", "blur1")


def config_for(name: str, strength: str):
    overrides: dict = {}
    for part in name.split("+"):
        if part.startswith("crowd") or part in VIEW_OPTIONS or part == "group":
            continue  # view options, see views_for
        if part not in CONFIGS:
            raise SystemExit(f"unknown config {part!r}; known: {sorted(CONFIGS)}")
        overrides.update(CONFIGS[part])
    return get_config("fixed", strength, **overrides)


#: View options: (number of views or None for --views, augmentation strength).
VIEW_OPTIONS = {"views16": (16, "mid"), "pose": (None, "pose"), "pose16": (16, "pose")}


def views_for(name: str, base_views, pool):
    """``crowdK``: K faces of other people from the anchor pool join the views (each pushed
    away from its own clean embedding too), so the mask must move faces in general rather
    than fit one photo's pixels. ``views16``: 16 augmented views instead of ``--views``;
    ``pose``/``pose16``: views with turns of the head and expression warps. (``group``, handled
    in run_config: every photo of the person feeds the views, and every photo is scored as a
    per-photo pair, since none is held out.)"""
    views = base_views
    for part in name.split("+"):
        if part in VIEW_OPTIONS:
            n, strength = VIEW_OPTIONS[part]
            views = make_view_generator(
                "augment", n_views=n or base_views.n_views, strength=strength
            )
    for part in name.split("+"):
        if part.startswith("crowd"):
            k = int(part[5:])
            seen, picks = set(), []
            for i, ident in enumerate(pool.ids):
                if ident not in seen:
                    seen.add(ident)
                    picks.append(i)
            extra = pool.faces[np.array(picks[:k])].astype(np.float32) / 255.0
            views = MultiPhotoViews(views, extra)
    return views


def load_people(root: Path) -> dict[str, list]:
    people = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        photos = [prepare_photo(read_image(f), faces="largest") for f in files]
        if len(photos) >= 2:
            people[d.name] = photos
    if not people:
        raise SystemExit(f"no person folder with 2+ photos under {root}")
    return people


class Scorer:
    """SFace (re-detected, aligned, embedded) and dlib verdicts for one photo vs a gallery."""

    def __init__(self, sface):
        self.sface = sface
        self.dlib = DlibRecognizer().load()

    def describe(self, rgb: np.ndarray, box) -> dict:
        out: dict = {"sface": None, "dlib": None}
        try:
            ph = prepare_photo(_as_loaded(rgb), faces="largest")
            out["sface"] = embed_faces(self.sface, ph.crops())[0]
        except NoFaceError:
            pass
        face = self.dlib.match(rgb, box)
        out["dlib"] = None if face is None else face.descriptor
        return out


def _as_loaded(rgb: np.ndarray):
    from jaxcloak.io.images import LoadedImage

    return LoadedImage(Path("<memory>"), rgb, None, None, None, None, "RGB", "")


def score_pairs(probe: dict, gallery: list[dict], sface_thr: float) -> dict:
    """Counts of pairs (protected probe vs each clean gallery photo) per recogniser."""
    res = {}
    for model in ("sface", "dlib"):
        pairs = protected = undetected = 0
        for g in gallery:
            pairs += 1
            if probe[model] is None:
                protected += 1
                undetected += 1
                continue
            if model == "sface":
                same = float(probe[model] @ g[model]) >= sface_thr
            else:
                same = DlibRecognizer.same_person(probe[model], g[model])
            protected += not same
        res[model] = (pairs, protected, undetected)
    return res


def run_config(name, args, people, cloaker_parts, scorer, clean_desc) -> dict:
    sface, pool, views = cloaker_parts
    cfg = config_for(name, args.strength)
    views = views_for(name, views, pool)
    cloaker = Cloaker(
        sface, cfg, views, pool, max_batch=args.batch, seed=args.seed, precision=args.precision
    )
    refs = [
        (person, i)
        for person, photos in people.items()
        for i in (range(len(photos)) if args.refs == "all" else [0])
    ]
    faces = np.stack([people[p][i].faces[0].crop for p, i in refs])
    mats = [people[p][i].faces[0].transform for p, i in refs]
    ids = [f"{p}/{people[p][i].path.name}" for p, i in refs]
    t0 = time.perf_counter()
    group = "group" in name.split("+")
    if name == "clean":  # the check that the protocol can fail: no mask, every pair matches
        fits = [dataclasses.replace(_ZERO, delta=np.zeros((112, 112, 3), np.float32))] * len(refs)
    elif group:  # every photo of the person feeds the views: nothing is held out
        fits = []
        for (person, i), face, m, ident in zip(refs, faces, mats, ids, strict=True):
            others = [ph.faces[0].crop for k, ph in enumerate(people[person]) if k != i]
            v = MultiPhotoViews(views, np.stack(others).astype(np.float32) / 255.0)
            c = Cloaker(sface, cfg, v, pool, max_batch=1, seed=args.seed, precision=args.precision)
            fits += c.fit(face[None], [ident], [m])
            cloaker.compile_seconds[len(fits)] = sum(c.compile_seconds.values())
    else:
        fits = cloaker.fit(faces, ids, mats)
    fit_s = time.perf_counter() - t0 - sum(cloaker.compile_seconds.values())
    tally = {
        (kind, t, m): [0, 0, 0]
        for kind in ("universal", "per_photo")
        for t in TRANSFORMS
        for m in ("sface", "dlib")
    }
    quality = []
    for (person, ref), fit in zip(refs, fits, strict=True):
        photos = people[person]
        for j, ph in enumerate(photos):
            rgb = apply_mask(ph, [fit.delta])
            quality.append((psnr(ph.image.rgb, rgb), ssim(ph.image.rgb, rgb)))
            kind = "per_photo" if j == ref or group else "universal"
            gallery = [clean_desc[person][k] for k in range(len(photos)) if k != j]
            for t in TRANSFORMS:
                if t == "none":
                    img, box = rgb, ph.faces[0].box
                else:
                    tr = apply_transform(t, rgb)
                    img, box = tr.rgb, map_box(tr.affine, ph.faces[0].box)
                counts = score_pairs(scorer.describe(img, box), gallery, sface.spec.threshold)
                for m, c in counts.items():
                    acc = tally[(kind, t, m)]
                    for k in range(3):
                        acc[k] += c[k]
    q = np.array(quality)
    row = {
        "config": name,
        "strength": args.strength,
        "seed": args.seed,
        "precision": cloaker.precision.describe(),
        "cloak_config": cfg.to_dict(),
        "views": cloaker.views.config(),
        "identities": len(refs),
        "seconds_per_identity": fit_s / len(refs),
        "compile_s": sum(cloaker.compile_seconds.values()),
        "psnr_median": float(np.median(q[:, 0])),
        "psnr_min": float(q[:, 0].min()),
        "ssim_median": float(np.median(q[:, 1])),
        "ssim_min": float(q[:, 1].min()),
        "psr": {
            f"{kind}/{t}/{m}": {"pairs": c[0], "psr": c[1] / max(c[0], 1), "undetected": c[2]}
            for (kind, t, m), c in tally.items()
        },
    }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--people", type=Path, default=Path("../shared/dev-faces/people"))
    ap.add_argument("--configs", default="base", help=f"comma list of {sorted(CONFIGS)}, + joins")
    ap.add_argument("--strength", default="mid", choices=["low", "mid", "high"])
    ap.add_argument("--refs", default="first", choices=["first", "all"])
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--precision",
        default="float32",
        choices=["float32", "tf32", "bfloat16"],
        help="the fit's precision policy (jaxcloak.precision); the scoring stays float32",
    )
    ap.add_argument("--out", type=Path, default=Path("protection.jsonl"))
    args = ap.parse_args()

    people = load_people(args.people)
    sface = load("sface")
    scorer = Scorer(sface)
    clean_desc = {
        p: [scorer.describe(ph.image.rgb, ph.faces[0].box) for ph in photos]
        for p, photos in people.items()
    }
    parts = (sface, builtin_pool(), make_view_generator("augment", n_views=args.views))
    env = environment()
    for name in args.configs.split(","):
        row = run_config(name.strip(), args, people, parts, scorer, clean_desc)
        row["environment"] = env
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        p = row["psr"]
        print(
            f"{name:>16} {args.precision} seed {args.seed}: universal sface "
            f"{p['universal/none/sface']['psr']:.0%} "
            f"dlib {p['universal/none/dlib']['psr']:.0%} | per-photo sface "
            f"{p['per_photo/none/sface']['psr']:.0%} dlib {p['per_photo/none/dlib']['psr']:.0%} | "
            f"jpeg75 univ sface {p['universal/jpeg75/sface']['psr']:.0%} dlib "
            f"{p['universal/jpeg75/dlib']['psr']:.0%} | PSNR {row['psnr_median']:.1f} "
            f"SSIM {row['ssim_median']:.3f} | {row['seconds_per_identity']:.1f} s/id",
            flush=True,
        )


if __name__ == "__main__":
    main()
