"""``jaxcloak calibrate``: a verification threshold from a labelled folder."""

from __future__ import annotations

import argparse
import sys


def cmd_calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from ...evaluate.metrics import calibrate_threshold
    from ...methods.facecloak.anchors import user_pool
    from ...zoo.embed import embed_faces
    from ...zoo.registry import load

    pool = user_pool(args.folder)
    rec = load(args.model)
    emb = embed_faces(rec, pool.faces)
    sims = emb @ emb.T
    ids = np.asarray(pool.ids)
    iu = np.triu_indices(len(ids), 1)
    same = ids[iu[0]] == ids[iu[1]]
    genuine, impostor = sims[iu][same], sims[iu][~same]
    thr = calibrate_threshold(genuine, impostor, args.far)
    tar = float(np.mean(genuine >= thr)) if len(genuine) else float("nan")
    print(
        f"{args.model}: threshold {thr:.4f} at FAR {args.far:g} from {len(impostor)} impostor "
        f"and {len(genuine)} genuine pairs ({len(set(ids))} identities); TAR {tar:.3f}; "
        f"registry threshold {rec.spec.threshold}"
    )
    for path, reason in pool.skipped:
        print(f"  skipped {path}: {reason}", file=sys.stderr)
    return 0
