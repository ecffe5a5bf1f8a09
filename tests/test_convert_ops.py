"""Per-op parity tests of the ONNX -> JAX converter against ONNX Runtime.

Every case builds a tiny single-node (or few-node) ONNX model with ``onnx.helper``, runs it in
ONNX Runtime (``CPUExecutionProvider``, graph optimisations disabled so that ORT executes the
graph as written) and in JAX through ``jaxcloak.convert.onnx.convert`` (eagerly; one case is
jitted), and compares the outputs.

Tolerances: float outputs are compared with ``np.testing.assert_allclose`` at ``rtol=1e-5,
atol=1e-5`` (``RTOL``/``ATOL``); float16 outputs of ``Cast`` at ``rtol=1e-3, atol=1e-3``.
Integer and boolean outputs are compared exactly. QuantizeLinear -> DequantizeLinear pairs on
random activations are allowed to differ by one quantisation step (``x / scale`` may land on the
other side of a rounding boundary depending on how the division is done), while inputs built to
fall exactly on half-way points (power-of-two scale, so the division is exact) must match exactly,
which checks round-half-to-even. Shapes must always match exactly; dtypes must match in kind
(``int64`` in ONNX may legitimately be ``int32`` in JAX without x64).

Opsets: ops whose attribute/input form changed are swept over opsets 11, 13, 17 and 21 (and 18+
or 19+ only features at 21). Models use ir_version 8 for opset <= 18, 9 for 19-20, 10 for 21.

Data reaches the graph both as graph inputs and as initialisers (weights such as Conv ``W``/``B``
are initialisers; a few cases feed them as graph inputs instead).

Every combination listed here runs in ONNX Runtime 1.31 (CPU); none had to be dropped. Left out
on purpose: Reshape ``allowzero=1`` with a 0 entry (empty tensors), Resize ``cubic`` and
``tf_crop_and_resize``, Split ``num_outputs`` that would leave an empty chunk, overflowing Casts
(implementation-defined). Where ONNX leaves a corner underspecified (Pad ``wrap`` with negative
pads, float32 vs float64 Resize coordinates at an exact tie) the test pins ORT's behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

import jax  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from jaxcloak.convert.onnx import (  # noqa: E402
    ConversionError,
    UnsupportedOpError,
    convert,
)

RTOL = 1e-5
ATOL = 1e-5
OPSETS = (11, 13, 17, 21)
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min

node = helper.make_node


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def ir_version(opset: int) -> int:
    if opset <= 18:
        return 8
    if opset <= 20:
        return 9
    return 10


def rnd(*shape: int, lo: float = -1.0, hi: float = 1.0, seed: int = 0) -> np.ndarray:
    """Deterministic float32 uniform data in [lo, hi)."""
    rng = np.random.default_rng(seed + 7919 * len(shape) + sum(shape))
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    outputs: Sequence[str | tuple[str, Any]] = ("y",),
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 13,
    check: bool = True,
) -> onnx.ModelProto:
    """Build a model. ``outputs`` items are a name (float32) or ``(name, numpy dtype)``."""
    graph_inputs = [
        helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(np.asarray(a).dtype), np.shape(a)
        )
        for name, a in inputs.items()
    ]
    graph_outputs = []
    for out in outputs:
        name, dtype = (out, np.float32) if isinstance(out, str) else out
        graph_outputs.append(
            helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None
            )
        )
    initializers = [
        numpy_helper.from_array(np.asarray(a), name) for name, a in (inits or {}).items()
    ]
    graph = helper.make_graph(list(nodes), "g", graph_inputs, graph_outputs, initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=ir_version(opset),
        producer_name="jaxcloak-tests",
    )
    if check:
        # The checker wants output shapes: take them from ONNX shape inference (only the graph
        # outputs are updated; no intermediate value_info is added to the model under test).
        inferred = onnx.shape_inference.infer_shapes(model)
        for out, inf in zip(model.graph.output, inferred.graph.output, strict=True):
            if inf.type.tensor_type.HasField("shape"):
                out.type.CopyFrom(inf.type)
        if all(o.type.tensor_type.HasField("shape") for o in model.graph.output):
            onnx.checker.check_model(model)
    return model


def run_ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {k: np.asarray(v) for k, v in inputs.items()})


def run_jax(model: onnx.ModelProto, args: Sequence[np.ndarray], jit: bool = False) -> list:
    apply_fn, params = convert(model)
    fn = jax.jit(apply_fn) if jit else apply_fn
    outs = fn(params, *args)
    assert isinstance(outs, tuple), f"apply_fn must return a tuple, got {type(outs)}"
    return [np.asarray(o) for o in outs]


def assert_match(
    got: Sequence[np.ndarray],
    ref: Sequence[np.ndarray],
    rtol: float = RTOL,
    atol: float = ATOL,
) -> None:
    assert len(got) == len(ref), f"{len(got)} outputs, expected {len(ref)}"
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        g = np.asarray(g)
        r = np.asarray(r)
        assert g.shape == r.shape, f"output {i}: shape {g.shape}, expected {r.shape}"
        assert g.dtype.kind == r.dtype.kind, f"output {i}: dtype {g.dtype}, expected {r.dtype}"
        if r.dtype.kind in "iub":
            np.testing.assert_array_equal(g, r, err_msg=f"output {i}")
        else:
            np.testing.assert_allclose(
                g.astype(np.float64),
                r.astype(np.float64),
                rtol=rtol,
                atol=atol,
                err_msg=f"output {i}",
            )


def check(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    outputs: Sequence[str | tuple[str, Any]] = ("y",),
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 13,
    rtol: float = RTOL,
    atol: float = ATOL,
    jit: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Build, run in ORT and JAX, compare; returns (jax outputs, ort outputs)."""
    model = make_model(nodes, inputs, outputs, inits, opset)
    ref = run_ort(model, inputs)
    got = run_jax(model, list(inputs.values()), jit=jit)
    assert_match(got, ref, rtol=rtol, atol=atol)
    return got, ref


def ids(cases: Sequence[tuple]) -> list[str]:
    return [c[0] for c in cases]


# --------------------------------------------------------------------------------------------
# Conv
# --------------------------------------------------------------------------------------------

