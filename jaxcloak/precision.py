"""The one precision policy for every network jaxcloak runs.

Three settings, the same for the Flax ports (``jaxcloak.nets``) and the converted ONNX graphs
(``jaxcloak.convert.onnx``), neither of which names a precision of its own: every matmul and
convolution takes JAX's *default matmul precision*, which :func:`scope` (or :func:`apply`, for
a whole process) sets from the policy.

========== ==================== ============================ =============================
policy     matmul / conv        network weights/activations  mask, optimiser, loss, metrics
========== ==================== ============================ =============================
float32    true FP32 (HIGHEST)  float32                      float32
tf32       TF32 on GPUs         float32                      float32
bfloat16   bf16 (the operands)  bfloat16                     float32
========== ==================== ============================ =============================

On a CPU float32 and tf32 compute the same (CPUs have no TF32); bfloat16 halves the weights'
memory traffic there too but is rarely faster. ``auto`` is float32 on every backend until a GPU
run of ``benchmarks/gpu_suite.py`` (its ``precision`` row) shows a faster setting keeps the
protection results within float32's run-to-run spread: no default is changed on a guess.
Design note: docs/gpu.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from .parallel import cast_floating

__all__ = ["NAMES", "Policy", "apply", "get", "recorded", "resolve", "scope", "wrap_network"]


@dataclass(frozen=True)
class Policy:
    """A precision setting: the matmul precision JAX is given and the networks' dtype."""

    name: str
    matmul: str  # a value of jax.config's ``jax_default_matmul_precision``
    dtype: Any  # weights and activations inside the networks

    def describe(self) -> dict[str, str]:
        """JSON-able record for manifests and benchmark rows."""
        return {"precision": self.name, "matmul": self.matmul, "dtype": jnp.dtype(self.dtype).name}


_POLICIES = {
    "float32": Policy("float32", "highest", jnp.float32),
    "tf32": Policy("tf32", "tensorfloat32", jnp.float32),
    # The networks' bf16 operands make their products bf16 whatever the setting; "highest"
    # keeps every float32 product around them (losses, warps, DCTs, measurements) true FP32.
    "bfloat16": Policy("bfloat16", "highest", jnp.bfloat16),
}

#: Settings a user can name (``auto`` resolves per backend, :func:`resolve`).
NAMES = ("auto", *_POLICIES)

#: ``auto`` per backend. GPU stays float32 until measured (module docstring).
_AUTO = {"cpu": "float32", "gpu": "float32", "tpu": "float32"}


def get(name: str) -> Policy:
    """The policy called ``name`` (not ``auto``: see :func:`resolve`)."""
    try:
        return _POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown precision {name!r}; choose from {', '.join(NAMES)}") from None


def resolve(name: Policy | str | None = "auto", backend: str | None = None) -> Policy:
    """The policy ``name`` stands for: a Policy itself, a named one, or ``auto`` (or None)
    resolved for ``backend`` (default: JAX's)."""
    if isinstance(name, Policy):
        return name
    if name in (None, "auto"):
        return get(_AUTO.get(backend or jax.default_backend(), "float32"))
    return get(name)


def recorded(record: dict[str, str] | None) -> dict[str, str]:
    """The :meth:`Policy.describe` a manifest or settings file recorded; records from before
    the policy existed (None) ran in float32."""
    return record if record is not None else get("float32").describe()


@contextlib.contextmanager
def scope(policy: Policy | str) -> Iterator[Policy]:
    """Trace (and so compile) the networks inside under ``policy``'s matmul precision.

    JAX keys its jit caches on this setting, so programs traced under two policies never
    share a compilation.
    """
    p = resolve(policy)
    with jax.default_matmul_precision(p.matmul):
        yield p


def apply(policy: Policy | str) -> Policy:
    """Set ``policy``'s matmul precision for the whole process (the CLI does this once)."""
    p = resolve(policy)
    jax.config.update("jax_default_matmul_precision", p.matmul)
    return p


def wrap_network(fn: Callable, policy: Policy) -> Callable:
    """``fn(params, x, *rest)`` run in the policy's dtype: weights and input are cast inside
    (the caller's float32 params stay the master copy, so gradients reach them in float32),
    the rest (timesteps, say) is passed as it is, and floating outputs come back float32.
    Keeps ``fn.sites`` (the graph-edit hooks, jaxcloak.objectives.surrogate). Returns ``fn``
    itself for a float32 policy."""
    if jnp.dtype(policy.dtype) == jnp.float32:
        return fn

    def low(params, x, *rest, **kw):
        params, x = cast_floating((params, x), policy.dtype)
        return cast_floating(fn(params, x, *rest, **kw), jnp.float32)

    if hasattr(fn, "sites"):
        low.sites = fn.sites
    return low
