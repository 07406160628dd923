// The CPU kernels as a PassTable (csrc/pass_args.h), and the CPU spatial-conv kernels it holds.
#pragma once

#include <cstddef>
#include <cstdint>

#include "pass_args.h"

namespace cbam_fused::cpu {

const PassTable& cpu_pass_table();

// The spatial conv (csrc/cpu/spatial_conv.cpp): 0, or kSpatialConvBadArgs for invalid arguments (K
// even, H or W empty, a missing operand). The gradients need spatial_conv_grad_workspace_cpu bytes of
// workspace for grad_weight / grad_bias; their sums do not depend on the thread count.
constexpr int kSpatialConvBadArgs = 2;
int spatial_conv_cpu(const SpatialConvArgs& args, void* stream);
int spatial_conv_grad_cpu(const SpatialConvGradArgs& args, void* stream);
std::size_t spatial_conv_grad_workspace_cpu(int64_t n, int64_t h, int64_t w, int64_t k, bool f64);

int channel_mlp_cpu(const ChannelMlpArgs& args, void* stream);
int channel_mlp_grad_cpu(const ChannelMlpGradArgs& args, void* stream);

}  // namespace cbam_fused::cpu
