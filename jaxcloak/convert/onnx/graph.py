"""Walk an ONNX graph once on the host and return a pure JAX function of ``(params, *inputs)``.

Conversion:
  1. initialisers become NumPy constants (floating ones upcast to float32);
  2. every node whose inputs are all constants is evaluated now (constant folding); this
     dequantises int8 weights and folds shape-only subgraphs on constants (shape arithmetic
     on graph inputs runs in NumPy at trace time, so it never reaches the compiled program);
  3. each inference BatchNormalization fed by a Conv alone is folded into that Conv's
     weights (:mod:`.fold`);
  4. floating constants that feed the remaining nodes through a non-static input become
     ``params`` (the weights: trainable, differentiable, passed as arguments so they are
     not baked into the compiled program); everything else stays a static constant;
  5. graph inputs that nothing consumes (SFace declares 29) are dropped.

Any op, op version or attribute we cannot run faithfully raises: never a silent guess.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from onnx import defs, numpy_helper
from onnx import helper as onnx_helper

from .errors import ConversionError, UnsupportedOpError
from .fold import fold_batchnorm as fold_conv_batchnorm
from .layout import ChannelLast, nchw, run_channel_last
from .ops import MAX_OP_VERSION, OPS, Node, is_static

_DEFAULT_DOMAINS = ("", "ai.onnx")

# A param held pre-laid-out by OnnxFunction.prepare: key suffix -> the permutation that gives
# the stored array from the ONNX one (its inverse gives the ONNX array back).
PRELAID = {"::hwio": (2, 3, 1, 0), "::t": (1, 0)}


class Site(NamedTuple):
    """A node as an :data:`Edit` sees it.

    Attributes:
      op_type, name: the ONNX node's.
      index, count: its position among the nodes the function runs, and how many there are
        (``index / count`` is a model-agnostic depth).
      producers: per input, the index of the node that computed it; -1 for graph inputs,
        params and constants.
    """

    op_type: str
    name: str
    index: int
    count: int
    producers: tuple[int, ...]


#: ``edit(site, inputs, outputs) -> outputs``: called at trace time on every node that
#: computes from the graph's inputs, with its input and output values all in one layout
#: (channel-last 4-D activations stay NHWC, see :mod:`.layout`); what it returns replaces the
#: outputs. Elementwise edits (dropout masks, gradient rewrites, feature taps compared with
#: the same function's taps) do not depend on the layout.
Edit = Callable[[Site, tuple, tuple], tuple]


def _edited(edit: Edit, site: Site, ins: list[Any], outs: tuple) -> tuple:
    last = isinstance(outs[0], ChannelLast)

    def raw(v):  # in the first output's layout
        if isinstance(v, ChannelLast):
            return v.a if last else nchw(v)
        if last and isinstance(v, jax.Array) and v.ndim == 4:
            return jnp.transpose(v, (0, 2, 3, 1))
        return v

    new = edit(site, tuple(map(raw, ins)), tuple(map(raw, outs)))
    if len(new) != len(outs):
        raise ValueError(f"edit of {site.name!r} returned {len(new)} outputs, not {len(outs)}")
    pairs = zip(new, outs, strict=True)
    return tuple(ChannelLast(n) if isinstance(o, ChannelLast) else n for n, o in pairs)


def _attr_value(attr: onnx.AttributeProto) -> Any:
    v = onnx_helper.get_attribute_value(attr)
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode() for s in v]
    if isinstance(v, onnx.GraphProto | onnx.SparseTensorProto):
        raise ConversionError(
            f"attribute {attr.name!r}: subgraphs and sparse tensors are not supported"
        )
    return v


def _as_constant(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16":
        return arr.astype(np.float32)
    return arr


class _Step:
    """One node ready to run: its handler, parsed attributes and wiring."""

    def __init__(self, proto: onnx.NodeProto, opset: int) -> None:
        name = proto.name or f"{proto.op_type}:{','.join(proto.output)}"
        if proto.domain not in _DEFAULT_DOMAINS:
            raise UnsupportedOpError(proto.op_type, name, opset, f"custom domain {proto.domain!r}")
        spec = OPS.get(proto.op_type)
        if spec is None:
            raise UnsupportedOpError(proto.op_type, name, opset, "no converter for this op")
        try:
            version = defs.get_schema(proto.op_type, opset, "").since_version
        except Exception as e:  # the ONNX schema registry does not know it at this opset
            raise UnsupportedOpError(proto.op_type, name, opset, f"no schema: {e}") from e
        if not spec.min_version <= version <= MAX_OP_VERSION:
            raise UnsupportedOpError(
                proto.op_type,
                name,
                opset,
                f"op version {version} is outside the supported range "
                f"{spec.min_version}..{MAX_OP_VERSION}",
            )
        attrs = {a.name: _attr_value(a) for a in proto.attribute}
        self.proto = proto
        self.spec = spec
        self.node = Node(proto.op_type, name, opset, version, attrs, len(proto.output))
        self.inputs = list(proto.input)
        self.outputs = list(proto.output)

    def run(self, env: Mapping[str, Any], channel_last: bool = False) -> tuple:
        """The node's outputs from ``env``; with ``channel_last`` (CPU), 4-D activations may
        be :class:`~.layout.ChannelLast` in and out (see :mod:`.layout`)."""
        args = [env[i] if i else None for i in self.inputs]
        all_static = all(a is None or is_static(a) for a in args)
        node = dataclasses.replace(self.node, xp=np if all_static else jnp)
        try:
            if all_static:
                # Constant inputs: compute now, even under jit, and keep the result NumPy.
                with jax.ensure_compile_time_eval():
                    out = self.spec.fn(node, *args)
                    out = tuple(np.asarray(o) for o in (out if isinstance(out, tuple) else (out,)))
            else:
                out = None
                if channel_last:
                    out = run_channel_last(node.op_type, self.spec.fn, node, args)
                if out is None:
                    out = self.spec.fn(node, *[nchw(a) for a in args])
                    out = out if isinstance(out, tuple) else (out,)
        except ConversionError:
            raise
        except Exception as e:
            n = node
            raise ConversionError(
                f"{n.op_type} node {n.name!r} (opset {n.opset}) failed: {type(e).__name__}: {e}"
            ) from e
        return out


class OnnxFunction:
    """A converted ONNX graph: ``fn(params, *inputs) -> tuple of outputs``.

    Pure: no state besides the static constants it closes over. Inputs follow
    ``input_names`` (the graph inputs some node consumes); outputs follow ``output_names``.
    """

    def __init__(
        self,
        steps: list[_Step],
        constants: dict[str, np.ndarray],
        graph: onnx.GraphProto,
        input_names: list[str],
        model: onnx.ModelProto,
        param_names: set[str] = frozenset(),
    ) -> None:
        self._steps = steps
        self._param_names = frozenset(param_names)
        self._constants = constants
        self.input_names = input_names
        self.output_names = [o.name for o in graph.output]
        self.opset = _default_opset(model)
        self._io = ([vi for vi in graph.input if vi.name in input_names], list(graph.output))
        self._opset_import = list(model.opset_import)
        made = {o: i for i, st in enumerate(steps) for o in st.outputs if o}
        self._sites = [
            Site(
                st.node.op_type,
                st.node.name,
                i,
                len(steps),
                tuple(made.get(n, -1) for n in st.inputs),
            )
            for i, st in enumerate(steps)
        ]

    @property
    def sites(self) -> list[Site]:
        """Every node the function runs, as an :data:`Edit` would see it."""
        return list(self._sites)

    def __call__(
        self, params: Mapping[str, Any], *inputs: Any, edit: Edit | None = None
    ) -> tuple[jax.Array, ...]:
        """The graph's outputs; ``edit`` (optional) rewrites node outputs as they are
        computed, e.g. to tap activations or change how gradients flow, without touching
        ``params``."""
        if len(inputs) != len(self.input_names):
            raise TypeError(
                f"expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}"
            )
        env: dict[str, Any] = dict(self._constants)
        for name, value in params.items():
            base, tag = self._split_prelaid(name)
            if tag:
                # The ONNX layout back; the consumer's own transpose into the same stored
                # layout then cancels with this one when XLA simplifies the program.
                value = jnp.transpose(value, np.argsort(PRELAID[tag]))
            env[base] = value
        # Inputs are runtime values even when given as NumPy: only constants are folded.
        env.update(zip(self.input_names, map(jnp.asarray, inputs), strict=True))
        channel_last = jax.default_backend() == "cpu"
        for step, site in zip(self._steps, self._sites, strict=True):
            outs = step.run(env, channel_last)
            if edit is not None and not all(isinstance(o, np.ndarray) for o in outs):
                outs = _edited(edit, site, [env[i] if i else None for i in step.inputs], outs)
            env.update(zip(step.outputs, outs, strict=False))
        return tuple(jnp.asarray(nchw(env[name])) for name in self.output_names)

    def prepare(self, params: Mapping[str, Any]) -> dict[str, jax.Array]:
        """``params`` with Conv kernels stored HWIO and ``transB`` Gemm weights transposed.

        ``fn(fn.prepare(params), x)`` computes the same as ``fn(params, x)``, but on CPU, where
        the converted Convs run channel-last (HWIO kernels), no weight is re-laid-out per
        call: a step in ``lax.scan`` otherwise transposes every kernel on every iteration
        (XLA does not hoist transposes out of loops), which took a third of SFace's
        FaceCloak step. A weight is re-laid-out only if every node reading it wants the same
        layout; its key gains a suffix (``w`` -> ``w::hwio``), so gradients with respect to
        prepared params are in the prepared layout. Idempotent.
        """
        wants: dict[str, set[str]] = {}
        for step in self._steps:
            for k, name in enumerate(step.inputs):
                if name not in params:
                    continue
                tag = None
                if k == 1 and step.node.op_type == "Conv" and np.ndim(params[name]) == 4:
                    tag = "::hwio"
                elif k == 1 and step.node.op_type == "Gemm" and step.node.attr("transB", 0):
                    tag = "::t"
                wants.setdefault(name, set()).add(tag)
        out: dict[str, jax.Array] = {}
        for name, value in params.items():
            tags = wants.get(name, {None})
            tag = next(iter(tags)) if len(tags) == 1 else None
            if tag is None:
                out[name] = value
            else:
                # On the host: a device transpose compiles a program per weight shape.
                out[name + tag] = jax.device_put(np.transpose(np.asarray(value), PRELAID[tag]))
        return out

    def _split_prelaid(self, name: str) -> tuple[str, str]:
        """``("w", "::hwio")`` for a key ``prepare`` made from the param ``w``, else
        ``(name, "")`` (a genuine tensor name that happens to end like a suffix stays as is)."""
        if name not in self._param_names:
            for tag in PRELAID:
                if name.endswith(tag) and name[: -len(tag)] in self._param_names:
                    return name[: -len(tag)], tag
        return name, ""

    def _unprepared(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Params in the ONNX layout, whether or not they went through ``prepare``."""
        out = {}
        for name, value in params.items():
            base, tag = self._split_prelaid(name)
            out[base] = np.transpose(np.asarray(value), np.argsort(PRELAID[tag])) if tag else value
        return out

    def to_model(self, params: Mapping[str, Any]) -> onnx.ModelProto:
        """The folded graph as ONNX: only the nodes left to run, params and constants as
        initialisers. Converting it again gives the same function with nothing to fold,
        which is what the model cache stores."""
        params = self._unprepared(params)
        inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in params.items()]
        inits += [numpy_helper.from_array(np.asarray(v), k) for k, v in self._constants.items()]
        graph = onnx_helper.make_graph(
            [s.proto for s in self._steps],
            "jaxcloak_folded",
            self._io[0],
            self._io[1],
            initializer=inits,
        )
        return onnx_helper.make_model(
            graph, opset_imports=self._opset_import, producer_name="jaxcloak"
        )

    def __repr__(self) -> str:
        return (
            f"OnnxFunction(inputs={self.input_names}, outputs={self.output_names}, "
            f"nodes={len(self._steps)}, opset={self.opset})"
        )


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            return int(imp.version)
    raise ConversionError("the model imports no default-domain (ai.onnx) opset")


