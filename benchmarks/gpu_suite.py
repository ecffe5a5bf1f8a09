"""The whole GPU picture in one command, rows in priority order, nothing lost to a time limit.

  python benchmarks/gpu_suite.py --out $OUT                  # on an H100/H200, <= 8 minutes
  python benchmarks/gpu_suite.py --tiny --device cpu --out /tmp/suite   # the script itself (CI)

Each row runs in its own subprocess (its memory, compilation and cold start are its own) and
its figures are appended to ``OUT/gpu_suite.json`` and ``OUT/gpu_suite.md`` as soon as it ends,
so a run stopped by a time limit keeps every finished row. Before a row starts, its expected
duration on an H100/H200 (``Row.budget_s``) is checked against what ``--budget-s`` leaves;
a row that no longer fits is recorded as skipped, and a row that overruns what is left is
stopped and recorded as such. Rows, in order:

1. ``machine``: GPU, driver, jax/jaxlib/torch versions and JAX's devices.
2. ``demo_cold`` / ``demo_warm``: ``jaxcloak protect --demo --no-eval`` with an empty, then a
   filled persistent compile cache: programs compiled, XLA seconds, fit seconds.
3. ``facecloak_faithful``: ``benchmarks/run.py --only facecloak --size gpu``: stage 2 faithful
   per identity at batch 1 and 32, JAX vs PyTorch eager as coded and tuned (same weights,
   inputs and float32 precision; parity columns).
4. ``fixed_batch``: ``benchmarks/bench_facecloak.py``: the fixed mode's seconds per identity
   and identities/s at batch 32 and 128.
5. ``precision``: the same at batch 32 under float32, tf32 and bfloat16, each with the
   surrogate cosine after protection and float32's seed-to-seed spread: the measurement the
   GPU ``auto`` precision waits for (``jaxcloak/precision.py``).
6. ``map_paper``: ``benchmarks/run.py --only map --size gpu``: the paper-size (CelebA-HQ
   256x256) MAP train step, JAX vs tuned PyTorch, float32.
7. ``arc2face``: ``benchmarks/bench_arc2face.py --configs sd15``: the Arc2Face sampler at its
   real size, JAX bfloat16 vs PyTorch float16 with SDPA.
8. ``sface_forward``: ``benchmarks/bench_convert.py``: SFace forward (and input gradient) at
   batch 256, JAX vs ONNX Runtime (its CUDA provider when installed) and PyTorch.

``--tiny`` runs every row at its smallest size (the demo with 1 step and 1 view, the harness's
``tiny`` size, Arc2Face's ``tiny`` config, batch 2), for checking the script, not the machine.
It uses whatever JAX the machine has and never installs anything.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable


@dataclasses.dataclass(frozen=True)
class Row:
    """One measurement: its command (full or tiny) and how its figures are read back."""

    name: str
    what: str
    budget_s: float  # expected seconds on an H100/H200, compilation and start-up included
    command: Callable[[argparse.Namespace, Path], list[str]]
    read: Callable[[Path, str], dict]  # (the row's folder, its stdout) -> figures
    ok_codes: tuple[int, ...] = (0,)  # exit statuses that still carry figures


def _cuda(args: argparse.Namespace) -> str:
    return "cuda" if args.device == "gpu" else "cpu"


def _json(name: str) -> Callable[[Path, str], dict]:
    def read(folder: Path, _stdout: str) -> dict:
        return json.loads((folder / name).read_text())

    return read


# -- machine -------------------------------------------------------------------------------

_PROBE = r"""
import json, os, platform, subprocess, sys
import jax, jaxlib
out = {"python": platform.python_version(), "jax": jax.__version__,
       "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
       "devices": [f"{d.platform}:{getattr(d, 'device_kind', '')}" for d in jax.devices()]}
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
except ImportError:
    out["torch"] = None
try:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                        "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    out["nvidia_smi"] = q.stdout.strip() or None
except (OSError, subprocess.TimeoutExpired):
    out["nvidia_smi"] = None
try:  # a copy of the tree without .git (a lent GPU machine) names it in JAXCLOAK_COMMIT
    c = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    out["commit"] = c.stdout.strip() or None
except OSError:
    out["commit"] = None
