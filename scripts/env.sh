# Sourced by the project's scripts: creates the virtual environment and builds cbam_fused in it.
# Idempotent: a second run reuses the venv and rebuilds only what changed.
#   CBAM_FUSED_TORCH      torch version (default 2.14.1, the supported range is 2.11 up to it). The
#                         default goes into .venv, capped by scripts/constraints.txt; another version
#                         (e.g. 2.11.0, or 2.13.0+cpu for a CPU-only build) comes from the registry into
#                         its own .venv-torch-<version>. The extension is built in place, so switching
#                         rebuilds it; importing a build made for another torch raises an ImportError.
#   CBAM_FUSED_VENV       venv folder (overrides the two above)
#   CBAM_FUSED_TOOLS=min  install only the build and test tools (no timm, onnx, plotting)
#   CBAM_FUSED_NO_BUILD=1 set up the venv only, do not build cbam_fused
#   CBAM_FUSED_NO_CUDA=1  skip the CUDA kernels even when nvcc is found
#   TORCH_CUDA_ARCH_LIST  CUDA architectures for this build (default here: 9.0+PTX, to keep the
#                         test build short; wheels and plain `pip install` default to the full list)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEFAULT_TORCH="2.14.1"
TORCH_VERSION="${CBAM_FUSED_TORCH:-$DEFAULT_TORCH}"
PIP_ARGS=(-q --disable-pip-version-check)
if [ "$TORCH_VERSION" = "$DEFAULT_TORCH" ]; then
  VENV="${CBAM_FUSED_VENV:-$ROOT/.venv}"
  PIP_ARGS+=(-c "$ROOT/scripts/constraints.txt")
else  # the pin below holds torch in place; the default's cap would forbid newer releases
  VENV="${CBAM_FUSED_VENV:-$ROOT/.venv-torch-$TORCH_VERSION}"
fi
PY="$VENV/bin/python"
TORCH_SPEC="torch==$TORCH_VERSION"
if [ "${CBAM_FUSED_TOOLS:-full}" = "min" ]; then
  DEPS=(ninja setuptools wheel pytest hypothesis expecttest numpy)
  PROBE="ninja, pytest, hypothesis, expecttest, numpy"
else
  DEPS=(ninja "cmake<4" setuptools wheel build pytest hypothesis expecttest rich matplotlib "timm==1.0.*"
        onnx onnxruntime onnxscript)
  PROBE="ninja, pytest, rich, matplotlib, timm, onnxruntime, hypothesis"
fi

if [ ! -x "$PY" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
# torch must be the asked-for release (a local label such as +cpu only when asked for), and the tools there
if ! "$PY" - "$TORCH_VERSION" 2>/dev/null <<PYEOF
import sys, torch, $PROBE
want = sys.argv[1]
have = torch.__version__ if "+" in want else torch.__version__.split("+")[0]
sys.exit(have != want)
PYEOF
then
  echo "[setup] installing $TORCH_SPEC and the tools into $VENV (a few minutes)"
  # one pip call, so that what the tools pull in (torchvision for timm) fits this torch
  "$PY" -m pip install "${PIP_ARGS[@]}" "$TORCH_SPEC" "${DEPS[@]}"
fi
# Triton's interpreter before 3.8 (torch 2.11 brings 3.6) fails under NumPy 2.4, which no longer turns
# a one-element array into an int (triton-lang/triton#9171)
if ! "$PY" - 2>/dev/null <<'PYEOF'
import sys
try:
    import triton
except ImportError:
    sys.exit(0)
import numpy
old = lambda v, ref: tuple(int(p) for p in v.split(".")[:2]) < ref
sys.exit(old(triton.__version__, (3, 8)) and not old(numpy.__version__, (2, 4)))
PYEOF
then
  echo "[setup] triton $("$PY" -c 'import triton; print(triton.__version__)') needs NumPy below 2.4 for its interpreter"
  "$PY" -m pip install "${PIP_ARGS[@]}" "numpy<2.4"
fi

export MAX_JOBS="${MAX_JOBS:-2}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0+PTX}"
if [ "${CBAM_FUSED_NO_BUILD:-0}" = "1" ]; then
  echo "[setup] $VENV has torch $("$PY" -c 'import torch; print(torch.__version__)'); not building (CBAM_FUSED_NO_BUILD=1)"
  return 0 2>/dev/null || exit 0
fi
echo "[setup] building cbam_fused in place for torch $TORCH_VERSION (MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
(cd "$ROOT" && "$PY" -m pip install "${PIP_ARGS[@]}" --no-build-isolation --no-deps -e .)
"$PY" - <<'PYEOF'
import cbam_fused
from cbam_fused import _build
skipped = (_build.record() or {}).get("cuda_skipped")
print("[setup] cbam_fused backends:", cbam_fused.available_backends(),
      f"(CUDA kernels not built: {skipped})" if skipped else "")
PYEOF
