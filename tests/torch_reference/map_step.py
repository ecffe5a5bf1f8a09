"""MAP's train step in PyTorch, DiffAM style: the baseline of ``jaxcloak.methods.map.step``.

The step that :func:`jaxcloak.methods.map.step.make_map_step` jits, written the way DiffAM's
``clip_finetune`` loop (DiffusionCLIP lineage; docs/map.md, "The base: DiffAM's pipeline")
writes it, so a benchmark can time the two on the same algorithm, weights and inputs and
check that they compute the same thing::

    x = x_lat                                       # DDIM latent of the source face
    for t, t_next in config.train_pairs:            # n_train DDIM steps, ending 0 -> -1,
        x = ddim_step(unet, x, t, t_next)           # with gradients through every step
    L_A  = mean(1 - cos(FR(fr_crop(x)), target))    # identity (weighted ensemble cosine)
    L_E  = CE(fer(x), target_class)                 # expression (fer_ce)
    L1   = mean|x - x0|;  L_LS = dirichlet(x - x0)  # quality
    loss = lambda_id L_A + lambda_expr L_E + lambda_l1 L1 + lambda_ls L_LS
    loss.backward(); adam.step()

That sum is exactly what the JAX step optimises with ``MapConfig(projection="none",
sm_variant="none")``: its ``_weighted_sum`` applies the weights ``(lambda_id, lambda_expr, 1,
lambda_sm)`` to the task gradients ``(g_A, g_E, g_Q, g_SM)``, where ``g_Q`` is already the
gradient of ``lambda_l1 L1 + lambda_ls L_LS`` and ``g_SM`` is zero with ``sm_variant="none"``
(or ``lambda_sm == 0``); by linearity that is the gradient of the summed loss above. GradVac /
PCGrad projection and the score-matching term are not mirrored here (the constructor refuses
configs that use them). Every piece follows jaxcloak's numerics, not DiffAM's:

* schedule: ``alpha_bar`` from float64 betas, cast to float32 (jaxcloak's ``make_schedule``);
  ``alpha_bar_{-1} = 1``; the DDIM update ``x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t)``,
  ``x_next = sqrt(a_next) x0 + sqrt(1 - a_next) eps`` (``jaxcloak.diffusion.ddim_step``);
  the UNet sees ``t`` as a float32 ``(B,)`` vector;
* the FR crop is jaxcloak's ``fr_crop`` (``jax.image.scale_and_translate``, linear, no
  antialias) as two resampling matrices built with the same formula, applied by an einsum:
  the same linear map up to float32 rounding (6e-8). DiffAM resizes with ``F.interpolate``
  (bilinear, ``align_corners=False``, no antialias), which cannot also crop at the fractional
  ``FaceFrame`` offset; :func:`fr_crop_torch` offers ``F.grid_sample`` (bilinear, border
  padding) as the idiomatic alternative, the same map up to float32 rounding of its
  normalised coordinates (6e-6 at 32 px, 5e-5 at 256 px on noise images);
* expression: the fer mini-Xception on the whole regenerated crop (``pipelines.map_photos.
  fer_expression_loss``), cross-entropy to the target class (``fer_ce``);
* Adam with optax's ``b1 = 0.9, b2 = 0.999, eps = 1e-8`` and the staircase learning rate
  ``lr * lr_growth ** (step // steps_per_epoch)`` of ``make_optimizer``.

Two modes (:func:`make_torch_map_step`):

* ``tuned=False``, "as DiffAM codes it": eager; the frozen FR / fer networks keep
  ``requires_grad=True`` (DiffAM never turns it off, so every backward also computes and
  accumulates their parameter gradients); per-step ``alpha`` gathers as DiffAM's
  ``compute_alpha``; every loss term read back with ``.item()`` for the log.
* ``tuned=True``: FR / fer parameters frozen, DDIM coefficients precomputed, one host sync
  per step (the returned values), ``torch.compile`` of the UNet when it works (falls back to
  eager; :attr:`TorchMapStep.compiled` says which ran), optional channels-last.

Devices: the step runs where the UNet's parameters are (its schedule tables follow them);
inputs, the FR / fer networks and the target embedding must be on that device too.

Layouts: images are torch's **NCHW** ``(B, 3, S, S)`` in [-1, 1] (the UNet's layout); the FR
and fer embedders take jaxcloak's NHWC RGB [0, 1] (``onnx_torch.sface_torch``,
``fer_torch.preprocess_torch``), converted inside.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jaxcloak.diffusion.ddim import alphas_cumprod, beta_schedule
from jaxcloak.methods.map.config import MapConfig
from jaxcloak.objectives.map import FaceFrame

from .fer_torch import preprocess_torch

__all__ = [
    "SharedScoreNet",
    "Surrogate",
    "TorchMapStep",
    "ddim_invert_torch",
    "dirichlet_energy_torch",
    "fr_crop_torch",
    "fr_resample_matrix",
    "make_torch_map_step",
    "schedule_torch",
    "shared_score_net",
    "to_nchw",
    "to_nhwc",
]

EmbedTorch = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- shared weights


class SharedScoreNet(NamedTuple):
    """One score network on both sides, identical weights.

    Attributes:
      torch_net: ``torch_reference.ddpm.DDPM`` (NCHW), eval mode, parameters requiring gradients.
      params: the same weights as jaxcloak Flax params (``convert_ddpm_state_dict``).
      eps_fn: jaxcloak's pure ``eps_fn(params, x, t)`` for the variant (NHWC).
      config: the ``DDPMConfig``.
    """

    torch_net: nn.Module
    params: Any
    eps_fn: Callable
    config: Any


def shared_score_net(
    variant: str = "tiny", *, seed: int = 0, zero_out: bool = True
) -> SharedScoreNet:
    """A torch DDPM UNet of a jaxcloak variant and its Flax params, converted from it.

    The torch module is built with torch's seeded default initialisation; the Flax params are
    its state dict through jaxcloak's ``convert_ddpm_state_dict`` (OIHW -> HWIO, linear
    transposes), so both sides start from bit-identical weights.

    Args:
      variant: a ``jaxcloak.nets.ddpm_unet.VARIANTS`` name (``tiny``, ``embedded``, ...).
      seed: ``torch.manual_seed`` of the initialisation.
      zero_out: zero ``conv_out`` as jaxcloak's embedded score net does
        (``pipelines.map_photos.embedded_score_net``: eps = 0 before fine-tuning, so invert ->
        generate is the identity); False keeps torch's random output layer.
    """
    from jaxcloak.nets import ddpm_unet

    cfg = ddpm_unet.get_config(variant)
    from . import ddpm as ref  # DiffusionCLIP's DDPM UNet with the real key names

    torch.manual_seed(seed)
    net = ref.DDPM(**ref.torch_kwargs(cfg)).eval()
    if zero_out:
        with torch.no_grad():
            net.conv_out.weight.zero_()
            net.conv_out.bias.zero_()
    state = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
    params = ddpm_unet.convert_ddpm_state_dict(state, cfg)
    return SharedScoreNet(net, params, ddpm_unet.make_score(cfg), cfg)


# --------------------------------------------------------------------------- small pieces


def to_nchw(x: Any) -> torch.Tensor:
    """NHWC array (NumPy / JAX / torch) -> contiguous NCHW float32 torch tensor."""
    return torch.from_numpy(np.array(x, np.float32)).permute(0, 3, 1, 2).contiguous()


def to_nhwc(x: torch.Tensor) -> np.ndarray:
    """NCHW torch tensor -> NHWC NumPy array."""
    return x.detach().permute(0, 2, 3, 1).cpu().numpy()


def schedule_torch(kind: str = "linear", start: float = 1e-4, end: float = 0.02, T: int = 1000):
    """``alpha_bar`` as jaxcloak's ``make_schedule``: float64 cumprod, stored float32 (T,)."""
    abar = alphas_cumprod(beta_schedule(kind, start, end, T)).astype(np.float32)
    return torch.from_numpy(abar)


