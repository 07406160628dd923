// The CPU PassTable (csrc/pass_args.h): the device-independent argument structs, adapted to the
// per-ISA kernel builds of csrc/cpu/kernels.h through the KernelTable chosen at run time.
//
// The CPU kernels compare argmax positions as accumulation-typed values (vectorised compares against
// a position ramp), so int32 positions are converted here, into a small scratch array per call.
#include "cpu/pass_table_cpu.h"

#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/dispatch.h"

namespace cbam_fused::cpu {
namespace {

int d(DType t) { return static_cast<int>(t); }
int l(Layout t) { return static_cast<int>(t); }
Shape shape(const Geometry& g) { return Shape{g.n, g.c, g.p}; }
std::size_t acc_size(const Geometry& g) { return g.dtype == DType::F64 ? sizeof(double) : sizeof(float); }

// int32 positions as accumulation-typed values; nullptr stays nullptr.
class Positions {
 public:
  Positions(const int32_t* pos, int64_t count, bool f64) {
    if (pos == nullptr) return;
    if (f64) {
      d_.assign(pos, pos + count);
    } else {
      f_.assign(pos, pos + count);
    }
  }
  const void* get() const {
    if (!d_.empty()) return d_.data();
    if (!f_.empty()) return f_.data();
    return nullptr;
  }

 private:
  std::vector<double> d_;
  std::vector<float> f_;
};

// The kernels carry positions as accumulation-typed values: exact below 2^24 in float.
constexpr int kTooLarge = 1;
bool too_large(const Geometry& g) {
  const int64_t limit = int64_t{1} << 24;
  return g.dtype != DType::F64 && (g.c >= limit || g.p >= limit);
}

int pool_hw(const ::cbam_fused::PoolHwArgs& a, void*) {
  if (too_large(a.g)) return kTooLarge;
  // the tracking variant computes only what the caller wants: the argmax, the count, or both
  const bool track = a.argmax != nullptr || a.count != nullptr;
  kernel_table().pool_hw[d(a.g.dtype)][l(a.g.layout)][track](cpu::PoolHwArgs{
      shape(a.g), a.x, a.mean, a.max, a.argmax, a.count});
  return 0;
}

int pool_c(const ::cbam_fused::PoolCArgs& a, void*) {
  if (too_large(a.g)) return kTooLarge;
  // the tracking variant computes only what the caller wants: the argmax, the count, or both
  const bool track = a.argmax != nullptr || a.count != nullptr;
  kernel_table().pool_c[d(a.g.dtype)][l(a.g.layout)][track](cpu::PoolCArgs{
      shape(a.g), a.x, a.a, a.mean, a.max, a.argmax, a.count});
  return 0;
}

int apply_gates(const ::cbam_fused::ApplyGatesArgs& a, void*) {
  kernel_table().apply_gates[d(a.g.dtype)][l(a.g.layout)](cpu::ApplyGatesArgs{shape(a.g), a.x, a.a, a.s, a.y});
  return 0;
}

int gate_grads(const ::cbam_fused::GateGradsArgs& a, void*) {
  if (a.ga == nullptr && a.gs == nullptr) return 0;
  kernel_table().gate_grads[d(a.g.dtype)][l(a.g.layout)][a.gy_c != nullptr](cpu::GateGradsArgs{
      shape(a.g), a.gy, a.x, a.a, a.s, a.ga, a.gs, a.workspace, a.gy_c});
  return 0;
}

int pool_c_grad_a(const ::cbam_fused::PoolCGradAArgs& a, void*) {
  const bool split = a.tie.argmax == nullptr;
  Positions pos(a.tie.argmax, a.g.n * a.g.p, a.g.dtype == DType::F64);
  kernel_table().pool_c_grad_a[d(a.g.dtype)][l(a.g.layout)](cpu::PoolCGradAArgs{
      shape(a.g), a.x, a.a, a.u, a.v, pos.get(), a.tie.max, split, a.ga, a.workspace, /*accumulate=*/true});
  return 0;
}

int input_grad(const ::cbam_fused::InputGradArgs& a, void*) {
  const bool f64 = a.g.dtype == DType::F64;
  Positions pos_c(a.u_c != nullptr ? a.tie_c.argmax : nullptr, a.g.n * a.g.p, f64);
  Positions pos_hw(a.u_hw != nullptr ? a.tie_hw.argmax : nullptr, a.g.n * a.g.c, f64);
  kernel_table().input_grad[d(a.g.dtype)][l(a.g.layout)][a.gy_c != nullptr](
      cpu::InputGradArgs{shape(a.g), a.gy, a.x, a.a, a.s, a.u_c, a.v_c, pos_c.get(), a.tie_c.max, a.u_hw, a.v_hw,
                         pos_hw.get(), a.tie_hw.max, a.split, a.gx, a.gy_c});
  return 0;
}

std::size_t workspace_bytes(Pass pass, const Geometry& g) {
  switch (pass) {
    case Pass::GateGrads:  // partial sums over fixed tiles (thread-count independent)
    case Pass::PoolCGradA: {
      const bool gs = pass == Pass::GateGrads;  // pool_c_grad_a sums over pixels only
      return static_cast<std::size_t>(reduce_scratch_elems(g.layout, g.n, g.c, g.p, gs)) * acc_size(g);
    }
    default:
      return 0;
  }
}

const char* error_string(int code) {
  if (code == kSpatialConvBadArgs) return "invalid arguments to the spatial conv kernels";
  return code == kTooLarge ? "x has too many channels or pixels for the CPU kernels (limit 2^24 each)"
                           : "unknown CPU kernel error";
}

}  // namespace

const PassTable& cpu_pass_table() {
  static const PassTable table{pool_hw,          pool_c,           apply_gates,     gate_grads,
                               pool_c_grad_a,    input_grad,       spatial_conv_cpu, spatial_conv_grad_cpu,
                               workspace_bytes, spatial_conv_grad_workspace_cpu, error_string,
                               channel_mlp_cpu, channel_mlp_grad_cpu, /*reads_gy_c=*/true};
  return table;
}

}  // namespace cbam_fused::cpu
