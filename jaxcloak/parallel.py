"""Data parallelism over the devices of one host: a ``data`` mesh axis, bucketed padding, gather.

Everything jaxcloak batches is independent per example (one identity's mask, one photo's
inversion), so the only layout it needs is a 1-D mesh whose ``data`` axis splits the batch:

- :func:`make_mesh` builds it from this process's devices (several hosts each build their own
  and split the *input list* between them, see :func:`jaxcloak.runtime.init_distributed`);
- :func:`bucket_for` picks a static batch size (a multiple of the device count) so a run
  compiles a handful of programs whatever its input count;
- :func:`pad_rows` pads a ragged batch to the bucket by repeating its last row and returns the
  0/1 weights of the real rows;
- :func:`shard_rows` puts the padded batch on the mesh (``NamedSharding(mesh, P("data"))``),
  :func:`replicate` the shared weights (``P()``);
- :func:`data_parallel` turns a per-example function into one compiled program that runs
  ``vmap`` of it on each device's slice (``shard_map``: no cross-device communication at all,
  and each device's program is exactly the single-device program at the local batch);
- :func:`gather_rows` brings the first ``n`` rows back to the host in input order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

#: The mesh axis the batch is split over.
DATA = "data"

#: Batch sizes per device a program is built for; a batch is padded up to the next one.
BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: this process's devices)."""
    devs = list(devices) if devices is not None else jax.local_devices()
    if not devs:
        raise ValueError("make_mesh: no devices")
    return Mesh(np.asarray(devs), (DATA,))


def n_shards(mesh: Mesh) -> int:
    return mesh.shape[DATA]


def bucket_for(n: int, max_batch: int, n_devices: int = 1) -> int:
    """Static batch size for ``n`` rows: the smallest ``n_devices * b`` (b in :data:`BUCKETS`)
    holding ``min(n, max_batch)`` rows, never above ``max_batch`` rounded up to whole devices.

    With 1 device and ``max_batch`` 8 the buckets are 1, 2, 3, 4, 6, 8; with 4 devices they are
    4, 8: every device always gets the same number of rows.
    """
    if n < 1 or max_batch < 1 or n_devices < 1:
        raise ValueError(f"bucket_for needs positive sizes, got {n=}, {max_batch=}, {n_devices=}")
    cap = -(-max_batch // n_devices) * n_devices
    want = min(n, cap)
    for b in BUCKETS:
        if b * n_devices >= want:
            return min(b * n_devices, cap)
    return cap


def pad_rows(tree: Any, n: int, size: int) -> tuple[Any, np.ndarray]:
    """Pad every leaf's leading axis from ``n`` to ``size`` rows by repeating the last row.

    Returns ``(padded, weights)``; ``weights`` is ``(size,)`` float32, 1 for real rows and 0 for
    padding, for anything that reduces over the batch. Repeating a real row (rather than zeros)
    keeps the padded rows' computation finite and as expensive as a real one.
    """
    if not 1 <= n <= size:
        raise ValueError(f"pad_rows: need 1 <= n <= size, got {n=}, {size=}")

    def pad(x):
        x = x[:n]
        if size == n:
            return x
        if isinstance(x, np.ndarray):
            return np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)])
        return jax.numpy.concatenate([x, jax.numpy.repeat(x[-1:], size - n, axis=0)])

    weights = np.zeros(size, np.float32)
    weights[:n] = 1
    return jax.tree.map(pad, tree), weights


def shard_rows(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf on ``mesh`` split along its leading axis (``P("data")``)."""
    return jax.device_put(tree, NamedSharding(mesh, P(DATA)))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf whole on each device of ``mesh`` (``P()``)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def data_parallel(
    fn: Callable[..., Any], mesh: Mesh, in_batched: Sequence[bool], **jit_kwargs
) -> Callable[..., Any]:
    """``fn`` written for one example -> one jitted program over a batch sharded on ``mesh``.

    ``in_batched[i]`` says whether positional argument ``i`` carries a leading batch axis
    (split over the devices) or is shared (replicated, e.g. network weights). The outputs
    keep the batch axis, sharded the same way. Each device runs ``vmap(fn)`` over its own rows
    with no communication, so results do not depend on how many devices share the batch
    beyond the local batch size.
    """
    in_axes = tuple(0 if b else None for b in in_batched)
    specs = tuple(P(DATA) if b else P() for b in in_batched)
    local = jax.vmap(fn, in_axes=in_axes)
    return jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(DATA), check_vma=False),
        **jit_kwargs,
    )


def gather_rows(tree: Any, n: int) -> Any:
    """The first ``n`` rows of every leaf, on the host (NumPy), in input order."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x))[:n], tree)


def run_batched(
    fn: Callable[..., Any], mesh: Mesh, shared: Sequence[Any], rows: Sequence[Any]
) -> Any:
    """Call a jitted ``fn(*shared, *rows)`` whose row arguments are split over ``mesh``.

    The rows are padded to a multiple of the device count, put with
    ``P("data")``, the shared arguments replicated; XLA partitions the batch (every op of
    the functions used here is per-example) and the first ``n`` output rows come back in
    input order as NumPy. For programs already written per example, prefer
    :func:`data_parallel`.
    """
    n = len(jax.tree.leaves(rows)[0])
    k = n_shards(mesh)
    size = -(-n // k) * k
    padded, _ = pad_rows(tuple(rows), n, size)
    out = fn(*replicate(tuple(shared), mesh), *shard_rows(padded, mesh))
    return gather_rows(out, n)


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Every floating leaf of ``tree`` cast to ``dtype`` (integer leaves, e.g. ids, kept):
    how networks run in bf16 while their weights are stored in float32."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jax.numpy.issubdtype(a.dtype, jax.numpy.floating) else a,
        tree,
    )


def device_memory_bytes(device: jax.Device | None = None) -> int:
    """Memory of ``device`` (default: JAX's first): the allocator's limit on an accelerator,
    the host's physical memory on a CPU (whose device reports none)."""
    stats = (device or jax.devices()[0]).memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