def _alpha(abar: torch.Tensor, t: int) -> torch.Tensor:
    """alpha_bar_t as a float32 0-d tensor on ``abar``'s device, alpha_bar_{-1} = 1."""
    return abar[t] if t >= 0 else abar.new_ones(())


def fr_resample_matrix(size: int, frame: FaceFrame, side: int = 112) -> torch.Tensor:
    """(side, size) float32 rows of jaxcloak's ``fr_crop`` along one axis.

    ``jax.image.scale_and_translate``'s linear weights: output pixel i samples the input at
    ``(i + 0.5) / scale - translation / scale - 0.5`` (pixel-index coordinates) with a
    triangle kernel of radius 1 (no antialias when upsampling), normalised by the total
    weight, and zero for samples outside ``[-0.5, size - 0.5]``. Computed in float32 as XLA
    does (``scale`` and ``translation`` have the images' dtype).
    """
    f32 = np.float32
    scale = f32(side / frame.inner)
    translation = f32(-frame.offset * (side / frame.inner))
    inv = f32(1.0) / scale
    sample = (np.arange(side, dtype=f32) + f32(0.5)) * inv - translation * inv - f32(0.5)
    x = np.abs(sample[None, :] - np.arange(size, dtype=f32)[:, None])  # (size, side)
    w = np.maximum(f32(0), f32(1) - x)
    total = w.sum(axis=0, keepdims=True)
    w = np.where(np.abs(total) > 1000 * np.finfo(f32).eps, w / np.where(total != 0, total, 1), 0)
    inside = (sample >= -0.5) & (sample <= size - 0.5)
    w = np.where(inside[None, :], w, 0).astype(f32)
    return torch.from_numpy(np.ascontiguousarray(w.T))  # (side, size)


