"""MAP's gradient projection between the identity (g_A) and expression (g_E) gradients.

Design notes: docs/map.md, "Gradient projection". Symmetric, block-wise GradVac (Wang et
al., ICLR 2021) with an EMA target phi_hat per block, and PCGrad (Yu et al., NeurIPS 2020) as
its phi_hat = 0 special case. The math lives in one pure function, :func:`project_pair`;
:func:`gradvac` and :func:`pcgrad` wrap it as extra-args optax transformations taking the task
gradients stacked on a leading axis, and :func:`as_aggregator` rewraps either as an
``optax.experimental.aggregating.Aggregator`` (present in optax 0.2.8; the import is guarded
so a future move of that experimental module only disables :func:`as_aggregator`).
:func:`ema_grads` is the other reading of the paper's EMA: it averages the stacked task
gradients over steps, to be chained before the projection.

Blocks: ``granularity="layer"`` makes each pytree leaf a block, ``"global"`` all leaves one
block, ``"module"`` groups leaves by the first ``module_depth`` components of their path
(``down/0/...`` with depth 2). phi_hat is a float32 vector with one entry per block, in
``jax.tree.leaves`` order of the first leaf of each block (:func:`block_names` lists them).

Per block, with phi = <g_A, g_E> / (|g_A| |g_E| + eps), where phi < phi_hat:

    g_A' = g_A + |g_A| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
                 / (|g_E| sqrt(1 - phi_hat^2)) g_E

and symmetrically g_E' from the original g_A (the cosine is symmetric, so phi_hat is shared).
Afterwards cos(g_A', g_E) = cos(g_E', g_A) = phi_hat. Then phi_hat <- (1 - beta) phi_hat +
beta phi. Blocks where either gradient is all zeros are left unchanged and keep their phi_hat
(a block without gradient carries no evidence about the conflict). Everything is branch-free,
so it traces once and works under ``jit`` and ``vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

try:  # experimental in optax 0.2.x and may move, so only as_aggregator depends on it.
    from optax.experimental import aggregating as _aggregating
except ImportError:  # pragma: no cover
    _aggregating = None

PyTree = Any
GRANULARITIES = ("layer", "global", "module")

# Keeps sqrt(1 - phi_hat^2) away from 0 so a target of exactly +-1 stays finite.
_PHI_HAT_MAX = 1.0 - 1e-6


class ProjectionStats(NamedTuple):
    """What a train step logs; cosines are between the gradients before projection.

    Attributes:
      cos_global: () cos(g_A, g_E) over all leaves together.
      cos_leaf: pytree like the gradients, one () cosine per leaf.
      block_projected: (n_blocks,) bool, whether the block's pair was changed.
      frac_projected: () fraction of blocks changed.
      phi_hat_mean: () mean of the updated phi_hat.
    """

    cos_global: jax.Array
    cos_leaf: PyTree
    block_projected: jax.Array
    frac_projected: jax.Array
    phi_hat_mean: jax.Array


class ProjectionState(NamedTuple):
    """State of :func:`gradvac` / :func:`pcgrad`: phi_hat per block, step count, last stats."""

    phi_hat: jax.Array  # (n_blocks,) float32
    count: jax.Array  # () int32
    stats: ProjectionStats


# ---------------------------------------------------------------------------------------------
# Blocks


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _blocks(
    tree: PyTree, granularity: str, module_depth: int
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Static leaf -> block index map (int32 ``(n_leaves,)``) and the block names."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    if granularity == "layer":
        return np.arange(len(paths), dtype=np.int32), tuple(_path_str(p) for p in paths)
    if granularity == "global":
        return np.zeros(len(paths), dtype=np.int32), ("all",)
    keys = [_path_str(p[:module_depth]) for p in paths]
    names = tuple(dict.fromkeys(keys))  # first-occurrence order
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[k] for k in keys], dtype=np.int32), names


def block_names(
    tree: PyTree, granularity: str = "layer", *, module_depth: int = 1
) -> tuple[str, ...]:
    """Names of the blocks, in phi_hat order (leaf paths, ``"all"``, or module prefixes)."""
    return _blocks(tree, granularity, module_depth)[1]


def num_blocks(tree: PyTree, granularity: str = "layer", *, module_depth: int = 1) -> int:
    """Length of phi_hat for gradients shaped like ``tree``."""
    return len(block_names(tree, granularity, module_depth=module_depth))


# ---------------------------------------------------------------------------------------------
# Core


def project_pair(
    g_a: PyTree,
    g_e: PyTree,
    phi_hat: jax.Array | float,
    *,
    granularity: str = "layer",
    beta: float = 0.01,
    update_target: bool = True,
    module_depth: int = 1,
    eps: float = 1e-12,
) -> tuple[PyTree, PyTree, jax.Array, ProjectionStats]:
    """Symmetric block-wise GradVac between two gradient pytrees (PCGrad when phi_hat = 0).

    Args:
      g_a: identity-loss gradient pytree (floating leaves of any dtype).
      g_e: expression-loss gradient pytree, same structure and shapes.
      phi_hat: target cosine per block, ``(n_blocks,)`` or a scalar broadcast to it.
      granularity: ``"layer"``, ``"global"`` or ``"module"`` (module docstring).
      beta: EMA rate of the target update (GradVac paper 1e-2).
      update_target: False keeps phi_hat fixed (PCGrad, or a fixed target).
      module_depth: path components that name a module when ``granularity="module"``.
      eps: added to the norm product in the cosine.

    Returns:
      ``(g_a', g_e', new_phi_hat, stats)``; the gradients keep their dtypes, phi_hat is float32
      ``(n_blocks,)``.

    >>> ga, ge = {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([-1.0, 1.0])}
    >>> pa, pe, _, st = project_pair(ga, ge, 0.0, update_target=False)
    >>> pa["w"], pe["w"]  # each now orthogonal to the other's original
    (Array([0.5, 0.5], dtype=float32), Array([0., 1.], dtype=float32))
    """
    leaves_a, treedef = jax.tree.flatten(g_a)
    leaves_e = treedef.flatten_up_to(g_e)
    seg, names = _blocks(g_a, granularity, module_depth)
    n_blocks = len(names)

    def up(x):  # accumulate in at least float32 (bf16 gradients), keep float64 under x64
        return x.astype(jnp.promote_types(x.dtype, jnp.float32))

    def f32_sum(x, y):
        return jnp.sum(up(x) * up(y)).astype(jnp.float32)

    # (n_leaves,) per-leaf inner products, reduced in float32 or wider.
    dot_l = jnp.stack([f32_sum(a, e) for a, e in zip(leaves_a, leaves_e, strict=True)])
    aa_l = jnp.stack([f32_sum(a, a) for a in leaves_a])
    ee_l = jnp.stack([f32_sum(e, e) for e in leaves_e])

    def to_blocks(v):
        if granularity == "layer":
            return v
        return jax.ops.segment_sum(v, jnp.asarray(seg), num_segments=n_blocks)

    dot, na, ne = to_blocks(dot_l), jnp.sqrt(to_blocks(aa_l)), jnp.sqrt(to_blocks(ee_l))
    phi = jnp.clip(dot / (na * ne + eps), -1.0, 1.0)  # (n_blocks,)

    phi_hat = jnp.broadcast_to(jnp.asarray(phi_hat, jnp.float32), (n_blocks,))
    target = jnp.clip(phi_hat, -_PHI_HAT_MAX, _PHI_HAT_MAX)
    s_hat = jnp.sqrt(1.0 - target**2)
    valid = (na > 0) & (ne > 0)
    active = valid & (phi < phi_hat)
    # GradVac's coefficient |g_A| (t sqrt(1 - phi^2) - phi s) / (|g_E| s), s = sqrt(1 - t^2),
    # regrouped as (|g_A| t sqrt(1 - phi^2) / s - <g_A, g_E> / |g_E|) / |g_E| so that t = 0
    # is PCGrad's -<g_A, g_E> / |g_E|^2 to the last bit. Inactive blocks divide by 1 and are
    # discarded by where(), so no inf or NaN is ever formed.
    safe_na, safe_ne = jnp.where(active, na, 1.0), jnp.where(active, ne, 1.0)
    lift = target * jnp.sqrt(1.0 - phi**2) / s_hat
    coef_a = jnp.where(active, (na * lift - dot / safe_ne) / safe_ne, 0.0)
    coef_e = jnp.where(active, (ne * lift - dot / safe_na) / safe_na, 0.0)

    def apply(g, other, coef, act):
        new = up(g) + coef * up(other)
        return jnp.where(act, new.astype(g.dtype), g)  # exact pass-through when not projected

    seg_j = jnp.asarray(seg)
    coef_a_l, coef_e_l, active_l = coef_a[seg_j], coef_e[seg_j], active[seg_j]
    out_a = [
        apply(a, e, coef_a_l[i], active_l[i])
        for i, (a, e) in enumerate(zip(leaves_a, leaves_e, strict=True))
    ]
    out_e = [
        apply(e, a, coef_e_l[i], active_l[i])
        for i, (a, e) in enumerate(zip(leaves_a, leaves_e, strict=True))
    ]

    if update_target:
        new_phi_hat = jnp.where(valid, (1.0 - beta) * phi_hat + beta * phi, phi_hat)
    else:
        new_phi_hat = phi_hat

    cos_leaf_l = dot_l / (jnp.sqrt(aa_l) * jnp.sqrt(ee_l) + eps)
    stats = ProjectionStats(
        cos_global=jnp.sum(dot_l) / (jnp.sqrt(jnp.sum(aa_l)) * jnp.sqrt(jnp.sum(ee_l)) + eps),
        cos_leaf=jax.tree.unflatten(treedef, list(cos_leaf_l)),
        block_projected=active,
        frac_projected=jnp.mean(active.astype(jnp.float32)),
        phi_hat_mean=jnp.mean(new_phi_hat),
    )
    return (
        jax.tree.unflatten(treedef, out_a),
        jax.tree.unflatten(treedef, out_e),
        new_phi_hat,
        stats,
    )


# ---------------------------------------------------------------------------------------------
# optax wrappers


def init_stats(params: PyTree, n_blocks: int) -> ProjectionStats:
    """Zero :class:`ProjectionStats` for gradients shaped like ``params`` (initial states)."""
    zero = jnp.zeros((), jnp.float32)
    return ProjectionStats(
        cos_global=zero,
        cos_leaf=jax.tree.map(lambda _: zero, params),
        block_projected=jnp.zeros((n_blocks,), bool),
        frac_projected=zero,
        phi_hat_mean=zero,
    )


def _projection(
    *,
    beta: float,
    granularity: str,
    phi_init: float,
    update_target: bool,
    weights: Sequence[float],
    module_depth: int,
    eps: float,
) -> optax.GradientTransformationExtraArgs:
    weights = tuple(float(w) for w in weights)
    if len(weights) < 2:
        raise ValueError(f"need a weight per task, at least two; got {weights}")

    def init_fn(params):
        n = num_blocks(params, granularity, module_depth=module_depth)
        return ProjectionState(
            phi_hat=jnp.full((n,), phi_init, jnp.float32),
            count=jnp.zeros((), jnp.int32),
            stats=init_stats(params, n),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        k = {u.shape[0] for u in jax.tree.leaves(updates)}
        if k != {len(weights)}:
            raise ValueError(f"updates need a leading task axis of {len(weights)}, got {k}")
        g_a = jax.tree.map(lambda u: u[0], updates)
        g_e = jax.tree.map(lambda u: u[1], updates)
        g_a, g_e, phi_hat, stats = project_pair(
            g_a,
            g_e,
            state.phi_hat,
            granularity=granularity,
            beta=beta,
            update_target=update_target,
            module_depth=module_depth,
            eps=eps,
        )

        def combine(u, a, e):
            out = weights[0] * a + weights[1] * e
            for i, w in enumerate(weights[2:], start=2):  # unprojected tasks (g_Q, g_SM)
                out = out + w * u[i]
            return out.astype(u.dtype)

        new = jax.tree.map(combine, updates, g_a, g_e)
        return new, ProjectionState(phi_hat, optax.safe_int32_increment(state.count), stats)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gradvac(
    beta: float = 0.01,
    granularity: str = "layer",
    phi_init: float = 0.0,
    *,
    weights: Sequence[float] = (1.0, 1.0),
    module_depth: int = 1,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
    """Symmetric GradVac as an optax transformation, MAP's default projection.

    Why this rule: docs/map.md, "Choice: projection rule".

    ``update(updates, state, params=None)`` takes ``updates`` with every leaf stacked on a
    leading task axis: ``[g_A, g_E, *rest]``, one entry per weight. It returns
    ``weights[0] g_A' + weights[1] g_E' + sum_k weights[k] rest[k]`` shaped like the params
    (extra tasks, e.g. the quality and score-matching gradients, pass unprojected) and a
    :class:`ProjectionState` whose ``stats`` a train step can log. Chain an optimiser after it.

    Args:
      beta: EMA rate of phi_hat.
      granularity: ``"layer"``, ``"global"`` or ``"module"``.
      phi_init: initial phi_hat (0 makes the first step PCGrad).
      weights: per-task weights (lambda_A, lambda_E, ...).
      module_depth: path depth of a module when ``granularity="module"``.
      eps: added to the norm product in the cosine.
    """
    return _projection(
        beta=beta,
        granularity=granularity,
        phi_init=phi_init,
        update_target=True,
        weights=weights,
        module_depth=module_depth,
        eps=eps,
    )


def pcgrad(
    granularity: str = "layer",
    *,
    weights: Sequence[float] = (1.0, 1.0),
    module_depth: int = 1,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
    """Two-task PCGrad: :func:`gradvac` with phi_hat fixed at 0 (same update signature).

    Where <g_A, g_E> < 0: g_A' = g_A - <g_A, g_E> / |g_E|^2 g_E, and symmetrically for g_E.
    """
    return _projection(
        beta=0.0,
        granularity=granularity,
        phi_init=0.0,
        update_target=False,
        weights=weights,
        module_depth=module_depth,
        eps=eps,
    )


def as_aggregator(tx: optax.GradientTransformationExtraArgs) -> Any:
    """Rewrap :func:`gradvac` / :func:`pcgrad` as an ``optax.experimental.aggregating.Aggregator``.

    For ``aggregating.process(preprocessor, as_aggregator(gradvac()), optax.adam(lr))``:
    per-task gradients on the leading axis in, one update out.
    """
    if _aggregating is None:  # pragma: no cover
        raise ImportError("optax.experimental.aggregating is not available in this optax")
    return _aggregating.Aggregator(tx.init, tx.update)


class EmaGradsState(NamedTuple):
    """Per-task gradient EMAs, stacked like the updates: leaves ``(num_tasks, *param_shape)``."""

    count: jax.Array
    ema: PyTree


def ema_grads(
    decay: float = 0.9, num_tasks: int = 2, *, debias: bool = False
) -> optax.GradientTransformation:
    """m_k <- decay m_k + (1 - decay) g_k for each stacked task gradient.

    The second reading of MAP's EMA (docs/map.md, "Choice: reading of the EMA").

    Chain it before the projection, ``optax.chain(ema_grads(0.9), gradvac(...), optax.adam(lr))``,
    so the conflict test and the projection see the EMAs. Costs ``num_tasks`` extra copies of
    the params. ``debias`` divides by ``1 - decay**count`` as Adam does (off: no source says
    whether MAP debiases).
    """

    def init_fn(params):
        return EmaGradsState(
            count=jnp.zeros((), jnp.int32),
            ema=jax.tree.map(lambda p: jnp.zeros((num_tasks, *jnp.shape(p)), p.dtype), params),
        )

    def update_fn(updates, state, params=None):
        del params
        ema = jax.tree.map(lambda m, g: decay * m + (1.0 - decay) * g, state.ema, updates)
        count = optax.safe_int32_increment(state.count)
        if debias:
            scale = 1.0 / (1.0 - decay ** count.astype(jnp.float32))
            out = jax.tree.map(lambda m: (scale * m).astype(m.dtype), ema)
        else:
            out = ema
        return out, EmaGradsState(count, ema)

    return optax.GradientTransformation(init_fn, update_fn)
