"""The native architectures a PyTorch checkpoint can be imported into, and the conversion of
their state dicts: each name maps to a module of :mod:`jaxcloak.nets` that provides
``VARIANTS``, ``build(variant) -> (graphdef, abstract params)``, ``make_embed(variant)`` and,
where the generic key rules of :func:`jaxcloak.convert.torch.key_map` are not enough,
``torch_overrides(variant)``."""

from __future__ import annotations

import types
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from ..convert.torch import ConversionError, KeyMapEntry, fill_params, key_map, strip_prefix
from ..nets import facenet, iresnet, irse, mobilefacenet
from ..typing import Params

#: Architecture name -> the module of :mod:`jaxcloak.nets` that defines it.
ARCHS: dict[str, types.ModuleType] = {
    "iresnet": iresnet,
    "irse": irse,
    "mobilefacenet": mobilefacenet,
    "facenet": facenet,
}


def arch_module(arch: str) -> types.ModuleType:
    """The ``jaxcloak.nets`` module of ``arch`` (raises ConversionError if unknown)."""
    if arch not in ARCHS:
        raise ConversionError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    return ARCHS[arch]


def arch_key_map(arch: str, variant: str) -> tuple[dict[str, KeyMapEntry], Params]:
    """``(key map, abstract params)`` of one variant of a registered architecture."""
    module = arch_module(arch)
    if variant not in module.VARIANTS:
        raise ConversionError(
            f"unknown {arch} variant {variant!r}; known: {sorted(module.VARIANTS)}"
        )
    _, abstract = module.build(variant)
    overrides = module.torch_overrides(variant) if hasattr(module, "torch_overrides") else None
    return key_map(abstract, overrides), abstract


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray], arch: str, variant: str, *, dtype: jnp.dtype = jnp.float32
) -> Params:
    """Convert a torch state dict (name -> array) into the NNX params of ``arch``/``variant``.

    Args:
      state_dict: torch key -> array (NumPy, or anything ``np.asarray`` accepts).
      arch: a key of :data:`ARCHS`, e.g. ``"iresnet"``.
        A ``module.`` prefix on every key (``nn.DataParallel``) is dropped first.
      variant: that architecture's variant name, e.g. ``"r50"``.
      dtype: dtype of the returned params.

    Returns:
      A concrete NNX state matching ``build(variant)[1]`` leaf for leaf.

    Raises:
      ConversionError: on an unknown arch, or any missing, unused or mis-shaped key (named).
    """
    entries, abstract = arch_key_map(arch, variant)
    return fill_params(strip_prefix(state_dict), entries, abstract, dtype=dtype)
