# Sourced by the project's scripts: creates the virtual environment and builds cbam_fused in it.
# Idempotent: a second run reuses the venv and rebuilds only what changed.
#   CBAM_FUSED_VENV       venv folder (default: <repo>/.venv)
#   CBAM_FUSED_NO_CUDA=1  skip the CUDA kernels even when nvcc is found
#   TORCH_CUDA_ARCH_LIST  CUDA architectures for this build (default here: 9.0+PTX, to keep the
#                         test build short; wheels and plain `pip install` default to the full list)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CBAM_FUSED_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
TORCH_SPEC="torch==2.14.1"
DEPS=(ninja "cmake<4" setuptools wheel build pytest hypothesis expecttest rich matplotlib "timm==1.0.*"
      onnx onnxruntime onnxscript)

if [ ! -x "$PY" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$PY" -c "import torch, ninja, pytest, rich, matplotlib, timm, onnxruntime, hypothesis" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC and the tools (about two minutes)"
  "$PY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC" "${DEPS[@]}"
fi

export MAX_JOBS="${MAX_JOBS:-2}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0+PTX}"
echo "[setup] building cbam_fused in place (MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
(cd "$ROOT" && "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .)
"$PY" -c "import cbam_fused; print('[setup] cbam_fused backends:', cbam_fused.available_backends())"
