"""MAP on photos: faces in, fine-tuned score network and protected photos out (host side).

:func:`run_map` is what ``jaxcloak map fit`` and ``jaxcloak protect --method map`` run:

1. every photo's largest face is aligned into the score network's square crop (the ArcFace
   template with a margin, :class:`~jaxcloak.objectives.map.FaceFrame`);
2. the target photo's face gives the target identity embedding (the recogniser, or ensemble);
3. each crop is DDIM-inverted once with the frozen weights; the score network is fine-tuned by
   the jitted step of :mod:`jaxcloak.methods.map.step` (state donated, orbax checkpoints, resume);
4. each face is regenerated with the fine-tuned weights and the edit (regenerated minus
   source, in crop space) is pasted back into the full-resolution photo;
5. ``RUN_DIR`` receives the protected photos, ``traces.json`` (every per-step metric),
   ``result.json`` (per-face cosines to the target before/after, measured on the written file
   after re-detection; target-expression probabilities; PSNR) and ``report.md``.

Without a user checkpoint the *embedded* score network is used: a small DDPM UNet with seeded
random weights and a zero-initialised output convolution, so that before fine-tuning it
predicts zero noise and DDIM inversion followed by generation reproduces the face exactly. Its
prior is untrained: the mechanics are real, the photorealism of a CelebA-HQ model is not.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ..diffusion import make_schedule
from ..faces import paste_back
from ..faces.align import estimate_similarity, warp_crop
from ..faces.photo import prepare_photo
from ..io import read_image, write_image
from ..io.atomic import atomic_write_json, atomic_write_text
from ..methods.map.config import MapConfig
from ..methods.map.step import (
    MapBatch,
    MapInputs,
    MapState,
    init_state,
    invert_faces,
    make_map_step,
    regenerate,
    resolve_auto,
)
from ..nets import ddpm_unet, fer_xception
from ..objectives.expression import fer_ce
from ..objectives.map import FaceFrame
from ..parallel import make_mesh, run_batched
from ..precision import Policy, recorded, scope, wrap_network
from ..precision import resolve as resolve_precision
from ..zoo.registry import FaceRecognizer

__all__ = [
    "EMBEDDED_VARIANT",
    "MapFace",
    "ScoreNet",
    "embedded_score_net",
    "fer_expression_loss",
    "load_score_net",
    "prepare_map_face",
    "run_map",
]

#: The score network used when the user gives none (see the module docstring).
EMBEDDED_VARIANT = "embedded"


@dataclasses.dataclass(frozen=True)
class ScoreNet:
    """A score network ready for MAP.

    Attributes:
      eps_fn: pure ``eps_fn(params, x, t)``.
      params: its weights.
      config: the architecture (its ``resolution`` is the crop side).
      source: where the weights came from.
      trained: False for the embedded, untrained network.
    """

    eps_fn: Callable
    params: Any
    config: ddpm_unet.DDPMConfig
    source: str
    trained: bool


def embedded_score_net(variant: str | None = None, *, seed: int = 0) -> ScoreNet:
    """The untrained score network MAP uses without a checkpoint (see the module docstring).

    Args:
      variant: a ``ddpm_unet.VARIANTS`` name; default :data:`EMBEDDED_VARIANT`.
      seed: initialisation seed.
    """
    variant = variant or EMBEDDED_VARIANT
    config = ddpm_unet.get_config(variant)
    _, params = ddpm_unet.init(config, seed=seed)
    # Zero output conv: eps = 0 until fine-tuning, so invert -> generate is the identity.
    params["conv_out"]["weight"] = jnp.zeros_like(params["conv_out"]["weight"])
    params["conv_out"]["bias"] = jnp.zeros_like(params["conv_out"]["bias"])
    source = (
        f"jaxcloak embedded score network ({variant} DDPM UNet, seed {seed}; untrained, "
        "zero output layer)"
    )
    return ScoreNet(ddpm_unet.make_score(config), params, config, source, False)


def load_score_net(
    path: str | Path | None = None, *, variant: str = "celeba_hq", seed: int = 0
) -> ScoreNet:
    """The user's score network, or :func:`embedded_score_net` when ``path`` is None.

    Args:
      path: a DiffusionCLIP/SDEdit state dict (``celeba_hq.ckpt``: ``.ckpt``/``.pth``/``.pt``
        read with torch ``weights_only``, or ``.safetensors``/``.npz``) or a diffusers
        ``UNet2DModel`` folder (``google/ddpm-celebahq-256`` layout).
      variant: architecture of a state-dict file (diffusers folders carry their config).
      seed: initialisation seed of the embedded network.

    Raises:
      ConversionError: naming any missing, unused or mis-shaped key, or an unreadable file.
    """
    if path is None:
        return embedded_score_net(seed=seed)
    path = Path(path)
    if path.is_dir():
        config, params = ddpm_unet.load_diffusers_folder(path)
    else:
        from ..convert.torch import load_checkpoint

        config = ddpm_unet.get_config(variant)
        params = ddpm_unet.convert_ddpm_state_dict(load_checkpoint(path), config)
    return ScoreNet(ddpm_unet.make_score(config), params, config, str(path), True)


@dataclasses.dataclass(frozen=True)
class MapFace:
    """One photo's face prepared for MAP.

    Attributes:
      path: the photo.
      rgb: its pixels (uint8).
      crop: (S, S, 3) uint8 face in the score network's frame.
      transform: (2, 3) photo -> crop matrix.
    """

    path: Path
    rgb: np.ndarray
    crop: np.ndarray
    transform: np.ndarray


def prepare_map_face(path: Path, frame: FaceFrame, *, min_face: float = 20) -> MapFace:
    """Read a photo and align its largest face into ``frame`` (raises naming the file)."""
    image = read_image(path)
    photo = prepare_photo(image, faces="largest", min_face=min_face)
    face = photo.faces[0]
    m = estimate_similarity(np.asarray(face.landmarks, np.float64), frame.template())
    return MapFace(Path(path), image.rgb, warp_crop(image.rgb, m, frame.size), m)


def _target_embedding(recognizer: FaceRecognizer, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The unit embedding of the largest face in the target photo, and its aligned crop."""
    image = read_image(path)
    face = prepare_photo(image, faces="largest").faces[0]
    x = face.crop[None].astype(np.float32) / 255.0
    return np.asarray(jax.jit(recognizer.embed)(recognizer.params, x))[0], face.crop


