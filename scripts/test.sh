#!/usr/bin/env bash
# The test command: sets up the venv and the build, then runs the whole suite.
#   1. everything except the emulator tests (CPU kernels, Triton under TRITON_INTERPRET=1, ...);
#   2. the self-test of the emulator in use ($CUDACPU_HOME, else third_party/cudacpu);
#   3. the CUDA kernels on the CPU emulator, once per thread order (the emulator reads
#      CUDACPU_ORDER once per process).
# Extra arguments go to every pytest run (e.g. -x, -k cpu).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
status=0
run() {  # pytest exits 5 when a filter selects nothing; that is not a failure here
  local rc=0
  "$PY" -m pytest "$@" || rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then status=$rc; fi
}
run -m "not emulator" "$@"
echo "[test] the cudacpu emulator's self-test"
bash "${CUDACPU_HOME:-$ROOT/third_party/cudacpu}/selftest/run.sh" || status=1
for order in fwd rev rand; do
  echo "[test] CUDA kernels under the emulator, thread order $order"
  CUDACPU_ORDER=$order run -m emulator "$@"
done
exit $status
