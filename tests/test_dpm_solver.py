"""DPM-Solver++(2M) and DDIM scans (``jaxcloak.diffusion.dpm_solver``) against diffusers.

Both diffusers schedulers are configured like SD-1.5's ``scheduler_config.json`` and driven by
the same analytic noise predictor ``eps = 0.1 x + 0.05 sin(t / 100)`` (written once for torch
and once for jnp), from the same ``x_T``. Timesteps must match exactly; final latents to
``rel = max|ours - ref| / max|ref| <= 1e-5`` in float32.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxcloak.diffusion import dpm_solver  # noqa: E402

RTOL = 1e-5
SD15 = dict(
    **dpm_solver.SD15_SCHEDULE, set_alpha_to_one=False, clip_sample=False, trained_betas=None
)
SHAPE = (2, 8, 8, 4)


def eps_torch(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * x + 0.05 * torch.sin(t.float() / 100)


def eps_jax(x: jax.Array, t: jax.Array) -> jax.Array:
    return 0.1 * x + 0.05 * jnp.sin(t.astype(jnp.float32) / 100)


def rel_err(ours: jax.Array, ref: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


def run_diffusers(scheduler: object, n: int, x_T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scheduler.set_timesteps(n)
    x = torch.from_numpy(x_T.copy()) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(eps_torch(x, t), t, x).prev_sample
    return scheduler.timesteps.numpy(), x.numpy()


def test_alphas_cumprod_bitwise() -> None:
    ref = diffusers.DDIMScheduler(**SD15).alphas_cumprod.numpy()
    np.testing.assert_array_equal(dpm_solver.alphas_cumprod_f32(), ref)


@pytest.mark.parametrize(("n", "final"), [(25, "zero"), (10, "zero"), (25, "sigma_min")])
def test_dpm_solver_matches_diffusers(n: int, final: str) -> None:
    cfg = dict(SD15, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True)
    ref_sched = diffusers.DPMSolverMultistepScheduler.from_config(
        dict(cfg, final_sigmas_type=final)
    )
    x_T = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    ref_ts, ref_x = run_diffusers(ref_sched, n, x_T)

    # "sigma_min" with 25 >= 15 steps makes the last step second order too.
    sched = dpm_solver.make_dpm_solver(n, final_sigmas_type=final)
    np.testing.assert_array_equal(np.asarray(sched.timesteps), ref_ts)
    assert float(sched.init_noise_sigma) == ref_sched.init_noise_sigma
    ours = jax.jit(dpm_solver.sample, static_argnums=0)(eps_jax, jnp.asarray(x_T), sched)
    err = rel_err(ours, ref_x)
    print(f"dpm-solver++ 2M, {n} steps, final {final}: rel err {err:.3e}")
    assert err <= RTOL


def test_ddim_matches_diffusers() -> None:
    ref_sched = diffusers.DDIMScheduler(**SD15)
    x_T = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    ref_ts, ref_x = run_diffusers(ref_sched, 25, x_T)

    sched = dpm_solver.make_ddim_solver(25)
    np.testing.assert_array_equal(np.asarray(sched.timesteps), ref_ts)
    ours = jax.jit(dpm_solver.sample, static_argnums=0)(eps_jax, jnp.asarray(x_T), sched)
    err = rel_err(ours, ref_x)
    print(f"ddim, 25 steps: rel err {err:.3e}")
    assert err <= RTOL


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_other_spacings_timesteps(spacing: str) -> None:
    cfg = dict(SD15, timestep_spacing=spacing)
    for n in (7, 25, 50):
        ref = diffusers.DPMSolverMultistepScheduler.from_config(cfg)
        ref.set_timesteps(n)
        ours = dpm_solver.make_dpm_solver(n, timestep_spacing=spacing).timesteps
        np.testing.assert_array_equal(np.asarray(ours), ref.timesteps.numpy())
        ref = diffusers.DDIMScheduler(**cfg)
        ref.set_timesteps(n)
        ours = dpm_solver.make_ddim_solver(n, timestep_spacing=spacing).timesteps
        np.testing.assert_array_equal(np.asarray(ours), ref.timesteps.numpy())


def test_cfg_single_batched_call() -> None:
    calls = []

    def eps_fn(x: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
        calls.append((x.shape, context.shape))
        # Depends on the context so the two halves differ: eps = x * context.
        return x * context[:, None, None, :]

    x = jnp.ones((2, 4, 4, 3))
    cond, uncond = jnp.full((2, 3), 3.0), jnp.full((2, 3), 1.0)
    eps = dpm_solver.cfg_eps(eps_fn, cond, uncond, 7.5)(x, jnp.int32(5))
    assert calls == [((4, 4, 4, 3), (4, 3))]
    np.testing.assert_allclose(np.asarray(eps), 1.0 + 7.5 * (3.0 - 1.0))

    # Inside the sampler: one call per traced step body, on the doubled batch.
    calls.clear()
    sched = dpm_solver.make_dpm_solver(5)
    guidance = dpm_solver.Guidance(cond, uncond, jnp.float32(2.0))
    out = dpm_solver.sample(eps_fn, x, sched, guidance)
    assert out.shape == x.shape and calls == [((4, 4, 4, 3), (4, 3))]
