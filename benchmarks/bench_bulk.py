"""Bulk protection throughput and compile time with a cold vs warm persistent compile cache.

Makes ``--photos`` distinct photos from package-shipped faces (``jaxcloak.faces.samples.
synthetic_photos``: crops, scales, flips, small rotations, colour changes of the astronaut and
insightface's ``t1.jpg`` group photo), then runs the real CLI, each run its own process:

1. a small job (``--compile-photos``) with an empty compile cache: cold compile time;
2. the same job again into a new folder with that cache: warm compile time (programs loaded,
   nothing compiled);
3. the whole job with the warm cache: photos/s end to end (read, detect, align, anchor
   selection, the compiled step, paste back, encode, verify, manifest), and the share of the
   wall time during which a device step was running.

  python benchmarks/bench_bulk.py                       # 1000 photos, CPU-sized settings
  python benchmarks/bench_bulk.py --photos 200 --steps 20 --views 8   # the default strength
  python benchmarks/bench_bulk.py --md out.md --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from timing import environment


def make_photos(folder: Path, n: int, seed: int) -> dict[str, float]:
    from PIL import Image

    from jaxcloak.faces.samples import synthetic_photos

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pixels = 0
    for name, rgb in synthetic_photos(n, seed=seed):
        Image.fromarray(rgb).save(folder / f"{name}.jpg", quality=92)
        pixels += rgb.shape[0] * rgb.shape[1]
    return {"seconds": time.perf_counter() - t0, "mean_megapixels": pixels / n / 1e6}


def run_cli(photos: Path, out: Path, cache: Path, settings: list[str]) -> dict:
    """One ``jaxcloak protect`` process; its summary lines and manifest figures."""
    cmd = [sys.executable, "-m", "jaxcloak", "protect", str(photos), "-o", str(out)]
    cmd += ["--identity", "per-file", *settings]
    env = {**os.environ, "JAXCLOAK_COMPILE_CACHE": str(cache)}
    log = out.with_name(out.name + ".log")
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    wall = time.perf_counter() - t0
    stdout = log.read_text()
    if os.waitstatus_to_exitcode(status) not in (0, 1):  # 1: some photo failed, reported
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stdout[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    statuses = [p["status"] for p in manifest["photos"]]
    faces = sum(len(p["faces"]) for p in manifest["photos"] if p["status"] == "protected")
    sec = manifest["seconds"]
    comp = manifest["compilation"]
    m = re.search(r"device step: (\d+) face", stdout)
    return {
        "process_wall_s": wall,
        "pipeline_s": sec["total"],
        "photos": len(statuses),
        "protected": statuses.count("protected"),
        "failed": len(statuses) - statuses.count("protected"),
        "faces": faces,
        "photos_per_s": statuses.count("protected") / sec["total"],
        "faces_per_s": faces / sec["total"],
        "device_busy_share": sec["device_busy_share"],
        "step_compile_s": sec["compile"],
        "xla_programs": comp["programs"],
        "xla_compiled": comp["compiled"],
        "xla_cache_hits": comp["cache_hits"],
        "xla_s": comp["xla_seconds"],
        "bucket": int(m.group(1)) if m else None,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux: KiB
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=1000, help="photos in the job (default 1000)")
    ap.add_argument("--compile-photos", type=int, default=8, help="photos in the compile runs")
    ap.add_argument("--steps", type=int, default=3, help="optimisation steps (default 3)")
    ap.add_argument("--views", type=int, default=2, help="views per person (default 2)")
    ap.add_argument("--batch", type=int, default=8, help="faces per device step (default 8)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic photos")
    ap.add_argument("--workdir", help="keep photos and outputs here (default: a temp dir)")
    ap.add_argument("--json", help="write the results as JSON")
    ap.add_argument("--md", help="write the results as a markdown table")
    args = ap.parse_args()
    settings = ["--steps", str(args.steps), "--views", str(args.views), "--batch", str(args.batch)]

    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="jaxcloak-bulk-"))
    photos, small = tmp / "photos", tmp / "photos-small"
    made = make_photos(photos, args.photos, args.seed)
    small.mkdir(exist_ok=True)
    for f in sorted(photos.glob("*.jpg"))[: args.compile_photos]:
        (small / f.name).write_bytes(f.read_bytes())
    cache = tmp / "xla-cache"
    print(f"{args.photos} photos made in {made['seconds']:.1f} s; running the CLI", flush=True)
    cold = run_cli(small, tmp / "out-cold", cache, settings)
    print(f"cold: {cold}", flush=True)
    warm = run_cli(small, tmp / "out-warm", cache, settings)
    print(f"warm: {warm}", flush=True)
    bulk = run_cli(photos, tmp / "out-bulk", cache, settings)
    print(f"bulk: {bulk}", flush=True)

    result = {
        "env": environment(),
        "settings": " ".join(settings),
        "photos": made,
        "cold": cold,
        "warm": warm,
        "bulk": bulk,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    rows = [
        "| run | photos (faces) | XLA programs compiled / from cache | XLA compile+load s | "
        "step trace+compile s | pipeline s | photos/s | faces/s | device busy | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in (("cold cache", cold), ("warm cache", warm), ("bulk, warm", bulk)):
        rows.append(
            f"| {name} | {r['photos']} ({r['faces']}) | {r['xla_compiled']} / "
            f"{r['xla_cache_hits']} | {r['xla_s']:.1f} | {r['step_compile_s']:.1f} | "
            f"{r['pipeline_s']:.1f} | {r['photos_per_s']:.2f} | {r['faces_per_s']:.2f} | "
            f"{100 * r['device_busy_share']:.0f}% | {r['peak_rss_mib']:.0f} |"
        )
    table = "\n".join(rows)
    print(table)
    if args.md:
        Path(args.md).write_text(table + "\n")


if __name__ == "__main__":
    main()