def fr_crop_torch(
    images: torch.Tensor,
    frame: FaceFrame,
    side: int = 112,
    *,
    method: str = "matrix",
    matrix: torch.Tensor | None = None,
) -> torch.Tensor:
    """jaxcloak's ``fr_crop`` of NCHW score-net crops, returned **NHWC** ``(B, side, side, C)``.

    Args:
      images: (B, C, S, S), any range.
      frame: where the 112 face sits in the crop.
      side: output side.
      method: ``matrix`` (the same resampling matrices as jaxcloak, an einsum) or
        ``grid_sample`` (``F.grid_sample`` bilinear, ``align_corners=False``, border padding:
        the same map for samples inside the image, up to float32 coordinate rounding).
      matrix: a precomputed :func:`fr_resample_matrix` (``matrix`` method).
    """
    size = images.shape[-1]
    if method == "matrix":
        w = fr_resample_matrix(size, frame, side) if matrix is None else matrix
        w = w.to(images.device, images.dtype)
        return torch.einsum("ih,bchw,jw->bijc", w, images, w)
    if method == "grid_sample":
        scale = side / frame.inner
        # Continuous input coordinate (pixel centres at j + 0.5) of output pixel i, then
        # grid_sample's normalised [-1, 1] (align_corners=False: g = 2 u / size - 1).
        u = (torch.arange(side, dtype=torch.float64) + 0.5) / scale + frame.offset
        g = (2.0 * u / size - 1.0).to(images.dtype)
        gy, gx = torch.meshgrid(g, g, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1).expand(images.shape[0], side, side, 2)
        out = F.grid_sample(
            images, grid.to(images.device), "bilinear", "border", align_corners=False
        )
        return out.permute(0, 2, 3, 1)
    raise ValueError(f"method must be 'matrix' or 'grid_sample', got {method!r}")


def dirichlet_energy_torch(delta: torch.Tensor) -> torch.Tensor:
    """jaxcloak's ``dirichlet_energy`` on NCHW: mean squared forward differences (rows, cols)."""
    dy = delta[:, :, 1:, :] - delta[:, :, :-1, :]
    dx = delta[:, :, :, 1:] - delta[:, :, :, :-1]
    return dy.square().mean() + dx.square().mean()


