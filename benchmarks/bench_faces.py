"""Face pipeline throughput: YuNet detection + ArcFace alignment of every face, photo by photo.

The photos are real images read at run time from installed packages (nothing is committed):
scikit-image's astronaut (512x512, 1 face), insightface's ``data/images/t1.jpg`` group photo
(1280x886, 6 faces; read from its file, insightface is not imported) and cv2.resize upscales of
both at camera size, which take the big-photo path (detection on a copy downscaled to
``max_side``, alignment from the full-size photo). A list of ``--photos`` photos cycles through
the kinds; each photo is its own array, as in a real batch.

Two variants: "memory" times ``detect_faces`` + ``align_face`` on arrays already decoded;
"jpeg" writes every photo to a JPEG file in a temp dir first and also times
``jaxcloak.io.read_image`` (decode, EXIF, hashing), as the command line pays it. Each variant
runs 1 warm-up pass (builds the per-size detectors) and ``--repeats`` timed passes; the table
gives the median over passes of photos/s and faces/s per photo kind and for the whole mix.

  python benchmarks/bench_faces.py
  python benchmarks/bench_faces.py --photos 40 --repeats 5 --threads 1 --json out/faces.json
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from timing import environment

from jaxcloak.faces import align_face, detect_faces
from jaxcloak.io import read_image

KINDS = ("astronaut", "group", "astronaut_3k", "group_4k")


@dataclass(frozen=True)
class Kind:
    name: str
    rgb: np.ndarray
    expected_faces: int


def load_kinds(names: list[str]) -> list[Kind]:
    """The source photos, upscaled where the kind asks for it (never written to the repo)."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        sys.exit("insightface is not installed: pip install --no-deps insightface")
    t1 = Path(spec.origin).parent / "data" / "images" / "t1.jpg"
    group = read_image(t1).rgb
    astronaut = skimage.data.astronaut()

    def up(rgb: np.ndarray, width: int) -> np.ndarray:
        # Keep the aspect ratio: 1280x886 -> 4000x2769, 512x512 -> 3000x3000.
        h, w = rgb.shape[:2]
        size = (width, round(h * width / w))
        return cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC)

    make = {
        "astronaut": lambda: Kind("astronaut", astronaut, 1),
        "group": lambda: Kind("group", group, 6),
        "astronaut_3k": lambda: Kind("astronaut_3k", up(astronaut, 3000), 1),
        "group_4k": lambda: Kind("group_4k", up(group, 4000), 6),
    }
    return [make[n]() for n in names]


def one_pass(photos: list[tuple[str, np.ndarray | Path]], align_size: int) -> list[dict]:
    """Process every photo once; per photo: kind, faces aligned, read and face seconds."""
    rows = []
    for kind, photo in photos:
        t0 = time.perf_counter()
        rgb = read_image(photo).rgb if isinstance(photo, Path) else photo
        t1 = time.perf_counter()
        result = detect_faces(rgb)
        for face in result:
            align_face(rgb, face.landmarks, align_size)
        t2 = time.perf_counter()
        rows.append({"kind": kind, "faces": len(result), "read_s": t1 - t0, "face_s": t2 - t1})
    return rows


def summarise(passes: list[list[dict]], kinds: list[str]) -> list[dict]:
    """Per kind and for the mix: medians over passes of throughput and per-photo times."""
    out = []
    for group in [*kinds, "mix"]:
        per_pass = []
        for rows in passes:
            sel = [r for r in rows if group in ("mix", r["kind"])]
            read = sum(r["read_s"] for r in sel)
            total = read + sum(r["face_s"] for r in sel)
            faces = sum(r["faces"] for r in sel)
            per_pass.append(
                {
                    "photos": len(sel),
                    "faces": faces,
                    "photos_per_s": len(sel) / total,
                    "faces_per_s": faces / total,
                    "ms_per_photo": 1e3 * total / len(sel),
                    "read_ms_per_photo": 1e3 * read / len(sel),
                }
            )
        med = {k: statistics.median(p[k] for p in per_pass) for k in per_pass[0]}
        med.update(kind=group, photos=per_pass[0]["photos"], faces=per_pass[0]["faces"])
        out.append(med)
    return out


