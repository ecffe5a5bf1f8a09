"""PyTorch state dict -> Flax NNX params, as a pure host-side key mapping that fails loudly.

Our networks mirror torch's attribute names (see :mod:`jaxcloak.nets.layers`), so the key map
is derived from the abstract Flax state itself: path ``('layer1', 0, 'bn1', 'weight')`` <->
key ``"layer1.0.bn1.weight"``. Each entry carries the transform that turns the torch array into
ours, chosen by the kind of leaf:

* 4-d conv ``weight``: OIHW -> HWIO.
* 2-d linear ``weight``: (out, in) -> (in, out); IResNet's ``fc`` additionally permutes rows
  from NCHW- to NHWC-flatten order (:func:`jaxcloak.nets.iresnet.fc_rows_from_torch`).
* everything else (biases, BatchNorm affine and running stats, PReLU slopes): unchanged.

:func:`fill_params` raises :class:`ConversionError` naming the key for anything missing,
unused or mis-shaped; ``num_batches_tracked`` buffers (training-only) are skipped. Nothing here is
jitted; torch itself is only needed to read ``.pth`` files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..typing import Params
from .onnx.errors import ConversionError

__all__ = [
    "ConversionError",
    "KeyMapEntry",
    "fill_params",
    "key_map",
    "load_checkpoint",
    "strip_prefix",
]

Transform = Callable[[np.ndarray], np.ndarray]
Path_ = tuple[str | int, ...]

# torch buffers that carry no inference state.
_IGNORED_SUFFIXES = ("num_batches_tracked",)


@dataclass(frozen=True)
class KeyMapEntry:
    """Where one torch tensor goes and how it is reshaped on the way.

    Attributes:
      path: NNX state path of the target leaf.
      torch_shape: the shape the torch tensor must have.
      shape: the shape of the target leaf (after ``transform``).
      transform: torch array -> our array.
    """

    path: Path_
    torch_shape: tuple[int, ...]
    shape: tuple[int, ...]
    transform: Transform


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _oihw_to_hwio(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0)


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T


def _flat_abstract(abstract: Params) -> dict[Path_, jax.ShapeDtypeStruct]:
    """NNX state -> {path: leaf}; drops the trailing ``.value`` attribute of each Variable."""
    out: dict[Path_, jax.ShapeDtypeStruct] = {}
    for keypath, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        path = tuple(getattr(k, "key", getattr(k, "name", None)) for k in keypath)
        if path and path[-1] == "value":
            path = path[:-1]
        out[path] = leaf
    return out


def key_map(
    abstract: Params, overrides: Mapping[str, Transform] | None = None
) -> dict[str, KeyMapEntry]:
    """Rule-based torch key -> :class:`KeyMapEntry` for any torch-mirroring network.

    Args:
      abstract: the (abstract or concrete) NNX param state, e.g. from ``build(...)[1]``.
      overrides: torch key -> transform for leaves the rules get wrong (IResNet's ``fc``);
        the expected torch shape of an overridden 2-d weight is the transposed target shape.

    Returns:
      One entry per leaf of ``abstract``, keyed by its dotted torch name.
    """
    overrides = dict(overrides or {})
    entries: dict[str, KeyMapEntry] = {}
    for path, leaf in _flat_abstract(abstract).items():
        name = ".".join(str(p) for p in path)
        shape = tuple(leaf.shape)
        if path[-1] == "weight" and len(shape) == 4:
            torch_shape, fn = (shape[3], shape[2], shape[0], shape[1]), _oihw_to_hwio
        elif path[-1] == "weight" and len(shape) == 2:
            torch_shape, fn = shape[::-1], _transpose
        else:
            torch_shape, fn = shape, _identity
        fn = overrides.pop(name, fn)
        entries[name] = KeyMapEntry(path, torch_shape, shape, fn)
    if overrides:  # a typo here would otherwise silently keep the default rule
        raise ConversionError(f"overrides name keys the network does not have: {sorted(overrides)}")
    return entries


def strip_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop a ``module.`` prefix that ``nn.DataParallel`` puts on every key.

    Only when *every* key has it, so a genuine sub-module named ``module`` is never touched.
    """
    keys = list(state_dict)
    prefix = "module."
    if keys and all(k.startswith(prefix) for k in keys):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _check_keys(state_dict: Mapping[str, np.ndarray], entries: Mapping[str, KeyMapEntry]) -> None:
    """Raise on any missing, unused or mis-shaped key, listing every offender by name."""
    given = {k for k in state_dict if not k.endswith(_IGNORED_SUFFIXES)}
    problems = []
    if missing := sorted(set(entries) - given):
        problems.append(f"missing keys: {missing}")
    if unused := sorted(given - set(entries)):
        problems.append(f"unused keys: {unused}")
    for key in sorted(given & set(entries)):
        got = tuple(np.shape(state_dict[key]))
        if got != entries[key].torch_shape:
            problems.append(f"key {key!r} has shape {got}, expected {entries[key].torch_shape}")
    if problems:
        raise ConversionError("cannot convert state dict: " + "; ".join(problems))


def fill_params(
    state_dict: Mapping[str, np.ndarray],
    entries: Mapping[str, KeyMapEntry],
    abstract: Params,
    *,
    dtype: jnp.dtype = jnp.float32,
) -> Params:
    """Check ``state_dict`` against a key map (raising, naming keys) and build the params.

    Args:
      state_dict: torch key -> array, prefixes already stripped.
      entries: the key map (torch key -> :class:`KeyMapEntry`) of ``abstract``.
      abstract: the abstract NNX state to fill.
      dtype: dtype of the returned params.
    """
    _check_keys(state_dict, entries)
    by_path = {e.path: name for name, e in entries.items()}

    def fill(keypath: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        path = tuple(getattr(k, "key", getattr(k, "name", None)) for k in keypath)
        name = by_path[path[:-1] if path[-1] == "value" else path]
        arr = entries[name].transform(np.asarray(state_dict[name], dtype=np.float32))
        if arr.shape != tuple(leaf.shape):  # a transform bug, not a checkpoint problem
            raise ConversionError(f"key {name!r} transformed to {arr.shape}, expected {leaf.shape}")
        return jnp.asarray(np.ascontiguousarray(arr), dtype=dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a state dict as name -> float32 NumPy array.

    ``.pth``/``.pt``/``.ckpt``/``.bin`` need torch and are read with ``weights_only=True`` (no
    pickle code runs); a Lightning-style ``{"state_dict": {...}}`` wrapper is unwrapped;
    ``.safetensors`` needs the ``safetensors`` package; ``.npz`` needs nothing extra.

    Args:
      path: the checkpoint file.

    Raises:
      ConversionError: for an unknown suffix, a missing reader, or a file that is not a flat
        name -> tensor mapping.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt", ".ckpt", ".bin"):
        try:
            import torch
        except ImportError:
            raise ConversionError(f"{path}: reading .pth needs torch; or export to .npz") from None
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in obj.values()
        ):
            raise ConversionError(f"{path}: expected a flat state dict of tensors")
        return {k: v.detach().float().numpy() for k, v in obj.items()}
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ConversionError(f"{path}: reading .safetensors needs `safetensors`") from None
        return {k: np.asarray(v, np.float32) for k, v in load_file(str(path)).items()}
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k], np.float32) for k in data.files}
    raise ConversionError(f"{path}: unsupported checkpoint format {suffix!r}")
