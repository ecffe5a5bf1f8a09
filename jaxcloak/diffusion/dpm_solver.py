"""DPM-Solver++(2M) and DDIM (eta = 0) samplers for Stable-Diffusion-style latent models.

Both match diffusers' ``DPMSolverMultistepScheduler`` and ``DDIMScheduler`` as configured by the
SD-1.5 ``scheduler_config.json`` (scaled_linear betas 0.00085 -> 0.012 over 1000 steps,
``timestep_spacing="leading"``, ``steps_offset=1``, ``set_alpha_to_one=False``):

* all schedule arithmetic runs once on the host in NumPy: the betas and ``alphas_cumprod``
  reproduce torch's float32 values bit for bit (torch's ``linspace`` is a float32 fused
  multiply-add, its CPU ``cumprod`` accumulates in float64), then each step's coefficients are
  evaluated in float64 and stored float32;
* sampling is one ``lax.scan`` over those per-step arrays with a pure body; the DPM carry holds
  the previous step's data prediction ``x0`` for the second-order (2M) update.

Quirks reproduced on purpose (diffusers 0.42):

* DPM-Solver's "leading" spacing uses ``step_ratio = T // (n + 1)`` (DDIM's uses ``T // n``),
  so 25 SD-1.5 steps are 951, 913, ..., 39 for DPM and 961, 921, ..., 1 for DDIM;
* ``final_sigmas_type="zero"`` (the default, SD-1.5's config does not set it) makes the last
  DPM step first order and lands exactly on ``x0`` (sigma 0);
* DDIM's previous timestep is always ``t - T // n`` and ``alpha_bar`` below 0 is
  ``alphas_cumprod[0]`` (``set_alpha_to_one=False``);
* ``init_noise_sigma`` is 1 for both: ``x_T`` is plain standard normal noise.

The network is called as ``eps_fn(x, t)`` with ``t`` an int32 scalar (the training timestep);
close over the weights, or pass a :class:`Guidance` and an ``eps_fn(x, t, context)`` for
classifier-free guidance.

>>> sched = make_dpm_solver(25)
>>> [int(t) for t in sched.timesteps[:3]]
[951, 913, 875]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SD15_SCHEDULE",
    "DDIMSolverSchedule",
    "DPMSolverSchedule",
    "Guidance",
    "alphas_cumprod_f32",
    "cfg_eps",
    "make_ddim_solver",
    "make_dpm_solver",
    "sample",
    "timesteps_for",
]

#: SD-1.5's training schedule and timestep spacing (``scheduler_config.json``, diffusers keyword
#: names): :func:`make_dpm_solver`'s defaults; tests and benchmarks build diffusers' schedulers
#: from it.
SD15_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
"""``eps_fn(x, t) -> eps``: x (B, ...), t an int32 scalar timestep; eps shaped like x."""


# ---------------------------------------------------------------------------------------------
# Host-side schedule arithmetic


def _torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """``torch.linspace(start, end, n, dtype=float32)`` bit for bit.

    torch computes a float32 step, then ``start + step * i`` for the first half and
    ``end - step * (n - 1 - i)`` for the second, each as one fused multiply-add (emulated here
    by a float64 product-sum rounded once, which is exact for these operands).
    """
    s, e = np.float32(start), np.float32(end)
    step = np.float64((e - s) / np.float32(n - 1))
    i = np.arange(n, dtype=np.float64)
    out = np.where(i < n // 2, step * i + np.float64(s), -step * (n - 1 - i) + np.float64(e))
    return out.astype(np.float32)


def alphas_cumprod_f32(
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    beta_schedule: str = "scaled_linear",
    num_train_timesteps: int = 1000,
) -> np.ndarray:
    """diffusers' float32 ``alphas_cumprod`` (shape ``(T,)``), reproduced exactly.

    Args:
      beta_start, beta_end: first and last beta.
      beta_schedule: ``"scaled_linear"`` (linear in sqrt(beta); SD) or ``"linear"``.
      num_train_timesteps: T.
    """
    if beta_schedule == "scaled_linear":
        betas = _torch_linspace_f32(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2
    elif beta_schedule == "linear":
        betas = _torch_linspace_f32(beta_start, beta_end, num_train_timesteps)
    else:
        raise ValueError(f"unsupported beta_schedule {beta_schedule!r}")
    alphas = np.float32(1.0) - betas
    # torch's CPU cumprod accumulates float32 products in float64.
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def timesteps_for(
    num_steps: int,
    spacing: str,
    *,
    num_train_timesteps: int = 1000,
    steps_offset: int = 1,
    solver: str = "dpm",
) -> np.ndarray:
    """The int64 timesteps diffusers' ``set_timesteps(num_steps)`` produces, largest first.

    Args:
      num_steps: number of sampling steps n.
      spacing: ``"leading"``, ``"linspace"`` or ``"trailing"``.
      num_train_timesteps: T.
      steps_offset: added to "leading" timesteps (SD-1.5: 1).
      solver: ``"dpm"`` or ``"ddim"``; their "leading" and "linspace" formulas differ.
    """
    n, T = num_steps, num_train_timesteps
    if not 1 <= n <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {n}")
    if solver not in ("dpm", "ddim"):
        raise ValueError(f"unknown solver {solver!r}")
    dpm = solver == "dpm"
    if spacing == "linspace":
        if dpm:
            ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
        else:
            ts = np.linspace(0, T - 1, n).round()[::-1]
    elif spacing == "leading":
        ratio = T // (n + 1) if dpm else T // n
        ts = (np.arange(0, n + 1 if dpm else n) * ratio).round()[::-1]
        ts = (ts[:-1] if dpm else ts) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)) - 1
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}")
    return np.ascontiguousarray(ts).astype(np.int64)


class DPMSolverSchedule(NamedTuple):
    """Per-step arrays of DPM-Solver++ (data prediction, midpoint), all shape ``(n,)``.

    Step k turns ``x`` at ``timesteps[k]`` into the next sample::

        x0 = (x - sigma_s * eps) / alpha_s
        x' = ratio * x - coef * x0 - coef_d1 * (x0 - x0_prev)

    with ``coef = alpha_t (exp(-h) - 1)`` and ``coef_d1 = coef / (2 r0)`` on second-order steps
    (0 on first-order ones), ``h`` the log-SNR step. A pytree: pass it to jitted code.

    Attributes:
      timesteps: int32 training timesteps fed to the network.
      alpha_s, sigma_s: float32 ``alpha``, ``sigma`` of the current step.
      ratio: float32 ``sigma_t / sigma_s``.
      coef: float32 first-order coefficient.
      coef_d1: float32 second-order (D1) coefficient.
      init_noise_sigma: float32 scalar; ``x_T = init_noise_sigma * N(0, 1)``.
    """

    timesteps: jax.Array
    alpha_s: jax.Array
    sigma_s: jax.Array
    ratio: jax.Array
    coef: jax.Array
    coef_d1: jax.Array
    init_noise_sigma: jax.Array


class DDIMSolverSchedule(NamedTuple):
    """Per-step arrays of deterministic DDIM, all shape ``(n,)``::

        x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t);  x' = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps

    Attributes:
      timesteps: int32 training timesteps fed to the network.
      sqrt_a, sqrt_1ma: float32 ``sqrt(a_t)``, ``sqrt(1 - a_t)``.
      sqrt_a_prev, sqrt_1ma_prev: the same at the previous timestep.
      init_noise_sigma: float32 scalar (1).
    """

    timesteps: jax.Array
    sqrt_a: jax.Array
    sqrt_1ma: jax.Array
    sqrt_a_prev: jax.Array
    sqrt_1ma_prev: jax.Array
    init_noise_sigma: jax.Array


def make_dpm_solver(
    num_steps: int,
    *,
    solver_order: int = 2,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    beta_schedule: str = "scaled_linear",
    num_train_timesteps: int = 1000,
    timestep_spacing: str = "leading",
    steps_offset: int = 1,
    lower_order_final: bool = True,
    euler_at_final: bool = False,
    final_sigmas_type: str = "zero",
) -> DPMSolverSchedule:
    """DPM-Solver++ multistep (``algorithm_type="dpmsolver++"``, ``solver_type="midpoint"``,
    epsilon prediction), matching diffusers' ``DPMSolverMultistepScheduler.set_timesteps``.

    Defaults are SD-1.5's scheduler config. No Karras/exponential/Lu sigmas, thresholding or
    SDE variants.

    Args:
      num_steps: n.
      solver_order: 1 (DDIM-equivalent) or 2 (2M).
      beta_start, beta_end, beta_schedule, num_train_timesteps: the training schedule.
      timestep_spacing, steps_offset: as diffusers.
      lower_order_final: first-order last step when ``n < 15`` (diffusers' rule).
      euler_at_final: always a first-order last step.
      final_sigmas_type: ``"zero"`` (last step to sigma 0, then necessarily first order) or
        ``"sigma_min"`` (to the sigma of t = 0).

    Returns:
      The :class:`DPMSolverSchedule`.
    """
    if solver_order not in (1, 2):
        raise ValueError(f"solver_order must be 1 or 2, got {solver_order}")
    if final_sigmas_type not in ("zero", "sigma_min"):
        raise ValueError(
            f"final_sigmas_type must be 'zero' or 'sigma_min', got {final_sigmas_type}"
        )
    ac = alphas_cumprod_f32(beta_start, beta_end, beta_schedule, num_train_timesteps)
    ts = timesteps_for(
        num_steps,
        timestep_spacing,
        num_train_timesteps=num_train_timesteps,
        steps_offset=steps_offset,
        solver="dpm",
    )
    all_sigmas = ((np.float32(1) - ac) / ac) ** np.float32(0.5)  # float32, as torch
    last = 0.0 if final_sigmas_type == "zero" else float(all_sigmas[0])
    sigmas = np.concatenate([all_sigmas[ts], [last]]).astype(np.float32).astype(np.float64)

    alpha = 1.0 / np.sqrt(sigmas**2 + 1.0)  # VP: alpha_t, sigma_t from sigma = sigma_t / alpha_t
    sigma = sigmas * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)  # +inf at sigma 0
    n = len(ts)
    k = np.arange(n)
    h = lam[1:] - lam[:-1]
    coef = alpha[1:] * (np.exp(-h) - 1.0)  # as diffusers (not expm1); -alpha_t at sigma 0
    final_first = euler_at_final or (lower_order_final and n < 15) or final_sigmas_type == "zero"
    second = (solver_order == 2) & (k >= 1) & ~((k == n - 1) & final_first)
    h0 = np.concatenate([[np.nan], lam[1:-1] - lam[:-2]])  # lambda_s0 - lambda_s1
    with np.errstate(invalid="ignore", divide="ignore"):
        coef_d1 = np.where(second, 0.5 * coef * h / h0, 0.0)  # 0.5 coef / r0, r0 = h0 / h

    f32 = lambda a: jnp.asarray(np.asarray(a, np.float64), jnp.float32)  # noqa: E731
    return DPMSolverSchedule(
        timesteps=jnp.asarray(ts, jnp.int32),
        alpha_s=f32(alpha[:-1]),
        sigma_s=f32(sigma[:-1]),
        ratio=f32(sigma[1:] / sigma[:-1]),
        coef=f32(coef),
        coef_d1=f32(coef_d1),
        init_noise_sigma=jnp.float32(1.0),
    )


def make_ddim_solver(
    num_steps: int,
    *,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    beta_schedule: str = "scaled_linear",
    num_train_timesteps: int = 1000,
    timestep_spacing: str = "leading",
    steps_offset: int = 1,
    set_alpha_to_one: bool = False,
) -> DDIMSolverSchedule:
    """Deterministic DDIM (eta 0, epsilon prediction, no clipping) matching diffusers'
    ``DDIMScheduler``; defaults are SD-1.5's scheduler config.

    Args:
      num_steps: n.
      beta_start, beta_end, beta_schedule, num_train_timesteps: the training schedule.
      timestep_spacing, steps_offset: as diffusers.
      set_alpha_to_one: ``alpha_bar`` for negative previous timesteps is 1 (else
        ``alphas_cumprod[0]``, SD-1.5's choice).
    """
    ac = alphas_cumprod_f32(beta_start, beta_end, beta_schedule, num_train_timesteps)
    ts = timesteps_for(
        num_steps,
        timestep_spacing,
        num_train_timesteps=num_train_timesteps,
        steps_offset=steps_offset,
        solver="ddim",
    )
    final = 1.0 if set_alpha_to_one else float(ac[0])
    prev = ts - num_train_timesteps // num_steps
    a = ac[ts].astype(np.float64)
    a_prev = np.where(prev >= 0, ac[np.clip(prev, 0, None)], final).astype(np.float64)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return DDIMSolverSchedule(
        timesteps=jnp.asarray(ts, jnp.int32),
        sqrt_a=f32(np.sqrt(a)),
        sqrt_1ma=f32(np.sqrt(1.0 - a)),
        sqrt_a_prev=f32(np.sqrt(a_prev)),
        sqrt_1ma_prev=f32(np.sqrt(1.0 - a_prev)),
        init_noise_sigma=jnp.float32(1.0),
    )


# ---------------------------------------------------------------------------------------------
# Guidance and sampling


class Guidance(NamedTuple):
    """Classifier-free guidance inputs (a pytree, so it can be a jit argument).

    Attributes:
      cond: conditioning pytree for the batch (e.g. (B, 77, 768) ID-text embeddings).
      uncond: the unconditional counterpart, same structure and shapes.
      scale: guidance scale w; ``eps = eps_u + w (eps_c - eps_u)``.
    """

    cond: Any
    uncond: Any
    scale: jax.Array | float


def cfg_eps(
    eps_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
    cond: Any,
    uncond: Any,
    scale: jax.Array | float,
) -> EpsFn:
    """Classifier-free guidance as one network call on the doubled batch.

    Args:
      eps_fn: ``eps_fn(x, t, context)``; x (2B, ...) and context leaves (2B, ...).
      cond, uncond: context pytrees with a leading batch axis B.
      scale: guidance scale.

    Returns:
      ``guided(x, t)``: concatenates ``[x, x]`` and ``[uncond, cond]`` along the batch (the
      diffusers pipeline order), calls ``eps_fn`` once, splits, and returns
      ``eps_u + scale * (eps_c - eps_u)``.
    """

    def guided(x: jax.Array, t: jax.Array) -> jax.Array:
        context = jax.tree.map(lambda u, c: jnp.concatenate([u, c], axis=0), uncond, cond)
        eps_u, eps_c = jnp.split(eps_fn(jnp.concatenate([x, x], axis=0), t, context), 2)
        return eps_u + scale * (eps_c - eps_u)

    return guided


def sample(
    eps_fn: Callable[..., jax.Array],
    x_T: jax.Array,
    schedule: DPMSolverSchedule | DDIMSolverSchedule,
    guidance: Guidance | None = None,
    *,
    unroll: int | bool = 1,
) -> jax.Array:
    """Run the sampler from ``x_T`` down to ``x_0`` as one ``lax.scan`` (not jitted here).

    Args:
      eps_fn: ``eps_fn(x, t) -> eps``, or ``eps_fn(x, t, context)`` when ``guidance`` is given
        (then called once per step on the doubled batch, see :func:`cfg_eps`). ``t`` is an int32
        scalar.
      x_T: (B, ...) initial noise, already multiplied by ``schedule.init_noise_sigma``.
      schedule: from :func:`make_dpm_solver` or :func:`make_ddim_solver`.
      guidance: classifier-free guidance inputs, or None.
      unroll: ``lax.scan``'s unroll (on CPU, a UNet inside a rolled loop runs slowly; see
        :func:`jaxcloak.diffusion.ddim.generate`).

    Returns:
      x_0, shaped and typed like ``x_T``.
    """
    fn = eps_fn if guidance is None else cfg_eps(eps_fn, *guidance)
    dtype = x_T.dtype
    x = x_T.astype(jnp.float32)  # diffusers upcasts the sample for the update

    if isinstance(schedule, DPMSolverSchedule):
        xs = (
            schedule.timesteps,
            schedule.alpha_s,
            schedule.sigma_s,
            schedule.ratio,
            schedule.coef,
            schedule.coef_d1,
        )

        def body(carry, step):
            x, x0_prev = carry
            t, alpha_s, sigma_s, ratio, coef, coef_d1 = step
            eps = fn(x.astype(dtype), t).astype(jnp.float32)
            x0 = (x - sigma_s * eps) / alpha_s
            x_next = ratio * x - coef * x0 - coef_d1 * (x0 - x0_prev)
            return (x_next, x0), None

        (x, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x)), xs, unroll=unroll)
    elif isinstance(schedule, DDIMSolverSchedule):
        xs = (
            schedule.timesteps,
            schedule.sqrt_a,
            schedule.sqrt_1ma,
            schedule.sqrt_a_prev,
            schedule.sqrt_1ma_prev,
        )

        def body(x, step):
            t, sqrt_a, sqrt_1ma, sqrt_a_prev, sqrt_1ma_prev = step
            eps = fn(x.astype(dtype), t).astype(jnp.float32)
            x0 = (x - sqrt_1ma * eps) / sqrt_a
            return sqrt_a_prev * x0 + sqrt_1ma_prev * eps, None

        x, _ = jax.lax.scan(body, x, xs, unroll=unroll)
    else:
        raise TypeError(f"unknown schedule type {type(schedule).__name__}")
    return x.astype(dtype)
