#!/usr/bin/env bash
# The whole GPU verification in one command, for a machine with one NVIDIA GPU, its own python3 with
# torch (2.11 or newer, with its Triton) and nvcc, no network:
#
#   bash scripts/gpu_check.sh OUTDIR          run every phase, results into OUTDIR
#   bash scripts/gpu_check.sh --list          print the plan (phases, time boxes, commands) and exit
#   bash scripts/gpu_check.sh --build-only OUTDIR   the build phase alone (GPU_CHECK_ARCH names the arch
#                                                  where no GPU is visible)
#
# No venv and no pip: it runs under $PYTHON (default python3) as found, builds the extension in place
# for the local GPU's architecture only, then runs the phases below in priority order, each under its
# own time box and all within GPU_CHECK_TOTAL_S. Each phase writes its results as they come, so a
# phase stopped at its box (or a machine taken back) still leaves what it measured. A phase whose box
# would start below GPU_CHECK_MIN_S is skipped; a failed build skips everything after it.
#
# OUTDIR receives: phases.jsonl (one line per phase: status, exit code, seconds), <phase>.log (the
# tests' text output among them), tests_*.xml (JUnit), passes/ (passes.json, passes.md), blocks_*/ (results.json,
# results.md), and summary.md, written last from all of them (python -m bench.gpu_summary OUTDIR).
#
# Environment: PYTHON, GPU_CHECK_TOTAL_S (default 290), GPU_CHECK_<PHASE>_S (a phase's box, e.g.
# GPU_CHECK_BUILD_S), GPU_CHECK_MIN_S (default 15), GPU_CHECK_ARCH (e.g. 9.0; default: the GPU's),
# GPU_CHECK_COMPILE_FORMULATIONS (default matmul), MAX_JOBS (default: the CPU count).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
TOTAL_S="${GPU_CHECK_TOTAL_S:-290}"
MIN_S="${GPU_CHECK_MIN_S:-15}"
FORMULATIONS="${GPU_CHECK_COMPILE_FORMULATIONS:-matmul}"
# The four ResNet-50 stage shapes; batch 128 first (tensors larger than an H100's or H200's L2:
# bandwidth), then batch 8 (latency).
STAGES="256x56x56 512x28x28 1024x14x14 2048x7x7"
SHAPES="$(for n in 128 8; do for s in $STAGES; do printf '%s,' "${n}x$s"; done; done)"
SHAPES="${SHAPES%,}"
SHAPES_128="$(for s in $STAGES; do printf '%s,' "128x$s"; done)"
SHAPES_128="${SHAPES_128%,}"
BENCH="-m bench --device cuda --backends cuda,triton"
CORE_TESTS="tests/test_cuda_gpu.py tests/test_cuda_graphs.py tests/test_triton.py tests/test_determinism.py tests/test_compile.py tests/test_autocast.py"

