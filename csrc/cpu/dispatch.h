// Interface between the ATen glue (ops_cpu.cpp) and the per-ISA kernel builds (kernels*.cpp).
//
// The kernels take raw pointers and sizes only. kernels.h is compiled once per instruction set
// (kernels.cpp: baseline x86-64, kernels_avx2.cpp, kernels_avx512.cpp), each inside its own
// `inline namespace CPU_CAPABILITY`, and each build fills a KernelTable; the glue picks a table at
// run time. This header must stay free of ATen includes and of non-static inline functions: it is
// compiled into every TU, and an out-of-line copy of a shared inline function compiled with AVX-512
// could be the one the linker keeps (an ODR leak of ISA-specific code into baseline callers).
#pragma once

#include <cstdint>

#include "pass_args.h"

namespace cbam_fused::cpu {

// The dtype numbering and the layouts are the device-independent ones of pass_args.h.
using ::cbam_fused::DType;
using ::cbam_fused::kNumDTypes;
using ::cbam_fused::Layout;

enum class Isa : int { Default = 0, Avx2 = 1, Avx512 = 2 };
constexpr int kNumIsas = 3;

struct Shape {
  int64_t n, c, p;  // batch, channels, pixels (H*W)
};

// Optional pointers are nullptr when absent. `acc` pointers point at contiguous [N,C] or [N,P]
// arrays of the accumulation type. Argmax positions are passed in the accumulation type too (the
// glue converts the int32 tensors; exact because the glue checks C, P < 2^24 for float).
struct PoolHwArgs {
  Shape shape;
  const void* x;
  void* avg;  // [N,C] acc
  void* max;  // [N,C] acc
  // [N,C] each, or nullptr: the tracking variant writes (and computes) only those given; the
  // untracking variant, neither
  int32_t* argmax;
  int32_t* count;
};

struct PoolCArgs {
  Shape shape;
  const void* x;
  const void* a;  // [N,C] acc or nullptr
  void* mean;  // [N,P] acc
  void* max;  // [N,P] acc
  int32_t* argmax;  // [N,P] each, or nullptr, as in PoolHwArgs
  int32_t* count;
};

struct ApplyGatesArgs {
  Shape shape;
  const void* x;
  const void* a;  // [N,C] acc or nullptr
  const void* s;  // [N,P] acc or nullptr
  void* y;  // like x
};

struct GateGradsArgs {
  Shape shape;
  const void* gy;
  const void* x;
  const void* a;  // [N,C] acc or nullptr
  const void* s;  // [N,P] acc or nullptr
  void* ga;  // [N,C] acc or nullptr (not wanted)
  void* gs;  // [N,P] acc or nullptr (not wanted)
  void* partials;  // reduce_scratch_elems(.., gs = true) acc: ga's and gs's partial sums
  const void* gy_c;  // [N,C] acc: gy constant over pixels (the kGyC variant reads it, not gy)
};

struct PoolCGradAArgs {
  Shape shape;
  const void* x;
  const void* a;  // [N,C] acc
  const void* u;  // [N,P] acc
  const void* v;  // [N,P] acc
  const void* argmax;  // [N,P] acc positions (index-style ties)
  const void* max;  // [N,P] acc (split-style ties)
  bool split;
  void* ga;  // [N,C] acc
  void* partials;  // reduce_scratch_elems(.., gs = false) acc: ga's partial sums
  bool accumulate;  // ga += the sum (the PassTable's contract), else ga = the sum
};

struct InputGradArgs {
  Shape shape;
  const void* gy;
  const void* x;  // read only when split
  const void* a;  // [N,C] or nullptr
  const void* s;  // [N,P] or nullptr
  // gradient of the pools over channels (spatial gate); u_c == nullptr means the group is absent
  const void *u_c, *v_c, *argmax_c, *max_c;  // [N,P]
  // gradient of the pools over pixels (channel gate); u_hw == nullptr means the group is absent
  const void *u_hw, *v_hw, *argmax_hw, *max_hw;  // [N,C]
  bool split;
  void* gx;  // like gy
  const void* gy_c;  // as in GateGradsArgs
};

using PoolHwFn = void (*)(const PoolHwArgs&);
using PoolCFn = void (*)(const PoolCArgs&);
using ApplyGatesFn = void (*)(const ApplyGatesArgs&);
using GateGradsFn = void (*)(const GateGradsArgs&);
using PoolCGradAFn = void (*)(const PoolCGradAArgs&);
using InputGradFn = void (*)(const InputGradArgs&);

// One ISA build's kernels, indexed [dtype][layout]; the pools also by [tracks argmax or count], the
// passes that read gy by [reads gy_c].
struct KernelTable {
  PoolHwFn pool_hw[kNumDTypes][2][2];
  PoolCFn pool_c[kNumDTypes][2][2];
  ApplyGatesFn apply_gates[kNumDTypes][2];
  GateGradsFn gate_grads[kNumDTypes][2][2];  // [..][reads gy_c]
  PoolCGradAFn pool_c_grad_a[kNumDTypes][2];
  InputGradFn input_grad[kNumDTypes][2][2];  // [..][reads gy_c]
};

// The tiles of the passes that reduce over pixels and channels at once (gate_grads, pool_c_grad_a).
// They depend on the shape alone, so no sum's order depends on the thread count.
// - NCHW: an item reads whole image planes of a group of channels, one run of consecutive memory that
//   the hardware prefetchers follow. Blocks narrower than the plane read short segments one plane
//   apart, which ran 1.5-1.6x slower in gate_grads (docs/design.md §4.5). Planes above
//   kNchwPixelBlock pixels are cut into blocks (their per-pixel accumulators stay in L1), and the
//   channels into groups of about kNchwGroupElems elements, so that a small batch still gives
//   several items per sample.
// - NHWC: chunks of kNhwcPixelChunk pixels, each adding C partial sums.
// ga's partial sums are [N, blocks, C], summed in block order; with several channel groups, gs's
// partial sums are [N, groups, P], summed in group order. Both live in one scratch, ga's first.
constexpr int64_t kNchwPixelBlock = 4096;
constexpr int64_t kNchwGroupElems = int64_t{1} << 18;
constexpr int64_t kNhwcPixelChunk = 64;

struct ReduceTiles {
  int64_t block;   // pixels per block (the last one may be shorter)
  int64_t blocks;
  int64_t group;   // channels per group (the last one may be shorter)
  int64_t groups;  // always 1 in NHWC
};

static inline ReduceTiles reduce_tiles(Layout layout, int64_t C, int64_t P) {
  if (layout != Layout::NCHW) return {kNhwcPixelChunk, (P + kNhwcPixelChunk - 1) / kNhwcPixelChunk, C, 1};
  const int64_t block = P < kNchwPixelBlock ? P : kNchwPixelBlock;
  const int64_t wanted = (kNchwGroupElems + block - 1) / block;  // channels per group, at least
  const int64_t groups = wanted >= C ? 1 : C / wanted;  // groups of at least `wanted` channels
  const int64_t group = (C + groups - 1) / groups;
  return {block, (P + block - 1) / block, group, (C + group - 1) / group};
}

// Elements of the scratch of gate_grads and pool_c_grad_a (accumulation type): ga's partial sums,
// then, with `gs` (gate_grads when gs may be wanted), gs's.
static inline int64_t reduce_scratch_elems(Layout layout, int64_t N, int64_t C, int64_t P, bool gs) {
  const ReduceTiles t = reduce_tiles(layout, C, P);
  return N * t.blocks * C + (gs && t.groups > 1 ? N * t.groups * P : 0);
}

// The build chosen for this process (ops_cpu.cpp).
const KernelTable& kernel_table();

// Each kernel build defines one of these (returns false when that ISA was not compiled in).
bool fill_table_default(KernelTable& table);
bool fill_table_avx2(KernelTable& table);
bool fill_table_avx512(KernelTable& table);

}  // namespace cbam_fused::cpu