# (id, x shape, W shape, attributes, with bias)
CONV_CASES = [
    (
        "basic_pad1",
        (1, 3, 6, 6),
        (4, 3, 3, 3),
        {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]},
        True,
    ),
    ("no_bias", (2, 3, 5, 5), (4, 3, 3, 3), {}, False),
    ("stride2_pad1", (1, 3, 7, 7), (4, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
    ("stride_2x1", (1, 2, 7, 8), (3, 2, 3, 3), {"strides": [2, 1]}, True),
    ("dilation2", (1, 3, 8, 8), (4, 3, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, True),
    ("dilation_1x3", (1, 2, 9, 9), (2, 2, 3, 2), {"dilations": [1, 3]}, True),
    ("groups2", (1, 4, 6, 6), (6, 2, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, True),
    ("depthwise", (2, 4, 6, 6), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}, True),
    ("depthwise_mult2", (1, 3, 6, 6), (6, 1, 3, 3), {"group": 3}, True),
    (
        "depthwise_stride2",
        (1, 4, 7, 7),
        (4, 1, 3, 3),
        {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]},
        True,
    ),
    ("asym_pads", (1, 3, 6, 6), (4, 3, 3, 3), {"pads": [0, 1, 2, 1]}, True),
    (
        "asym_pads_stride2",
        (1, 3, 7, 6),
        (4, 3, 3, 3),
        {"pads": [1, 0, 0, 2], "strides": [2, 2]},
        True,
    ),
    (
        "same_upper_s2",
        (1, 3, 6, 6),
        (4, 3, 3, 3),
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        True,
    ),
    (
        "same_lower_s2",
        (1, 3, 6, 6),
        (4, 3, 3, 3),
        {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
        True,
    ),
    ("same_upper_k4", (1, 2, 5, 5), (3, 2, 4, 4), {"auto_pad": "SAME_UPPER"}, True),
    ("same_lower_k4", (1, 2, 5, 5), (3, 2, 4, 4), {"auto_pad": "SAME_LOWER"}, True),
    ("valid_s2", (1, 3, 7, 7), (4, 3, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}, True),
    ("kernel_1x1", (2, 3, 4, 4), (5, 3, 1, 1), {}, True),
    ("nonsquare_kernel", (1, 2, 6, 7), (3, 2, 3, 2), {"pads": [1, 0, 1, 1]}, True),
    ("conv1d", (2, 3, 10), (4, 3, 3), {"pads": [1, 1]}, True),
    ("conv1d_stride_dil", (1, 2, 11), (3, 2, 3), {"strides": [2], "dilations": [2]}, True),
    ("conv1d_asym_pads", (1, 2, 8), (3, 2, 3), {"pads": [2, 0]}, False),
    (
        "conv1d_same_upper_s3",
        (1, 2, 10),
        (3, 2, 4),
        {"auto_pad": "SAME_UPPER", "strides": [3]},
        True,
    ),
    ("conv1d_groups", (1, 4, 9), (4, 2, 3), {"group": 2}, True),
]


@pytest.mark.parametrize(("case", "xs", "ws", "attrs", "bias"), CONV_CASES, ids=ids(CONV_CASES))
def test_conv(case, xs, ws, attrs, bias):
    inits = {"W": rnd(*ws, seed=1)}
    if bias:
        inits["B"] = rnd(ws[0], seed=2)
    names = ["x", "W", "B"] if bias else ["x", "W"]
    check([node("Conv", names, ["y"], **attrs)], {"x": rnd(*xs)}, inits=inits)


@pytest.mark.parametrize("opset", [11, 21])
def test_conv_weights_as_graph_inputs(opset):
    inputs = {"x": rnd(1, 4, 6, 6), "W": rnd(4, 2, 3, 3, seed=1), "B": rnd(4, seed=2)}
    check(
        [node("Conv", ["x", "W", "B"], ["y"], group=2, strides=[2, 1], pads=[1, 0, 0, 1])],
        inputs,
        opset=opset,
    )


# --------------------------------------------------------------------------------------------
# ConvTranspose
# --------------------------------------------------------------------------------------------

# (id, x shape, W shape (C_in, C_out / groups, k...), attributes, with bias)
CONVT_CASES = [
    ("basic", (1, 3, 4, 4), (3, 2, 3, 3), {}, True),
    ("stride2", (1, 3, 4, 4), (3, 2, 3, 3), {"strides": [2, 2]}, True),
    (
        "stride2_pads_outpad",
        (1, 3, 4, 4),
        (3, 2, 3, 3),
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
        True,
    ),
    (
        "stride2_k4_pad1",
        (2, 2, 4, 4),
        (2, 3, 4, 4),
        {"strides": [2, 2], "pads": [1, 1, 1, 1]},
        True,
    ),
    (
        "stride2_asym_pads",
        (1, 2, 4, 4),
        (2, 2, 3, 3),
        {"strides": [2, 2], "pads": [0, 1, 1, 0]},
        True,
    ),
    (
        "stride_3x2_outpad",
        (1, 2, 3, 4),
        (2, 2, 3, 3),
        {"strides": [3, 2], "output_padding": [2, 1]},
        True,
    ),
    ("groups2_stride2", (1, 4, 4, 4), (4, 3, 3, 3), {"group": 2, "strides": [2, 2]}, True),
    (
        "depthwise_stride2",
        (1, 3, 4, 4),
        (3, 1, 3, 3),
        {"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1]},
        True,
    ),
    ("dilations2", (1, 2, 4, 4), (2, 3, 3, 3), {"dilations": [2, 2]}, True),
    (
        "dilations2_stride2_pads",
        (1, 2, 4, 4),
        (2, 2, 3, 3),
        {"dilations": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        True,
    ),
    (
        "output_shape_9",
        (1, 2, 4, 4),
        (2, 3, 3, 3),
        {"strides": [2, 2], "output_shape": [9, 9]},
        True,
    ),
    (
        "output_shape_8",
        (1, 2, 4, 4),
        (2, 3, 3, 3),
        {"strides": [2, 2], "output_shape": [8, 8]},
        True,
    ),
    (
        "output_shape_10",
        (1, 2, 4, 4),
        (2, 3, 3, 3),
        {"strides": [2, 2], "output_shape": [10, 10]},
        True,
    ),
    (
        "same_upper_s2",
        (1, 2, 4, 4),
        (2, 3, 3, 3),
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        True,
    ),
    (
        "same_upper_s2_k4",
        (1, 2, 4, 4),
        (2, 3, 4, 4),
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        True,
    ),
    ("no_bias", (1, 3, 4, 4), (3, 2, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, False),
    (
        "convT1d",
        (1, 2, 5),
        (2, 3, 3),
        {"strides": [2], "pads": [1, 1], "output_padding": [1]},
        True,
    ),
]


@pytest.mark.parametrize(("case", "xs", "ws", "attrs", "bias"), CONVT_CASES, ids=ids(CONVT_CASES))
def test_conv_transpose(case, xs, ws, attrs, bias):
    groups = attrs.get("group", 1)
    inits = {"W": rnd(*ws, seed=3)}
    if bias:
        inits["B"] = rnd(ws[1] * groups, seed=4)
    names = ["x", "W", "B"] if bias else ["x", "W"]
    check([node("ConvTranspose", names, ["y"], **attrs)], {"x": rnd(*xs)}, inits=inits)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("xs", [(2, 3, 4, 5), (4, 3)], ids=["4d", "2d"])
def test_batch_normalization(opset, xs):
    c = xs[1]
    inits = {
        "scale": rnd(c, seed=1),
        "bias": rnd(c, seed=2),
        "mean": rnd(c, seed=3),
        "var": rnd(c, lo=0.5, hi=2.0, seed=4),
    }
    check(
        [node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], epsilon=1e-3)],
        {"x": rnd(*xs)},
        inits=inits,
        opset=opset,
    )


@pytest.mark.parametrize(("opset", "eps"), [(11, None), (21, 1e-3)])
@pytest.mark.parametrize("xs", [(2, 3, 4, 5), (2, 3, 7)], ids=["4d", "3d"])
def test_instance_normalization(opset, eps, xs):
    attrs = {} if eps is None else {"epsilon": eps}
    x = rnd(*xs) * 3 + 1
    inits = {"scale": rnd(xs[1], seed=1), "bias": rnd(xs[1], seed=2)}
    check(
        [node("InstanceNormalization", ["x", "scale", "bias"], ["y"], **attrs)],
        {"x": x},
        inits=inits,
        opset=opset,
    )


@pytest.mark.parametrize("opset", [17, 21])
@pytest.mark.parametrize(
    ("axis", "with_bias"), [(-1, True), (-1, False), (1, True), (2, True), (-2, False)]
)
def test_layer_normalization(opset, axis, with_bias):
    xs = (2, 3, 4, 5)
    norm_shape = xs[axis:]
    inits = {"scale": rnd(*norm_shape, seed=1)}
    names = ["x", "scale"]
    if with_bias:
        inits["bias"] = rnd(*norm_shape, seed=2)
        names.append("bias")
    check(
        [node("LayerNormalization", names, ["y"], axis=axis, epsilon=1e-4)],
        {"x": rnd(*xs) * 2 + 0.5},
        inits=inits,
        opset=opset,
    )


# --------------------------------------------------------------------------------------------
# Activations and element-wise ops
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [11, 13, 21])
@pytest.mark.parametrize(
    "slope_shape", [(3, 1, 1), (1,), (), (1, 3, 1, 1)], ids=["c11", "one", "scalar", "1c11"]
)
def test_prelu(opset, slope_shape):
    slope = rnd(*slope_shape, lo=0.05, hi=0.5, seed=5) if slope_shape else np.float32(0.25)
    check(
        [node("PRelu", ["x", "slope"], ["y"])],
        {"x": rnd(2, 3, 4, 4)},
        inits={"slope": np.asarray(slope, dtype=np.float32)},
        opset=opset,
    )


def test_prelu_slope_as_graph_input():
    check(
        [node("PRelu", ["x", "slope"], ["y"])],
        {"x": rnd(1, 3, 4, 4), "slope": rnd(3, 1, 1, lo=0.0, hi=0.5)},
    )


UNARY_CASES = [
    ("Relu", {}, -2.0, 2.0),
    ("LeakyRelu", {}, -2.0, 2.0),
    ("LeakyRelu", {"alpha": 0.2}, -2.0, 2.0),
    ("Sigmoid", {}, -5.0, 5.0),
    ("Tanh", {}, -3.0, 3.0),
    ("HardSigmoid", {}, -6.0, 6.0),
    ("HardSigmoid", {"alpha": 0.5, "beta": 0.3}, -3.0, 3.0),
    ("Sqrt", {}, 0.0, 4.0),
    ("Neg", {}, -2.0, 2.0),
    ("Exp", {}, -3.0, 3.0),
    ("Identity", {}, -2.0, 2.0),
]


@pytest.mark.parametrize("opset", [11, 21])
@pytest.mark.parametrize(
    ("op", "attrs", "lo", "hi"),
    UNARY_CASES,
    ids=[
        f"{c[0]}-{'-'.join(f'{k}{v}' for k, v in c[1].items()) or 'default'}" for c in UNARY_CASES
    ],
)
def test_unary(opset, op, attrs, lo, hi):
    check([node(op, ["x"], ["y"], **attrs)], {"x": rnd(2, 3, 4, lo=lo, hi=hi)}, opset=opset)


# (id, min, max) -- None means the optional input is omitted
CLIP_CASES = [
    ("min_max", -0.5, 0.6),
    ("min_only", -0.3, None),
    ("max_only", None, 0.2),
    ("none", None, None),
    ("relu6", 0.0, 6.0),
]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize(("case", "lo", "hi"), CLIP_CASES, ids=ids(CLIP_CASES))
def test_clip(opset, case, lo, hi):
    inits = {}
    names = ["x", "", ""]
    if lo is not None:
        inits["lo"] = np.float32(lo)
        names[1] = "lo"
    if hi is not None:
        inits["hi"] = np.float32(hi)
        names[2] = "hi"
    while names[-1] == "":
        names.pop()
    x = rnd(2, 3, 4, lo=-8.0, hi=8.0) if case == "relu6" else rnd(2, 3, 4)
    check([node("Clip", names, ["y"])], {"x": x}, inits=inits, opset=opset)


def test_clip_bounds_as_graph_inputs():
    check(
        [node("Clip", ["x", "lo", "hi"], ["y"])],
        {"x": rnd(3, 4), "lo": np.float32(-0.25), "hi": np.float32(0.5)},
    )


# (a shape, b shape)
BROADCAST_SHAPES = [
    ((2, 3, 4), (2, 3, 4)),
    ((2, 3, 4), (4,)),
    ((2, 3, 4, 5), (3, 1, 1)),
    ((2, 1, 4), (3, 1)),
    ((3, 4), ()),
    ((1,), (2, 3)),
]


@pytest.mark.parametrize("b_init", [False, True], ids=["b_input", "b_init"])
@pytest.mark.parametrize(
    ("a_shape", "b_shape"), BROADCAST_SHAPES, ids=[f"{a}x{b}" for a, b in BROADCAST_SHAPES]
)
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow"])
def test_binary_broadcast(op, a_shape, b_shape, b_init):
    # a > 0 so that Pow is real-valued; for Div, |b| >= 0.5 with alternating signs
    a = rnd(*a_shape, lo=0.5, hi=2.0, seed=1)
    b = rnd(*b_shape, lo=-2.0, hi=2.0, seed=2)
    if op == "Div":
        b = np.where(np.abs(b) < 0.5, b + np.copysign(np.float32(0.5), b), b).astype(np.float32)
    b = np.asarray(b, dtype=np.float32)
    inputs = {"a": a}
    inits = {}
    if b_init:
        inits["b"] = b
    else:
        inputs["b"] = b
    check([node(op, ["a", "b"], ["y"])], inputs, inits=inits)


@pytest.mark.parametrize("opset", [11, 21])
def test_binary_init_first_operand(opset):
    # the initialiser is the *first* operand (e.g. `1 - x`, `2 ** x`)
    check(
        [node("Sub", ["one", "x"], ["t"]), node("Pow", ["two", "t"], ["y"])],
        {"x": rnd(2, 3)},
        inits={"one": np.float32(1.0), "two": f32(2.0)},
        opset=opset,
    )


def test_pow_integer_exponent_and_sqrt_chain():
    check(
        [
            node("Pow", ["x", "p"], ["sq"]),
            node("ReduceSum", ["sq", "ax"], ["s"], keepdims=1),
            node("Sqrt", ["s"], ["n"]),
            node("Div", ["x", "n"], ["y"]),
        ],
        {"x": rnd(2, 8)},
        inits={"p": np.float32(2.0), "ax": i64(1)},
    )


# --------------------------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------------------------


def axes_are_input(op: str, opset: int) -> bool:
    return opset >= 13 if op == "ReduceSum" else opset >= 18


REDUCE_AXES = [None, [1], [2, 3], [-1], [0, 2]]


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", REDUCE_AXES, ids=[str(a) for a in REDUCE_AXES])
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceL2"])
@pytest.mark.parametrize("opset", OPSETS)
def test_reduce(opset, op, axes, keepdims):
    names = ["x"]
    attrs: dict[str, Any] = {"keepdims": keepdims}
    inits = {}
    if axes is not None:
        if axes_are_input(op, opset):
            names.append("axes")
            inits["axes"] = i64(*axes)
        else:
            attrs["axes"] = axes
    check(
        [node(op, names, ["y"], **attrs)],
        {"x": rnd(2, 3, 4, 5)},
        inits=inits,
        opset=opset,
    )


@pytest.mark.parametrize(("op", "opset"), [("ReduceSum", 13), ("ReduceMean", 18), ("ReduceL2", 21)])
def test_reduce_noop_with_empty_axes(op, opset):
    check(
        [node(op, ["x"], ["y"], keepdims=1, noop_with_empty_axes=1)],
        {"x": rnd(2, 3, 4)},
        opset=opset,
    )


def test_reduce_default_keepdims():
    # keepdims defaults to 1
    check([node("ReduceMean", ["x"], ["y"], axes=[2, 3])], {"x": rnd(1, 3, 4, 4)}, opset=13)


# --------------------------------------------------------------------------------------------
# Gemm / MatMul
# --------------------------------------------------------------------------------------------

# (id, transA, transB, alpha, beta, C shape or None)
GEMM_CASES = [
    ("plain", 0, 0, 1.0, 1.0, (5,)),
    ("transA", 1, 0, 1.0, 1.0, (5,)),
    ("transB", 0, 1, 1.0, 1.0, (5,)),
    ("transAB", 1, 1, 1.0, 1.0, (5,)),
    ("alpha_beta", 0, 1, 0.5, 2.0, (5,)),
    ("C_full", 0, 1, 1.0, 1.0, (3, 5)),
    ("C_row", 0, 0, 1.0, 0.5, (1, 5)),
    ("C_col", 0, 0, 1.0, 1.0, (3, 1)),
    ("C_one", 0, 1, 2.0, 1.0, (1,)),
    ("C_scalar", 0, 1, 1.0, 3.0, ()),
    ("no_C", 0, 1, 1.0, 1.0, None),
    ("no_C_alpha_transA", 1, 0, 0.25, 1.0, None),
]


@pytest.mark.parametrize("opset", [11, 21])
@pytest.mark.parametrize(
    ("case", "ta", "tb", "alpha", "beta", "cs"), GEMM_CASES, ids=ids(GEMM_CASES)
)
def test_gemm(opset, case, ta, tb, alpha, beta, cs):
    m, k, n = 3, 4, 5
    a = rnd(*((k, m) if ta else (m, k)), seed=1)
    inits = {"B": rnd(*((n, k) if tb else (k, n)), seed=2)}
    names = ["a", "B"]
    if cs is not None:
        inits["C"] = np.asarray(rnd(*cs, seed=3), dtype=np.float32)
        names.append("C")
    check(
        [node("Gemm", names, ["y"], transA=ta, transB=tb, alpha=alpha, beta=beta)],
        {"a": a},
        inits=inits,
        opset=opset,
    )


def test_gemm_all_graph_inputs():
    check(
        [node("Gemm", ["a", "b", "c"], ["y"], transB=1)],
        {"a": rnd(2, 4, seed=1), "b": rnd(3, 4, seed=2), "c": rnd(3, seed=3)},
    )


MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((2, 3, 4), (4, 5)),
    ((2, 3, 4), (2, 4, 5)),
    ((3, 4), (2, 4, 5)),
    ((1, 3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (3, 4, 2)),
    ((4,), (4, 5)),
    ((2, 3, 4), (4,)),
]


@pytest.mark.parametrize("b_init", [False, True], ids=["b_input", "b_init"])
@pytest.mark.parametrize(
    ("a_shape", "b_shape"), MATMUL_SHAPES, ids=[f"{a}x{b}" for a, b in MATMUL_SHAPES]
)
def test_matmul(a_shape, b_shape, b_init):
    inputs = {"a": rnd(*a_shape, seed=1)}
    inits = {}
    (inits if b_init else inputs)["b"] = rnd(*b_shape, seed=2)
    check([node("MatMul", ["a", "b"], ["y"])], inputs, inits=inits)


# --------------------------------------------------------------------------------------------
# Shape manipulation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [11, 13, 21])
@pytest.mark.parametrize("axis", [0, 1, 2, 4, -1])
def test_flatten(opset, axis):
    check([node("Flatten", ["x"], ["y"], axis=axis)], {"x": rnd(2, 3, 4, 5)}, opset=opset)


def test_flatten_default_axis():
    check([node("Flatten", ["x"], ["y"])], {"x": rnd(2, 3, 4)})


RESHAPE_SHAPES = [[0, -1], [2, -1, 5], [-1], [0, 0, -1], [0, 3, 20], [1, 0, -1, 0], [-1, 1, 5]]


@pytest.mark.parametrize("opset", [11, 13, 21])
@pytest.mark.parametrize("shape", RESHAPE_SHAPES, ids=[str(s) for s in RESHAPE_SHAPES])
def test_reshape(opset, shape):
    check(
        [node("Reshape", ["x", "shape"], ["y"])],
        {"x": rnd(2, 3, 4, 5)},
        inits={"shape": i64(*shape)},
        opset=opset,
    )


@pytest.mark.parametrize("opset", [14, 17, 21])
@pytest.mark.parametrize("allowzero", [0, 1])
def test_reshape_allowzero(opset, allowzero):
    # no 0 entries (allowzero=1 with a 0 would produce an empty tensor)
    check(
        [node("Reshape", ["x", "shape"], ["y"], allowzero=allowzero)],
        {"x": rnd(2, 3, 4)},
        inits={"shape": i64(4, -1)},
        opset=opset,
    )


def test_reshape_allowzero_0_copies_dim():
    check(
        [node("Reshape", ["x", "shape"], ["y"], allowzero=0)],
        {"x": rnd(2, 3, 4)},
        inits={"shape": i64(0, 12)},
        opset=14,
    )


TRANSPOSE_PERMS = [[0, 2, 3, 1], [0, 3, 1, 2], [3, 2, 1, 0], [1, 0, 2, 3], None]


@pytest.mark.parametrize("perm", TRANSPOSE_PERMS, ids=[str(p) for p in TRANSPOSE_PERMS])
def test_transpose(perm):
    attrs = {} if perm is None else {"perm": perm}
    check([node("Transpose", ["x"], ["y"], **attrs)], {"x": rnd(2, 3, 4, 5)})


@pytest.mark.parametrize("opset", [11, 13, 21])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(opset, axis):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for i, s in enumerate(shapes):
        s[axis] = i + 1
    check(
        [node("Concat", ["a", "b", "c"], ["y"], axis=axis)],
        {"a": rnd(*shapes[0], seed=1), "c": rnd(*shapes[2], seed=3)},
        inits={"b": rnd(*shapes[1], seed=2)},
        opset=opset,
    )


# (id, opset, axis, explicit sizes or None, num_outputs attribute or None, n outputs)
SPLIT_CASES = [
    ("o11_equal", 11, 1, None, None, 2),
    ("o11_equal3_neg_axis", 11, -1, None, None, 3),
    ("o11_sizes", 11, 1, [1, 3], None, 2),
    ("o13_equal", 13, 1, None, None, 2),
    ("o13_sizes", 13, 1, [1, 3], None, 2),
    ("o13_sizes3_axis0", 13, 0, [1, 1, 0], None, 3),
    ("o17_equal", 17, 2, None, None, 3),
    ("o17_sizes", 17, -1, [4, 2], None, 2),
    ("o21_num_outputs_equal", 21, 1, None, 2, 2),
    ("o21_num_outputs_uneven", 21, 2, None, 4, 4),
    ("o21_num_outputs_uneven2", 21, 1, None, 3, 3),
    ("o21_sizes", 21, 1, [3, 1], None, 2),
]


@pytest.mark.parametrize(
    ("case", "opset", "axis", "sizes", "num", "n"), SPLIT_CASES, ids=ids(SPLIT_CASES)
)
def test_split(case, opset, axis, sizes, num, n):
    # uneven num_outputs: chunks of ceil(dim / n), the last one smaller: 7 into 4 -> [2, 2, 2, 1]
    # on axis 2 and 5 into 3 -> [2, 2, 1] on axis 1.
    x = rnd(2, 5, 7) if "uneven" in case else rnd(2, 4, 6)
    attrs: dict[str, Any] = {"axis": axis}
    names = ["x"]
    inits = {}
    if sizes is not None:
        if opset < 13:
            attrs["split"] = sizes
        else:
            names.append("split")
            inits["split"] = i64(*sizes)
    if num is not None:
        attrs["num_outputs"] = num
    outs = [f"y{i}" for i in range(n)]
    check([node("Split", names, outs, **attrs)], {"x": x}, outputs=outs, inits=inits, opset=opset)


# (id, starts, ends, axes or None, steps or None)
SLICE_CASES = [
    ("basic", [1], [3], [0], None),
    ("neg_start_end", [-3], [-1], [1], None),
    ("axes_omitted", [0, 1], [3, -1], None, None),
    ("neg_step", [4], [0], [2], [-1]),
    ("full_reverse", [-1], [INT64_MIN], [1], [-1]),
    ("step2_to_end", [0], [INT64_MAX], [2], [2]),
    ("neg_axes_clamped", [1, 0], [1000, 4], [-1, 0], [2, 1]),
    ("neg_step2", [4], [1], [0], [-2]),
    ("neg_step_clamped", [100], [-100], [2], [-3]),
    ("three_axes", [0, -2, 1], [2, 5, 6], [0, 1, 2], [1, 1, 2]),
    ("empty", [3], [1], [0], None),
]


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize(
    ("case", "starts", "ends", "axes", "steps"), SLICE_CASES, ids=ids(SLICE_CASES)
)
def test_slice(opset, case, starts, ends, axes, steps):
    inits = {"starts": i64(*starts), "ends": i64(*ends)}
    names = ["x", "starts", "ends"]
    if axes is not None:
        inits["axes"] = i64(*axes)
        names.append("axes")
    if steps is not None:
        if axes is None:
            names.append("")
        inits["steps"] = i64(*steps)
        names.append("steps")
    check([node("Slice", names, ["y"])], {"x": rnd(4, 5, 6)}, inits=inits, opset=opset)


SQUEEZE_AXES = [None, [0], [0, 2], [-2], [2, 0]]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("axes", SQUEEZE_AXES, ids=[str(a) for a in SQUEEZE_AXES])
def test_squeeze(opset, axes):
    names, attrs, inits = ["x"], {}, {}
    if axes is not None:
        if opset >= 13:
            names.append("axes")
            inits["axes"] = i64(*axes)
        else:
            attrs["axes"] = axes
    check(
        [node("Squeeze", names, ["y"], **attrs)], {"x": rnd(1, 3, 1, 4)}, inits=inits, opset=opset
    )


UNSQUEEZE_AXES = [[0], [0, 3], [-1], [1, -1], [3, 0]]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("axes", UNSQUEEZE_AXES, ids=[str(a) for a in UNSQUEEZE_AXES])
def test_unsqueeze(opset, axes):
    names, attrs, inits = ["x"], {}, {}
    if opset >= 13:
        names.append("axes")
        inits["axes"] = i64(*axes)
    else:
        attrs["axes"] = axes
    check([node("Unsqueeze", names, ["y"], **attrs)], {"x": rnd(3, 4)}, inits=inits, opset=opset)


# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------

# (id, x shape, attributes); inputs are shifted to be all negative so that padding with zeros
# instead of -inf shows up.
MAXPOOL_CASES = [
    ("k2s2", (1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("k3s2p1", (1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("k3s2_ceil", (1, 2, 6, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("k2s2_ceil_odd", (1, 2, 7, 7), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    (
        "k3s2p1_ceil",
        (1, 2, 6, 6),
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    ),
    ("k3_dil2", (1, 2, 8, 8), {"kernel_shape": [3, 3], "dilations": [2, 2]}),
    (
        "k2_dil2_s2_p1",
        (1, 2, 8, 8),
        {"kernel_shape": [2, 2], "dilations": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    ),
    (
        "k3s2_asym_pads",
        (1, 2, 6, 6),
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 1, 0]},
    ),
    ("k2s1_same_upper", (1, 2, 5, 5), {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER"}),
    (
        "k3s2_same_lower",
        (1, 2, 6, 6),
        {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
    ),
    ("k3s2_valid", (1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID"}),
    ("k2x3_s1x2", (2, 2, 6, 7), {"kernel_shape": [2, 3], "strides": [1, 2]}),
    ("default_stride", (1, 2, 5, 5), {"kernel_shape": [3, 3]}),
    ("pool1d", (1, 2, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
]


@pytest.mark.parametrize("opset", [11, 21])
@pytest.mark.parametrize(("case", "xs", "attrs"), MAXPOOL_CASES, ids=ids(MAXPOOL_CASES))
def test_maxpool(opset, case, xs, attrs):
    check([node("MaxPool", ["x"], ["y"], **attrs)], {"x": rnd(*xs) - 2.0}, opset=opset)


AVGPOOL_CASES = [
    ("k2s2", (1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("k3p1_excl", (1, 2, 5, 5), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    (
        "k3p1_incl",
        (1, 2, 5, 5),
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    ),
    ("k3s2_ceil_excl", (1, 2, 6, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    (
        "k3s2_ceil_incl",
        (1, 2, 6, 6),
        {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1, "count_include_pad": 1},
    ),
    (
        "k3s2p1_ceil_incl",
        (1, 2, 6, 6),
        {
            "kernel_shape": [3, 3],
            "strides": [2, 2],
            "pads": [1, 1, 1, 1],
            "ceil_mode": 1,
            "count_include_pad": 1,
        },
    ),
    (
        "k3s2p1_ceil_excl",
        (1, 2, 6, 6),
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    ),
    (
        "asym_pads_incl",
        (1, 2, 5, 5),
        {"kernel_shape": [2, 2], "pads": [1, 0, 0, 1], "count_include_pad": 1},
    ),
    ("asym_pads_excl", (1, 2, 5, 5), {"kernel_shape": [2, 2], "pads": [1, 0, 0, 1]}),
    (
        "same_upper_s2_excl",
        (1, 2, 6, 6),
        {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
    ),
    (
        "same_upper_s2_incl",
        (1, 2, 6, 6),
        {
            "kernel_shape": [3, 3],
            "strides": [2, 2],
            "auto_pad": "SAME_UPPER",
            "count_include_pad": 1,
        },
    ),
    ("k2x3_s1x2", (2, 2, 6, 7), {"kernel_shape": [2, 3], "strides": [1, 2]}),
    (
        "pool1d_incl",
        (1, 2, 9),
        {"kernel_shape": [3], "strides": [2], "pads": [1, 1], "count_include_pad": 1},
    ),
]


@pytest.mark.parametrize("opset", [11, 21])
@pytest.mark.parametrize(("case", "xs", "attrs"), AVGPOOL_CASES, ids=ids(AVGPOOL_CASES))
def test_average_pool(opset, case, xs, attrs):
    check([node("AveragePool", ["x"], ["y"], **attrs)], {"x": rnd(*xs) + 1.0}, opset=opset)


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_dilations_opset19(count_include_pad):
    # AveragePool gained `dilations` at opset 19.
    check(
        [
            node(
                "AveragePool",
                ["x"],
                ["y"],
                kernel_shape=[2, 2],
                dilations=[2, 2],
                pads=[1, 1, 1, 1],
                count_include_pad=count_include_pad,
            )
        ],
        {"x": rnd(1, 2, 6, 6) + 1.0},
        opset=21,
    )


@pytest.mark.parametrize("xs", [(2, 3, 4, 5), (1, 2, 7), (1, 2, 3, 4, 2)], ids=["2d", "1d", "3d"])
def test_global_average_pool(xs):
    check([node("GlobalAveragePool", ["x"], ["y"])], {"x": rnd(*xs)})


# --------------------------------------------------------------------------------------------
# Pad
# --------------------------------------------------------------------------------------------

PAD_4D = [0, 0, 1, 2, 0, 0, 2, 1]

# (id, mode, pads, constant value or None)
PAD_CASES = [
    ("constant_default", "constant", PAD_4D, None),
    ("constant_value", "constant", PAD_4D, 1.5),
    ("constant_crop", "constant", [0, 0, -1, 1, 0, 0, 1, -1], 0.5),
    ("constant_channels", "constant", [0, 1, 0, 0, 0, 2, 0, 0], -1.0),
    ("reflect", "reflect", PAD_4D, None),
    ("reflect_max", "reflect", [0, 0, 2, 3, 0, 0, 2, 3], None),
    ("edge", "edge", PAD_4D, None),
    ("edge_big", "edge", [0, 0, 4, 0, 0, 0, 0, 5], None),
]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize(("case", "mode", "pads", "value"), PAD_CASES, ids=ids(PAD_CASES))
def test_pad(opset, case, mode, pads, value):
    names = ["x", "pads"]
    inits = {"pads": i64(*pads)}
    if value is not None:
        names.append("value")
        inits["value"] = np.float32(value)
    check(
        [node("Pad", names, ["y"], mode=mode)],
        {"x": rnd(1, 2, 3, 4)},
        inits=inits,
        opset=opset,
    )


def test_pad_default_mode_is_constant():
    check(
        [node("Pad", ["x", "pads"], ["y"])],
        {"x": rnd(2, 3)},
        inits={"pads": i64(1, 0, 0, 2)},
    )


# (id, opset, mode, pads, axes)
PAD_AXES_CASES = [
    ("o18_constant_axes23", 18, "constant", [1, 2, 2, 1], [2, 3]),
    ("o18_reflect_neg_axis", 18, "reflect", [2, 1], [-1]),
    ("o21_edge_axes", 21, "edge", [1, 0, 2, 3], [1, 3]),
    ("o21_wrap", 21, "wrap", PAD_4D, None),
    ("o19_wrap_axes", 19, "wrap", [2, 3], [-1]),
    ("o21_wrap_crop", 21, "wrap", [0, 0, -1, 2, 0, 0, 1, -1], None),
]


@pytest.mark.parametrize(
    ("case", "opset", "mode", "pads", "axes"), PAD_AXES_CASES, ids=ids(PAD_AXES_CASES)
)
def test_pad_axes_and_wrap(case, opset, mode, pads, axes):
    names = ["x", "pads"]
    inits = {"pads": i64(*pads)}
    if axes is not None:
        names += ["", "axes"]
        inits["axes"] = i64(*axes)
    check([node("Pad", names, ["y"], mode=mode)], {"x": rnd(1, 2, 3, 4)}, inits=inits, opset=opset)


# --------------------------------------------------------------------------------------------
# Resize
# --------------------------------------------------------------------------------------------

RESIZE_X = (1, 2, 4, 5)

# (id, scales or None, sizes or None)
RESIZE_SIZINGS = [
    ("scales_up2", [1.0, 1.0, 2.0, 2.0], None),
    ("scales_frac", [1.0, 1.0, 1.5, 0.7], None),
    ("sizes_up", None, [1, 2, 7, 9]),
    ("sizes_down", None, [1, 2, 3, 2]),
    ("sizes_to_1", None, [1, 2, 1, 3]),
    ("scales_down", [1.0, 1.0, 0.5, 0.5], None),
]

NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
COORD_MODES = ["asymmetric", "half_pixel", "align_corners", "pytorch_half_pixel"]


def resize_inputs(
    opset: int,
    scales: Sequence[float] | None,
    sizes: Sequence[int] | None,
    axes: Sequence[int] | None = None,
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Input names and initialisers for Resize(X, roi, scales, sizes)."""
    inits: dict[str, np.ndarray] = {}
    if opset < 13:
        # opset 11: roi and scales are required inputs (possibly empty tensors)
        inits["roi"] = np.zeros(0, np.float32)
        inits["scales"] = np.zeros(0, np.float32) if scales is None else f32(*scales)
        names = ["x", "roi", "scales"]
    else:
        names = ["x", ""]
        if scales is not None:
            inits["scales"] = f32(*scales)
            names.append("scales")
        else:
            names.append("")
    if sizes is not None:
        inits["sizes"] = i64(*sizes)
        names.append("sizes")
    while names[-1] == "":
        names.pop()
    return names, inits


@pytest.mark.parametrize(("sizing", "scales", "sizes"), RESIZE_SIZINGS, ids=ids(RESIZE_SIZINGS))
@pytest.mark.parametrize("coord", COORD_MODES)
@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
def test_resize_nearest(nearest_mode, coord, sizing, scales, sizes):
    names, inits = resize_inputs(13, scales, sizes)
    check(
        [
            node(
                "Resize",
                names,
                ["y"],
                mode="nearest",
                nearest_mode=nearest_mode,
                coordinate_transformation_mode=coord,
            )
        ],
        {"x": rnd(*RESIZE_X)},
        inits=inits,
    )


@pytest.mark.parametrize(("sizing", "scales", "sizes"), RESIZE_SIZINGS, ids=ids(RESIZE_SIZINGS))
@pytest.mark.parametrize("coord", COORD_MODES)
def test_resize_linear(coord, sizing, scales, sizes):
    names, inits = resize_inputs(13, scales, sizes)
    check(
        [node("Resize", names, ["y"], mode="linear", coordinate_transformation_mode=coord)],
        {"x": rnd(*RESIZE_X)},
        inits=inits,
    )


@pytest.mark.parametrize("coord", ["half_pixel", "pytorch_half_pixel"])
def test_resize_nearest_float32_coordinate_tie(coord):
    """Source coordinates are computed in float32 (as ORT does), not float64.

    With scale 0.6 (float32 0.6000000238...), output column 1 maps to (1 + 0.5) / 0.6 - 0.5,
    which is 2.0 in float32 arithmetic but 1.9999999 in float64, so nearest_mode=floor picks
    column 2 in ORT and column 1 with float64 coordinates.
    """
    names, inits = resize_inputs(13, [1.0, 1.0, 1.0, 0.6], None)
    check(
        [
            node(
                "Resize",
                names,
                ["y"],
                mode="nearest",
                nearest_mode="floor",
                coordinate_transformation_mode=coord,
            )
        ],
        {"x": rnd(*RESIZE_X)},
        inits=inits,
    )


# (id, mode, coordinate mode, nearest mode or None, scales, sizes)
RESIZE_OPSET_CASES = [
    ("torch_nearest_up2", "nearest", "asymmetric", "floor", [1.0, 1.0, 2.0, 2.0], None),
    ("nearest_default_modes", "nearest", None, None, [1.0, 1.0, 2.0, 3.0], None),
    ("linear_half_pixel_up2", "linear", "half_pixel", None, [1.0, 1.0, 2.0, 2.0], None),
    ("linear_align_corners_sizes", "linear", "align_corners", None, None, [1, 2, 7, 3]),
    ("linear_default_coord_down", "linear", None, None, [1.0, 1.0, 0.5, 0.8], None),
]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize(
    ("case", "mode", "coord", "nmode", "scales", "sizes"),
    RESIZE_OPSET_CASES,
    ids=ids(RESIZE_OPSET_CASES),
)
def test_resize_opsets(opset, case, mode, coord, nmode, scales, sizes):
    attrs: dict[str, Any] = {"mode": mode}
    if coord is not None:
        attrs["coordinate_transformation_mode"] = coord
    if nmode is not None:
        attrs["nearest_mode"] = nmode
    names, inits = resize_inputs(opset, scales, sizes)
    check([node("Resize", names, ["y"], **attrs)], {"x": rnd(*RESIZE_X)}, inits=inits, opset=opset)


# Opset 18+ attributes: axes, keep_aspect_ratio_policy, antialias.
# (id, attributes, scales, sizes)
RESIZE18_CASES = [
    ("axes_scales", {"mode": "linear", "axes": [2, 3]}, [2.0, 1.5], None),
    ("axes_neg_scales", {"mode": "nearest", "axes": [-1, -2]}, [2.0, 3.0], None),
    ("axes_sizes", {"mode": "linear", "axes": [2, 3]}, None, [6, 3]),
    ("axes_one", {"mode": "nearest", "axes": [3]}, [2.0], None),
    (
        "keep_ratio_not_larger",
        {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"},
        None,
        [8, 8],
    ),
    (
        "keep_ratio_not_smaller",
        {"mode": "nearest", "axes": [2, 3], "keep_aspect_ratio_policy": "not_smaller"},
        None,
        [6, 6],
    ),
    (
        "keep_ratio_not_larger_full_rank",
        {"mode": "linear", "keep_aspect_ratio_policy": "not_larger"},
        None,
        [1, 2, 6, 20],
    ),
    ("antialias0_linear_down", {"mode": "linear", "antialias": 0}, [1.0, 1.0, 0.5, 0.6], None),
    ("antialias1_linear_down", {"mode": "linear", "antialias": 1}, [1.0, 1.0, 0.5, 0.6], None),
    ("antialias1_linear_up", {"mode": "linear", "antialias": 1}, [1.0, 1.0, 2.0, 1.5], None),
]


@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize(
    ("case", "attrs", "scales", "sizes"), RESIZE18_CASES, ids=ids(RESIZE18_CASES)
)
def test_resize_opset18_attributes(opset, case, attrs, scales, sizes):
    names, inits = resize_inputs(opset, scales, sizes)
    check([node("Resize", names, ["y"], **attrs)], {"x": rnd(*RESIZE_X)}, inits=inits, opset=opset)


# --------------------------------------------------------------------------------------------
# Softmax, Dropout, Identity, Constant
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("axis", [None, 0, 1, -1, 2])
def test_softmax(opset, axis):
    # Before opset 13 the input is coerced to 2-D at `axis` (default 1); from 13 on the softmax
    # runs along the single axis (default -1).
    attrs = {} if axis is None else {"axis": axis}
    check(
        [node("Softmax", ["x"], ["y"], **attrs)],
        {"x": rnd(2, 3, 4, lo=-3.0, hi=3.0)},
        opset=opset,
    )


@pytest.mark.parametrize("opset", OPSETS)
def test_dropout(opset):
    if opset < 12:
        n = node("Dropout", ["x"], ["y"], ratio=0.3)
        inits = {}
    else:
        n = node("Dropout", ["x", "ratio", "training"], ["y"])
        inits = {"ratio": np.float32(0.3), "training": np.array(False)}
    check(
        [n, node("Relu", ["y"], ["z"])],
        {"x": rnd(2, 3, 4)},
        outputs=["z"],
        inits=inits,
        opset=opset,
    )


@pytest.mark.parametrize("opset", [13, 21])
def test_dropout_mask_output(opset):
    check(
        [node("Dropout", ["x"], ["y", "mask"])],
        {"x": rnd(2, 3)},
        outputs=["y", ("mask", np.bool_)],
        opset=opset,
    )


def test_identity_chain_to_output():
    check(
        [node("Identity", ["x"], ["t"]), node("Identity", ["t"], ["y"])],
        {"x": rnd(2, 3)},
    )


@pytest.mark.parametrize("opset", [11, 13, 21])
def test_constant_tensor(opset):
    value = numpy_helper.from_array(rnd(2, 3, seed=9), "c")
    check(
        [node("Constant", [], ["c"], value=value), node("Mul", ["x", "c"], ["y"])],
        {"x": rnd(2, 3)},
        opset=opset,
    )


def test_constant_value_float_and_floats():
    check(
        [
            node("Constant", [], ["a"], value_float=2.5),
            node("Constant", [], ["b"], value_floats=[1.0, -1.0, 0.5]),
            node("Mul", ["x", "a"], ["t"]),
            node("Add", ["t", "b"], ["y"]),
        ],
        {"x": rnd(2, 3)},
    )


def test_constant_value_ints_as_reshape_shape():
    check(
        [
            node("Constant", [], ["shape"], value_ints=[3, -1]),
            node("Reshape", ["x", "shape"], ["y"]),
        ],
        {"x": rnd(2, 3, 2)},
    )


def test_constant_as_graph_output():
    value = numpy_helper.from_array(rnd(3, seed=4), "c")
    check(
        [node("Constant", [], ["c"], value=value), node("Relu", ["x"], ["y"])],
        {"x": rnd(2, 3)},
        outputs=["y", "c"],
    )


# --------------------------------------------------------------------------------------------
# Shape / Gather / Cast
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [13, 15, 21])
def test_shape(opset):
    check(
        [node("Shape", ["x"], ["y"])],
        {"x": rnd(2, 3, 4, 5)},
        outputs=[("y", np.int64)],
        opset=opset,
    )


SHAPE15_CASES = [
    ("start1", {"start": 1}),
    ("end_neg1", {"end": -1}),
    ("start_end", {"start": -3, "end": 3}),
    ("clamped", {"start": -10, "end": 10}),
    ("empty", {"start": 3, "end": 1}),
]


@pytest.mark.parametrize("opset", [15, 21])
@pytest.mark.parametrize(("case", "attrs"), SHAPE15_CASES, ids=ids(SHAPE15_CASES))
def test_shape_start_end(opset, case, attrs):
    check(
        [node("Shape", ["x"], ["y"], **attrs)],
        {"x": rnd(2, 3, 4, 5)},
        outputs=[("y", np.int64)],
        opset=opset,
    )


def unsqueeze0(src: str, dst: str, opset: int, inits: dict[str, np.ndarray]) -> onnx.NodeProto:
    if opset >= 13:
        inits["axes0"] = i64(0)
        return node("Unsqueeze", [src, "axes0"], [dst])
    return node("Unsqueeze", [src], [dst], axes=[0])


@pytest.mark.parametrize("opset", OPSETS)
def test_shape_subgraph_flatten_like_torch(opset):
    """x.view(x.size(0), -1): Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    inits = {"idx0": np.array(0, dtype=np.int64), "minus1": i64(-1)}
    nodes = [
        node("Shape", ["x"], ["s"]),
        node("Gather", ["s", "idx0"], ["n"], axis=0),
        unsqueeze0("n", "n1", opset, inits),
        node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        node("Reshape", ["x", "shape"], ["y"]),
    ]
    check(nodes, {"x": rnd(2, 3, 4, 5)}, inits=inits, opset=opset)


@pytest.mark.parametrize("opset", [11, 13, 21])
def test_shape_subgraph_two_dims_and_arith(opset):
    """x.view(b, c, -1) and x.view(b, c * h, w) style shape arithmetic."""
    inits = {
        "idx0": np.array(0, dtype=np.int64),
        "idx1": np.array(1, dtype=np.int64),
        "idx2": np.array(2, dtype=np.int64),
        "idx3": np.array(3, dtype=np.int64),
        "minus1": i64(-1),
    }
    nodes = [
        node("Shape", ["x"], ["s"]),
        node("Gather", ["s", "idx0"], ["b"], axis=0),
        node("Gather", ["s", "idx1"], ["c"], axis=0),
        node("Gather", ["s", "idx2"], ["h"], axis=0),
        node("Gather", ["s", "idx3"], ["w"], axis=0),
        unsqueeze0("b", "b1", opset, inits),
        unsqueeze0("c", "c1", opset, inits),
        node("Concat", ["b1", "c1", "minus1"], ["shape_a"], axis=0),
        node("Reshape", ["x", "shape_a"], ["ya"]),
        node("Mul", ["c", "h"], ["ch"]),
        unsqueeze0("ch", "ch1", opset, inits),
        unsqueeze0("w", "w1", opset, inits),
        node("Concat", ["b1", "ch1", "w1"], ["shape_b"], axis=0),
        node("Reshape", ["x", "shape_b"], ["yb"]),
    ]
    check(nodes, {"x": rnd(2, 3, 4, 5)}, outputs=["ya", "yb"], inits=inits, opset=opset)


@pytest.mark.parametrize("opset", [13, 21])
def test_shape_subgraph_as_graph_output(opset):
    inits = {"idx": i64(-1, 1)}
    nodes = [node("Shape", ["x"], ["s"]), node("Gather", ["s", "idx"], ["y"], axis=0)]
    check(nodes, {"x": rnd(2, 3, 4)}, outputs=[("y", np.int64)], inits=inits, opset=opset)


# (id, axis, indices)
GATHER_CASES = [
    ("axis0", 0, i64(0, 2)),
    ("axis0_neg", 0, i64(-1, 0, -2)),
    ("axis1_2d_idx", 1, np.array([[0, -1], [2, 1]], dtype=np.int64)),
    ("axis1_scalar", 1, np.array(2, dtype=np.int64)),
    ("axis0_scalar_neg", 0, np.array(-1, dtype=np.int64)),
    ("axis_neg1", -1, i64(4, 0, -3)),
    ("axis1_int32", 1, np.array([3, -4], dtype=np.int32)),
]


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize(("case", "axis", "indices"), GATHER_CASES, ids=ids(GATHER_CASES))
def test_gather(opset, case, axis, indices):
    check(
        [node("Gather", ["x", "idx"], ["y"], axis=axis)],
        {"x": rnd(3, 4, 5)},
        inits={"idx": indices},
        opset=opset,
    )


def test_gather_indices_as_graph_input():
    check(
        [node("Gather", ["x", "idx"], ["y"], axis=0)],
        {"x": rnd(5, 3), "idx": np.array([[4, 0], [-1, 2]], dtype=np.int64)},
    )


def test_gather_from_initializer_with_input_indices():
    # embedding-table lookup: the data is a (float) initialiser, the indices a graph input
    check(
        [node("Gather", ["table", "idx"], ["y"], axis=0)],
        {"idx": np.array([3, 1, 1], dtype=np.int64)},
        inits={"table": rnd(6, 4, seed=3)},
    )


# (id, input array, target TensorProto type, output numpy dtype)
CAST_CASES = [
    ("f32_to_i32_trunc", f32(-2.7, -0.5, 0.5, 1.5, 2.9, -3.0), TensorProto.INT32, np.int32),
    ("f32_to_i64_trunc", f32(-2.7, -0.5, 0.5, 1.5, 2.9, 100.99), TensorProto.INT64, np.int64),
    ("f32_to_u8", f32(0.2, 3.7, 200.9, 255.0), TensorProto.UINT8, np.uint8),
    ("f32_to_f16", f32(0.1, -2.5, 1000.3, 3.14159), TensorProto.FLOAT16, np.float16),
    ("f32_to_bool", f32(0.0, 0.5, -1.0, 0.0), TensorProto.BOOL, np.bool_),
    ("f32_to_f64", f32(0.1, -2.5, 3.25), TensorProto.DOUBLE, np.float64),
    ("i64_to_f32", np.array([-3, 0, 7, 1 << 20], dtype=np.int64), TensorProto.FLOAT, np.float32),
    ("i32_to_f32", np.array([-3, 0, 7], dtype=np.int32), TensorProto.FLOAT, np.float32),
    ("u8_to_f32", np.array([0, 128, 255], dtype=np.uint8), TensorProto.FLOAT, np.float32),
    ("bool_to_f32", np.array([True, False, True]), TensorProto.FLOAT, np.float32),
    ("i8_to_i32", np.array([-128, -1, 0, 127], dtype=np.int8), TensorProto.INT32, np.int32),
    ("f32_to_f32", f32(1.5, -2.0), TensorProto.FLOAT, np.float32),
]


@pytest.mark.parametrize("opset", [11, 13, 21])
@pytest.mark.parametrize(("case", "x", "to", "out_dtype"), CAST_CASES, ids=ids(CAST_CASES))
def test_cast(opset, case, x, to, out_dtype):
    tol = 1e-3 if out_dtype == np.float16 else ATOL
    check(
        [node("Cast", ["x"], ["y"], to=to)],
        {"x": x},
        outputs=[("y", out_dtype)],
        opset=opset,
        rtol=tol,
        atol=tol,
    )


def test_cast_chain_float_int_float():
    # Cast inside a graph (floor-like truncation pattern)
    check(
        [
            node("Cast", ["x"], ["i"], to=TensorProto.INT64),
            node("Cast", ["i"], ["y"], to=TensorProto.FLOAT),
        ],
        {"x": rnd(3, 4, lo=-5.0, hi=5.0)},
    )


# --------------------------------------------------------------------------------------------
# DequantizeLinear / QuantizeLinear
# --------------------------------------------------------------------------------------------


def q_data(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


# (id, x dtype, zero point or None)
DQ_TENSOR_CASES = [
    ("int8_zp", np.int8, 3),
    ("uint8_zp", np.uint8, 128),
    ("int8_no_zp", np.int8, None),
    ("uint8_no_zp", np.uint8, None),
]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("x_as_input", [False, True], ids=["x_init", "x_input"])
@pytest.mark.parametrize(("case", "dtype", "zp"), DQ_TENSOR_CASES, ids=ids(DQ_TENSOR_CASES))
def test_dequantize_per_tensor(opset, x_as_input, case, dtype, zp):
    xq = q_data((2, 3, 4), dtype)
    inits: dict[str, np.ndarray] = {"scale": np.float32(0.02)}
    names = ["xq", "scale"]
    if zp is not None:
        inits["zp"] = np.array(zp, dtype=dtype)
        names.append("zp")
    inputs: dict[str, np.ndarray] = {}
    (inputs if x_as_input else inits)["xq"] = xq
    # Add a float graph input so that every model has one
    inputs["x"] = rnd(2, 3, 4)
    check(
        [node("DequantizeLinear", names, ["w"]), node("Add", ["w", "x"], ["y"])],
        inputs,
        inits=inits,
        opset=opset,
    )


# (id, shape, axis or None (default 1), dtype)
DQ_AXIS_CASES = [
    ("weight_axis0_int8", (4, 3, 2, 2), 0, np.int8),
    ("act_axis1_default_uint8", (2, 3, 4), None, np.uint8),
    ("axis_neg1_int8", (2, 3, 5), -1, np.int8),
    ("axis2_uint8", (2, 3, 5), 2, np.uint8),
]


@pytest.mark.parametrize("opset", [13, 17, 21])
@pytest.mark.parametrize(("case", "shape", "axis", "dtype"), DQ_AXIS_CASES, ids=ids(DQ_AXIS_CASES))
def test_dequantize_per_axis(opset, case, shape, axis, dtype):
    ax = 1 if axis is None else axis
    n = shape[ax]
    attrs = {} if axis is None else {"axis": axis}
    zp_vals = np.arange(n) * 7 - 3 if dtype == np.int8 else np.arange(n) * 11 + 120
    inits = {
        "scale": rnd(n, lo=0.005, hi=0.05, seed=8),
        "zp": zp_vals.astype(dtype),
    }
    # weights are initialisers (then consumed by a Mul with a graph input), activations inputs
    inputs = {"x": rnd(*shape)}
    (inits if case.startswith("weight") else inputs)["xq"] = q_data(shape, dtype, seed=1)
    check(
        [
            node("DequantizeLinear", ["xq", "scale", "zp"], ["w"], **attrs),
            node("Mul", ["w", "x"], ["y"]),
        ],
        inputs,
        inits=inits,
        opset=opset,
    )


# (id, shape, axis, block_size, dtype, with zero point)
DQ_BLOCK_CASES = [
    ("axis1_bs2_int8", (4, 6), 1, 2, np.int8, True),
    ("axis0_bs2_uint8", (4, 6), 0, 2, np.uint8, True),
    ("axis1_bs3_int8_no_zp", (2, 6, 3), 1, 3, np.int8, False),
    ("axis_neg1_bs4_uint8", (3, 8), -1, 4, np.uint8, True),
    ("axis1_bs4_uneven_int8", (2, 6), 1, 4, np.int8, True),
]


@pytest.mark.parametrize("x_as_input", [False, True], ids=["x_init", "x_input"])
@pytest.mark.parametrize(
    ("case", "shape", "axis", "bs", "dtype", "with_zp"), DQ_BLOCK_CASES, ids=ids(DQ_BLOCK_CASES)
)
def test_dequantize_blocked_opset21(case, shape, axis, bs, dtype, with_zp, x_as_input):
    ax = axis % len(shape)
    sshape = list(shape)
    sshape[ax] = -(-shape[ax] // bs)
    inits = {"scale": rnd(*sshape, lo=0.005, hi=0.05, seed=8)}
    names = ["xq", "scale"]
    if with_zp:
        inits["zp"] = q_data(tuple(sshape), dtype, seed=5) // 4
        names.append("zp")
    inputs = {"x": rnd(*shape)}
    (inputs if x_as_input else inits)["xq"] = q_data(shape, dtype, seed=2)
    check(
        [
            node("DequantizeLinear", names, ["w"], axis=axis, block_size=bs),
            node("Mul", ["w", "x"], ["y"]),
        ],
        inputs,
        inits=inits,
        opset=21,
    )


# (id, zero point dtype or None (uint8 default), zero point, scale)
QDQ_CASES = [
    ("uint8_zp128", np.uint8, 128, 0.05),
    ("int8_zp0", np.int8, 0, 0.05),
    ("int8_zp_neg3", np.int8, -3, 0.03),
    ("uint8_zp7", np.uint8, 7, 0.02),
    ("default_uint8", None, None, 0.04),
]


def qdq_graph(zp_dtype, zp, scale):
    inits: dict[str, np.ndarray] = {"s": np.float32(scale)}
    names = ["x", "s"]
    if zp_dtype is not None:
        inits["zp"] = np.array(zp, dtype=zp_dtype)
        names.append("zp")
    nodes = [
        node("QuantizeLinear", names, ["q"]),
        node("DequantizeLinear", ["q", *names[1:]], ["y"]),
    ]
    q_dtype = zp_dtype if zp_dtype is not None else np.uint8
    return nodes, inits, q_dtype


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize(("case", "zp_dtype", "zp", "scale"), QDQ_CASES, ids=ids(QDQ_CASES))
def test_qdq_pair_random(opset, case, zp_dtype, zp, scale):
    nodes, inits, q_dtype = qdq_graph(zp_dtype, zp, scale)
    # wide range: exercises saturation at both ends of the integer range
    x = rnd(2, 3, 8, lo=-10.0, hi=10.0)
    model = make_model(nodes, {"x": x}, ["y", ("q", q_dtype)], inits, opset)
    ref = run_ort(model, {"x": x})
    got = run_jax(model, [x])
    assert len(got) == 2
    assert got[0].shape == ref[0].shape and got[1].shape == ref[1].shape
    assert got[1].dtype.kind == ref[1].dtype.kind
    # within one quantisation step (and one integer level)
    np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=scale * 1.001)
    np.testing.assert_array_less(
        np.abs(got[1].astype(np.int64) - ref[1].astype(np.int64)), 2, err_msg="q differs by > 1"
    )
    # almost everything must match exactly
    assert np.mean(got[1].astype(np.int64) == ref[1].astype(np.int64)) > 0.9


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize(("case", "zp_dtype", "zp", "scale"), QDQ_CASES, ids=ids(QDQ_CASES))
def test_qdq_pair_half_to_even_exact(opset, case, zp_dtype, zp, scale):
    scale = 0.5  # power of two: x / scale is exact, so only the rounding rule matters
    nodes, inits, q_dtype = qdq_graph(zp_dtype, zp, scale)
    halves = np.arange(-7, 7, dtype=np.float32) + np.float32(0.5)  # ... -1.5, -0.5, 0.5, 1.5 ...
    x = (np.concatenate([halves, f32(0.0, 0.25, -0.25, 0.75, 100.0, -100.0)]) * scale).astype(
        np.float32
    )
    check(nodes, {"x": x}, outputs=["y", ("q", q_dtype)], inits=inits, opset=opset, rtol=0, atol=0)


@pytest.mark.parametrize("opset", [13, 21])
def test_qdq_activation_into_conv_with_dq_weights(opset):
    """Typical QDQ model: QDQ on the activation, DequantizeLinear on int8 per-channel weights."""
    w_q = q_data((4, 3, 3, 3), np.int8, seed=3)
    inits = {
        "xs": np.float32(0.02),
        "xzp": np.array(128, dtype=np.uint8),
        "wq": w_q,
        "ws": rnd(4, lo=0.001, hi=0.01, seed=4),
        "wzp": np.zeros(4, dtype=np.int8),
        "B": rnd(4, seed=5),
    }
    nodes = [
        node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"]),
        node("DequantizeLinear", ["xq", "xs", "xzp"], ["xd"]),
        node("DequantizeLinear", ["wq", "ws", "wzp"], ["w"], axis=0),
        node("Conv", ["xd", "w", "B"], ["y"], pads=[1, 1, 1, 1]),
    ]
    # x on the quantisation grid shifted by a quarter step, so no value is near a rounding tie
    grid = np.random.default_rng(0).integers(-100, 100, size=(1, 3, 5, 5)).astype(np.float32)
    x = ((grid + np.float32(0.25)) * np.float32(0.02)).astype(np.float32)
    check(nodes, {"x": x}, inits=inits, opset=opset)


# --------------------------------------------------------------------------------------------
# Graph-level behaviour
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op_type", "node_name", "opset"),
    [("NotARealOp", "mystery_node_7", 17), ("NonMaxSuppression", "nms_head_0", 11)],
)
def test_unsupported_op_raises(op_type, node_name, opset):
    if op_type == "NonMaxSuppression":
        nodes = [node(op_type, ["boxes", "scores"], ["y"], name=node_name)]
        inputs = {"boxes": rnd(1, 4, 4), "scores": rnd(1, 1, 4)}
        outputs = [("y", np.int64)]
    else:
        nodes = [
            node("Relu", ["x"], ["r"], name="relu_ok"),
            node(op_type, ["r"], ["y"], name=node_name),
        ]
        inputs = {"x": rnd(2, 3)}
        outputs = ["y"]
    model = make_model(nodes, inputs, outputs, opset=opset, check=False)
    with pytest.raises(UnsupportedOpError) as excinfo:
        convert(model)
    msg = str(excinfo.value)
    assert op_type in msg
    assert node_name in msg
    assert str(opset) in msg
    assert isinstance(excinfo.value, ConversionError)
    assert isinstance(excinfo.value, ValueError)


def test_unconsumed_graph_inputs_are_ignored():
    nodes = [node("Mul", ["x", "w"], ["t"]), node("Sub", ["t", "z"], ["y"])]
    inputs = {
        "unused_a": rnd(3, seed=1),
        "x": rnd(2, 3, seed=2),
        "unused_b": np.zeros((1,), np.int64),
        "w": rnd(2, 3, seed=3),
        "z": rnd(3, seed=4),
    }
    model = make_model(nodes, inputs, ["y"])
    ref = run_ort(model, inputs)
    got = run_jax(model, [inputs["x"], inputs["w"], inputs["z"]])
    assert_match(got, ref)


def test_initializer_listed_as_graph_input_is_not_an_argument():
    # torch.onnx.export(keep_initializers_as_inputs=True) style: W is both a graph input and an
    # initialiser; apply_fn only takes the non-initialiser inputs.
    w = rnd(4, 3, seed=1)
    x = rnd(2, 3)
    nodes = [node("Gemm", ["x", "W"], ["y"], transB=1)]
    model = make_model(nodes, {"x": x, "W": w}, ["y"], inits={"W": w})
    ref = run_ort(model, {"x": x})
    got = run_jax(model, [x])
    assert_match(got, ref)


def test_model_path_and_multiple_outputs(tmp_path):
    nodes = [node("Relu", ["x"], ["a"]), node("Neg", ["x"], ["b"]), node("Add", ["a", "b"], ["c"])]
    x = rnd(2, 3)
    model = make_model(nodes, {"x": x}, ["c", "a", "b"])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    ref = run_ort(model, {"x": x})
    apply_fn, params = convert(str(path))
    got = [np.asarray(o) for o in apply_fn(params, x)]
    assert_match(got, ref)


def test_float_initializers_become_float32_params():
    model = make_model(
        [node("Conv", ["x", "W", "B"], ["y"])],
        {"x": rnd(1, 2, 4, 4)},
        inits={"W": rnd(3, 2, 3, 3), "B": rnd(3)},
    )
    _, params = convert(model)
    leaves = jax.tree_util.tree_leaves(params)
    assert leaves, "float initialisers should appear in params"
    assert all(np.asarray(leaf).dtype == np.float32 for leaf in leaves)


def test_jitted_small_cnn():
    """Conv -> BN -> Relu -> MaxPool -> Shape-driven flatten -> Gemm -> Softmax, under jax.jit."""
    opset = 13
    inits = {
        "W": rnd(4, 3, 3, 3, seed=1),
        "B": rnd(4, seed=2),
        "scale": rnd(4, lo=0.5, hi=1.5, seed=3),
        "bias": rnd(4, seed=4),
        "mean": rnd(4, seed=5),
        "var": rnd(4, lo=0.5, hi=2.0, seed=6),
        "idx0": np.array(0, dtype=np.int64),
        "minus1": i64(-1),
        "fcW": rnd(10, 36, seed=7),
        "fcB": rnd(10, seed=8),
    }
    nodes = [
        node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"]),
        node("Relu", ["bn"], ["r"]),
        node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Shape", ["p"], ["s"]),
        node("Gather", ["s", "idx0"], ["n"], axis=0),
        unsqueeze0("n", "n1", opset, inits),
        node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        node("Reshape", ["p", "shape"], ["f"]),
        node("Gemm", ["f", "fcW", "fcB"], ["logits"], transB=1),
        node("Softmax", ["logits"], ["y"], axis=1),
    ]
    x = rnd(2, 3, 6, 6)
    got, _ = check(nodes, {"x": x}, inits=inits, opset=opset, jit=True)
    eager = run_jax(make_model(nodes, {"x": x}, ["y"], inits, opset), [x])
    np.testing.assert_allclose(eager[0], got[0], rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# channel-last execution (convert/onnx/layout.py)
# --------------------------------------------------------------------------------------------


def _trunk_model(opset: int = 13) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A small conv trunk with every kind of op the channel-last pass handles or hands back:
    Conv, BatchNormalization, PRelu (per-channel and (C,1,1) slopes), a residual Add, Mul by
    an NCHW-shaped (1,C,1,1) constant and by a (W,) row, Sigmoid, Dropout, a depthwise conv,
    squeeze-excite gating by GlobalAveragePool, AveragePool concatenated on the channel axis,
    MaxPool, a second output taken mid-trunk, then Flatten -> Gemm."""
    c = 4
    inputs = {"x": rnd(2, 3, 9, 9, seed=1)}
    inits = {
        "w1": rnd(c, 3, 3, 3, seed=2), "b1": rnd(c, seed=3),
        "s": rnd(c, lo=0.5, hi=1.5, seed=4), "bb": rnd(c, seed=5),
        "m": rnd(c, seed=6), "v": rnd(c, lo=0.5, hi=1.5, seed=7),
        "slope": rnd(c, 1, 1, seed=8), "w2": rnd(c, c, 3, 3, seed=9),
        "gate": rnd(1, c, 1, 1, seed=10), "row": rnd(9, seed=11),
        "wd": rnd(c, 1, 3, 3, seed=12), "wg": rnd(2 * c * 4 * 4, 5, seed=13),
        "bg": rnd(5, seed=14),
    }  # fmt: skip
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["n1"], epsilon=1e-3),
        node("PRelu", ["n1", "slope"], ["p1"]),
        node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        node("Add", ["c2", "p1"], ["r"]),
        node("Mul", ["r", "gate"], ["g1"]),
        node("Mul", ["g1", "row"], ["g2"]),
        node("Sigmoid", ["g2"], ["sg"]),
        node("Dropout", ["sg"], ["d"]),
        node("Conv", ["d", "wd"], ["dw"], group=c, pads=[1, 1, 1, 1], strides=[2, 2]),
        node("GlobalAveragePool", ["dw"], ["se"]),
        node("Mul", ["dw", "se"], ["dwg"]),
        node("AveragePool", ["dwg"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("Concat", ["dwg", "ap"], ["cat"], axis=1),
        node("MaxPool", ["cat"], ["mp"], kernel_shape=[2, 2], strides=[1, 1]),
        node("Flatten", ["mp"], ["f"]),
        node("Gemm", ["f", "wg", "bg"], ["y"]),
    ]
    return make_model(nodes, inputs, ["y", "r"], inits, opset), inputs


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_channel_last_trunk_matches_ort(jit):
    model, inputs = _trunk_model()
    assert_match(run_jax(model, list(inputs.values()), jit=jit), run_ort(model, inputs))


def test_channel_last_trunk_gradient_matches_channel_first(monkeypatch):
    """Input gradients with the pass on (CPU) and off (every op NCHW, as on other backends)."""
    import jax.numpy as jnp

    from jaxcloak.convert.onnx import layout

    model, inputs = _trunk_model()
    apply_fn, params = convert(model)
    x = jnp.asarray(inputs["x"])

    def grad():
        return np.asarray(jax.grad(lambda x: jnp.sum(apply_fn(params, x)[0] ** 2))(x))

    on = grad()
    monkeypatch.setattr(layout, "run_channel_last", lambda *a: None)
    import jaxcloak.convert.onnx.graph as graph_mod

    monkeypatch.setattr(graph_mod, "run_channel_last", lambda *a: None)
    off = grad()
    np.testing.assert_allclose(on, off, rtol=1e-5, atol=1e-6)


def test_channel_last_leaves_no_transposes_between_layers():
    """In the trunk, activations are transposed only where it leaves channel-last ops:
    into the first conv, at Flatten and for the mid-trunk graph output."""
    if jax.default_backend() != "cpu":
        pytest.skip("the channel-last pass runs on CPU")
    model, inputs = _trunk_model()
    apply_fn, params = convert(model)
    jaxpr = jax.make_jaxpr(apply_fn)(params, inputs["x"])
    batch = inputs["x"].shape[0]
    moved = [
        e
        for e in jaxpr.jaxpr.eqns
        if e.primitive.name == "transpose"
        and e.invars[0].aval.shape[:1] == (batch,)
        and len(e.invars[0].aval.shape) == 4
    ]
    assert len(moved) == 3, [e.invars[0].aval.shape for e in moved]


POOL_CASES = [
    ("max_k3_s2_ceil", "MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("max_dilated_pads", "MaxPool",
     {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 0, 1, 1]}),
    ("avg_pads_excl", "AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ("avg_pads_incl_ceil", "AveragePool",
     {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 0, 1], "count_include_pad": 1,
      "ceil_mode": 1}),
    ("global_avg", "GlobalAveragePool", {}),
    ("global_max", "GlobalMaxPool", {}),
    ("concat_c", "Concat", {"axis": 1}),
    ("concat_h", "Concat", {"axis": 2}),
    ("concat_w_neg", "Concat", {"axis": -1}),
]  # fmt: skip


@pytest.mark.parametrize(("case", "op", "attrs"), POOL_CASES, ids=ids(POOL_CASES))
def test_channel_last_pooling_and_concat(case, op, attrs, monkeypatch):
    """Pooling and Concat on a conv's output run channel-last (not handed back NCHW) and
    match ONNX Runtime; two different convs feed Concat."""
    if jax.default_backend() != "cpu":
        pytest.skip("the channel-last pass runs on CPU")
    import jaxcloak.convert.onnx.graph as graph_mod
    from jaxcloak.convert.onnx import layout

    inputs = {"x": rnd(2, 3, 8, 7, seed=21)}
    inits = {"w": rnd(4, 3, 1, 1, seed=22)}
    nodes = [node("Conv", ["x", "w"], ["c"])]
    if op == "Concat":
        inits["w2"] = rnd(4, 3, 3, 3, seed=23)
        nodes += [
            node("Conv", ["x", "w2"], ["c2"], pads=[1, 1, 1, 1]),
            node(op, ["c", "c2"], ["p"], **attrs),
        ]
    else:
        nodes.append(node(op, ["c"], ["p"], **attrs))
    nodes.append(node("Relu", ["p"], ["y"]))
    model = make_model(nodes, inputs, ["y"], inits, opset=13)
    handled: dict[str, bool] = {}

    def spy(op_type, *a):
        out = layout.run_channel_last(op_type, *a)
        handled[op_type] = out is not None
        return out

    monkeypatch.setattr(graph_mod, "run_channel_last", spy)
    assert_match(run_jax(model, [inputs["x"]]), run_ort(model, inputs))
    assert handled[op], f"{op} was handed back NCHW"


# --------------------------------------------------------------------------------------------
# Conv -> BatchNormalization folding (convert/onnx/fold.py)
# --------------------------------------------------------------------------------------------


def _bn_inits(c: int, seed: int) -> dict[str, np.ndarray]:
    return {
        f"g{seed}": rnd(c, lo=0.5, hi=1.5, seed=seed),
        f"b{seed}": rnd(c, seed=seed + 1),
        f"m{seed}": rnd(c, seed=seed + 2),
        f"v{seed}": rnd(c, lo=0.2, hi=2.0, seed=seed + 3),
    }


def _bn(x: str, y: str, seed: int, **attrs: Any) -> onnx.NodeProto:
    return node(
        "BatchNormalization", [x, f"g{seed}", f"b{seed}", f"m{seed}", f"v{seed}"], [y], **attrs
    )


def _fold_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Three Conv -> BN pairs that fold (biased, unbiased, depthwise strided) and two that
    must not: a conv whose output is also a graph output, and one read by two nodes."""
    c = 4
    inputs = {"x": rnd(2, 3, 9, 9, seed=31)}
    inits = {"w1": rnd(c, 3, 3, 3, seed=32), "c1b": rnd(c, seed=33), "w2": rnd(c, c, 1, 1, seed=34)}
    inits |= {
        "wd": rnd(c, 1, 3, 3, seed=35),
        "w4": rnd(c, c, 3, 3, seed=36),
        "w5": rnd(c, c, 1, 1, seed=37),
    }
    for k in (40, 50, 60, 70, 80):
        inits |= _bn_inits(c, k)
    nodes = [
        node("Conv", ["x", "w1", "c1b"], ["c1"], pads=[1, 1, 1, 1]),
        _bn("c1", "n1", 40, epsilon=1e-3),
        node("Relu", ["n1"], ["r1"]),
        node("Conv", ["r1", "w2"], ["c2"]),
        _bn("c2", "n2", 50),
        node("Conv", ["n2", "wd"], ["c3"], group=c, strides=[2, 2], pads=[1, 1, 1, 1]),
        _bn("c3", "n3", 60),
        node("Conv", ["n3", "w4"], ["c4"], pads=[1, 1, 1, 1]),  # also a graph output
        _bn("c4", "n4", 70),
        node("Conv", ["n4", "w5"], ["c5"]),  # read by the BN and by Add
        _bn("c5", "n5", 80),
        node("Add", ["n5", "c5"], ["y"]),
    ]
    return make_model(nodes, inputs, ["y", "c4"], inits, opset=15), inputs


def test_batchnorm_folded_into_conv_matches_ort():
    model, inputs = _fold_model()
    apply_fn, params = convert(model)
    kinds = [s.node.op_type for s in apply_fn._steps]
    assert kinds.count("BatchNormalization") == 2, kinds  # the two unfoldable ones stay
    assert kinds.count("Conv") == 5
    for k in (40, 50, 60):
        assert not any(name.endswith(str(k)) for name in params), sorted(params)
    assert {"w1", "c1b", "w2", "wd"}.isdisjoint(params)
    assert {"w4", "w5", "g70", "g80"} <= set(params)
    assert_match(run_jax(model, [inputs["x"]], jit=True), run_ort(model, inputs))


def test_batchnorm_fold_keeps_function_and_gradient():
    """Folded and unfolded conversions: same outputs and input gradients up to float32
    rounding (within 1e-5 of each tensor's largest entry), and the folded graph exported for
    the cache converts back to the same function."""
    import jax.numpy as jnp

    model, inputs = _fold_model()
    folded, p_fold = convert(model)
    plain, p_plain = convert(model, fold_batchnorm=False)
    assert [s.node.op_type for s in plain._steps].count("BatchNormalization") == 5
    x = jnp.asarray(inputs["x"])

    def grad(fn, p):
        return jax.grad(lambda x: jnp.sum(fn(p, x)[0] ** 2))(x)

    pairs = [*zip(folded(p_fold, x), plain(p_plain, x), strict=True)]
    pairs.append((grad(folded, p_fold), grad(plain, p_plain)))
    for a, b in pairs:
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    again, p_again = convert(folded.to_model(p_fold))
    assert sorted(p_again) == sorted(p_fold)
    for a, b in zip(again(p_again, x), folded(p_fold, x), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_batchnorm_not_folded_when_its_stats_are_inputs():
    """A BN whose scale comes in at run time is not a constant affine map: left alone."""
    c = 3
    inputs = {"x": rnd(1, 2, 5, 5, seed=91), "g": rnd(c, lo=0.5, hi=1.5, seed=92)}
    inits = {"w": rnd(c, 2, 3, 3, seed=93), "b": rnd(c, seed=94), "m": rnd(c, seed=95)}
    inits["v"] = rnd(c, lo=0.5, hi=1.5, seed=96)
    nodes = [
        node("Conv", ["x", "w"], ["c"]),
        node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"]),
    ]
    model = make_model(nodes, inputs, ["y"], inits, opset=15)
    apply_fn, _ = convert(model)
    assert [s.node.op_type for s in apply_fn._steps] == ["Conv", "BatchNormalization"]
    assert_match(run_jax(model, list(inputs.values())), run_ort(model, inputs))


# --------------------------------------------------------------------------------------------
# prepared params (OnnxFunction.prepare)
# --------------------------------------------------------------------------------------------


def _prepare_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv, depthwise Conv, Gemm with transB=1, and a kernel also read by Mul (which must
    stay in the ONNX layout)."""
    c = 4
    inputs = {"x": rnd(2, 3, 6, 6, seed=61), "s": rnd(c, c, 1, 1, seed=67)}
    inits = {
        "w1": rnd(c, 3, 3, 3, seed=62), "wd": rnd(c, 1, 3, 3, seed=63),
        "ws": rnd(c, c, 1, 1, seed=64), "wg": rnd(7, c * 6 * 6, seed=65), "bg": rnd(7, seed=66),
    }  # fmt: skip
    nodes = [
        node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        node("Conv", ["c1", "wd"], ["c2"], group=c, pads=[1, 1, 1, 1]),
        node("Conv", ["c2", "ws"], ["c3"]),
        node("Mul", ["s", "ws"], ["wsq"]),
        node("Flatten", ["c3"], ["f"]),
        node("Gemm", ["f", "wg", "bg"], ["y"], transB=1),
    ]
    return make_model(nodes, inputs, ["y", "wsq"], inits, opset=13), inputs


def test_prepared_params_compute_the_same():
    model, inputs = _prepare_model()
    fn, params = convert(model)
    prepared = fn.prepare(params)
    assert {"w1::hwio", "wd::hwio", "wg::t", "ws", "bg"} == set(prepared)
    assert prepared["w1::hwio"].shape == (3, 3, 3, 4) and prepared["wg::t"].shape == (144, 7)
    assert set(fn.prepare(prepared)) == set(prepared)  # idempotent
    x = list(inputs.values())
    for a, b in zip(jax.jit(fn)(prepared, *x), fn(params, *x), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    _, p_again = convert(fn.to_model(prepared))  # the cache export takes either
    assert set(p_again) == set(params)
    for k, v in p_again.items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(params[k]))


def test_prepared_params_leave_no_weight_transposes_in_a_loop():
    """The point of preparing: a scan over the converted function re-lays-out no weight on
    each iteration (XLA cancels the layout round trip), while unprepared params do."""
    if jax.default_backend() != "cpu":
        pytest.skip("prepared layouts are for the CPU's channel-last convolutions")
    import re

    import jax.numpy as jnp

    model, inputs = _prepare_model()
    fn, params = convert(model)
    x, s = jnp.asarray(inputs["x"]), jnp.asarray(inputs["s"])

    def weight_transposes(p) -> list[str]:
        def run(p, x):
            def body(x, _):
                g = jax.grad(lambda x: jnp.sum(fn(p, x, s)[0] ** 2))(x)
                return x - 1e-3 * g, None

            return jax.lax.scan(body, x, None, length=3)[0]

        hlo = jax.jit(run).lower(p, x).compile().as_text()
        shapes = {tuple(np.shape(v)) for v in params.values() if np.ndim(v) >= 2}
        shapes |= {tuple(np.shape(v)) for v in fn.prepare(params).values() if np.ndim(v) >= 2}
        shapes |= {(h, w, c) for h, w, i, c in filter(lambda t: len(t) == 4, shapes) if i == 1}
        found = []
        for m in re.finditer(r"= f32\[([\d,]*)\]\S* (?:transpose|copy|fusion)\((.*)", hlo):
            shape = tuple(int(d) for d in m.group(1).split(",") if d)
            is_layout = "transpose" in m.group(0).split("=")[0] or "copy" in m.group(0)
            if shape in shapes and is_layout:
                found.append(m.group(0)[:80])
        return found

    assert weight_transposes(params), "the check must see the transposes it looks for"
    assert not weight_transposes(fn.prepare(params))


def test_a_tensor_named_like_a_prepared_key_is_left_alone():
    """An ONNX tensor whose own name ends in ``::t`` is not mistaken for a prepared key."""
    inputs = {"x": rnd(2, 3, seed=71)}
    inits = {"k::t": rnd(2, 3, seed=72), "k": rnd(2, 3, seed=73)}
    nodes = [node("Add", ["x", "k::t"], ["a"]), node("Mul", ["a", "k"], ["y"])]
    model = make_model(nodes, inputs, ["y"], inits, opset=13)
    fn, params = convert(model)
    assert set(fn.prepare(params)) == {"k::t", "k"}
    assert_match(run_jax(model, [inputs["x"]]), run_ort(model, inputs))
