// CPU kernels of the spatial gate's convolution (SpatialConvArgs / SpatialConvGradArgs in
// csrc/pass_args.h), with the signatures of the PassTable entries. Raw pointers, no ATen.
#pragma once

#include <cstddef>
#include <cstdint>

#include "pass_args.h"

namespace cbam_fused::cpu {

// Returned for invalid arguments (even or non-positive K, empty H or W, a missing operand).
constexpr int kSpatialConvBadArgs = 1;

// out = conv2d([in0, in1], weight, bias, padding = K // 2). Returns 0 or kSpatialConvBadArgs.
int spatial_conv_cpu(const SpatialConvArgs& args, void* stream);

// The gradients that have a non-null output pointer. grad_weight / grad_bias need `workspace` of
// spatial_conv_grad_workspace_cpu(...) bytes; their sums do not depend on the thread count.
int spatial_conv_grad_cpu(const SpatialConvGradArgs& args, void* stream);

std::size_t spatial_conv_grad_workspace_cpu(int64_t n, int64_t h, int64_t w, int64_t k, bool f64);

}  // namespace cbam_fused::cpu
