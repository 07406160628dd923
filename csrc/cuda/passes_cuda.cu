// ATen/c10 glue of the CUDA passes: checks, output and workspace allocation, current stream, device
// guard; then a call through the CUDA PassTable (pass_table.cuh: the dtype switch and the launchers,
// which hold no ATen). Nothing here synchronises the host. The op schemas live in csrc/ops.cpp
// (library cbam_fused::, module _C).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "attention.h"
#include "cuda/pass_table.cuh"
#include "spatial_conv_checks.h"

namespace cbam_fused::cuda {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return DType::F64;
    case at::kBFloat16: return DType::BF16;
    case at::kHalf: return DType::F16;
    default: return DType::F32;
  }
}

Geometry geometry(const Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.is_cuda(), "cbam_fused::", op, ": ", name, " must be a CUDA tensor, got one on ", x.device());
  TORCH_CHECK(x.dim() == 4, "cbam_fused::", op, ": ", name, " must be 4-D [N, C, H, W], got ", x.sizes());
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble, "cbam_fused::", op,
              ": ", name, " must be float32, float16, bfloat16 or float64, got ", t);
  const bool nchw = x.is_contiguous();
  const bool cl = !nchw && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(nchw || cl, "cbam_fused::", op, ": ", name,
              " must be NCHW-contiguous or channels_last-contiguous (strides ", x.strides(), ")");
  TORCH_CHECK(x.numel() > 0, "cbam_fused::", op, ": ", name, " must not be empty, got shape ", x.sizes());
  return {x.size(0), x.size(1), x.size(2) * x.size(3), dtype_of(t), cl ? Layout::NHWC : Layout::NCHW};
}

void same_as(const Tensor& t, const Tensor& x, const Geometry& g, const char* op, const char* name) {
  TORCH_CHECK(t.device() == x.device() && t.scalar_type() == x.scalar_type() && t.sizes() == x.sizes(),
              "cbam_fused::", op, ": ", name, " must match x in device, dtype and shape");
  TORCH_CHECK(geometry(t, op, name).layout == g.layout, "cbam_fused::", op, ": ", name,
              " must have x's memory format");
}

// A small operand: acc dtype (or int32), shape [N, C] or [N, P], on x's device. Returns a
// contiguous version (a copy only if the caller passed a strided view; these tensors are small).
Tensor small(const Tensor& t, const Tensor& x, int64_t rows, int64_t cols, const char* op, const char* name,
             at::ScalarType want) {
  TORCH_CHECK(t.device() == x.device(), "cbam_fused::", op, ": ", name, " is on ", t.device(), " but x is on ",
              x.device());
  TORCH_CHECK(t.scalar_type() == want, "cbam_fused::", op, ": ", name, " must be ", want, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "cbam_fused::", op, ": ", name,
              " must have shape [", rows, ", ", cols, "], got ", t.sizes());
  return t.contiguous();
}

Tensor small_opt(const OptTensor& t, const Tensor& x, int64_t rows, int64_t cols, const char* op,
                 const char* name) {
  return t.has_value() ? small(*t, x, rows, cols, op, name, acc_type(x.scalar_type())) : Tensor();
}

