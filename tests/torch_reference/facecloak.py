"""FaceCloak stage 2 in PyTorch: ``afog_cloak_multi`` as coded, and a tuned variant.

The reference (docs/facecloak.md, "Stage 2: the mask"; ``cloak_functions.py`` L216-331) runs
T passes over the V views in list order, one batch-1 step per view: x = s_k + alpha * rho (no
clip), the triplet loss ``cos(phi(x), e+) - cos(phi(x), e-)`` plus ``0 * dssim(x, s_k)``, the input
gradient G, then ``alpha -= 10 (g_a - mean g_a) / (std g_a + 0.01)`` with ``g_a = rho * G`` and
``rho -= 2/255 sign(alpha * G)`` (both at the pre-update point). It leaves the surrogate's
parameter gradients on (``loss.backward()`` fills and accumulates them), prints both loss
terms every call (a host sync), and recomputes the sticker and high-pass handlers from
alpha * rho every step (they never reach the loss: docs/facecloak.md, "Defect: key regions
outside the loss"). The mask is ``trunc(255 clip(alpha * rho, +-eps))``.

:func:`afog_cloak_multi` keeps all of that (the prints go to a sink, the syncs stay).
:func:`afog_cloak_multi_tuned` is the same computation done as well as PyTorch can on a
CPU: identities batched (B at once: the per-identity mean/std stay per identity, and the
surrogate runs in eval mode, so samples do not interact), no parameter gradients, no dead
``0 * dssim`` term, no per-step syncs, handlers computed once after the loop (identical, as
they never feed back), and optionally the step under ``torch.compile``.

Both take the surrogate as ``embed(x)``: (N, 3, S, S) RGB in the reference's [-1, 1] units
-> (N, D) unit embeddings, and return the (B, S, S, 3) grey-level mask together with the final
alpha and rho (NCHW), so they can be compared with jaxcloak's faithful JAX mode started from
the same rho.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Embed = Callable[[torch.Tensor], torch.Tensor]

EPS = 8 / 255
ETA = 2 / 255
LAMBDA_ALPHA = 10.0
STD_GUARD = 0.01
STICKER_MAX = 32 / 255


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def dssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - SSIM (Gaussian window 11, sigma 1.5, data range 1) on ``x/2 + 0.5`` as the
    reference's ``dssim_loss``; its weight is 0 in the shipped run but it is computed."""
    x, y = x / 2 + 0.5, y / 2 + 0.5
    c = x.shape[1]
    g = _gaussian_window().to(x)
    wh = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    wv = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, wh, groups=c), wv, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return 1 - ssim.mean()


def _handlers(p: torch.Tensor, boxes: torch.Tensor | None, highpass: torch.Tensor | None):
    """The reference's per-step sticker and high-pass updates (computed, never used by the loss)."""
    out = []
    if boxes is not None:
        out += [torch.clamp(p * b, -STICKER_MAX, STICKER_MAX) for b in boxes]
    if highpass is not None:
        out.append(torch.clamp(p * highpass, -STICKER_MAX, STICKER_MAX))
    return out


def _mask(alpha: torch.Tensor, rho: torch.Tensor, eps: float) -> torch.Tensor:
    # int16(255 * delta) in the reference: truncation toward zero; HWC for the caller.
    return torch.trunc(255.0 * torch.clamp(alpha * rho, -eps, eps)).permute(0, 2, 3, 1)