def convert(
    model: onnx.ModelProto | str | os.PathLike,
    *,
    allow_unused_weights: bool = False,
    fold_batchnorm: bool = True,
) -> tuple[OnnxFunction, dict[str, jax.Array]]:
    """Convert an ONNX model into ``(apply_fn, params)``.

    Args:
      model: a loaded ``onnx.ModelProto`` or the path of an ``.onnx`` file.
      allow_unused_weights: by default a floating initialiser that no node consumes raises,
        since it usually means a graph was truncated or mis-exported.
      fold_batchnorm: absorb each inference BatchNormalization into the Conv that alone
        feeds it (see :mod:`.fold`); the folded weights replace the originals in ``params``.

    Returns:
      ``apply_fn(params, *inputs) -> tuple`` (pure; jit, grad and vmap it freely) and
      ``params``, a flat dict of float32 arrays named after the ONNX tensors they feed.

    Raises:
      UnsupportedOpError: an op, op version or attribute value has no faithful implementation.
      ConversionError: anything else that would make the result wrong.
    """
    where = ""
    if not isinstance(model, onnx.ModelProto):
        where = f" in {os.fspath(model)!r}"
        try:
            model = onnx.load(os.fspath(model))
        except Exception as e:
            raise ConversionError(f"cannot read ONNX model {os.fspath(model)!r}: {e}") from e
    try:
        return _convert(model, allow_unused_weights, fold_batchnorm)
    except ConversionError as e:
        if where and where not in str(e):
            e.args = (f"{e.args[0]}{where}",)
        raise