@torch.no_grad()
def ddim_invert_torch(
    net: nn.Module, x0: torch.Tensor, config: MapConfig, abar: torch.Tensor | None = None
) -> torch.Tensor:
    """DDIM inversion ``x0 -> x_lat`` over ``config.inversion_pairs`` (no gradients)."""
    abar = (schedule_torch() if abar is None else abar).to(x0.device)
    x = x0
    for t, t_next in config.inversion_pairs:
        a_t, a_n = _alpha(abar, t), _alpha(abar, t_next)
        eps = net(x, torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device))
        x0_hat = (x - torch.sqrt(1.0 - a_t) * eps) / torch.sqrt(a_t)
        x = torch.sqrt(a_n) * x0_hat + torch.sqrt(1.0 - a_n) * eps
    return x


# --------------------------------------------------------------------------- the step


class Surrogate(NamedTuple):
    """One FR surrogate: ``embed`` (NHWC RGB [0, 1] 112 -> unit (N, D)), its ensemble weight,
    and the module whose ``requires_grad`` the step sets (optional)."""

    embed: EmbedTorch
    weight: float = 1.0
    module: nn.Module | None = None


def _surrogates(items: Sequence[Any]) -> list[Surrogate]:
    out = []
    for s in items:
        if isinstance(s, Surrogate):
            out.append(s)
        elif len(s) == 2 and callable(s[0]):
            out.append(Surrogate(s[0], float(s[1])))
        elif len(s) == 3 and isinstance(s[0], nn.Module):  # (module, embed, weight)
            out.append(Surrogate(s[1], float(s[2]), s[0]))
        else:
            raise TypeError(
                "a surrogate is Surrogate(embed, weight, module), (embed, weight) or "
                f"(module, embed, weight); got {s!r}"
            )
    if not out or any(s.weight <= 0 for s in out):
        raise ValueError("need at least one surrogate, with positive weights")
    total = sum(s.weight for s in out)
    # jaxcloak's Ensemble normalises the weights to sum to 1.
    return [s._replace(weight=s.weight / total) for s in out]


