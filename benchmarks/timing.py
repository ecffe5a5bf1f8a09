"""Timing helpers shared by the benchmark scripts (never used by tests).

Compile time is measured apart (AOT lower+compile), then warm-up calls, then ``iters`` calls
each synchronised with ``block_until_ready``; we report medians and the 10/90th percentiles.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import jax


def time_calls(fn: Callable[[], Any], *, warmup: int = 3, iters: int = 20) -> dict[str, float]:
    """Seconds per call of ``fn()`` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    q = statistics.quantiles(samples, n=10) if len(samples) >= 2 else samples * 9
    return {"median": statistics.median(samples), "p10": q[0], "p90": q[-1], "n": len(samples)}


def compile_jax(fn: Callable, *args: Any) -> tuple[Callable, float]:
    """AOT-compile ``jax.jit(fn)`` for ``args``; return the compiled callable and seconds taken."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def environment() -> dict[str, str]:
    # A copy of the tree without .git (a lent GPU machine) names its commit in JAXCLOAK_COMMIT.
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        commit = os.environ.get("JAXCLOAK_COMMIT", "unknown")
    dev = jax.devices()[0]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "cpu": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }
