"""DDIM (eta = 0) utilities for MAP: schedule, timestep sequences, step, invert, generate.

Conventions follow DiffAM / DiffusionCLIP `denoising_step` (docs/map.md, "The base: DiffAM's
pipeline"):

- betas are computed in float64 on the host, ``alpha_bar_t = prod_{s <= t} (1 - beta_s)``,
  and ``alpha_bar_{-1} := 1`` so the last generation step ``0 -> -1`` returns ``x0_hat``;
- ``seq = int(linspace(0, 1, n) * t0)``, ``seq_next = [-1] + seq[:-1]``; inversion runs the
  ``n - 1`` pairs ``seq[k] -> seq[k + 1]`` starting at t = 0, generation the ``n`` pairs
  ``seq[k] -> seq_next[k]`` for k = n-1 .. 0;
- the network is called as ``eps_fn(params, x, t)`` with x NHWC ``(B, H, W, C)`` and ``t`` a
  float32 vector of shape ``(B,)``.

Sequences and pairs are plain tuples of ints (hashable), so a jitted caller can take them as
static arguments; :func:`pairs_to_arrays` turns them into the int32 ``xs`` of the
``lax.scan`` that :func:`invert` and :func:`generate` run.

One deliberate difference from DiffAM (docs/map.md, "Deviation: schedule precision"): DiffAM
casts betas to a float32 torch tensor before the cumprod; here the cumprod runs in float64 and
only the result is cast to float32. The two differ by at most 4.8e-7 absolute over T = 1000.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxcloak.typing import Params

Pairs = tuple[tuple[int, int], ...]


class EpsFn(Protocol):
    """``eps_fn(params, x, t) -> eps``: x ``(B, H, W, C)``, t float32 ``(B,)``, eps like x."""

    def __call__(self, params: Params, x: jax.Array, t: jax.Array) -> jax.Array: ...


# ---------------------------------------------------------------------------------------------
# Schedule


def beta_schedule(
    kind: str = "linear", start: float = 1e-4, end: float = 0.02, T: int = 1000
) -> np.ndarray:
    """Betas as a float64 NumPy array of shape ``(T,)``.

    Args:
      kind: ``"linear"`` (DiffAM, SDEdit CelebA-HQ), ``"quad"`` (linear in sqrt(beta)) or
        ``"const"`` (all ``end``), as in DDIM's ``get_beta_schedule``.
      start: beta_0.
      end: beta_{T-1}.
      T: number of diffusion steps.
    """
    if kind == "linear":
        return np.linspace(start, end, T, dtype=np.float64)
    if kind == "quad":
        return np.linspace(start**0.5, end**0.5, T, dtype=np.float64) ** 2
    if kind == "const":
        return np.full((T,), end, dtype=np.float64)
    raise ValueError(f"unknown beta schedule {kind!r}; expected 'linear', 'quad' or 'const'")


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """``alpha_bar_t = prod_{s <= t} (1 - beta_s)`` in float64, shape ``(T,)``."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


class Schedule(NamedTuple):
    """The diffusion schedule as a pytree: pass it to jitted code as an argument.

    Attributes:
      alphas_cumprod: float32 ``(T,)``, entry t is alpha_bar_t for t = 0 .. T-1.
    """

    alphas_cumprod: jax.Array

    @property
    def T(self) -> int:
        return self.alphas_cumprod.shape[0]

    def alpha_bar(self, t: jax.Array | int) -> jax.Array:
        """alpha_bar_t with alpha_bar_{-1} = 1; ``t`` may be traced, any integer shape.

        Float ``t`` (the network's timestep vector) is truncated like torch's ``t.long()``.
        """
        t = jnp.asarray(t).astype(jnp.int32)
        # Branch-free: clip keeps the gather in range, where() supplies the t = -1 value.
        gathered = self.alphas_cumprod[jnp.clip(t, 0, self.T - 1)]
        return jnp.where(t < 0, jnp.ones_like(gathered), gathered)


def make_schedule(
    kind: str = "linear", start: float = 1e-4, end: float = 0.02, T: int = 1000
) -> Schedule:
    """:class:`Schedule` from :func:`beta_schedule` (float64 on the host, stored float32)."""
    abar = alphas_cumprod(beta_schedule(kind, start, end, T))
    return Schedule(alphas_cumprod=jnp.asarray(abar, dtype=jnp.float32))


# ---------------------------------------------------------------------------------------------
# Timestep sequences


def make_seq(t0: int, n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """DiffAM's timestep sequence and its shifted partner.

    ``seq = [int(s) for s in np.linspace(0, 1, n) * t0]`` (float64, truncation toward zero,
    so ``make_seq(60, 20)`` gives 0, 3, 6, ..., 18, 22, ...) and
    ``seq_next = [-1] + seq[:-1]``.

    >>> make_seq(60, 6)
    ((0, 12, 24, 36, 48, 60), (-1, 0, 12, 24, 36, 48))
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seq = tuple(int(s) for s in np.linspace(0, 1, n) * t0)
    return seq, (-1, *seq[:-1])


def inversion_pairs(seq: Sequence[int]) -> Pairs:
    """The ``n - 1`` inversion steps ``seq[k] -> seq[k + 1]``, k = 0 .. n-2 (t increasing)."""
    seq = tuple(int(s) for s in seq)
    return tuple(itertools.pairwise(seq))


def generation_pairs(seq: Sequence[int], seq_next: Sequence[int]) -> Pairs:
    """The ``n`` generation steps ``seq[k] -> seq_next[k]``, k = n-1 .. 0 (ends ``0 -> -1``)."""
    pairs = tuple((int(a), int(b)) for a, b in zip(seq, seq_next, strict=True))
    return pairs[::-1]


def pairs_to_arrays(pairs: Pairs | jax.Array | np.ndarray) -> tuple[jax.Array, jax.Array]:
    """``(t, t_next)`` int32 vectors of shape ``(n,)``, the ``xs`` of the DDIM scans.

    Accepts the static tuples above or an ``(n, 2)`` integer array (traced arrays let one
    compiled program run different sequences of the same length).
    """
    if isinstance(pairs, tuple):
        arr = jnp.asarray(np.asarray(pairs, dtype=np.int32).reshape(-1, 2))
    else:
        arr = jnp.asarray(pairs).astype(jnp.int32)
    return arr[:, 0], arr[:, 1]


# ---------------------------------------------------------------------------------------------
# Steps and chains


def ddim_step(
    eps_fn: EpsFn,
    params: Params,
    x: jax.Array,
    t: jax.Array | int,
    t_next: jax.Array | int,
    schedule: Schedule,
) -> jax.Array:
    """One deterministic DDIM step ``x_t -> x_{t_next}`` (eta = 0); inverts when t < t_next.

    x0_hat = (x - sqrt(1 - a_t) eps) / sqrt(a_t);  x_next = sqrt(a_next) x0_hat
    + sqrt(1 - a_next) eps, with eps = eps_fn(params, x, t) and a = alpha_bar (a_{-1} = 1).

    Args:
      eps_fn: the score network, ``(params, x (B, H, W, C), t (B,) float32) -> eps``.
      params: its parameters.
      x: ``(B, H, W, C)``.
      t, t_next: integer timesteps (Python ints or traced int scalars), ``-1 <= t < T``.
      schedule: the :class:`Schedule`.
    """
    t = jnp.asarray(t, dtype=jnp.int32)
    t_next = jnp.asarray(t_next, dtype=jnp.int32)
    eps = eps_fn(params, x, jnp.full((x.shape[0],), t, dtype=jnp.float32))
    a_t = schedule.alpha_bar(t)
    a_next = schedule.alpha_bar(t_next)
    x0_hat = (x - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)
    x_next = jnp.sqrt(a_next) * x0_hat + jnp.sqrt(1.0 - a_next) * eps
    return x_next.astype(x.dtype)


def _chain(
    eps_fn: EpsFn,
    params: Params,
    x: jax.Array,
    pairs: Pairs | jax.Array,
    schedule: Schedule,
    remat: bool,
    policy: Callable[..., Any] | None,
    unroll: int | bool,
) -> jax.Array:
    def body(x, tt):
        return ddim_step(eps_fn, params, x, tt[0], tt[1], schedule), None

    if remat:
        # Store only each step's input x; the UNet activations are recomputed in the backward
        # pass. prevent_cse is unnecessary inside scan (jax.checkpoint docs).
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    x_out, _ = jax.lax.scan(body, x, pairs_to_arrays(pairs), unroll=unroll)
    return x_out


def invert(
    eps_fn: EpsFn,
    params: Params,
    x0: jax.Array,
    pairs: Pairs | jax.Array,
    schedule: Schedule,
    *,
    remat: bool = False,
    policy: Callable[..., Any] | None = jax.checkpoint_policies.nothing_saveable,
    unroll: int | bool = 1,
) -> jax.Array:
    """DDIM inversion ``x0 -> x_lat`` over ``pairs`` (from :func:`inversion_pairs`).

    Args:
      eps_fn, params, schedule: as :func:`ddim_step`.
      x0: ``(B, H, W, C)`` images in [-1, 1].
      pairs: ``(t, t_next)`` pairs with t < t_next, a static tuple or an ``(n, 2)`` array.
      remat, policy, unroll: as :func:`generate` (inversion normally runs without gradients).

    Returns:
      x_lat, shape of ``x0``.
    """
    return _chain(eps_fn, params, x0, pairs, schedule, remat, policy, unroll)


def generate(
    eps_fn: EpsFn,
    params: Params,
    x_lat: jax.Array,
    pairs: Pairs | jax.Array,
    schedule: Schedule,
    *,
    remat: bool = False,
    policy: Callable[..., Any] | None = jax.checkpoint_policies.nothing_saveable,
    unroll: int | bool = 1,
) -> jax.Array:
    """DDIM generation ``x_lat -> x0_hat`` over ``pairs`` (from :func:`generation_pairs`).

    Args:
      eps_fn, params, schedule: as :func:`ddim_step`.
      x_lat: ``(B, H, W, C)`` latent, e.g. from :func:`invert`.
      pairs: ``(t, t_next)`` pairs with t > t_next, a static tuple or an ``(n, 2)`` array.
      remat: wrap the scanned step in ``jax.checkpoint`` so differentiating w.r.t. ``params``
        stores only the n step inputs; same values and gradients.
      policy: the ``jax.checkpoint`` policy used when ``remat`` (e.g.
        ``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``).
      unroll: ``lax.scan``'s unroll. XLA:CPU derives slow backward convolutions inside
        while loops (jax-ml/jax#12868); :mod:`jaxcloak.ops.conv` phrases them as forward ops,
        which took MAP's rolled train step from 122 to 14 s, but the unrolled step (8 s) is
        still faster there at 3x the compile time, so CPU callers unroll these short chains
        (``True``); remat still applies step by step.

    Returns:
      x0_hat, shape of ``x_lat``.
    """
    return _chain(eps_fn, params, x_lat, pairs, schedule, remat, policy, unroll)