# name | time box (s) | what. The order is the priority order.
PLAN="build|${GPU_CHECK_BUILD_S:-150}|the extension, in place, for the local GPU's architecture only
tests_core|${GPU_CHECK_TESTS_CORE_S:-45}|gpu-marked tests of the GPU-specific files (CUDA kernels, CUDA graphs, Triton, determinism, compile, autocast)
tests_all|${GPU_CHECK_TESTS_ALL_S:-45}|the other gpu-marked tests (every backend-parametrised test's cuda case), in parallel workers where pytest-xdist is there
passes|${GPU_CHECK_PASSES_S:-60}|python -m bench --mode passes: each pass's time, GB/s, ratio to its yardstick and fraction of copy_, fp16 and bf16, NCHW and channels_last, the four stage shapes at N=128 and N=8
blocks_nchw|${GPU_CHECK_BLOCKS_NCHW_S:-75}|the block sweep, NCHW: fused cuda and triton, eager, torch.compile ($FORMULATIONS; compiles stop after half the box), fp16 and bf16, N=128 then N=8, forward and forward+backward, peak memory
blocks_cl|${GPU_CHECK_BLOCKS_CL_S:-45}|the block sweep, channels_last, fp16, N=128: fused cuda and triton, eager, torch.compile within a third of the box"

phase_command() {  # the command of a phase, as words on one line (OUT is the output folder)
  case "$1" in
    build) echo "build_extension" ;;
    tests_core) echo "$PY -m pytest -p no:cacheprovider -q -rfEs -m 'gpu and not slow' --junitxml=\$OUT/tests_core.xml $CORE_TESTS" ;;
    tests_all) echo "$PY -m pytest -p no:cacheprovider -q -rfEs -m 'gpu and not slow' --continue-on-collection-errors \$XDIST --junitxml=\$OUT/tests_all.xml $(for f in $CORE_TESTS; do printf -- '--ignore=%s ' "$f"; done)tests" ;;
    passes) echo "$PY $BENCH --mode passes --dtypes float16,bfloat16 --layouts nchw,channels_last --shapes $SHAPES --repeats 20 --warmup 3 --out \$OUT/passes" ;;
    blocks_nchw) echo "$PY $BENCH --dtypes float16,bfloat16 --shapes $SHAPES --compile-formulations $FORMULATIONS --compile-budget \$((BOX / 2)) --repeats 20 --warmup 3 --no-plots --out \$OUT/blocks_nchw" ;;
    blocks_cl) echo "$PY $BENCH --channels-last --dtypes float16 --shapes $SHAPES_128 --compile-formulations $FORMULATIONS --compile-budget \$((BOX / 3)) --repeats 20 --warmup 3 --no-plots --out \$OUT/blocks_cl" ;;
  esac
}

list_plan() {
  echo "gpu_check plan: phases in priority order, each capped by what is left of GPU_CHECK_TOTAL_S=$TOTAL_S s"
  while IFS='|' read -r name box what; do
    echo "phase $name box=${box}s: $what"
    echo "  \$ $(phase_command "$name")"
  done <<<"$PLAN"
  echo "total=${TOTAL_S}s"
}

die() { echo "gpu_check: $*" >&2; exit 2; }

gpu_arch() {  # "major.minor" of the GPU torch sees, or GPU_CHECK_ARCH
  if [ -n "${GPU_CHECK_ARCH:-}" ]; then echo "$GPU_CHECK_ARCH"; return; fi
  "$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())'
}

build_extension() {
  local arch
  arch="$(gpu_arch)" || { echo "cannot read the GPU's compute capability"; return 1; }
  command -v nvcc >/dev/null || [ -n "${CUDA_HOME:-}" ] || { echo "no nvcc on PATH and no CUDA_HOME: cannot build the CUDA kernels"; return 1; }
  echo "building for TORCH_CUDA_ARCH_LIST=$arch with MAX_JOBS=${MAX_JOBS:-$(nproc)} under $("$PY" -c 'import torch; print("torch", torch.__version__)')"
  (cd "$ROOT" && TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py -q build_ext --inplace) || return 1
  # the build must have made the CUDA module for this arch (setup.py skips it silently without nvcc)
  (cd "$ROOT" && "$PY" - "$arch" <<'PYEOF'
import json, sys
info = json.load(open("cbam_fused/_build_info.json"))
print("build record:", info)
if "_cuda" not in info["extensions"]:
    sys.exit(f"the CUDA module was not built: {info['cuda_skipped']}")
if info["cuda_arch_list"] != sys.argv[1]:
    sys.exit(f"built for {info['cuda_arch_list']}, not {sys.argv[1]}")
PYEOF
  )
}

# ---- arguments
BUILD_ONLY=0
case "${1:-}" in
  --list|--dry-run) list_plan; exit 0 ;;
  --build-only) BUILD_ONLY=1; shift ;;
  -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