def fer_expression_loss(kind: str = "fer_ce") -> Callable:
    """L_E on the regenerated crop: ``(fer_params, x_hat, x0, target) -> (loss, p_target)``.

    ``fer_ce``: cross-entropy to the target emotion index (``target`` an int32 scalar);
    ``fer_align``: 1 - cosine to reference features (``target`` a (128,) vector), reporting
    that cosine as the "probability".
    """
    from ..objectives.expression import fer_align

    def loss(params, x_hat, x0, target):
        del x0
        x01 = (x_hat + 1.0) * 0.5
        if kind == "fer_ce":
            logits = fer_xception.expression_logits(params, x01)
            p = jax.nn.softmax(logits, axis=-1)[:, target]
            return jnp.mean(fer_ce(logits, target)), p
        feats = fer_xception.expression_features(params, x01)
        value = fer_align(feats, target)
        return jnp.mean(value), 1.0 - value

    if kind not in ("fer_ce", "fer_align"):
        raise ValueError(f"expression loss must be fer_ce or fer_align, got {kind!r}")
    return loss


def _to_pm1(crops: np.ndarray) -> jax.Array:
    return jnp.asarray(crops, jnp.float32) / 127.5 - 1.0


def _checkpointer(run_dir: Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (run_dir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
    )


def _save(manager, state: MapState) -> None:
    import orbax.checkpoint as ocp

    manager.save(int(state.step), args=ocp.args.StandardSave(state))
    manager.wait_until_finished()


def _restore(manager, like: MapState) -> MapState | None:
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), like)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def _psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR in dB, None for identical images (JSON has no infinity)."""
    from ..evaluate.metrics import psnr

    value = float(psnr(a, b))
    return value if np.isfinite(value) else None


def _db(value: float | None) -> str:
    return "identical" if value is None else f"{value:.1f}"


def run_map(
    photos: Sequence[Path],
    target_photo: Path,
    run_dir: Path,
    *,
    recognizer: FaceRecognizer,
    expression: str = "happy",
    expression_loss: str = "fer_ce",
    expression_ref: Path | None = None,
    config: MapConfig,
    score: ScoreNet,
    seed: int = 0,
    resume: bool = True,
    progress: Callable | None = None,
    out_format: str | None = None,
    mesh: Mesh | None = None,
    precision: Policy | None = None,
) -> dict[str, Any]:
    """Fine-tune ``score`` on the photos' faces toward the target identity and expression.

    Returns the ``result.json`` content; also writes the protected photos (``run_dir /
    "protected"``), ``traces.json``, ``report.md`` and orbax checkpoints (``checkpoints/``,
    resumed from when ``resume`` and the run's settings match). ``precision`` (default: the
    backend's ``auto``, :mod:`jaxcloak.precision`) is the policy the score network and the
    surrogate run under; the fine-tuned weights, Adam and the losses stay float32.

    Raises:
      ValueError / ImageReadError / NoFaceError: naming the photo that cannot be used.
    """
    policy = resolve_precision(precision)
    # Every program below is traced under the policy's matmul precision.
    with scope(policy):
        t_start = time.perf_counter()
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        frame = FaceFrame(score.config.resolution, config.margin)
        faces = [prepare_map_face(Path(p), frame) for p in photos]
        target_emb, _ = _target_embedding(recognizer, Path(target_photo))
        fer_params = fer_xception.load_fer()
        emo = fer_xception.emotion_index(expression)
        if expression_loss == "fer_align":
            if expression_ref is None:
                raise ValueError("--expression-loss fer_align needs --expression-ref PHOTO")
            _, ref_crop = _target_embedding(recognizer, Path(expression_ref))
            ref01 = jnp.asarray(ref_crop[None], jnp.float32) / 255.0
            expr_target = fer_xception.expression_features(fer_params, ref01)[0]
        else:
            expr_target = jnp.asarray(emo, jnp.int32)

        # Decide remat/unroll now, so the settings record what runs (jaxcloak.methods.map.step).
        side = score.config.resolution
        batch_shape = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)  # one photo a step
        schedule = make_schedule()
        eps_fn = wrap_network(score.eps_fn, policy)
        config = resolve_auto(config, eps_fn, score.params, batch_shape, schedule)
        settings = {
            "photos": [str(f.path) for f in faces],
            "target": str(target_photo),
            "expression": expression,
            "expression_loss": expression_loss,
            "surrogate": recognizer.spec.name,
            "surrogate_sha256": recognizer.sha256,
            "score_net": score.source,
            "score_net_trained": score.trained,
            "seed": seed,
            "precision": policy.describe(),
            "config": dataclasses.asdict(config),
        }
        settings_path = run_dir / "settings.json"

        def comparable(s: dict[str, Any]) -> dict[str, Any]:
            # More steps, another checkpoint interval, or remat/unroll decided otherwise on
            # another machine (the same values) continue the same run.
            free = ("steps", "checkpoint_every", "remat", "unroll")
            cfg = {k: v for k, v in s["config"].items() if k not in free}
            return {**s, "config": cfg, "precision": recorded(s.get("precision"))}

        if (
            resume
            and settings_path.is_file()
            and comparable(json.loads(settings_path.read_text())) != comparable(settings)
        ):
            raise ValueError(
                f"{run_dir} holds a run with other settings; use another folder or --no-resume"
            )
        atomic_write_json(settings_path, settings)

        x0 = _to_pm1(np.stack([f.crop for f in faces]))
        # Inversion and regeneration are per image: split the photos over the devices.
        mesh = mesh if mesh is not None else make_mesh()
        inv = invert_faces(eps_fn, config)
        x_lat = run_batched(lambda p, s, x: inv(p, x, s), mesh, (score.params, schedule), (x0,))
        frozen = score.params if config.sm_variant == "distill" else None
        inputs = MapInputs(
            recognizer.params, jnp.asarray(target_emb), fer_params, expr_target, frozen
        )
        step_fn = make_map_step(
            eps_fn,
            schedule,
            wrap_network(recognizer.embed, policy),
            fer_expression_loss(expression_loss),
            config,
        )
        # Copy: the step donates its state, and the frozen weights must survive.
        state = init_state(jax.tree.map(jnp.copy, score.params), config, jax.random.PRNGKey(seed))
        manager = _checkpointer(run_dir)
        traces_path = run_dir / "traces.json"
        traces: dict[str, list] = {}
        if resume and (restored := _restore(manager, state)) is not None:
            state = restored
            if traces_path.is_file():
                traces = {
                    k: v[: int(state.step)] for k, v in json.loads(traces_path.read_text()).items()
                }
        elif not resume:
            for step in list(manager.all_steps()):
                manager.delete(step)

        start = int(state.step)
        n = len(faces)
        steps = range(start, config.steps)
        it = progress(steps, "MAP fine-tuning", len(steps)) if progress else steps
        t_fit = time.perf_counter()
        compile_s = None
        for step in it:
            i = step % n  # batch 1 in order, as DiffAM
            batch = MapBatch(x0[i : i + 1], x_lat[i : i + 1])
            t0 = time.perf_counter()
            state, metrics = step_fn(state, batch, inputs)
            if compile_s is None:
                jax.block_until_ready(state.step)
                compile_s = time.perf_counter() - t0
            for k, v in metrics.items():
                traces.setdefault(k, []).append(np.asarray(v).tolist())
            every = config.checkpoint_every
            if every and (step + 1) % every == 0 and step + 1 < config.steps:
                _save(manager, state)
                atomic_write_json(traces_path, traces)
        fit_s = time.perf_counter() - t_fit
        if start < config.steps:
            _save(manager, state)
        atomic_write_json(traces_path, traces)

        # Regenerate with the fine-tuned weights and paste the crop-space edit back.
        regen = regenerate(eps_fn, config)
        x_hat, x_rec = (
            run_batched(lambda p, s, x: regen(p, x, s), mesh, (params, schedule), (x_lat,))
            for params in (state.params, score.params)
        )
        out_dir = run_dir / "protected"
        out_dir.mkdir(exist_ok=True)
        rows = []
        fr_jit = jax.jit(recognizer.embed)
        fer_probs = jax.jit(
            lambda p, x: jax.nn.softmax(fer_xception.expression_logits(p, x), axis=-1)
        )
        from .outputs import output_name

        for k, face in enumerate(faces):
            delta = (x_hat[k] - np.asarray(x0[k])) * 127.5
            protected = paste_back(face.rgb, [delta], [face.transform])
            out = out_dir / output_name(Path(face.path.name), out_format)
            write_image(
                out, protected, like=read_image(face.path), overwrite=True, format=out_format
            )
            row = {"photo": str(face.path), "output": str(out)}
            # Measured on the written file: re-detect, re-align, embed.
            written = read_image(out)
            try:
                prot_face = prepare_photo(written, faces="largest").faces[0]
                clean_face = prepare_photo(read_image(face.path), faces="largest").faces[0]
                e = np.asarray(
                    fr_jit(
                        recognizer.params,
                        np.stack([clean_face.crop, prot_face.crop]).astype(np.float32) / 255.0,
                    )
                )
                row["cos_target_clean"] = float(e[0] @ target_emb)
                row["cos_target_protected"] = float(e[1] @ target_emb)
                row["cos_clean_protected"] = float(e[0] @ e[1])
            except Exception as err:  # reported in the row; the run goes on
                row["error"] = f"{type(err).__name__}: {err}"
            crops01 = np.stack([face.crop, np.clip((x_hat[k] + 1) * 127.5, 0, 255)]) / 255.0
            probs = np.asarray(fer_probs(fer_params, crops01.astype(np.float32)))
            row["p_expression_clean"] = float(probs[0, emo])
            row["p_expression_protected"] = float(probs[1, emo])
            row["psnr_photo"] = _psnr(face.rgb, written.rgb)
            row["psnr_crop"] = _psnr(face.crop, np.clip(np.rint((x_hat[k] + 1) * 127.5), 0, 255))
            row["reconstruction_max_err"] = float(np.abs(x_rec[k] - np.asarray(x0[k])).max())
            rows.append(row)

        thr = recognizer.spec.threshold
        result = {
            **settings,
            "threshold": thr,
            "faces": rows,
            "steps_run": config.steps - start,
            "compile_s": compile_s,
            "fit_s": fit_s,
            "seconds_per_step": (fit_s - (compile_s or 0)) / max(1, config.steps - start - 1),
            "total_s": time.perf_counter() - t_start,
        }
        atomic_write_json(run_dir / "result.json", result)
        atomic_write_text(run_dir / "report.md", _report(result, traces))
        return result


def _report(result: dict[str, Any], traces: dict[str, list]) -> str:
    lines = [
        "# MAP run",
        "",
        f"- Target: `{result['target']}`; expression: **{result['expression']}** "
        f"({result['expression_loss']}); surrogate: `{result['surrogate']}` "
        f"(same person at cosine ≥ {result['threshold']}).",
        f"- Score network: {result['score_net']}.",
    ]
    if not result["score_net_trained"]:
        lines.append(
            "- **The embedded score network is untrained**: the fine-tuning mechanics are real, "
            "but the edit is shaped by the losses alone, not by a face prior; pass "
            "`--score-net` with a CelebA-HQ DDPM checkpoint for photorealistic edits."
        )
    c = result["config"]
    lines += [
        f"- Projection: {c['projection']} ({c['granularity']}), steps {c['steps']}, "
        f"lr {c['learning_rate']}, t0 {c['t0']}, DDIM {c['n_inv']}/{c['n_train']}.",
        f"- Time: compile {result['compile_s'] or 0:.1f} s, "
        f"{result['seconds_per_step']:.2f} s per step, total {result['total_s']:.0f} s.",
        "",
        "| photo | cos→target clean | cos→target protected | p(expr) clean | p(expr) protected "
        "| PSNR photo | PSNR crop |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["faces"]:
        lines.append(
            f"| {Path(r['photo']).name} | {r.get('cos_target_clean', float('nan')):.3f} | "
            f"{r.get('cos_target_protected', float('nan')):.3f} | "
            f"{r['p_expression_clean']:.3f} | {r['p_expression_protected']:.3f} | "
            f"{_db(r['psnr_photo'])} | {_db(r['psnr_crop'])} |"
        )
    if traces.get("grad_cos_global"):
        g = np.asarray(traces["grad_cos_global"], np.float64)
        f = np.asarray(traces["frac_projected"], np.float64)
        lines += [
            "",
            f"Gradient conflict (identity vs expression): global cosine mean {g.mean():.3f} "
            f"(min {g.min():.3f}); fraction of layers projected mean {f.mean():.3f}.",
        ]
    return "\n".join(lines) + "\n"
