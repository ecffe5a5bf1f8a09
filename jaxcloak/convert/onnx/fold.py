"""Inference BatchNormalization folded into the convolution that feeds it, at conversion.

An eval-mode BatchNormalization is an affine map per output channel, so after a Conv it can be
absorbed into the Conv's weights: ``W' = W * s`` and ``b' = (b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``. ONNX Runtime does the same when it optimises a graph. The
fold is exact in real arithmetic; in float32 the folded output differs from the unfolded one
by rounding only (the fold itself is computed in float64).

A pair is folded only when nothing else could observe the difference: the Conv's output feeds
that one BatchNormalization and nothing else (not another node, not a graph output), and the
Conv weights, Conv bias and the four BatchNormalization tensors are all conversion-time
constants. The folded weights get new names; the originals, no longer consumed, drop out of
``params``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from onnx import helper as onnx_helper

__all__ = ["fold_batchnorm"]


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


def fold_batchnorm(
    steps: list[Any],
    consts: dict[str, np.ndarray],
    graph_outputs: Iterable[str],
    make_step: Callable[[Any], Any],
    reserved: Iterable[str] = (),
) -> list[Any]:
    """The steps with every foldable Conv -> BatchNormalization pair merged into one Conv.

    Args:
      steps: the nodes left after constant folding, in graph order (``_Step`` objects).
      consts: constants by name; the folded weights and biases are added to it.
      graph_outputs: names the graph returns (a Conv output among them is never folded).
      make_step: builds a step from a new ``NodeProto`` (the converter's ``_Step``).
      reserved: other names the new weights must not take (the graph's inputs).

    Returns:
      The new step list (the input list is not modified).
    """
    graph_outputs = list(graph_outputs)
    readers = Counter(i for s in steps for i in s.inputs if i)
    readers.update(graph_outputs)
    producer = {o: k for k, s in enumerate(steps) for o in s.outputs if o}
    taken = set(consts) | set(producer) | {i for s in steps for i in s.inputs if i}
    taken |= set(graph_outputs) | set(reserved)
    replaced: dict[int, Any] = {}
    dropped: set[int] = set()
    for k, bn in enumerate(steps):
        if bn.node.op_type != "BatchNormalization" or bn.node.attr("training_mode", 0):
            continue
        ins = bn.inputs
        if len(ins) != 5 or bn.node.n_outputs != 1 or not all(i in consts for i in ins[1:]):
            continue
        j = producer.get(ins[0])
        if j is None or j in replaced or j in dropped:
            continue
        conv = steps[j]
        w_name = conv.inputs[1] if len(conv.inputs) > 1 else ""
        b_name = conv.inputs[2] if len(conv.inputs) > 2 else ""
        if (
            conv.node.op_type != "Conv"
            or readers[ins[0]] != 1
            or w_name not in consts
            or (b_name and b_name not in consts)
        ):
            continue
        w = np.asarray(consts[w_name], np.float64)
        gamma, beta, mean, var = (np.asarray(consts[i], np.float64) for i in ins[1:])
        if w.ndim < 3 or gamma.shape != (w.shape[0],):
            continue
        s = gamma / np.sqrt(var + bn.node.attr("epsilon", 1e-5))
        b = np.asarray(consts[b_name], np.float64) if b_name else np.zeros(w.shape[0])
        new_w = _unique(f"{bn.outputs[0]}_folded_weight", taken)
        new_b = _unique(f"{bn.outputs[0]}_folded_bias", taken)
        consts[new_w] = (w * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        consts[new_b] = ((b - mean) * s + beta).astype(np.float32)
        proto = onnx_helper.make_node(
            "Conv",
            [conv.inputs[0], new_w, new_b],
            [bn.outputs[0]],
            name=conv.proto.name or None,
        )
        proto.attribute.extend(conv.proto.attribute)
        replaced[j] = make_step(proto)
        dropped.add(k)
    return [replaced.get(k, s) for k, s in enumerate(steps) if k not in dropped]
