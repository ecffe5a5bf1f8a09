"""ONNX Runtime as the parity reference for converted graphs (host-side, optional)."""

from __future__ import annotations

import os

import onnx


def prune_for_runtime(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy without dangling graph inputs and without initialisers listed as inputs.

    ONNX Runtime refuses SFace until its 29 dangling inputs are gone, and treats initialisers
    listed as inputs as overridable (slower, noisy). Neither change alters the function.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name for i in out.graph.initializer}
    consumed = {i for n in out.graph.node for i in n.input} | {o.name for o in out.graph.output}
    keep = [vi for vi in out.graph.input if vi.name not in inits and vi.name in consumed]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    return out


def ort_session(
    model: onnx.ModelProto | str | os.PathLike, threads: int = 0, *, cuda: bool = False
):
    """An ONNX Runtime session for ``model`` (raises ImportError if ORT is missing): on the
    CPU, or with ``cuda`` on ORT's CUDA provider in true float32 when this ORT build has it
    (CPU otherwise; the session's ``get_providers()`` says which ran)."""
    import onnxruntime as ort

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: SFace's unused shape initialisers warn otherwise
    if threads:
        opts.intra_op_num_threads = threads
    providers: list = ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        # TF32 off (ORT's CUDA default is on): a float32 reference, as the other runtimes.
        providers.insert(0, ("CUDAExecutionProvider", {"use_tf32": "0"}))
    return ort.InferenceSession(
        prune_for_runtime(model).SerializeToString(), opts, providers=providers
    )


def with_dynamic_batch(model: onnx.ModelProto, dim_name: str = "N") -> onnx.ModelProto:
    """Copy of ``model`` whose graph inputs and outputs have a symbolic leading dimension."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in list(out.graph.input) + list(out.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = dim_name
    return out
