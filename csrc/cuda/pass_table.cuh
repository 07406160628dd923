// The CUDA device's PassTable (csrc/pass_args.h): each entry picks the launcher of passes.cuh,
// spatial_conv.cuh or channel_mlp.cuh for the operand's dtype (the layout is a runtime branch inside
// the launchers). The only dtype switch of the CUDA kernels: the ATen glue (passes_cuda.cu) and the
// emulator shim (tests/cudaemu/emu_shim.cu) both call through this table. Compiles with nvcc and with cucc.
#pragma once

#include "pass_args.h"
#include "cuda/channel_mlp.cuh"
#include "cuda/passes.cuh"
#include "cuda/spatial_conv.cuh"

namespace cbam_fused::cuda {
namespace table {

// `CALL` names the full-size dtype as T.
#define CBAM_CUDA_BY_DTYPE(dtype, CALL)                   \
  switch (dtype) {                                        \
    case DType::F32: { using T = float; return CALL; }    \
    case DType::F64: { using T = double; return CALL; }   \
    case DType::BF16: { using T = c10::BFloat16; return CALL; } \
    case DType::F16: { using T = c10::Half; return CALL; } \
  }

inline cudaStream_t stream_of(void* s) { return static_cast<cudaStream_t>(s); }

inline int pool_hw(const PoolHwArgs& a, void* s) {
  CBAM_CUDA_BY_DTYPE(a.g.dtype, int(launch_pool_hw<T>(a, stream_of(s))))
  return int(cudaErrorInvalidValue);
}
inline int pool_c(const PoolCArgs& a, void* s) {
  CBAM_CUDA_BY_DTYPE(a.g.dtype, int(launch_pool_c<T>(a, stream_of(s))))
  return int(cudaErrorInvalidValue);
}
inline int apply_gates(const ApplyGatesArgs& a, void* s) {
  CBAM_CUDA_BY_DTYPE(a.g.dtype, int(launch_apply_gates<T>(a, stream_of(s))))
  return int(cudaErrorInvalidValue);
}
inline int gate_grads(const GateGradsArgs& a, void* s) {
  CBAM_CUDA_BY_DTYPE(a.g.dtype, int(launch_gate_grads<T>(a, stream_of(s))))
  return int(cudaErrorInvalidValue);
}
inline int pool_c_grad_a(const PoolCGradAArgs& a, void* s) {
  CBAM_CUDA_BY_DTYPE(a.g.dtype, int(launch_pool_c_grad_a<T>(a, stream_of(s))))
  return int(cudaErrorInvalidValue);
}
inline int input_grad(const InputGradArgs& a, void* s) {
  CBAM_CUDA_BY_DTYPE(a.g.dtype, int(launch_input_grad<T>(a, stream_of(s))))
  return int(cudaErrorInvalidValue);
}
inline std::size_t workspace(Pass pass, const Geometry& g) {
  CBAM_CUDA_BY_DTYPE(g.dtype, cuda::workspace_bytes<T>(pass, g))
  return 0;
}

#undef CBAM_CUDA_BY_DTYPE

inline int spatial_conv(const SpatialConvArgs& a, void* s) {
  return int(a.f64 ? launch_spatial_conv<double>(a, stream_of(s)) : launch_spatial_conv<float>(a, stream_of(s)));
}
inline int spatial_conv_grad(const SpatialConvGradArgs& a, void* s) {
  return int(a.f64 ? launch_spatial_conv_grad<double>(a, stream_of(s))
                   : launch_spatial_conv_grad<float>(a, stream_of(s)));
}
inline int channel_mlp(const ChannelMlpArgs& a, void* s) {
  return int(a.f64 ? launch_channel_mlp<double>(a, stream_of(s)) : launch_channel_mlp<float>(a, stream_of(s)));
}
inline int channel_mlp_grad(const ChannelMlpGradArgs& a, void* s) {
  return int(a.fwd.f64 ? launch_channel_mlp_grad<double>(a, stream_of(s))
                       : launch_channel_mlp_grad<float>(a, stream_of(s)));
}
inline const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace table

// Internal linkage: every library that includes this gets its own table (the real CUDA module and the
// emulator build can be loaded in one process, tests/cudaemu.py).
static const PassTable& cuda_pass_table() {
  static const PassTable t{&table::pool_hw,       &table::pool_c,        &table::apply_gates,
                           &table::gate_grads,    &table::pool_c_grad_a, &table::input_grad,
                           &table::spatial_conv,  &table::spatial_conv_grad, &table::workspace,
                           &spatial_conv_grad_workspace_bytes, &table::error_string,
                           &table::channel_mlp,   &table::channel_mlp_grad};
  return t;
}

}  // namespace cbam_fused::cuda
