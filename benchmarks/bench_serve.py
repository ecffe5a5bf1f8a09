"""A warm ``jaxcloak serve`` against a cold ``jaxcloak protect``: one 512x512 single-face photo
(scikit-image's public-domain astronaut), upload to downloadable result.

- cold, empty cache: a fresh ``jaxcloak protect`` process with an empty persistent compile cache
  (imports, model load, compile, fit, write);
- cold, warm cache: the same with the cache a previous run filled (programs loaded, not
  compiled);
- warm server: ``jaxcloak serve`` started once (it compiles before it listens), one warm-up
  request, then each timed request: POST the photo, poll the job every 20 ms, GET the result.

Medians of ``--reps`` runs each, same settings on both sides (the default preset unless
``--steps``/``--views`` are given).

  python benchmarks/bench_serve.py --reps 3 --md out.md --json out.json

Run it alone: the machine's cores are what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, os.path.dirname(__file__))
from timing import environment


def cold(photo: Path, out: Path, cache: Path, settings: list[str]) -> float:
    cmd = [sys.executable, "-m", "jaxcloak", "protect", str(photo), "-o", str(out), *settings]
    env = {**os.environ, "JAXCLOAK_COMPILE_CACHE": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        raise SystemExit(f"cold run failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return wall


def warm_request(client: httpx.Client, data: bytes) -> float:
    t0 = time.perf_counter()
    r = client.post("/api/protect", files=[("files", ("astronaut.png", data, "image/png"))])
    r.raise_for_status()
    job_id = r.json()["id"]
    while (j := client.get(f"/api/jobs/{job_id}").json())["status"] not in ("done", "failed"):
        time.sleep(0.02)
    if j["status"] != "done" or j["results"][0]["status"] != "protected":
        raise SystemExit(f"warm request failed: {j}")
    client.get(f"/api/jobs/{job_id}/files/0").raise_for_status()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--views", type=int)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    settings = ["--identity", "per-file", "--allow-unprotected"]
    if args.steps:
        settings += ["--steps", str(args.steps)]
    if args.views:
        settings += ["--views", str(args.views)]
    rows: dict = {}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps({"env": environment(), "rows": rows}, indent=1))

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        tmp = Path(tmp)
        import skimage.data
        from PIL import Image

        photo = tmp / "astronaut.png"
        Image.fromarray(skimage.data.astronaut()).save(photo)
        data = photo.read_bytes()
        empty = [cold(photo, tmp / f"c{k}", tmp / f"cache{k}", settings) for k in range(args.reps)]
        rows["cold_empty_cache_s"] = empty
        save()
        cached = [cold(photo, tmp / f"w{k}", tmp / "cache0", settings) for k in range(args.reps)]
        rows["cold_warm_cache_s"] = cached
        save()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve_args = [a for a in settings if a not in ("--identity", "per-file")]
        serve_args = [a for a in serve_args if a != "--allow-unprotected"]
        env = {**os.environ, "JAXCLOAK_COMPILE_CACHE": str(tmp / "cache0")}
        server = subprocess.Popen(
            [sys.executable, "-m", "jaxcloak", "serve", "--port", str(port), *serve_args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
            t0 = time.perf_counter()
            while True:
                try:
                    client.get("/api/health").raise_for_status()
                    break
                except httpx.HTTPError:
                    if server.poll() is not None or time.perf_counter() - t0 > 600:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.2)
            rows["server_start_s"] = time.perf_counter() - t0
            rows["warm_first_request_s"] = warm_request(client, data)
            rows["warm_s"] = [warm_request(client, data) for _ in range(args.reps)]
            save()
        finally:
            server.terminate()
            server.wait(timeout=60)
    med = {
        k: statistics.median(rows[k]) for k in ("cold_empty_cache_s", "cold_warm_cache_s", "warm_s")
    }
    rows["speedup_vs_cold_empty_cache"] = med["cold_empty_cache_s"] / med["warm_s"]
    rows["speedup_vs_cold_warm_cache"] = med["cold_warm_cache_s"] / med["warm_s"]
    save()
    print(json.dumps(rows, indent=1))
    if args.md:
        args.md.write_text(
            "| run | median s | runs s |\n|---|---|---|\n"
            + "".join(
                f"| {k} | {med[k]:.2f} | {', '.join(f'{v:.2f}' for v in rows[k])} |\n" for k in med
            )
            + f"\nServer start (compile before listening): {rows['server_start_s']:.1f} s; first "
            f"request {rows['warm_first_request_s']:.2f} s. Warm is "
            f"{rows['speedup_vs_cold_empty_cache']:.1f}x faster than a cold process with an "
            f"empty compile cache, {rows['speedup_vs_cold_warm_cache']:.1f}x than one with a "
            "warm cache.\n"
        )


if __name__ == "__main__":
    main()
