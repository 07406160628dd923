// Baseline (x86-64 / SSE2, or the target's default) build of the kernels. Listed first among the
// kernel objects at link time, so that an inline function emitted by several builds is kept in
// this portable version.
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#include "cpu/kernels.h"

namespace cbam_fused::cpu {
bool fill_table_default(KernelTable& table) {
  DEFAULT::fill_table(table);
  return true;
}
}  // namespace cbam_fused::cpu
