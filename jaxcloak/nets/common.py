"""What every network module of :mod:`jaxcloak.nets` derives the same way from its variants.

An :class:`Architecture` pairs a network class with its table of named configs and provides
what each network module exports from them: ``get_config``, ``build``, ``init`` and, for a face
recogniser, ``make_embed`` (bound methods, so ``iresnet.build("r50")`` reads as a module
function), plus the generic key-mapped state-dict conversion (:meth:`Architecture.convert`).
:class:`StagedNet`, :func:`face_input` and :func:`stride2_side` are the other pieces the face
recognisers share, :func:`read_diffusers_folder` the one the diffusers ports share.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from ..convert.torch import ConversionError, fill_params, key_map, load_checkpoint, strip_prefix
from ..typing import Embedding, EmbedFn, Image, Params
from .layers import host_init, unit_rows

__all__ = ["Architecture", "StagedNet", "face_input", "read_diffusers_folder", "stride2_side"]

C = TypeVar("C")


@dataclass(frozen=True)
class Architecture(Generic[C]):
    """A network class with its named variants.

    Attributes:
      label: the network's name in error messages (``"IResNet"``).
      network: the class, called as ``network(config, rngs=nnx.Rngs(seed))``.
      config_type: the config class; an instance passes through :meth:`get_config` unchanged.
      variants: the module's ``VARIANTS`` table, name -> config (read at every lookup).
      host_random: :meth:`init` draws with :func:`~jaxcloak.nets.layers.host_init` (NumPy:
        compiling one JAX draw per leaf takes 10-20 s on CPU for a UNet) instead of the layers'
        own initialisers.
      embedding_std: ``host_init``'s std of ``*_embedding`` tables (None: LeCun like any matrix).
      preprocess: a face recogniser's ``preprocess(images, input_size)`` (its configs have an
        ``input_size``), which :meth:`make_embed` applies; None for other networks.
    """

    label: str
    network: Callable[..., nnx.Module]
    config_type: type[C]
    variants: Mapping[str, C]
    host_random: bool = False
    embedding_std: float | None = None
    preprocess: Callable[[Image, int], jax.Array] | None = None

    def get_config(self, variant: str | C) -> C:
        """Look a variant up by name (or pass a config through)."""
        if isinstance(variant, self.config_type):
            return variant
        try:
            return self.variants[variant]
        except KeyError:
            raise KeyError(
                f"unknown {self.label} variant {variant!r}; known: {sorted(self.variants)}"
            ) from None

    def build(self, variant: str | C, *, seed: int = 0) -> tuple[nnx.GraphDef, Params]:
        """Split the network once into its definition and an abstract (shape-only) param state.

        ``nnx.eval_shape`` under the hood, so nothing is allocated even for the largest variants;
        the abstract state is the target that conversion fills and checks shapes against.

        Args:
          variant: a ``VARIANTS`` name or a config.
          seed: only affects the discarded initial values.

        Returns:
          ``(graphdef, abstract_params)``; ``nnx.merge(graphdef, params)`` rebuilds the module.
        """
        config = self.get_config(variant)
        return nnx.split(nnx.eval_shape(lambda: self.network(config, rngs=nnx.Rngs(seed))))

    def init(self, variant: str | C, *, seed: int = 0) -> tuple[nnx.GraphDef, Params]:
        """Like :meth:`build` but with concrete random (untrained) params, for tests and demos.

        With ``host_random``: conv kernels ~ N(0, 2 / fan_in), linear weights ~ N(0, 1 / fan_in),
        ``*_embedding`` tables ~ N(0, embedding_std^2) when set, norm scales 1, biases 0, drawn
        with NumPy from ``seed`` (call it eagerly: under ``jit`` the values would become
        constants). Otherwise the layers' own initialisers under ``nnx.Rngs(seed)``.

        Returns:
          ``(graphdef, params)`` with :meth:`build`'s tree, shapes and dtypes.
        """
        if self.host_random:
            graphdef, abstract = self.build(variant)
            return graphdef, host_init(abstract, seed, embedding_std=self.embedding_std)
        return nnx.split(self.network(self.get_config(variant), rngs=nnx.Rngs(seed)))

    def convert(
        self,
        state_dict: Mapping[str, Any],
        variant: str | C,
        *,
        dtype: jnp.dtype = jnp.float32,
        rename: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    ) -> Params:
        """Params of ``variant`` from a state dict whose keys name our state paths one to one.

        A ``module.`` prefix on every key is dropped first, then ``rename`` (e.g. old to current
        key names) applies; conv kernels OIHW -> HWIO and linear weights are transposed
        (:func:`~jaxcloak.convert.torch.key_map`'s generic rules).

        Raises:
          ConversionError: naming every missing, unused or mis-shaped key.
        """
        _, abstract = self.build(variant)
        state_dict = strip_prefix(state_dict)
        if rename is not None:
            state_dict = rename(state_dict)
        return fill_params(state_dict, key_map(abstract), abstract, dtype=dtype)

    def make_embed(self, variant: str | C) -> EmbedFn:
        """A face recogniser's pure :class:`~jaxcloak.typing.EmbedFn`: closes over structure only.

        Args:
          variant: a ``VARIANTS`` name or a config.

        Returns:
          ``embed(params, images)``: (N, S, S, 3) RGB [0, 1] -> the network's raw output rows,
          L2-normalised (:func:`~jaxcloak.nets.layers.unit_rows`, torch's ``F.normalize``).
          Not jitted (jit at the edge); merging the graph happens at trace time only.
        """
        if self.preprocess is None:
            raise TypeError(f"{self.label} is not a face recogniser (no preprocess)")
        preprocess, config = self.preprocess, self.get_config(variant)
        graphdef, _ = self.build(config)

        def embed(params: Params, images: Image) -> Embedding:
            raw = nnx.merge(graphdef, params)(preprocess(images, config.input_size))
            return unit_rows(raw)

        return embed


class StagedNet(nnx.Module):
    """A face recogniser run as ``stem``, then ``stage(s)`` for each ``s`` in ``stage_order``,
    then ``head``: the subclass defines the three (exposed so parity can be checked layer by
    layer) and, unless its stages are 1..4, ``stage_order``."""

    stage_order: tuple[Any, ...] = (1, 2, 3, 4)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, S, S, 3) input already in the network's range -> (N, D) raw (un-normalised)
        features."""
        x = self.stem(x)
        for s in self.stage_order:
            x = self.stage(s, x)
        return self.head(x)


def stride2_side(side: int, times: int = 4) -> int:
    """Spatial side after ``times`` 3x3/stride-2/pad-1 convolutions (or 1x1/stride-2 picks)."""
    for _ in range(times):
        side = (side - 1) // 2 + 1
    return side


def face_input(
    images: Image,
    input_size: int,
    label: str,
    *,
    aligned: bool = True,
    divisor: float = 127.5,
    hint: str = "",
) -> jax.Array:
    """Check a batch of square RGB faces and map [0, 1] to ``(x * 255 - 127.5) / divisor``.

    Args:
      images: (N, S, S, 3) RGB faces in [0, 1].
      input_size: the expected side S.
      label: the network's name in the error message.
      aligned: the message asks for aligned faces.
      divisor: 127.5 (range [-1, 1]) or facenet-pytorch's 128.
      hint: appended to the error message.

    Raises:
      ValueError: on any other shape.
    """
    if images.ndim != 4 or images.shape[1:] != (input_size, input_size, 3):
        kind = "aligned " if aligned else ""
        raise ValueError(
            f"{label} expects {kind}(N, {input_size}, {input_size}, 3) RGB faces, "
            f"got {images.shape}{hint}"
        )
    return (images * 255.0 - 127.5) / divisor


def read_diffusers_folder(
    path: str | os.PathLike[str],
    subfolder: str,
    config_from: Callable[[Mapping[str, Any]], C],
    convert: Callable[..., Params],
    *,
    dtype: jnp.dtype = jnp.float32,
) -> tuple[C, Params]:
    """``(config, params)`` of a diffusers model folder (``save_pretrained`` or a Hub snapshot).

    Reads ``config.json`` through ``config_from``, then ``diffusion_pytorch_model.safetensors``
    (or ``.bin``, read with torch, ``weights_only``; see
    :func:`~jaxcloak.convert.torch.load_checkpoint`) through
    ``convert(state_dict, config, dtype=dtype)``. A pipeline folder whose ``subfolder/`` holds
    them works too.

    Raises:
      ConversionError: a missing file, or whatever ``config_from``, the reader or ``convert``
        raise.
    """
    root = Path(path)
    if not (root / "config.json").is_file() and (root / subfolder / "config.json").is_file():
        root = root / subfolder
    if not (root / "config.json").is_file():
        raise ConversionError(f"{root}: no config.json")
    config = config_from(json.loads((root / "config.json").read_text()))
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (root / name).is_file():
            return config, convert(load_checkpoint(root / name), config, dtype=dtype)
    raise ConversionError(f"{root}: no diffusion_pytorch_model.safetensors or .bin")