def run_variant(
    photos: list[tuple[str, np.ndarray | Path]], kinds: list[str], *, repeats: int, align: int
) -> tuple[list[dict], float]:
    one_pass(photos, align)  # warm-up: per-size detectors, page cache, allocator
    passes, t0 = [], time.perf_counter()
    for _ in range(repeats):
        passes.append(one_pass(photos, align))
    return summarise(passes, kinds), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--photos", type=int, default=100, help="photos per pass (default 100)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per variant (default 3)")
    ap.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated photo kinds to cycle through (default {','.join(KINDS)})",
    )
    ap.add_argument("--threads", type=int, help="cv2.setNumThreads (default: OpenCV's choice)")
    ap.add_argument("--align-size", type=int, default=112, help="aligned crop side (default 112)")
    ap.add_argument(
        "--jpeg-quality", type=int, default=90, help="quality of the JPEG variant's files"
    )
    ap.add_argument("--no-jpeg", action="store_true", help="skip the JPEG-file variant")
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()
    names = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := sorted(set(names) - set(KINDS)):
        ap.error(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}")
    if args.photos < len(names) or args.repeats < 1:
        ap.error("need --photos >= number of kinds and --repeats >= 1")
    if args.threads is not None:
        cv2.setNumThreads(args.threads)

    kinds = load_kinds(names)
    # Fail loudly rather than time a pipeline that lost faces.
    for k in kinds:
        found = len(detect_faces(k.rgb))
        if found != k.expected_faces:
            sys.exit(f"{k.name}: detected {found} faces, expected {k.expected_faces}")
    cycle = list(itertools.islice(itertools.cycle(kinds), args.photos))
    # Copies, so that a pass does not revisit the same few arrays hot in the CPU caches.
    in_memory = [(k.name, k.rgb.copy()) for k in cycle]

    env = environment()
    env.update(cv2=cv2.__version__, cv2_threads=str(cv2.getNumThreads()), cpus=str(os.cpu_count()))
    # Other processes on a shared machine skew the figures; the load average shows when they did.
    load_before = os.getloadavg()[0]
    results: dict[str, list[dict]] = {}
    wall: dict[str, float] = {}
    results["memory"], wall["memory"] = run_variant(
        in_memory, names, repeats=args.repeats, align=args.align_size
    )
    if not args.no_jpeg:
        with tempfile.TemporaryDirectory(prefix="bench_faces_") as tmp:
            files: list[tuple[str, np.ndarray | Path]] = []
            for i, (name, rgb) in enumerate(in_memory):
                path = Path(tmp) / f"{i:03d}_{name}.jpg"
                # Camera-like files: 4:2:0 chroma, as phones and cameras write them.
                Image.fromarray(rgb).save(path, quality=args.jpeg_quality, subsampling=2)
                files.append((name, path))
            results["jpeg"], wall["jpeg"] = run_variant(
                files, names, repeats=args.repeats, align=args.align_size
            )

    env["load_1min"] = f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    sizes = {k.name: f"{k.rgb.shape[1]}x{k.rgb.shape[0]}" for k in kinds}
    print(f"# {env}")
    print(
        f"# {args.photos} photos per pass, {args.repeats} timed passes after 1 warm-up, "
        f"medians over passes; cv2 threads: {env['cv2_threads']}"
    )
    print("| variant | kind | size | photos | faces | photos/s | faces/s | ms/photo | read ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, rows in results.items():
        for r in rows:
            print(
                f"| {variant} | {r['kind']} | {sizes.get(r['kind'], 'mix')} | {r['photos']} | "
                f"{r['faces']} | {r['photos_per_s']:.1f} | {r['faces_per_s']:.1f} | "
                f"{r['ms_per_photo']:.1f} | {r['read_ms_per_photo']:.1f} |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "args": vars(args), "results": results, "wall_s": wall}, f)


if __name__ == "__main__":
    main()
