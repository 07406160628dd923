// CPU registrations of the pass ops (schemas in csrc/ops.cpp, semantics in cbam_fused/passes.py):
// argument checks, output allocation and the run-time choice of the kernel build (ISA).
#include <ATen/Version.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/isa_guard.h"
#include "cpu/pass_table_cpu.h"
#include "spatial_conv_checks.h"

namespace cbam_fused::cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// ----------------------------------------------------------------------------- ISA selection
const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512:
      return "avx512";
    case Isa::Avx2:
      return "avx2";
    default:
      return "default";
  }
}

// What this CPU can run (and this build contains).
Isa hardware_isa() {
#if CBAM_FUSED_PER_ISA_BUILD
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return avx512 ? Isa::Avx512 : avx2 ? Isa::Avx2 : Isa::Default;
#else
  return Isa::Default;
#endif
}

// CBAM_FUSED_CPU_ISA=default|avx2|avx512 forces a build (an error if the CPU lacks it); otherwise
// follow ATen's choice (which honours ATEN_CPU_CAPABILITY), capped by what the CPU supports.
Isa choose_isa() {
  const Isa hw = hardware_isa();
  if (const char* env = std::getenv("CBAM_FUSED_CPU_ISA"); env != nullptr && *env != '\0') {
    const std::string want(env);
    Isa isa;
    if (want == "default") {
      isa = Isa::Default;
    } else if (want == "avx2") {
      isa = Isa::Avx2;
    } else if (want == "avx512") {
      isa = Isa::Avx512;
    } else {
      TORCH_CHECK(false, "CBAM_FUSED_CPU_ISA must be one of default, avx2, avx512; got '", want, "'");
    }
    TORCH_CHECK(static_cast<int>(isa) <= static_cast<int>(hw), "CBAM_FUSED_CPU_ISA=", want,
                " is not supported by this CPU or build (best available: ", isa_name(hw), ")");
    return isa;
  }
  const std::string aten = at::get_cpu_capability();
  const Isa aten_isa = aten.find("AVX512") != std::string::npos ? Isa::Avx512
                       : aten.find("AVX2") != std::string::npos ? Isa::Avx2
                                                                 : Isa::Default;
  return static_cast<int>(aten_isa) < static_cast<int>(hw) ? aten_isa : hw;
}

struct Kernels {
  Isa isa;
  KernelTable table;
};

const Kernels& kernels() {  // chosen once per process
  static const Kernels k = [] {
    Kernels out{choose_isa(), {}};
    bool ok = false;
    switch (out.isa) {
      case Isa::Avx512:
        ok = fill_table_avx512(out.table);
        break;
      case Isa::Avx2:
        ok = fill_table_avx2(out.table);
        break;
      default:
        break;
    }
    if (!ok) {
      out.isa = Isa::Default;
      fill_table_default(out.table);
    }
    return out;
  }();
  return k;
}

// ------------------------------------------------------------------------------------ checks
DType dtype_of(const Tensor& x, const char* name) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return DType::F32;
    case at::kDouble:
      return DType::F64;
    case at::kBFloat16:
      return DType::BF16;
    case at::kHalf:
      return DType::F16;
    default:
      TORCH_CHECK(false, "cbam_fused: ", name, " must be float32, float64, bfloat16 or float16, got ",
                  x.scalar_type());
  }
}

at::ScalarType acc_of(const Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// A full-size 4-D operand: its shape, layout and dtype index.
struct Big {
  Shape shape;
  Layout layout;
  DType dtype;
};

Big check_big(const Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), "cbam_fused: ", name, " must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, "cbam_fused: ", name, " must be 4-D [N, C, H, W], got shape ", x.sizes());
  Layout layout;
  if (x.is_contiguous()) {
    layout = Layout::NCHW;
  } else if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    layout = Layout::NHWC;
  } else {
    TORCH_CHECK(false, "cbam_fused: ", name, " must be NCHW-contiguous or channels_last, got strides ",
                x.strides());
  }
  const Shape shape{x.size(0), x.size(1), x.size(2) * x.size(3)};
  if (acc_of(x) == at::kFloat) {  // positions travel as float (exact below 2^24)
    TORCH_CHECK(shape.c < (int64_t{1} << 24) && shape.p < (int64_t{1} << 24), "cbam_fused: ", name,
                " has too many channels or pixels for the CPU kernels (limit 2^24 each)");
  }
  return Big{shape, layout, dtype_of(x, name)};
}