out["commit"] = out["commit"] or os.environ.get("JAXCLOAK_COMMIT")
print(json.dumps(out))
"""


def _machine_cmd(args: argparse.Namespace, folder: Path) -> list[str]:
    return [PY, "-c", _PROBE]


def _machine_read(folder: Path, stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# -- the demo, cold and warm ------------------------------------------------------------------


def _demo_cmd(args: argparse.Namespace, folder: Path) -> list[str]:
    cmd = [PY, "-m", "jaxcloak", "protect", "--demo", "--no-eval", "-o", str(folder / "demo")]
    cmd += ["--compile-cache", str(args._xla_cache)]
    if args.tiny:
        cmd += ["--steps", "1", "--views", "1"]
    return cmd


def _demo_read(folder: Path, stdout: str) -> dict:
    m = re.search(r"compilation: (\d+) program\(s\) compiled, (\d+) loaded .*?; ([\d.]+) s", stdout)
    t = re.search(r"fit ([\d.]+) s \(compile ([\d.]+) s\), apply ([\d.]+) s", stdout)
    if m is None or t is None:
        raise ValueError("the demo printed no compilation or time line")
    manifest = json.loads((folder / "demo" / "protected" / "manifest.json").read_text())
    return {
        "programs_compiled": int(m.group(1)),
        "programs_from_cache": int(m.group(2)),
        "xla_s": float(m.group(3)),
        "fit_s": float(t.group(1)),
        "fit_compile_s": float(t.group(2)),
        "apply_s": float(t.group(3)),
        # exit 1: the surrogate still matched the protected face (expected with --tiny's one
        # step); the report says so and the figures stand
        "protected": "protection failed" not in stdout,
        "precision": manifest["run"]["precision"],
    }


# -- FaceCloak and MAP against PyTorch (benchmarks/run.py) ------------------------------------


def _harness_cmd(workload: str) -> Callable[[argparse.Namespace, Path], list[str]]:
    def cmd(args: argparse.Namespace, folder: Path) -> list[str]:
        return [
            PY,
            str(HERE / "run.py"),
            "--only",
            workload,
            "--size",
            "tiny" if args.tiny else "gpu",
            "--torch-device",
            _cuda(args),
            "--json",
            str(folder / "out.json"),
        ]

    return cmd


def _harness_read(folder: Path, _stdout: str) -> dict:
    data = json.loads((folder / "out.json").read_text())
    return {k: data[k] for k in ("env", "size", "facecloak", "map", "seconds") if k in data}


# -- FaceCloak fixed mode: batches and precisions (benchmarks/bench_facecloak.py) -------------


def _facecloak_cmd(precisions: bool) -> Callable[[argparse.Namespace, Path], list[str]]:
    def cmd(args: argparse.Namespace, folder: Path) -> list[str]:
        c = [PY, str(HERE / "bench_facecloak.py"), "--apply-photos", "0"]
        c += ["--json", str(folder / "out.json")]
        if args.tiny:
            c += ["--batches", "2", "--repeats", "1", "--steps", "1", "--views", "1"]
            c += ["--mode", "faithful"]  # its program compiles in a fraction of the time
        else:
            c += ["--batches", *(["32"] if precisions else ["32", "128"]), "--repeats", "3"]
        if precisions:  # tf32 is float32 on a CPU: --tiny skips its compilation
            c += ["--precisions", "float32", *([] if args.tiny else ["tf32"]), "bfloat16"]
        return c

    return cmd


# -- Arc2Face and SFace ----------------------------------------------------------------------


def _arc2face_cmd(args: argparse.Namespace, folder: Path) -> list[str]:
    c = [PY, str(HERE / "bench_arc2face.py"), "--json", str(folder / "out.json")]
    c += ["--device", _cuda(args), "--check", "tiny"]
    if args.tiny:
        c += ["--configs", "tiny", "--ref-samples", "tiny=1", "--repeats", "1", "--steps", "2"]
        return [*c, "--ids", "1", "--views", "2"]
    return [
        *c,
        *("--configs", "sd15", "--ref-samples", "sd15=1", "--repeats", "2"),
        *("--jax-dtypes", "bfloat16", "--torch-dtypes", "float16"),
    ]


def _sface_cmd(args: argparse.Namespace, folder: Path) -> list[str]:
    batch = "2" if args.tiny else "256"
    iters = "2" if args.tiny else "20"
    c = [PY, str(HERE / "bench_convert.py"), "--batch", batch, "--iters", iters]
    return [*c, "--device", _cuda(args), "--json", str(folder / "out.json")]


ROWS: tuple[Row, ...] = (
    Row("machine", "GPU, driver, versions", 20, _machine_cmd, _machine_read),
    Row("demo_cold", "protect --demo, empty compile cache", 60, _demo_cmd, _demo_read, (0, 1)),
    Row("demo_warm", "protect --demo, filled compile cache", 25, _demo_cmd, _demo_read, (0, 1)),
    Row(
        "facecloak_faithful",
        "stage 2 faithful, batch 1 and 32, JAX vs PyTorch eager as coded / tuned",
        110,
        _harness_cmd("facecloak"),
        _harness_read,
    ),
    Row(
        "fixed_batch",
        "fixed mode, batch 32 and 128",
        50,
        _facecloak_cmd(False),
        _json("out.json"),
    ),
    Row(
        "precision",
        "fixed mode at batch 32 under float32 / tf32 / bfloat16, protection per policy",
        60,
        _facecloak_cmd(True),
        _json("out.json"),
    ),
    Row(
        "map_paper",
        "MAP train step, CelebA-HQ UNet, JAX vs tuned PyTorch",
        90,
        _harness_cmd("map"),
        _harness_read,
    ),
    Row(
        "arc2face",
        "Arc2Face sd15 sampler, JAX bf16 vs PyTorch fp16 SDPA",
        90,
        _arc2face_cmd,
        _json("out.json"),
    ),
    Row(
        "sface_forward",
        "SFace forward batch 256, JAX vs ONNX Runtime and PyTorch",
        25,
        _sface_cmd,
        _json("out.json"),
    ),
)


def _markdown(results: dict) -> str:
    env = results["machine"]
    lines = [
        "# jaxcloak GPU suite",
        "",
        f"- started {results['started']}, mode {'tiny' if results['tiny'] else 'full'}, "
        f"budget {results['budget_s']:.0f} s, elapsed {results['elapsed_s']:.0f} s",
        f"- machine: {json.dumps(env) if env else 'not probed'}",
        "",
        "| row | status | seconds | figures |",
        "|---|---|---|---|",
    ]
    for r in results["rows"]:
        figures = json.dumps(r.get("figures", r.get("error", "")))
        if len(figures) > 400:  # the JSON file has them whole
            figures = figures[:400] + " ..."
        lines.append(f"| {r['row']} | {r['status']} | {r.get('seconds', 0):.1f} | {figures} |")
    return "\n".join(lines) + "\n"


def _save(out: Path, results: dict) -> None:
    for name, text in (
        ("gpu_suite.json", json.dumps(results, indent=2, default=str)),
        ("gpu_suite.md", _markdown(results)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)  # a reader (or a time limit) never sees half a file


def run_suite(args: argparse.Namespace) -> dict:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="jaxcloak-gpu-suite-"))
    args._xla_cache = work / "xla-cache"  # shared by demo_cold (fills it) and demo_warm
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch and JAX share the card
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if args.device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    if args.tiny:
        # One persistent compile cache for every row: programs the rows share (the fixed
        # fit of the demo and bench_facecloak) compile once. Full runs keep each row's
        # compile time its own.
        env["JAX_COMPILATION_CACHE_DIR"] = str(args._xla_cache)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    wanted = set(args.rows) if args.rows else None
    t0 = time.perf_counter()
    results = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "tiny": args.tiny,
        "device": args.device,
        "budget_s": args.budget_s,
        "elapsed_s": 0.0,
        "machine": None,
        "rows": [],
    }
    try:
        for row in ROWS:
            if wanted is not None and row.name not in wanted:
                continue
            left = args.budget_s - (time.perf_counter() - t0)
            record: dict = {"row": row.name, "what": row.what}
            if not args.tiny and row.budget_s > left:
                need = f"needs ~{row.budget_s:.0f} s, {left:.0f} s left"
                record.update(status="skipped", error=need)
            else:  # --tiny checks the script, on machines of any speed: no budget
                record.update(_run_row(row, args, work, env, 900.0 if args.tiny else left))
                if row.name == "machine" and record["status"] == "ok":
                    results["machine"] = record["figures"]
            results["rows"].append(record)
            results["elapsed_s"] = time.perf_counter() - t0
            _save(out, results)
            print(f"[{results['elapsed_s']:5.0f} s] {row.name}: {record['status']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _run_row(row: Row, args: argparse.Namespace, work: Path, env: dict, left: float) -> dict:
    folder = work / row.name
    folder.mkdir(parents=True, exist_ok=True)
    cmd = row.command(args, folder)
    t = time.perf_counter()
    # Its own process group, so a row stopped at the budget takes its workers (run.py starts
    # one per measurement) with it instead of leaving them on the GPU.
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=left)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        (folder / "stdout.txt").write_text(stdout or "")
        return {
            "status": "timed out",
            "seconds": time.perf_counter() - t,
            "error": f"stopped after {left:.0f} s (the budget left)",
            "tail": ((stdout or "") + (stderr or ""))[-2000:],
        }
    seconds = time.perf_counter() - t
    (folder / "stdout.txt").write_text(stdout)
    base = {"seconds": seconds, "command": " ".join(cmd[1:])}
    if proc.returncode not in row.ok_codes:
        tail = (stdout + stderr)[-3000:]
        return {**base, "status": f"failed (exit {proc.returncode})", "error": tail}
    try:
        figures = row.read(folder, stdout)
    except (OSError, ValueError, KeyError) as e:
        return {**base, "status": "failed (unreadable output)", "error": f"{e}"}
    return {**base, "status": "ok", "exit": proc.returncode, "figures": figures}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_suite.json / .md")
    p.add_argument(
        "--device",
        choices=["gpu", "cpu"],
        default="gpu",
        help="gpu (default): JAX's GPU and PyTorch on cuda; cpu: both on the CPU",
    )
    p.add_argument("--tiny", action="store_true", help="smallest sizes: checks the script")
    p.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="wall seconds for all rows (default 480); rows that no longer fit are skipped",
    )
    p.add_argument("--rows", nargs="+", choices=[r.name for r in ROWS], help="run only these rows")
    args = p.parse_args(argv)
    results = run_suite(args)
    print(_markdown(results))
    bad = [r["row"] for r in results["rows"] if r["status"] not in ("ok", "skipped")]
    if bad:
        print(f"rows that did not finish: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
