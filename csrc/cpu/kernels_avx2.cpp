// AVX2 + FMA build of the kernels (selected at run time, see ops_cpu.cpp). The target pragma must
// precede every include, so that all code of this file, vec.h's intrinsics included, is compiled for
// AVX2. Nothing here may have static initialisers: they would run at load time on any CPU.
#include "cpu/isa_guard.h"
#if CBAM_FUSED_PER_ISA_BUILD
#pragma GCC target("avx2,fma,f16c")
// sleef.h declares its vector functions only under the ISA macros, which the pragma does not
// define; define them for that header alone (c10 must not see them: its inline helpers are
// shared with the baseline code).
#define __AVX__ 1
#define __AVX2__ 1
#include <sleef.h>
#undef __AVX__
#undef __AVX2__
// vec.h passes vector types by value in lambdas (-Wpsabi) and GCC 12 misreports intrinsics'
// internal undefined operands as uninitialised; both are noise here.
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "cpu/kernels.h"

namespace cbam_fused::cpu {
bool fill_table_avx2(KernelTable& table) {
  AVX2::fill_table(table);
  return true;
}
}  // namespace cbam_fused::cpu
#else
#include "cpu/dispatch.h"
namespace cbam_fused::cpu {
bool fill_table_avx2(KernelTable&) { return false; }
}  // namespace cbam_fused::cpu
#endif