def afog_cloak_multi(
    embed: Embed,
    views: torch.Tensor,
    e_similar: torch.Tensor,
    e_distant: torch.Tensor,
    rho0: torch.Tensor,
    *,
    passes: int = 10,
    eps: float = EPS,
    eta: float = ETA,
    lambda_alpha: float = LAMBDA_ALPHA,
    std_guard: float = STD_GUARD,
    boxes: torch.Tensor | None = None,
    highpass: torch.Tensor | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One identity, as coded: ``passes * V`` sequential batch-1 steps.

    Args:
      embed: the surrogate (its parameters keep ``requires_grad`` as the caller built them;
        the reference leaves them on).
      views: (V, 3, S, S) views in [-1, 1], the real face last.
      e_similar, e_distant: (D,) unit anchors e+ and e-.
      rho0: (3, S, S) initial perturbation, U(-eps, eps) in the reference (unseeded there).
      boxes: (4, 1, S, S) sticker boxes; highpass: (3, S, S) mask F (None: handlers off).
      log: where the per-call loss print goes (default: a sink; the ``.item()`` syncs stay).

    Returns:
      ``(mask (1, S, S, 3) grey levels, alpha (1, 3, S, S), rho (1, 3, S, S))``.
    """
    log = log or (lambda s: None)
    alpha = torch.ones_like(rho0)[None]
    rho = rho0.clone()[None]
    e_sim, e_dist = e_similar.reshape(1, -1), e_distant.reshape(1, -1)
    for _ in range(passes):
        for k in range(views.shape[0]):
            s = views[k : k + 1]
            x = (s + alpha * rho).detach().requires_grad_(True)
            e = embed(x)
            close, far = (e * e_sim).sum(), (e * e_dist).sum()
            loss = close - far + 0.0 * dssim(x, s)
            log(f"close {close.item():.6f} far {far.item():.6f}")  # the reference prints both
            loss.backward()
            g = x.grad
            with torch.no_grad():
                g_alpha, g_rho = rho * g, alpha * g
                alpha = alpha - lambda_alpha * (g_alpha - g_alpha.mean()) / (
                    g_alpha.std() + std_guard
                )
                rho = rho - eta * torch.sign(g_rho)
                _handlers(alpha * rho, boxes, highpass)
    return _mask(alpha, rho, eps), alpha, rho


def afog_cloak_multi_tuned(
    embed: Embed,
    views: torch.Tensor,
    e_similar: torch.Tensor,
    e_distant: torch.Tensor,
    rho0: torch.Tensor,
    *,
    passes: int = 10,
    eps: float = EPS,
    eta: float = ETA,
    lambda_alpha: float = LAMBDA_ALPHA,
    std_guard: float = STD_GUARD,
    compile: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B identities at once, the same per-identity computation as :func:`afog_cloak_multi`.

    Args:
      embed: the surrogate with ``requires_grad`` off on its parameters.
      views: (B, V, 3, S, S); e_similar, e_distant: (B, D); rho0: (B, 3, S, S).
      compile: run the surrogate under ``torch.compile`` (inductor compiles its forward and,
        through AOTAutograd, its backward on the first call; ``torch.autograd.grad`` itself
        would break the graph, so the update stays eager, it is a handful of elementwise ops).

    Returns:
      ``(mask (B, S, S, 3), alpha, rho)``.
    """

    net = torch.compile(embed, dynamic=False) if compile else embed

    def step(alpha, rho, s, e_sim, e_dist):
        x = (s + alpha * rho).detach().requires_grad_(True)
        e = net(x)
        # Summing the per-identity losses keeps each identity's gradient its own.
        loss = ((e * e_sim).sum(-1) - (e * e_dist).sum(-1)).sum()
        (g,) = torch.autograd.grad(loss, x)
        g_alpha, g_rho = rho * g, alpha * g
        dims = (1, 2, 3)
        mean = g_alpha.mean(dims, keepdim=True)
        std = g_alpha.std(dims, keepdim=True)
        alpha = alpha - lambda_alpha * (g_alpha - mean) / (std + std_guard)
        rho = rho - eta * torch.sign(g_rho)
        return alpha.detach(), rho.detach()

    alpha, rho = torch.ones_like(rho0), rho0.clone()
    for _ in range(passes):
        for k in range(views.shape[1]):
            alpha, rho = step(alpha, rho, views[:, k], e_similar, e_distant)
    return _mask(alpha, rho, eps), alpha, rho
