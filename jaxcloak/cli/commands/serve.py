"""``jaxcloak serve``: the local web app and HTTP API (:mod:`jaxcloak.serve`)."""

from __future__ import annotations

import argparse
import copy
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from ..wiring import make_cloaker


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "multipart")):
        raise SystemExit("error: jaxcloak serve needs its extra: pip install 'jaxcloak[serve]'")
    args.token = args.token or os.environ.get("JAXCLOAK_SERVE_TOKEN") or None
    if not _is_loopback(args.host) and not args.token:
        raise SystemExit(
            f"error: --host {args.host} accepts connections from other machines; give "
            "--token SECRET so that only those who know it can use the server"
        )
    import uvicorn

    from ...serve.app import create_app
    from ...serve.jobs import Limits
    from ...serve.work import Warm

    made = args.jobs_dir is None
    root = Path(tempfile.mkdtemp(prefix="jaxcloak-serve-")) if made else Path(args.jobs_dir)
    # Uploads Starlette spools to disk land in the server's folder too, not the system's.
    (root / "spool").mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(root / "spool")
    limits = Limits(
        max_files=args.max_files,
        max_file_bytes=args.max_mb << 20,
        max_total_bytes=max(args.max_mb, args.max_total_mb) << 20,
        max_pixels=int(args.max_megapixels * 1e6),
        queue=args.workers_queue,
        ttl_seconds=args.ttl_minutes * 60,
    )

    def build(strength: str):
        run = copy.copy(args)
        run.strength = strength
        return make_cloaker(run)

    warm = Warm(build)
    if not args.cold:  # compile the default strength before the first request
        from ...faces.samples import astronaut_aligned

        print("compiling the mid-strength program (once per server) ...", flush=True)
        warm.get("mid").fit(astronaut_aligned()[None], ["warm-up"])
    app = create_app(warm, root, limits, token=args.token)
    print(f"jaxcloak serving on http://{args.host}:{args.port}/ (API docs: /docs)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if made:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        except OSError:
            print(f"warning: cannot resolve --host {host}", file=sys.stderr)
            return False
