// The one interface between the orchestration (csrc/attention.cpp) and the kernels of every device:
// an argument struct per pass and a table of entry points. Raw pointers and sizes only, no ATen, so
// this header compiles with g++ (CPU kernels and the ATen glue), nvcc (CUDA launchers) and cucc (the
// same launchers on the CPU emulator, tests/cudaemu). docs/design.md §4 (the pass contract) says what
// each pass computes; cbam_fused/passes.py is its executable spec.
// Like csrc/cpu/dispatch.h, it holds no inline functions: it is compiled into every per-ISA build.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cbam_fused {

// Scalar type of the full-size tensors x, gy, y, gx. Small tensors ([N, C], [N, P], weights) use the
// accumulation type: double for F64, float otherwise.
enum class DType : int32_t { F32 = 0, F64 = 1, BF16 = 2, F16 = 3 };
constexpr int kNumDTypes = 4;

// x[n][c][p] (NCHW) or x[n][p][c] (channels_last).
enum class Layout : int32_t { NCHW = 0, NHWC = 1 };

// A full-size operand: [N, C, P = H * W] in one of the two layouts.
struct Geometry {
  int64_t n, c, p;
  DType dtype;
  Layout layout;
};

// Small operands: contiguous, accumulation-typed ("acc") [N, C] (per channel) or [N, P] (per pixel);
// optional ones are nullptr when absent. Gate values a (per channel) and s (per pixel): nullptr means
// all ones. Positions (argmax) and counts of maxima are int32.

// Pool x over pixels: mean, max, first argmax and count of maxima per channel. argmax and count may
// be nullptr (not written: inference needs neither).
struct PoolHwArgs {
  Geometry g;
  const void* x;
  void* mean;       // [N, C] acc
  void* max;        // [N, C] acc
  int32_t* argmax;  // [N, C] or nullptr
  int32_t* count;   // [N, C] or nullptr
  void* workspace;  // workspace_bytes(Pass::PoolHw, g) bytes
};

// Pool acc(x) * a over channels: the same statistics per pixel.
struct PoolCArgs {
  Geometry g;
  const void* x;
  const void* a;    // [N, C] acc or nullptr
  void* mean;       // [N, P] acc
  void* max;        // [N, P] acc
  int32_t* argmax;  // [N, P] or nullptr
  int32_t* count;   // [N, P] or nullptr
  void* workspace;
};

// y = (acc(x) * a) * s, in x's dtype and layout.
struct ApplyGatesArgs {
  Geometry g;
  const void* x;
  const void* a;  // [N, C] acc or nullptr
  const void* s;  // [N, P] acc or nullptr
  void* y;
};

// ga[n,c] = sum_p gy*x*s and gs[n,p] = sum_c gy*x*a, each when its pointer is set.
struct GateGradsArgs {
  Geometry g;
  const void* gy;
  const void* x;
  const void* a;  // [N, C] acc or nullptr
  const void* s;  // [N, P] acc or nullptr
  void* ga;       // [N, C] acc or nullptr (not wanted)
  void* gs;       // [N, P] acc or nullptr (not wanted)
  void* workspace;
  // [N, C] acc or nullptr: the value of a gy that is constant over pixels (stride 0 over H and W, as
  // from y.sum() or a sum over pixels), read instead of gy; only for a table with reads_gy_c.
  const void* gy_c;
};

// How a max pool's gradient is routed: index-style to the first maximum (argmax), split-style to
// every element equal to the maximum (the caller has divided by the count).
struct TieOperand {
  const int32_t* argmax;  // index-style; nullptr selects split-style
  const void* max;        // [N, L] acc: the pooled max (read by split-style ties)
};

// ga[n,c] += sum_p acc(x) * (u[p] + T(c,p) * v[p]), T the tie of the channel pool of acc(x) * a:
// adds to the gate_grads part of ga (rounded once: ga + sum), so the orchestration needs no add.
// The Python pass (cbam_fused/passes.py) returns the sum alone; its glue starts ga at zero.
struct PoolCGradAArgs {
  Geometry g;
  const void* x;
  const void* a;  // [N, C] acc
  const void* u;  // [N, P] acc
  const void* v;  // [N, P] acc
  TieOperand tie;
  void* ga;  // [N, C] acc, read and written
  void* workspace;
};

// gx = A * (gy * S + u_c[p] + Tc * v_c[p]) + u_hw[c] + Thw * v_hw[c], in gy's dtype and layout.
// A group (u_c, v_c, tie_c) or (u_hw, v_hw, tie_hw) is absent when its u is nullptr. x is read only
// for split-style ties.
struct InputGradArgs {
  Geometry g;
  const void* gy;
  const void* x;  // split-style ties only, else nullptr
  const void* a;  // [N, C] acc or nullptr
  const void* s;  // [N, P] acc or nullptr
  const void *u_c, *v_c;  // [N, P] acc: gradient of the pools over channels (spatial gate)
  TieOperand tie_c;
  const void *u_hw, *v_hw;  // [N, C] acc: gradient of the pools over pixels (channel gate)
  TieOperand tie_hw;
  bool split;
  void* gx;
  const void* gy_c;  // as in GateGradsArgs
};

