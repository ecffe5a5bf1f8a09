"""Bulk protection on Ray Data against the local streaming engine, same photos, same settings.

Makes ``--photos`` distinct synthetic photos (``jaxcloak.faces.samples.synthetic_photos``),
fills a persistent compile cache with one small local run, then runs the real CLI, each run
its own process with that warm cache:

1. ``--engine local`` (the streaming engine);
2. ``--engine ray --actors 1`` and ``--actors 2`` on a private local Ray cluster.

Reported per run: wall seconds of the process, photos/s end to end, the job's own seconds
(from its manifest: after imports and model loading; for Ray from connecting on), and for
Ray its own overhead apart: cluster start (``ray_start``), time to the first finished batch (actors
start, import JAX, load the model, load the programs from the cache) and photos/s after the
first batch came back. Serialisation is measured on its own: what the read stage ships per
photo (a decoded photo with its aligned faces) pickled and unpickled, in MB and ms.

  python benchmarks/bench_ray.py                      # 24 photos, CPU-sized settings
  python benchmarks/bench_ray.py --photos 64 --md out.md --json out.json

Run it alone: the machine's cores are what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from timing import environment


def make_photos(folder: Path, n: int, seed: int) -> None:
    from PIL import Image

    from jaxcloak.faces.samples import synthetic_photos

    folder.mkdir(parents=True, exist_ok=True)
    for name, rgb in synthetic_photos(n, seed=seed):
        Image.fromarray(rgb).save(folder / f"{name}.jpg", quality=92)


def run_cli(photos: Path, out: Path, cache: Path, settings: list[str]) -> dict:
    cmd = [sys.executable, "-m", "jaxcloak", "protect", str(photos), "-o", str(out), *settings]
    env = {**os.environ, "JAXCLOAK_COMPILE_CACHE": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    if proc.returncode not in (0, 3):  # 3: photos still recognised at these cheap settings
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    done = int(re.search(r"wrote (\d+) photo", text).group(1))
    total = json.loads((out / "manifest.json").read_text())["seconds"]["total"]
    row = {"wall_s": wall, "photos": done, "photos_per_s": done / wall, "job_s": total}
    m = re.search(r"Ray: ([\d.]+) s to start, ([\d.]+) s to the first batch", text)
    if m:
        row["ray_start_s"], row["first_batch_s"] = float(m.group(1)), float(m.group(2))
        # photos after the first batch, over the time after it
        first = min(done, int(settings[settings.index("--batch") + 1]))
        row["after_first_batch_photos_per_s"] = (done - first) / max(
            total - row["first_batch_s"], 1e-9
        )
    return row


def serialisation(photos: Path, n: int = 4) -> dict:
    """What the read stage ships per photo, and the time to pickle and unpickle it."""
    from jaxcloak.faces import prepare_photo
    from jaxcloak.io import read_image

    files = sorted(photos.glob("*.jpg"))[:n]
    ready = [prepare_photo(read_image(f)) for f in files]
    t0 = time.perf_counter()
    blobs = [pickle.dumps(p) for p in ready]
    for b in blobs:
        pickle.loads(b)
    seconds = time.perf_counter() - t0
    return {
        "mb_per_photo": sum(map(len, blobs)) / len(blobs) / 1e6,
        "ms_per_photo": 1e3 * seconds / len(blobs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=24)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    settings = ["--identity", "per-file", "--steps", str(args.steps), "--views", str(args.views)]
    settings += ["--batch", str(args.batch), "--seed", str(args.seed)]
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        tmp = Path(tmp)
        photos, cache = tmp / "photos", tmp / "xla-cache"
        make_photos(photos, args.photos, seed=7)
        warm = tmp / "warm"
        make_photos(warm, 2, seed=8)
        run_cli(warm, tmp / "warm-out", cache, settings)  # compile once, into the cache
        rows = {"serialisation": serialisation(photos)}
        for name, extra in [
            ("local", []),
            ("ray, 1 actor", ["--engine", "ray", "--actors", "1"]),
            ("ray, 2 actors", ["--engine", "ray", "--actors", "2"]),
        ]:
            out = tmp / re.sub(r"\W+", "-", name)
            rows[name] = run_cli(photos, out, cache, settings + extra)
            print(name, json.dumps(rows[name]), flush=True)
            if args.json:
                args.json.write_text(json.dumps({"env": environment(), "rows": rows}, indent=1))
        same = [
            (p.name, (tmp / "local" / p.name).read_bytes() == p.read_bytes())
            for p in sorted((tmp / "ray-2-actors").glob("*.jpg"))
        ]
        rows["ray_outputs_equal_local"] = all(ok for _, ok in same) and len(same) == args.photos
    print(json.dumps(rows, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"env": environment(), "rows": rows}, indent=1))
    if args.md:
        lines = [
            "| run | process wall s | photos/s | job s | Ray start s | to first batch s "
            "| photos/s after it |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in ("local", "ray, 1 actor", "ray, 2 actors"):
            r = rows[name]
            lines.append(
                f"| {name} | {r['wall_s']:.1f} | {r['photos_per_s']:.2f} | {r['job_s']:.1f} | "
                f"{r.get('ray_start_s', 0):.1f} | {r.get('first_batch_s', 0):.1f} | "
                f"{r.get('after_first_batch_photos_per_s', float('nan')):.2f} |"
            )
        s = rows["serialisation"]
        lines.append(
            f"\nSerialisation of a read photo: {s['mb_per_photo']:.2f} MB, "
            f"{s['ms_per_photo']:.1f} ms to pickle and unpickle. "
            f"Ray outputs equal local: {rows['ray_outputs_equal_local']}."
        )
        args.md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