class TorchMapStep:
    """The MAP train step in torch; see the module docstring and :func:`make_torch_map_step`.

    Attributes:
      score_net: the UNet being fine-tuned (its parameters are updated in place).
      optimizer: ``torch.optim.Adam`` over the UNet's parameters.
      step_count: steps taken (drives the staircase learning rate).
      compiled: True when the UNet forward ran under ``torch.compile``.
      compile_error: why compilation was abandoned, if it was.
    """

    def __init__(
        self,
        score_net: nn.Module,
        surrogates: Sequence[Any],
        fer_net: nn.Module,
        config: MapConfig,
        *,
        tuned: bool,
        compile: bool | None = None,
        channels_last: bool = False,
        remat: bool = False,
        fr_resize: str = "matrix",
        abar: torch.Tensor | None = None,
    ) -> None:
        if config.projection != "none":
            raise ValueError(
                "the torch step mirrors projection='none' only (the weighted sum of the task "
                f"gradients); got projection={config.projection!r}"
            )
        if config.sm_variant != "none" and config.lambda_sm != 0.0:
            raise ValueError("the torch step has no score-matching term: use sm_variant='none'")
        if config.smoothness != "dirichlet":
            raise ValueError(f"only the dirichlet smoothness is mirrored, got {config.smoothness}")
        self.config = config
        self.tuned = tuned
        self.score_net = score_net
        self.surrogates = _surrogates(surrogates)
        self.fer_net = fer_net
        self.fr_resize = fr_resize
        self.remat = remat
        self.channels_last = channels_last
        self.pairs = config.train_pairs
        # The schedule lives with the UNet (DiffAM keeps its betas on the model's device).
        device = next(score_net.parameters()).device
        self.abar = (schedule_torch() if abar is None else abar).to(device, torch.float32)
        # DiffAM-style gather table: alpha_bar with the t = -1 entry in front.
        self._abar_ext = torch.cat([self.abar.new_ones(1), self.abar])
        # tuned: every DDIM step's coefficients as float32 0-d tensors, computed once.
        self._coefs = [
            (
                torch.sqrt(1.0 - _alpha(self.abar, t)),
                torch.sqrt(_alpha(self.abar, t)),
                torch.sqrt(_alpha(self.abar, tn)),
                torch.sqrt(1.0 - _alpha(self.abar, tn)),
            )
            for t, tn in self.pairs
        ]
        frozen_grad = not tuned  # as coded: the frozen nets keep their parameter gradients
        fer_net.requires_grad_(frozen_grad)
        for s in self.surrogates:
            if s.module is not None:
                s.module.requires_grad_(frozen_grad)
        score_net.requires_grad_(True)
        if channels_last:
            score_net.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(
            score_net.parameters(), lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8
        )
        self.step_count = 0
        self._matrix: dict[int, torch.Tensor] = {}
        self.compile_error: str | None = None
        want_compile = tuned if compile is None else compile
        self._eps: Callable = score_net
        self.compiled = False
        if want_compile:
            try:
                self._eps = torch.compile(score_net)
                self.compiled = True
            except Exception as err:  # torch.compile unavailable (e.g. no compiler)
                self.compile_error = f"{type(err).__name__}: {err}"

    # -- pieces ---------------------------------------------------------------------------

    def lr(self, step: int | None = None) -> float:
        """``make_optimizer``'s staircase rate at ``step`` (default: the next step)."""
        c = self.config
        k = self.step_count if step is None else step
        return c.learning_rate * c.lr_growth ** (k // c.steps_per_epoch)

    def _unet(self, x: torch.Tensor, t: int) -> torch.Tensor:
        tt = torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device)
        if self.remat:
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._eps, x, tt, use_reentrant=False)
        return self._eps(x, tt)

    def regenerate(self, x_lat: torch.Tensor) -> torch.Tensor:
        """x_lat -> x_hat through ``n_train`` DDIM steps, with gradients to the UNet."""
        x = x_lat.clone()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        b = x.shape[0]
        for k, (t, t_next) in enumerate(self.pairs):
            eps = self._unet(x, t)
            if self.tuned:
                s1a, sa, san, s1an = self._coefs[k]
            else:
                # DiffAM's compute_alpha: a per-example gather every step.
                idx = torch.full((b,), t + 1, dtype=torch.long, device=x.device)
                idx_n = torch.full((b,), t_next + 1, dtype=torch.long, device=x.device)
                a_t = self._abar_ext.index_select(0, idx).view(-1, 1, 1, 1)
                a_n = self._abar_ext.index_select(0, idx_n).view(-1, 1, 1, 1)
                s1a, sa, san, s1an = (1 - a_t).sqrt(), a_t.sqrt(), a_n.sqrt(), (1 - a_n).sqrt()
            x0_hat = (x - s1a * eps) / sa
            x = san * x0_hat + s1an * eps
        return x

    def losses(
        self,
        x_hat: torch.Tensor,
        x0: torch.Tensor,
        target_emb: torch.Tensor,
        target_class: int,
    ) -> dict[str, torch.Tensor]:
        """Every loss term as a 0-d tensor (graph kept), ``total`` included."""
        c = self.config
        size = x_hat.shape[-1]
        frame = FaceFrame(size, c.margin)
        if size not in self._matrix:  # built on the host once, kept on the images' device
            self._matrix[size] = fr_resample_matrix(size, frame).to(x_hat.device)
        # identity: (fr_crop(x) + 1) / 2, the ensemble's concatenated [sqrt(w_m) e_m] . target
        crop01 = (
            fr_crop_torch(x_hat, frame, method=self.fr_resize, matrix=self._matrix[size]) + 1.0
        ) * 0.5
        emb = torch.cat([math.sqrt(s.weight) * s.embed(crop01) for s in self.surrogates], -1)
        cos = (emb * target_emb).sum(-1)
        l_id = (1.0 - cos).mean()
        # expression: fer on the whole regenerated crop, cross-entropy to the target class
        x01 = ((x_hat + 1.0) * 0.5).permute(0, 2, 3, 1)
        logits = self.fer_net(preprocess_torch(x01))
        target = torch.full(
            (x_hat.shape[0],), int(target_class), dtype=torch.long, device=x_hat.device
        )
        l_expr = F.cross_entropy(logits, target)
        p_expr = torch.softmax(logits, -1)[:, int(target_class)]
        # quality
        l1 = (x_hat - x0).abs().mean()
        ls = dirichlet_energy_torch(x_hat - x0)
        lq = c.lambda_l1 * l1 + c.lambda_ls * ls
        total = c.lambda_id * l_id + c.lambda_expr * l_expr + lq
        return {
            "loss_id": l_id,
            "loss_expr": l_expr,
            "loss_l1": l1,
            "loss_smooth": ls,
            "loss_quality": lq,
            "loss_total": total,
            "cos_target": cos.mean(),
            "p_expression": p_expr.mean(),
        }

    # -- the step -------------------------------------------------------------------------

    def _attempt(self, x0, x_lat, target_emb, target_class) -> dict[str, torch.Tensor]:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()
        self.optimizer.zero_grad(set_to_none=True)
        x_hat = self.regenerate(x_lat)
        terms = self.losses(x_hat, x0, target_emb, target_class)
        terms["loss_total"].backward()
        return terms

    def step(
        self,
        x0: torch.Tensor,
        x_lat: torch.Tensor,
        target_emb: torch.Tensor,
        target_class: int,
    ) -> dict[str, float]:
        """One fine-tuning step; returns the loss terms (and ``lr``) as Python floats.

        Args:
          x0: (B, 3, S, S) source faces in [-1, 1] (NCHW).
          x_lat: (B, 3, S, S) their DDIM latents (inverted once with the frozen weights).
          target_emb: (D,) target embedding, the ensemble's concatenation
            ``[sqrt(w_1) t_1, ...]`` (jaxcloak's ``MapInputs.target``).
          target_class: the target emotion's index (``fer_xception.emotion_index``).
        """
        lr = self.lr()
        try:
            terms = self._attempt(x0, x_lat, target_emb, target_class)
        except Exception as err:
            if not self.compiled:
                raise
            # torch.compile failed on first use (no working C++ toolchain, ...): go eager.
            warnings.warn(f"torch.compile failed, running eager: {err}", stacklevel=2)
            self.compile_error = f"{type(err).__name__}: {err}"
            self.compiled = False
            self._eps = self.score_net
            terms = self._attempt(x0, x_lat, target_emb, target_class)
        self.optimizer.step()
        self.step_count += 1
        if self.tuned:
            # One host sync for everything returned.
            keys = list(terms)
            values = torch.stack([terms[k].detach() for k in keys]).tolist()
            out = dict(zip(keys, values, strict=True))
        else:
            # As coded: each logged term read back on its own.
            out = {k: v.item() for k, v in terms.items()}
        out["lr"] = lr
        return out