void check_same(const Tensor& t, const Big& ref_info, const Tensor& ref, const char* name, const char* ref_name) {
  const Big b = check_big(t, name);
  TORCH_CHECK(t.sizes() == ref.sizes(), "cbam_fused: ", name, " has shape ", t.sizes(), " but ", ref_name,
              " has shape ", ref.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "cbam_fused: ", name, " has dtype ", t.scalar_type(),
              " but ", ref_name, " has dtype ", ref.scalar_type());
  TORCH_CHECK(b.layout == ref_info.layout, "cbam_fused: ", name, " and ", ref_name,
              " must have the same memory format (both NCHW-contiguous or both channels_last)");
}

// Small [N, len] operands: checked, made contiguous if needed (a copy of a small tensor costs
// nothing next to a pass over x), and kept alive here while the kernel runs.
struct SmallOperands {
  std::vector<Tensor> keep;

  const void* get(const OptTensor& t, const char* name, const Tensor& x, int64_t len, at::ScalarType dtype) {
    if (!t.has_value()) return nullptr;
    TORCH_CHECK(t->device().is_cpu(), "cbam_fused: ", name, " must be a CPU tensor, got ", t->device());
    TORCH_CHECK(t->scalar_type() == dtype, "cbam_fused: ", name, " must have dtype ", dtype, " for x of dtype ",
                x.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->dim() == 2 && t->size(0) == x.size(0) && t->size(1) == len, "cbam_fused: ", name,
                " must have shape [", x.size(0), ", ", len, "], got ", t->sizes());
    keep.push_back(t->contiguous());
    return keep.back().data_ptr();
  }
  // accumulation-typed values
  const void* acc(const OptTensor& t, const char* name, const Tensor& x, int64_t len) {
    return get(t, name, x, len, acc_of(x));
  }
  // int32 argmax positions, converted to the accumulation type for the kernels
  const void* positions(const OptTensor& t, const char* name, const Tensor& x, int64_t len) {
    if (get(t, name, x, len, at::kInt) == nullptr) return nullptr;
    keep.back() = keep.back().to(acc_of(x));
    return keep.back().data_ptr();
  }
};

Tensor empty_like_layout(const Tensor& x, Layout layout) {
  return at::empty(x.sizes(), x.options().memory_format(layout == Layout::NHWC ? at::MemoryFormat::ChannelsLast
                                                                                 : at::MemoryFormat::Contiguous));
}

Tensor small_out(const Tensor& x, int64_t len, at::ScalarType dtype) {
  return at::empty({x.size(0), len}, x.options().dtype(dtype));
}

int d(DType t) { return static_cast<int>(t); }
int l(Layout t) { return static_cast<int>(t); }

// ------------------------------------------------------------------------------------ the ops
// argmax and count: [N, len] int32 with `ties`, else empty (the untracking kernel variant runs).
std::pair<Tensor, Tensor> tie_outs(const Tensor& x, int64_t len, bool ties) {
  if (!ties) return {at::empty({0}, x.options().dtype(at::kInt)), at::empty({0}, x.options().dtype(at::kInt))};
  return {small_out(x, len, at::kInt), small_out(x, len, at::kInt)};
}

int32_t* ints_if(bool ties, const Tensor& t) { return ties ? t.data_ptr<int32_t>() : nullptr; }