void* ptr(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
int32_t* iptr(const Tensor& t) { return t.defined() ? t.data_ptr<int32_t>() : nullptr; }

const PassTable& passes() { return cuda_pass_table(); }

void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void check(int e, const char* op) {
  TORCH_CHECK(e == 0, "cbam_fused::", op, ": kernel launch failed: ", passes().error_string(e));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

Tensor workspace(const Tensor& x, Pass pass, const Geometry& g) {
  return at::empty({static_cast<int64_t>(passes().workspace_bytes(pass, g))}, x.options().dtype(at::kByte));
}

// ties=false: no argmax or count (empty tensors; the launchers take nullptr for both)
std::tuple<Tensor, Tensor, Tensor, Tensor> pool(const Tensor& x, const OptTensor& a_opt, bool per_channel, bool ties) {
  const char* op = per_channel ? "pool_hw" : "pool_c";
  const Geometry g = geometry(x, op, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor a = per_channel ? Tensor() : small_opt(a_opt, x, g.n, g.c, op, "a");
  const auto acc = x.options().dtype(acc_type(x.scalar_type()));
  const std::vector<int64_t> size{g.n, per_channel ? g.c : g.p};
  const std::vector<int64_t> tie_size = ties ? size : std::vector<int64_t>{0};
  Tensor mean = at::empty(size, acc), max = at::empty(size, acc);
  Tensor arg = at::empty(tie_size, x.options().dtype(at::kInt));
  Tensor count = at::empty(tie_size, x.options().dtype(at::kInt));
  int32_t* arg_ptr = ties ? iptr(arg) : nullptr;
  int32_t* count_ptr = ties ? iptr(count) : nullptr;
  Tensor ws = workspace(x, per_channel ? Pass::PoolHw : Pass::PoolC, g);
  const int e = per_channel ? passes().pool_hw({g, x.data_ptr(), ptr(mean), ptr(max), arg_ptr, count_ptr,
                                                ws.data_ptr()}, stream())
                            : passes().pool_c({g, x.data_ptr(), ptr(a), ptr(mean), ptr(max), arg_ptr,
                                               count_ptr, ws.data_ptr()}, stream());
  check(e, op);
  return {mean, max, arg, count};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> pool_hw(const Tensor& x, bool ties) {
  return pool(x, std::nullopt, true, ties);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> pool_c(const Tensor& x, const OptTensor& a, bool ties) {
  return pool(x, a, false, ties);
}

Tensor apply_gates(const Tensor& x, const OptTensor& a_opt, const OptTensor& s_opt) {
  const Geometry g = geometry(x, "apply_gates", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor a = small_opt(a_opt, x, g.n, g.c, "apply_gates", "a");
  const Tensor s = small_opt(s_opt, x, g.n, g.p, "apply_gates", "s");
  Tensor y = at::empty_like(x);  // keeps x's memory format
  check(passes().apply_gates({g, x.data_ptr(), ptr(a), ptr(s), y.data_ptr()}, stream()), "apply_gates");
  return y;
}

std::tuple<Tensor, Tensor> gate_grads(const Tensor& gy, const Tensor& x, const OptTensor& a_opt,
                                      const OptTensor& s_opt, bool want_a, bool want_s) {
  const Geometry g = geometry(x, "gate_grads", "x");
  same_as(gy, x, g, "gate_grads", "gy");
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor a = small_opt(a_opt, x, g.n, g.c, "gate_grads", "a");
  const Tensor s = small_opt(s_opt, x, g.n, g.p, "gate_grads", "s");
  const auto acc = x.options().dtype(acc_type(x.scalar_type()));
  Tensor ga = want_a ? at::empty({g.n, g.c}, acc) : at::empty({0}, acc);
  Tensor gs = want_s ? at::empty({g.n, g.p}, acc) : at::empty({0}, acc);
  if (!want_a && !want_s) return {ga, gs};
  Tensor ws = workspace(x, Pass::GateGrads, g);
  check(passes().gate_grads({g, gy.data_ptr(), x.data_ptr(), ptr(a), ptr(s), want_a ? ptr(ga) : nullptr,
                             want_s ? ptr(gs) : nullptr, ws.data_ptr()}, stream()),
        "gate_grads");
  return {ga, gs};
}

Tensor pool_c_grad_a(const Tensor& x, const Tensor& a_in, const Tensor& u_in, const Tensor& v_in,
                     const Tensor& arg_in, const Tensor& max_in, bool split) {
  const char* op = "pool_c_grad_a";
  const Geometry g = geometry(x, op, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::ScalarType acc = acc_type(x.scalar_type());
  const Tensor a = small(a_in, x, g.n, g.c, op, "a", acc);
  const Tensor u = small(u_in, x, g.n, g.p, op, "u", acc), v = small(v_in, x, g.n, g.p, op, "v", acc);
  const Tensor arg = small(arg_in, x, g.n, g.p, op, "argmax", at::kInt);
  const Tensor max = small(max_in, x, g.n, g.p, op, "max", acc);
  Tensor ga = at::zeros({g.n, g.c}, x.options().dtype(acc));  // the table's pass adds to ga
  Tensor ws = workspace(x, Pass::PoolCGradA, g);
  const TieOperand tie{split ? nullptr : iptr(arg), split ? ptr(max) : nullptr};
  check(passes().pool_c_grad_a({g, x.data_ptr(), ptr(a), ptr(u), ptr(v), tie, ptr(ga), ws.data_ptr()}, stream()),
        op);
  return ga;
}

Tensor input_grad(const Tensor& gy, const OptTensor& x_opt, const OptTensor& a_opt, const OptTensor& s_opt,
                  const OptTensor& u_c_opt, const OptTensor& v_c_opt, const OptTensor& arg_c_opt,
                  const OptTensor& max_c_opt, const OptTensor& u_hw_opt, const OptTensor& v_hw_opt,
                  const OptTensor& arg_hw_opt, const OptTensor& max_hw_opt, bool split) {
  const char* op = "input_grad";
  const Geometry g = geometry(gy, op, "gy");
  const c10::cuda::CUDAGuard guard(gy.device());
  TORCH_CHECK(!split || x_opt.has_value(), "cbam_fused::input_grad: split-style ties need x");
  Tensor x;
  if (split) {
    x = *x_opt;
    same_as(x, gy, g, op, "x");
  }
  const bool has_c = u_c_opt.has_value(), has_hw = u_hw_opt.has_value();
  TORCH_CHECK(has_c == (v_c_opt.has_value() && arg_c_opt.has_value() && max_c_opt.has_value()),
              "cbam_fused::input_grad: u_c, v_c, argmax_c and max_c go together");
  TORCH_CHECK(has_hw == (v_hw_opt.has_value() && arg_hw_opt.has_value() && max_hw_opt.has_value()),
              "cbam_fused::input_grad: u_hw, v_hw, argmax_hw and max_hw go together");
  const Tensor a = small_opt(a_opt, gy, g.n, g.c, op, "a"), s = small_opt(s_opt, gy, g.n, g.p, op, "s");
  const Tensor u_c = small_opt(u_c_opt, gy, g.n, g.p, op, "u_c"), v_c = small_opt(v_c_opt, gy, g.n, g.p, op, "v_c");
  const Tensor max_c = small_opt(max_c_opt, gy, g.n, g.p, op, "max_c");
  const Tensor arg_c = has_c ? small(*arg_c_opt, gy, g.n, g.p, op, "argmax_c", at::kInt) : Tensor();
  const Tensor u_hw = small_opt(u_hw_opt, gy, g.n, g.c, op, "u_hw");
  const Tensor v_hw = small_opt(v_hw_opt, gy, g.n, g.c, op, "v_hw");
  const Tensor max_hw = small_opt(max_hw_opt, gy, g.n, g.c, op, "max_hw");
  const Tensor arg_hw = has_hw ? small(*arg_hw_opt, gy, g.n, g.c, op, "argmax_hw", at::kInt) : Tensor();
  Tensor gx = at::empty_like(gy);
  // the tie operand of the style: argmax for index-style ties, max for split-style ones
  const TieOperand tie_c{split ? nullptr : iptr(arg_c), split ? ptr(max_c) : nullptr};
  const TieOperand tie_hw{split ? nullptr : iptr(arg_hw), split ? ptr(max_hw) : nullptr};
  check(passes().input_grad({g, gy.data_ptr(), ptr(x), ptr(a), ptr(s), ptr(u_c), ptr(v_c), tie_c, ptr(u_hw),
                             ptr(v_hw), tie_hw, split, gx.data_ptr()}, stream()),
        op);
  return gx;
}

Tensor spatial_conv(const Tensor& in0, const Tensor& in1, const Tensor& weight, const OptTensor& bias, int64_t h,
                    int64_t w) {
  const ConvOperands c =
      check_conv_operands("spatial_conv", c10::DeviceType::CUDA, in0, in1, weight, bias, nullptr, h, w);
  const c10::cuda::CUDAGuard guard(in0.device());
  Tensor out = at::empty({c.n, h * w}, c.in0.options());
  check(passes().spatial_conv({c.n, c.h, c.w, c.k, c.f64, ptr(c.in0), ptr(c.in1), ptr(c.weight), ptr(c.bias),
                               ptr(out)}, stream()),
        "spatial_conv");
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> spatial_conv_backward(const Tensor& grad_out, const Tensor& in0,
                                                                 const Tensor& in1, const Tensor& weight,
                                                                 bool has_bias, int64_t h, int64_t w) {
  const ConvOperands c = check_conv_operands("spatial_conv_backward", c10::DeviceType::CUDA, in0, in1, weight,
                                             std::nullopt, &grad_out, h, w);
  const c10::cuda::CUDAGuard guard(in0.device());
  Tensor g0 = at::empty({c.n, h * w}, c.in0.options()), g1 = at::empty({c.n, h * w}, c.in0.options());
  Tensor gw = at::empty(c.weight.sizes(), c.weight.options());
  Tensor gb = at::empty({has_bias ? 1 : 0}, c.weight.options());
  Tensor ws = at::empty({static_cast<int64_t>(passes().conv_grad_workspace_bytes(c.n, c.h, c.w, c.k, c.f64))},
                        c.in0.options().dtype(at::kByte));
  check(passes().spatial_conv_grad({c.n, c.h, c.w, c.k, c.f64, ptr(c.in0), ptr(c.in1), ptr(c.weight),
                                    ptr(c.grad_out), ptr(g0), ptr(g1), ptr(gw), has_bias ? ptr(gb) : nullptr,
                                    ptr(ws)}, stream()),
        "spatial_conv_backward");
  return {g0, g1, gw, gb};
}

// The fused op pair: the C++ orchestration (csrc/attention.cpp) over the CUDA table, on x's device
// and its current stream.
#define CBAM_FUSED_WEIGHT_NAME(name) , name
#define CBAM_FUSED_CONFIG_NAME(schema_type, cpp_type, name) , name
#define CBAM_FUSED_SAVED_NAME(name) , name

ForwardResult attention_forward_cuda(const Tensor& x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_PARAM)
                                         CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_PARAM)) {
  TORCH_CHECK_VALUE(backend == "cuda", "cbam_fused: CUDA tensors run on backend 'cuda', not '",
                    std::string(backend), "'");
  const c10::cuda::CUDAGuard guard(x.device());
  return cbam_fused::attention_forward(passes(), stream(),
                                       x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_NAME)
                                           CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_NAME));
}

BackwardResult attention_backward_cuda(const Tensor& gy, const Tensor& x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_PARAM)
                                           CBAM_FUSED_SAVED(CBAM_FUSED_SAVED_PARAM)
                                               CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_PARAM),
                                       bool need_gx) {
  TORCH_CHECK_VALUE(backend == "cuda", "cbam_fused: CUDA tensors run on backend 'cuda', not '",
                    std::string(backend), "'");
  const c10::cuda::CUDAGuard guard(x.device());
  return cbam_fused::attention_backward(passes(), stream(), gy,
                                        x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_NAME)
                                            CBAM_FUSED_SAVED(CBAM_FUSED_SAVED_NAME)
                                                CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_NAME),
                                        need_gx);
}

}  // namespace
}  // namespace cbam_fused::cuda

TORCH_LIBRARY_IMPL(cbam_fused, CUDA, m) {
  m.impl("attention_forward", &cbam_fused::cuda::attention_forward_cuda);
  m.impl("attention_backward", &cbam_fused::cuda::attention_backward_cuda);
  namespace k = cbam_fused::cuda;
  m.impl("pool_hw", &k::pool_hw);
  m.impl("pool_c", &k::pool_c);
  m.impl("apply_gates", &k::apply_gates);
  m.impl("gate_grads", &k::gate_grads);
  m.impl("pool_c_grad_a", &k::pool_c_grad_a);
  m.impl("input_grad", &k::input_grad);
  m.impl("spatial_conv", &k::spatial_conv);
  m.impl("spatial_conv_backward", &k::spatial_conv_backward);
}
