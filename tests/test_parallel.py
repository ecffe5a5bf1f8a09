"""Data parallelism: buckets, padding, and sharded == single-device on 4 fake CPU devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcloak.parallel import bucket_for, make_mesh, pad_rows, run_batched


def test_buckets_are_whole_devices_and_few():
    assert [bucket_for(n, 8) for n in range(1, 10)] == [1, 2, 3, 4, 6, 6, 8, 8, 8]
    assert [bucket_for(n, 8, 4) for n in (1, 4, 5, 8, 30)] == [4, 4, 8, 8, 8]
    assert bucket_for(3, 6, 4) == 4 and bucket_for(7, 6, 4) == 8  # cap rounds up to devices
    assert len({bucket_for(n, 32) for n in range(1, 1000)}) == 10
    with pytest.raises(ValueError, match="positive"):
        bucket_for(0, 8)


def test_pad_rows_repeats_the_last_row_and_weights_real_rows():
    tree = {"x": np.arange(6.0).reshape(3, 2), "k": np.array([1, 2, 3])}
    padded, w = pad_rows(tree, 3, 5)
    np.testing.assert_array_equal(padded["x"][3:], [[4, 5], [4, 5]])
    np.testing.assert_array_equal(padded["k"], [1, 2, 3, 3, 3])
    np.testing.assert_array_equal(w, [1, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="n <= size"):
        pad_rows(tree, 3, 2)


def test_run_batched_returns_rows_in_input_order():
    x = np.arange(5.0, dtype=np.float32)[:, None] * np.ones((5, 3), np.float32)
    out = run_batched(jax.jit(lambda a, b: a * b + 1), make_mesh(), (np.float32(2),), (x,))
    np.testing.assert_array_equal(out, 2 * x + 1)


def test_sharded_equals_single_device_on_4_fake_devices(tmp_path):
    """8 identities and 6 MAP images split over 4 devices vs the same on one device."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    script = Path(__file__).with_name("sharded_check.py")
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT "))
    res = json.loads(line[len("RESULT ") :])
    fc = res["facecloak"]
    assert fc["n_devices"] == 4 and fc["mask_shape"] == [8, 112, 112, 3]
    # Each device holds a quarter of the identity batch.
    assert fc["spec"] == "P('data',)"
    assert [n for _, n in fc["shards"]] == [2, 2, 2, 2]
    assert len({d for d, _ in fc["shards"]}) == 4
    assert fc["mask_max"] > 1  # a real mask, not zeros
    assert fc["max_abs_diff"] <= 1e-5 * 255  # grey levels: <= 1e-5 in [0, 1] units
    assert fc["loss_max_abs_diff"] <= 1e-5
    mp = res["map"]
    assert mp["shape"] == [6, 32, 32, 3] and mp["scale"] > 0.1
    assert mp["max_abs_diff"] <= 1e-5
