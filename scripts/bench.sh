#!/usr/bin/env bash
# The main job: sets up the venv and the build, then benchmarks the fused kernels on whatever
# device is present (CPU here) against eager PyTorch and torch.compile. Arguments go to `python -m bench`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec "$PY" -m bench "$@"