// The spatial gate's convolution: out = conv2d([in0, in1], weight, bias, padding = K // 2), one output
// channel, on acc-typed [N, H, W] planes. f64 selects double (else float) for every operand.
struct SpatialConvArgs {
  int64_t n, h, w, k;  // k odd
  bool f64;
  const void* in0;     // [N, H*W]
  const void* in1;     // [N, H*W]
  const void* weight;  // [2, K, K] (the [1, 2, K, K] weight, contiguous)
  const void* bias;    // [1] or nullptr
  void* out;           // [N, H*W]
};

// Its gradients from grad_out; each output is skipped when nullptr. Sums over pixels are
// accumulated in double in a fixed order, so results do not depend on the thread count.
struct SpatialConvGradArgs {
  int64_t n, h, w, k;
  bool f64;
  const void* in0;
  const void* in1;
  const void* weight;
  const void* grad_out;  // [N, H*W]
  void* grad_in0;        // [N, H*W] or nullptr
  void* grad_in1;        // [N, H*W] or nullptr
  void* grad_weight;     // [2, K, K] or nullptr
  void* grad_bias;       // [1] or nullptr
  void* workspace;       // conv_grad_workspace_bytes(...) bytes
};

// The channel gate's shared MLP on the pooled vectors (channel kind "mlp"): m = the sum over the
// used pools v of W2 relu(W1 v + b1) + b2, and a = G(m). The numbering of both enums is the order
// of the option values in csrc/attention.cpp.
enum class ChannelPools : int32_t { AvgMax = 0, Avg = 1, Max = 2, Light = 3 };
enum class GateKind : int32_t { Sigmoid = 0, HardSigmoid = 1, KerasHardSigmoid = 2 };

struct ChannelMlpArgs {
  int64_t n, c, hidden;
  bool f64;
  ChannelPools pools;
  GateKind gate;
  const void* pooled;  // [2, N, C]: mean; max
  const void* w1;      // [hidden, C]
  const void* b1;      // [hidden] or nullptr
  const void* w2;      // [C, hidden]
  const void* b2;      // [C] or nullptr
  void* m;             // [N, C] logits
  void* a;             // [N, C] gate values
};

// Its backward from ga (the gradient of a), into the input-gradient operands of the pools over
// pixels: u = g_avg / pixels and v = g_max (divided by the count of maxima for split-style ties;
// zeros for an unused pool), and the weight gradients (gb1/gb2 nullptr when absent).
struct ChannelMlpGradArgs {
  ChannelMlpArgs fwd;      // its m and a are inputs here (the saved logits and their gate values)
  const void* ga;          // [N, C]
  const int32_t* count;    // [N, C] split-style ties, else nullptr
  int64_t pixels;
  void* u;                 // [N, C]
  void* v;                 // [N, C]
  void *gw1, *gb1, *gw2, *gb2;
};

enum class Pass : int32_t { PoolHw = 0, PoolC = 1, ApplyGates = 2, GateGrads = 3, PoolCGradA = 4, InputGrad = 5 };

// One device's kernels. Every entry returns 0 on success, else a device error code that
// error_string() names (cudaError_t for CUDA). `stream` is a cudaStream_t, or nullptr on the CPU.
struct PassTable {
  int (*pool_hw)(const PoolHwArgs&, void* stream);
  int (*pool_c)(const PoolCArgs&, void* stream);
  int (*apply_gates)(const ApplyGatesArgs&, void* stream);
  int (*gate_grads)(const GateGradsArgs&, void* stream);
  int (*pool_c_grad_a)(const PoolCGradAArgs&, void* stream);
  int (*input_grad)(const InputGradArgs&, void* stream);
  int (*spatial_conv)(const SpatialConvArgs&, void* stream);
  int (*spatial_conv_grad)(const SpatialConvGradArgs&, void* stream);
  std::size_t (*workspace_bytes)(Pass pass, const Geometry& g);
  std::size_t (*conv_grad_workspace_bytes)(int64_t n, int64_t h, int64_t w, int64_t k, bool f64);
  const char* (*error_string)(int code);
  // nullptr where a device has no fused MLP kernels (the orchestration then uses ATen ops)
  int (*channel_mlp)(const ChannelMlpArgs&, void* stream);
  int (*channel_mlp_grad)(const ChannelMlpGradArgs&, void* stream);
  // gate_grads and input_grad read gy_c where it is set (else the orchestration makes gy contiguous)
  bool reads_gy_c;
};

}  // namespace cbam_fused
