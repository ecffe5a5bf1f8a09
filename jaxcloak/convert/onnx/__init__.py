"""ONNX -> JAX conversion: ``apply_fn, params = convert("model.onnx")``."""

from .errors import ConversionError, UnsupportedOpError
from .graph import Edit, OnnxFunction, Site, convert
from .ops import MAX_OP_VERSION, OPS

SUPPORTED_OPS = tuple(sorted(OPS))

__all__ = [
    "MAX_OP_VERSION",
    "SUPPORTED_OPS",
    "ConversionError",
    "Edit",
    "OnnxFunction",
    "Site",
    "UnsupportedOpError",
    "convert",
]