std::tuple<Tensor, Tensor, Tensor, Tensor> pool_hw(const Tensor& x, bool ties) {
  const Big b = check_big(x, "x");
  TORCH_CHECK(b.shape.p > 0, "cbam_fused::pool_hw: x has no pixels to pool over");
  Tensor avg = small_out(x, b.shape.c, acc_of(x)), mx = small_out(x, b.shape.c, acc_of(x));
  auto [argmax, count] = tie_outs(x, b.shape.c, ties);
  kernels().table.pool_hw[d(b.dtype)][l(b.layout)][ties](PoolHwArgs{
      b.shape, x.data_ptr(), avg.data_ptr(), mx.data_ptr(), ints_if(ties, argmax), ints_if(ties, count)});
  return {avg, mx, argmax, count};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> pool_c(const Tensor& x, const OptTensor& a, bool ties) {
  const Big b = check_big(x, "x");
  TORCH_CHECK(b.shape.c > 0, "cbam_fused::pool_c: x has no channels to pool over");
  SmallOperands small;
  const void* a_ptr = small.acc(a, "a", x, b.shape.c);
  Tensor mean = small_out(x, b.shape.p, acc_of(x)), mx = small_out(x, b.shape.p, acc_of(x));
  auto [argmax, count] = tie_outs(x, b.shape.p, ties);
  kernels().table.pool_c[d(b.dtype)][l(b.layout)][ties](PoolCArgs{
      b.shape, x.data_ptr(), a_ptr, mean.data_ptr(), mx.data_ptr(), ints_if(ties, argmax), ints_if(ties, count)});
  return {mean, mx, argmax, count};
}

Tensor apply_gates(const Tensor& x, const OptTensor& a, const OptTensor& s) {
  const Big b = check_big(x, "x");
  SmallOperands small;
  const void* a_ptr = small.acc(a, "a", x, b.shape.c);
  const void* s_ptr = small.acc(s, "s", x, b.shape.p);
  Tensor y = empty_like_layout(x, b.layout);
  kernels().table.apply_gates[d(b.dtype)][l(b.layout)](
      ApplyGatesArgs{b.shape, x.data_ptr(), a_ptr, s_ptr, y.data_ptr()});
  return y;
}

std::tuple<Tensor, Tensor> gate_grads(const Tensor& gy, const Tensor& x, const OptTensor& a, const OptTensor& s,
                                      bool want_a, bool want_s) {
  const Big b = check_big(x, "x");
  check_same(gy, b, x, "gy", "x");
  SmallOperands small;
  const void* a_ptr = small.acc(a, "a", x, b.shape.c);
  const void* s_ptr = small.acc(s, "s", x, b.shape.p);
  const auto acc = acc_of(x);
  Tensor ga = want_a ? small_out(x, b.shape.c, acc) : at::empty({0}, x.options().dtype(acc));
  Tensor gs = want_s ? small_out(x, b.shape.p, acc) : at::empty({0}, x.options().dtype(acc));
  Tensor partials = at::empty({reduce_scratch_elems(b.layout, b.shape.n, b.shape.c, b.shape.p, want_s)}, x.options().dtype(acc));
  kernels().table.gate_grads[d(b.dtype)][l(b.layout)][0](
      GateGradsArgs{b.shape, gy.data_ptr(), x.data_ptr(), a_ptr, s_ptr, want_a ? ga.data_ptr() : nullptr,
                    want_s ? gs.data_ptr() : nullptr, partials.data_ptr(), nullptr});
  return {ga, gs};
}

Tensor pool_c_grad_a(const Tensor& x, const Tensor& a, const Tensor& u, const Tensor& v, const Tensor& argmax,
                     const Tensor& mx, bool split) {
  const Big b = check_big(x, "x");
  const int64_t C = b.shape.c, P = b.shape.p;
  SmallOperands small;
  PoolCGradAArgs args{b.shape,
                      x.data_ptr(),
                      small.acc(a, "a", x, C),
                      small.acc(u, "u", x, P),
                      small.acc(v, "v", x, P),
                      small.positions(argmax, "argmax", x, P),
                      small.acc(mx, "max", x, P),
                      split,
                      nullptr,
                      nullptr,
                      /*accumulate=*/false};
  Tensor ga = small_out(x, C, acc_of(x));
  Tensor partials = at::empty({reduce_scratch_elems(b.layout, b.shape.n, C, P, /*gs=*/false)}, x.options().dtype(acc_of(x)));
  args.ga = ga.data_ptr();
  args.partials = partials.data_ptr();
  kernels().table.pool_c_grad_a[d(b.dtype)][l(b.layout)](args);
  return ga;
}

Tensor input_grad(const Tensor& gy, const OptTensor& x, const OptTensor& a, const OptTensor& s, const OptTensor& u_c,
                  const OptTensor& v_c, const OptTensor& argmax_c, const OptTensor& max_c, const OptTensor& u_hw,
                  const OptTensor& v_hw, const OptTensor& argmax_hw, const OptTensor& max_hw, bool split) {
  const Big b = check_big(gy, "gy");
  const int64_t C = b.shape.c, P = b.shape.p;
  if (x.has_value()) check_same(*x, b, gy, "x", "gy");
  TORCH_CHECK(!split || x.has_value(), "cbam_fused::input_grad: split-style ties need x");
  TORCH_CHECK(u_c.has_value() == v_c.has_value(), "cbam_fused::input_grad: u_c and v_c go together");
  TORCH_CHECK(u_hw.has_value() == v_hw.has_value(), "cbam_fused::input_grad: u_hw and v_hw go together");
  if (u_c.has_value()) {
    TORCH_CHECK(split ? max_c.has_value() : argmax_c.has_value(), "cbam_fused::input_grad: u_c needs ",
                split ? "max_c" : "argmax_c");
  }
  if (u_hw.has_value()) {
    TORCH_CHECK(split ? max_hw.has_value() : argmax_hw.has_value(), "cbam_fused::input_grad: u_hw needs ",
                split ? "max_hw" : "argmax_hw");
  }
  SmallOperands small;
  InputGradArgs args{b.shape,
                     gy.data_ptr(),
                     split ? x->data_ptr() : nullptr,
                     small.acc(a, "a", gy, C),
                     small.acc(s, "s", gy, P),
                     small.acc(u_c, "u_c", gy, P),
                     small.acc(v_c, "v_c", gy, P),
                     small.positions(argmax_c, "argmax_c", gy, P),
                     small.acc(max_c, "max_c", gy, P),
                     small.acc(u_hw, "u_hw", gy, C),
                     small.acc(v_hw, "v_hw", gy, C),
                     small.positions(argmax_hw, "argmax_hw", gy, C),
                     small.acc(max_hw, "max_hw", gy, C),
                     split,
                     nullptr,
                     nullptr};
  Tensor gx = empty_like_layout(gy, b.layout);
  args.gx = gx.data_ptr();
  kernels().table.input_grad[d(b.dtype)][l(b.layout)][0](args);
  return gx;
}

Tensor spatial_conv(const Tensor& in0, const Tensor& in1, const Tensor& weight, const OptTensor& bias, int64_t h,
                    int64_t w) {
  const ConvOperands c =
      check_conv_operands("spatial_conv", c10::DeviceType::CPU, in0, in1, weight, bias, nullptr, h, w);
  Tensor out = at::empty({c.n, h * w}, c.in0.options());
  const SpatialConvArgs args{c.n,
                             c.h,
                             c.w,
                             c.k,
                             c.f64,
                             c.in0.data_ptr(),
                             c.in1.data_ptr(),
                             c.weight.data_ptr(),
                             c.bias.defined() ? c.bias.data_ptr() : nullptr,
                             out.data_ptr()};
  TORCH_CHECK(spatial_conv_cpu(args, nullptr) == 0, "cbam_fused::spatial_conv: invalid arguments");
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> spatial_conv_backward(const Tensor& grad_out, const Tensor& in0,
                                                                 const Tensor& in1, const Tensor& weight,
                                                                 bool has_bias, int64_t h, int64_t w) {
  const ConvOperands c = check_conv_operands("spatial_conv_backward", c10::DeviceType::CPU, in0, in1, weight,
                                             std::nullopt, &grad_out, h, w);
  Tensor g0 = at::empty({c.n, h * w}, c.in0.options()), g1 = at::empty({c.n, h * w}, c.in0.options());
  Tensor gw = at::empty(c.weight.sizes(), c.weight.options());
  Tensor gb = at::empty({has_bias ? 1 : 0}, c.weight.options());
  Tensor ws = at::empty({static_cast<int64_t>(spatial_conv_grad_workspace_cpu(c.n, c.h, c.w, c.k, c.f64))},
                        c.in0.options().dtype(at::kByte));
  const SpatialConvGradArgs args{c.n,
                                 c.h,
                                 c.w,
                                 c.k,
                                 c.f64,
                                 c.in0.data_ptr(),
                                 c.in1.data_ptr(),
                                 c.weight.data_ptr(),
                                 c.grad_out.data_ptr(),
                                 g0.data_ptr(),
                                 g1.data_ptr(),
                                 gw.data_ptr(),
                                 has_bias ? gb.data_ptr() : nullptr,
                                 ws.data_ptr()};
  TORCH_CHECK(spatial_conv_grad_cpu(args, nullptr) == 0, "cbam_fused::spatial_conv_backward: invalid arguments");
  return {g0, g1, gw, gb};
}

// Which kernel build runs, and on how many threads (for tests and benchmarks).
std::string cpu_info() {
  return std::string("isa=") + isa_name(kernels().isa) + " threads=" + std::to_string(at::get_num_threads());
}

}  // namespace

const KernelTable& kernel_table() { return kernels().table; }

TORCH_LIBRARY_FRAGMENT(cbam_fused, m) {
  m.def("cpu_info() -> str", &cpu_info);
}

TORCH_LIBRARY_IMPL(cbam_fused, CPU, m) {
  m.impl("pool_hw", &pool_hw);
  m.impl("pool_c", &pool_c);
  m.impl("apply_gates", &apply_gates);
  m.impl("gate_grads", &gate_grads);
  m.impl("pool_c_grad_a", &pool_c_grad_a);
  m.impl("input_grad", &input_grad);
  m.impl("spatial_conv", &spatial_conv);
  m.impl("spatial_conv_backward", &spatial_conv_backward);
}

}  // namespace cbam_fused::cpu