def make_torch_map_step(
    score_net: nn.Module,
    surrogates: Sequence[Any],
    fer_net: nn.Module,
    config: MapConfig,
    *,
    tuned: bool,
    **options: Any,
) -> TorchMapStep:
    """The torch MAP step on ``score_net`` (fine-tuned in place); call ``.step(...)``.

    Args:
      score_net: ``torch_reference.ddpm.DDPM`` (``forward(x NCHW, t (B,) float) -> eps``), e.g.
        :func:`shared_score_net`'s ``torch_net``.
      surrogates: the FR ensemble: :class:`Surrogate` s, ``(embed, weight)`` or
        ``(module, embed, weight)`` (``onnx_torch.sface_torch()`` returns ``(module,
        embed)``); ``embed`` maps (N, 112, 112, 3) RGB [0, 1] to unit (N, D). Weights are
        normalised to sum to 1, as jaxcloak's ``Ensemble``.
      fer_net: ``fer_torch.load_fer_torch()`` (NCHW grey 64 in, logits out).
      config: jaxcloak's ``MapConfig`` with ``projection="none"`` and ``sm_variant="none"``.
      tuned: False for DiffAM's coding, True for the tuned variant (module docstring).
      **options: ``compile`` (default: ``tuned``), ``channels_last`` (False), ``remat``
        (False: keep every DDIM step's activations, as DiffAM; True: ``torch.utils.checkpoint``
        per step, as jaxcloak's remat), ``fr_resize`` (``matrix`` or ``grid_sample``),
        ``abar`` (a float32 alpha_bar table).
    """
    return TorchMapStep(score_net, surrogates, fer_net, config, tuned=tuned, **options)
