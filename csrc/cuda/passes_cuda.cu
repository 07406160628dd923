// ATen/c10 glue of the CUDA passes: checks, dtype dispatch, workspace allocation, current stream,
// device guard. The kernels and launchers (passes.cuh) hold no ATen; nothing here synchronises the
// host. The op schemas live in csrc/ops.cpp (library cbam_fused::, module _C).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cuda/passes.cuh"

namespace cbam_fused::cuda {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

struct Geometry {
  int64_t n, c, p;
  bool channels_last;
};

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

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
  return {x.size(0), x.size(1), x.size(2) * x.size(3), cl};
}

void same_as(const Tensor& t, const Tensor& x, const Geometry& g, const char* op, const char* name) {
  TORCH_CHECK(t.device() == x.device() && t.scalar_type() == x.scalar_type() && t.sizes() == x.sizes(),
              "cbam_fused::", op, ": ", name, " must match x in device, dtype and shape");
  TORCH_CHECK(geometry(t, op, name).channels_last == g.channels_last, "cbam_fused::", op, ": ", name,
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

template <typename T> T* ptr(const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

void check(cudaError_t e, const char* op) {
  TORCH_CHECK(e == cudaSuccess, "cbam_fused::", op, ": kernel launch failed: ", cudaGetErrorString(e));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

Tensor workspace(const Tensor& x, std::size_t bytes) {
  return at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> pool(const Tensor& x, const OptTensor& a_opt, bool per_channel) {
  const char* op = per_channel ? "pool_hw" : "pool_c";
  const Geometry g = geometry(x, op, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor a = per_channel ? Tensor() : small_opt(a_opt, x, g.n, g.c, op, "a");
  const auto acc = x.options().dtype(acc_type(x.scalar_type()));
  const std::vector<int64_t> size{g.n, per_channel ? g.c : g.p};
  Tensor mean = at::empty(size, acc), max = at::empty(size, acc);
  Tensor arg = at::empty(size, x.options().dtype(at::kInt)), count = at::empty(size, x.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cbam_fused_pool", [&] {
    using A = acc_of<scalar_t>;
    Tensor ws = workspace(x, pool_workspace_bytes<scalar_t>(g.n, g.c, g.p, g.channels_last, per_channel));
    const cudaError_t e =
        per_channel ? launch_pool_hw<scalar_t>(x.data_ptr<scalar_t>(), g.n, g.c, g.p, g.channels_last, ptr<A>(mean),
                                               ptr<A>(max), ptr<int>(arg), ptr<int>(count), ws.data_ptr(), stream)
                    : launch_pool_c<scalar_t>(x.data_ptr<scalar_t>(), ptr<A>(a), g.n, g.c, g.p, g.channels_last,
                                              ptr<A>(mean), ptr<A>(max), ptr<int>(arg), ptr<int>(count),
                                              ws.data_ptr(), stream);
    check(e, op);
  });
  return {mean, max, arg, count};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> pool_hw(const Tensor& x) { return pool(x, std::nullopt, true); }

std::tuple<Tensor, Tensor, Tensor, Tensor> pool_c(const Tensor& x, const OptTensor& a) { return pool(x, a, false); }

Tensor apply_gates(const Tensor& x, const OptTensor& a_opt, const OptTensor& s_opt) {
  const Geometry g = geometry(x, "apply_gates", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor a = small_opt(a_opt, x, g.n, g.c, "apply_gates", "a");
  const Tensor s = small_opt(s_opt, x, g.n, g.p, "apply_gates", "s");
  Tensor y = at::empty_like(x);  // keeps x's memory format
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cbam_fused_apply_gates", [&] {
    using A = acc_of<scalar_t>;
    check(launch_apply_gates<scalar_t>(x.data_ptr<scalar_t>(), ptr<A>(a), ptr<A>(s), g.n, g.c, g.p,
                                       g.channels_last, y.data_ptr<scalar_t>(), c10::cuda::getCurrentCUDAStream()),
          "apply_gates");
  });
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cbam_fused_gate_grads", [&] {
    using A = acc_of<scalar_t>;
    Tensor ws = workspace(x, gate_grads_workspace_bytes<scalar_t>(g.n, g.c, g.p, g.channels_last));
    check(launch_gate_grads<scalar_t>(gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), ptr<A>(a), ptr<A>(s), g.n,
                                      g.c, g.p, g.channels_last, want_a ? ptr<A>(ga) : nullptr,
                                      want_s ? ptr<A>(gs) : nullptr, ws.data_ptr(),
                                      c10::cuda::getCurrentCUDAStream()),
          "gate_grads");
  });
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
  Tensor ga = at::empty({g.n, g.c}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cbam_fused_pool_c_grad_a", [&] {
    using A = acc_of<scalar_t>;
    Tensor ws = workspace(x, pool_c_grad_a_workspace_bytes<scalar_t>(g.n, g.c, g.p, g.channels_last));
    check(launch_pool_c_grad_a<scalar_t>(x.data_ptr<scalar_t>(), ptr<A>(a), ptr<A>(u), ptr<A>(v), ptr<int>(arg),
                                         ptr<A>(max), split, g.n, g.c, g.p, g.channels_last, ptr<A>(ga),
                                         ws.data_ptr(), c10::cuda::getCurrentCUDAStream()),
          op);
  });
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "cbam_fused_input_grad", [&] {
    using A = acc_of<scalar_t>;
    check(launch_input_grad<scalar_t>(gy.data_ptr<scalar_t>(), ptr<scalar_t>(x), ptr<A>(a), ptr<A>(s), ptr<A>(u_c),
                                      ptr<A>(v_c), ptr<int>(arg_c), ptr<A>(max_c), ptr<A>(u_hw), ptr<A>(v_hw),
                                      ptr<int>(arg_hw), ptr<A>(max_hw), split, g.n, g.c, g.p, g.channels_last,
                                      gx.data_ptr<scalar_t>(), c10::cuda::getCurrentCUDAStream()),
          op);
  });
  return gx;
}

}  // namespace
}  // namespace cbam_fused::cuda

TORCH_LIBRARY_IMPL(cbam_fused, CUDA, m) {
  namespace k = cbam_fused::cuda;
  m.impl("pool_hw", &k::pool_hw);
  m.impl("pool_c", &k::pool_c);
  m.impl("apply_gates", &k::apply_gates);
  m.impl("gate_grads", &k::gate_grads);
  m.impl("pool_c_grad_a", &k::pool_c_grad_a);
  m.impl("input_grad", &k::input_grad);
}
