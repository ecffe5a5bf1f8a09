"""Parity check of one registered model against ONNX Runtime on the bundled sample faces."""

from __future__ import annotations

import time

#: Parity bounds for `models check` (same as the test suite's for SFace).
MIN_COSINE = 0.99999
MAX_ABS_DIFF_REL = 1e-3  # of the largest |embedding| entry


def check_model(name: str, *, use_cache: bool = True) -> dict:
    """Load one registered model and compare it with ONNX Runtime on the sample faces."""
    import jax
    import numpy as np

    from ..convert.onnx.reference import ort_session
    from ..faces.samples import sample_faces
    from .registry import get_spec, imported_meta, load

    spec = get_spec(name)
    row: dict = {"model": name}
    if spec.native and imported_meta(name) is None:
        row.update(status="not imported (skipped)")
        return row
    try:
        t0 = time.perf_counter()
        model = load(name, use_cache=use_cache)
        row.update(
            load_s=round(time.perf_counter() - t0, 2),
            cached=model.from_cache,
            sha256=model.sha256[:12],
            file=str(model.path),
        )
        faces = sample_faces()
        images = np.stack(list(faces.values())).astype(np.float32) / 255.0
        ours = np.asarray(jax.jit(model.embed)(model.params, images))
        if spec.native:
            # No second runtime to compare with here (torch is optional): the port's parity
            # is proven by the test suite on reference models; check the output is sane.
            norms = np.linalg.norm(ours, axis=-1)
            ok = bool(np.isfinite(ours).all() and np.allclose(norms, 1.0, atol=1e-4))
            row.update(faces=len(faces), status="ok (native; no ONNX reference)" if ok else "BAD")
            return row
        session = ort_session(model.path)
        net_in = np.asarray(spec.to_network_input(images))
        ref = np.concatenate(
            [session.run(None, {session.get_inputs()[0].name: x[None]})[0] for x in net_in]
        )
        ref_unit = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
        cos = np.sum(ours * ref_unit, axis=-1)
        diff = np.abs(ours - ref_unit).max() / np.abs(ref_unit).max()
        ok = bool(cos.min() >= MIN_COSINE and diff <= MAX_ABS_DIFF_REL)
        row.update(
            faces=len(faces),
            min_cosine=f"{cos.min():.7f}",
            max_rel_diff=f"{diff:.1e}",
            status="ok" if ok else "MISMATCH",
        )
    except FileNotFoundError as e:
        row.update(status=f"MISSING: {e}")
    except Exception as e:  # report and continue with the next model
        row.update(status=f"ERROR: {type(e).__name__}: {e}")
    return row
