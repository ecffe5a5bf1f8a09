"""Errors raised while converting or running an ONNX graph."""

from __future__ import annotations


class ConversionError(ValueError):
    """The ONNX graph cannot be converted faithfully; the message says where and why."""


class UnsupportedOpError(ConversionError):
    """An op (or an op version) the converter has no faithful implementation for."""

    def __init__(self, op_type: str, node_name: str, opset: int, detail: str = "") -> None:
        self.op_type, self.node_name, self.opset = op_type, node_name, opset
        msg = f"unsupported ONNX op {op_type!r} in node {node_name!r} (opset {opset})"
        super().__init__(f"{msg}: {detail}" if detail else msg)
