// Argument checks of the spatial_conv ops (schemas in csrc/ops.cpp), shared by the CPU glue
// (csrc/cpu/ops_cpu.cpp) and the CUDA glue (csrc/cuda/passes_cuda.cu) so both reject the same input.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace cbam_fused {

// The ops' operands, checked and contiguous (copies only of strided inputs; these tensors are small).
struct ConvOperands {
  at::Tensor in0, in1, weight, bias, grad_out;  // bias / grad_out undefined when absent
  int64_t n, h, w, k;
  bool f64;
};

// in0, in1 (and grad_out): [N, h*w], float32 or float64, on `device`; weight [1, 2, K, K] with K odd;
// bias [1]; all of one dtype and device.
inline ConvOperands check_conv_operands(const char* op, c10::DeviceType device, const at::Tensor& in0,
                                        const at::Tensor& in1, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, const at::Tensor* grad_out,
                                        int64_t h, int64_t w) {
  TORCH_CHECK(h > 0 && w > 0, "cbam_fused::", op, ": h and w must be positive, got ", h, " and ", w);
  TORCH_CHECK(in0.device().type() == device, "cbam_fused::", op, ": in0 must be a ", device, " tensor, got one on ",
              in0.device());
  const auto dtype = in0.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "cbam_fused::", op,
              ": in0 must be float32 or float64 (the accumulation type), got ", dtype);
  TORCH_CHECK(in0.dim() == 2 && in0.size(1) == h * w, "cbam_fused::", op, ": in0 must have shape [N, ", h * w,
              "] for h = ", h, ", w = ", w, ", got ", in0.sizes());
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device() == in0.device() && t.scalar_type() == dtype && t.sizes() == in0.sizes(),
                "cbam_fused::", op, ": ", name, " must match in0 in device, dtype and shape (", in0.device(), ", ",
                dtype, ", ", in0.sizes(), "), got ", t.device(), ", ", t.scalar_type(), ", ", t.sizes());
  };
  same(in1, "in1");
  if (grad_out != nullptr) same(*grad_out, "grad_out");
  TORCH_CHECK(weight.device() == in0.device() && weight.scalar_type() == dtype, "cbam_fused::", op,
              ": weight must have in0's device and dtype, got ", weight.device(), ", ", weight.scalar_type());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == 1 && weight.size(1) == 2 && weight.size(2) == weight.size(3) &&
                  weight.size(2) % 2 == 1,
              "cbam_fused::", op, ": weight must have shape [1, 2, K, K] with K odd, got ", weight.sizes());
  ConvOperands c{in0.contiguous(), in1.contiguous(), weight.contiguous(), at::Tensor(), at::Tensor(),
                 in0.size(0),      h,                w,                    weight.size(2), dtype == at::kDouble};
  if (bias.has_value()) {
    TORCH_CHECK(bias->device() == in0.device() && bias->scalar_type() == dtype && bias->dim() == 1 &&
                    bias->numel() == 1,
                "cbam_fused::", op, ": bias must be a [1] tensor with in0's device and dtype, got ", bias->sizes(),
                ", ", bias->device(), ", ", bias->scalar_type());
    c.bias = bias->contiguous();
  }
  if (grad_out != nullptr) c.grad_out = grad_out->contiguous();
  return c;
}

}  // namespace cbam_fused