esac
[ $# -eq 1 ] || die "usage: bash scripts/gpu_check.sh [--list | --build-only] OUTDIR"
OUT="$(mkdir -p "$1" && cd "$1" && pwd)" || die "cannot create the output folder $1"
command -v "$PY" >/dev/null || die "no python at '$PY' (set PYTHON)"

# ---- a GPU, or one clear line and a non-zero exit
if [ "$BUILD_ONLY" = 0 ] || [ -z "${GPU_CHECK_ARCH:-}" ]; then
  # stdout says why not; stderr (warnings of an import) is kept apart and shown only if python fails
  why="$("$PY" - 2>"$OUT/preflight.err" <<'PYEOF'
import torch
if torch.version.cuda is None:
    print(f"torch {torch.__version__} is built without CUDA")
elif not torch.cuda.is_available():
    print(f"no CUDA GPU is visible to torch {torch.__version__} (torch.cuda.is_available() is False)")
PYEOF
)" || why="$PY could not import torch: $(tail -n 1 "$OUT/preflight.err")"
  if [ -n "$why" ]; then
    echo "{\"phase\": \"preflight\", \"status\": \"failed\", \"reason\": \"${why//\"/\'}\"}" >"$OUT/phases.jsonl"
    die "no GPU, nothing run: $why"
  fi
fi

START=$(date +%s)
: >"$OUT/phases.jsonl"
export OUT PYTHONUNBUFFERED=1
cd "$ROOT"
XDIST=""
if "$PY" -c 'import xdist' 2>/dev/null; then XDIST="-n $(( $(nproc) < 8 ? $(nproc) : 8 ))"; fi
export XDIST

record() {  # name status rc seconds box
  echo "{\"phase\": \"$1\", \"status\": \"$2\", \"rc\": $3, \"seconds\": $4, \"box_s\": $5}" >>"$OUT/phases.jsonl"
  echo "[gpu_check] phase $1: $2 (rc $3, $4 s of a ${5} s box)"
}

BLOCKED=""
while IFS='|' read -r name box what; do
  if [ "$BUILD_ONLY" = 1 ] && [ "$name" != build ]; then break; fi
  left=$(( TOTAL_S - ($(date +%s) - START) ))
  BOX=$(( box < left ? box : left ))
  if [ -n "$BLOCKED" ]; then record "$name" "skipped: $BLOCKED" 0 0 "$BOX"; continue; fi
  if [ "$BOX" -lt "$MIN_S" ]; then record "$name" "skipped: ${left} s left of the total" 0 0 "$BOX"; continue; fi
  export BOX
  echo "[gpu_check] phase $name (box ${BOX} s): $what"
  t0=$(date +%s)
  if [ "$name" = build ]; then
    # a function cannot run under timeout(1): run it in a child bash that sources nothing but this file's
    # definitions, passed through the environment
    export -f build_extension gpu_arch
    export PY ROOT
    timeout --signal=INT --kill-after=20 "$BOX" bash -c build_extension </dev/null >"$OUT/$name.log" 2>&1
  else
    # SIGINT first: pytest and the benchmark stop cleanly on it and write what they have
    eval "timeout --signal=INT --kill-after=20 $BOX $(phase_command "$name")" </dev/null >"$OUT/$name.log" 2>&1
  fi
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  case $rc in
    0) status=ok ;;
    124|130|137) status=timeout ;;
    *) status=failed ;;
  esac
  record "$name" "$status" "$rc" "$secs" "$BOX"
  if [ "$name" = build ] && [ "$status" != ok ]; then
    tail -n 20 "$OUT/$name.log" >&2
    BLOCKED="the build did not succeed (see build.log)"
  fi
done <<<"$PLAN"

"$PY" -m bench.gpu_summary "$OUT" >"$OUT/summary.log" 2>&1 || echo "[gpu_check] the summary failed: see summary.log"
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
echo "[gpu_check] done in $(( $(date +%s) - START )) s; summary: $OUT/summary.md (to bring OUTDIR back as one file: tar czf gpu_check.tgz -C $OUT .)"
# success means every phase ran to its end and passed
if grep -v '"status": "ok"' "$OUT/phases.jsonl" | grep -q .; then exit 1; fi
exit 0