def _convert(
    model: onnx.ModelProto, allow_unused_weights: bool, fold_batchnorm: bool
) -> tuple[OnnxFunction, dict]:
    opset = _default_opset(model)
    graph = model.graph
    consts: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        consts[init.name] = _as_constant(numpy_helper.to_array(init))
    consumed = {i for n in graph.node for i in n.input if i}
    graph_outputs = [o.name for o in graph.output]

    unused = [
        k
        for k, v in consts.items()
        if k not in consumed and k not in graph_outputs and v.dtype.kind == "f"
    ]
    if unused and not allow_unused_weights:
        raise ConversionError(
            f"{len(unused)} floating initialisers are not used by any node: "
            f"{unused[:8]}{' ...' if len(unused) > 8 else ''}"
        )

    # Graph inputs that are initialisers (IR < 4 style) are constants; the rest are real
    # inputs unless nothing consumes them (dangling declarations are ignored).
    input_names = [
        vi.name
        for vi in graph.input
        if vi.name not in consts and (vi.name in consumed or vi.name in graph_outputs)
    ]

    steps = [_Step(n, opset) for n in graph.node]
    remaining: list[_Step] = []
    static_uses: set[str] = set()
    dynamic_uses: set[str] = set()
    defined = set(consts) | set(input_names)
    for step in steps:
        args = [i for i in step.inputs if i]
        missing = [i for i in args if i not in defined]
        if missing:
            raise ConversionError(
                f"{step.node.op_type} node {step.node.name!r} reads undefined "
                f"tensors {missing} (is the graph topologically sorted?)"
            )
        defined.update(o for o in step.outputs if o)
        # Shape of a graph input is not folded here even when the input declares a fixed
        # shape: the function must stay correct for other batch sizes. Under jit it is
        # static anyway, so it costs nothing at run time.
        foldable = all(i in consts for i in args)
        if foldable:
            with jax.default_device(jax.devices("cpu")[0]):
                outs = step.run(consts)
            for name, value in zip(step.outputs, outs, strict=False):
                if name:
                    consts[name] = _as_constant(value)
            continue
        remaining.append(step)
    if fold_batchnorm:
        remaining = fold_conv_batchnorm(
            remaining,
            consts,
            graph_outputs,
            lambda proto: _Step(proto, opset),
            reserved=[vi.name for vi in graph.input],
        )
    for step in remaining:
        for k, name in enumerate(step.inputs):
            if name in consts:
                (static_uses if k in step.spec.static_inputs else dynamic_uses).add(name)

    # device_put, not jnp.asarray: the latter stages every array through a small compiled
    # program per shape (33 of them for SFace), the former is a plain copy.
    params = {
        k: jax.device_put(consts[k]) for k in sorted(dynamic_uses) if consts[k].dtype.kind == "f"
    }
    keep = {k for k in static_uses | dynamic_uses | set(graph_outputs) if k in consts}
    constants = {k: consts[k] for k in keep if k not in params}
    fn = OnnxFunction(remaining, constants, graph, input_names, model, set(params))
    return fn, params
