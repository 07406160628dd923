// CUDA kernels and launchers of the channel gate's shared MLP and its gate (ChannelMlpArgs /
// ChannelMlpGradArgs in csrc/pass_args.h; csrc/cpu/channel_mlp.cpp is the CPU twin with the same
// semantics). Raw pointers and a stream, no ATen, like passes.cuh: compiled by nvcc
// (csrc/cuda/pass_table.cuh) and by the emulator's cucc.
//
// The orchestration sends only small MLPs here (csrc/attention.cpp, kMlpKernelMacs), so the kernels
// trade parallelism for one launch per direction and no workspace: the argument structs carry none,
// so the hidden activations are recomputed where they are needed instead of being stored. Plain
// fp32/fp64 multiply-adds (FMA at most), never TF32 or tensor cores, so the result does not depend
// on torch's TF32 flags.
//
// Determinism: every dot product over C is one warp's (lanes stride over c, then a fixed shuffle
// tree); every other sum is one thread's, in ascending order, carried across chunks through the
// output it owns. No atomics: the result is bitwise the same on every run and any thread order.
//
// Forward (channel_mlp_fwd): a block per sample n. Hidden units are taken in chunks of kMlpChunk:
// the block's warps compute h = W1 v_p + b1 of the chunk for each pool p into shared memory, then
// thread c adds sum_j W2[c, j] (relu(h_avg[j]) + relu(h_max[j])) into m[n, c]; at the end m gets
// k * b2 and a = G(m).
//
// Backward (channel_mlp_bwd), one launch in two roles with disjoint outputs:
//   - weight blocks, a block per hidden unit j: samples in chunks, h[p, n, j] and
//     gr[n, j] = sum_c gm[n, c] W2[c, j] in shared memory, then thread c adds into gw2[c, j] and
//     gw1[j, c]; thread 0 sums gb1[j]. They also share out gb2[c] = k * sum_n gm[n, c].
//   - input blocks, a block per sample n: hidden units in chunks, the same h and gr, then thread c
//     adds sum_j gh[p, n, j] W1[j, c] into u (avg) or v (max); at the end they become the input
//     gradient operands (u = g_avg / pixels, v = g_max, divided by the count for split ties).
// gm = ga * G'(m) is recomputed wherever it is read (a few flops).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "pass_args.h"

namespace cbam_fused::cuda {

using index_t = std::int64_t;

constexpr int kMlpThreads = 256;  // 8 warps
constexpr int kMlpWarps = kMlpThreads / 32;
constexpr int kMlpChunk = 64;  // hidden units (or samples) held in shared memory at a time
constexpr index_t kMlpMaxBlocks = 1024;  // per role; grid-stride loops beyond
// static shared memory of the backward (the forward uses less): h of two pools and gr per chunk
static_assert(3 * kMlpChunk * sizeof(double) <= 48 * 1024, "MLP shared memory over the static limit");

template <typename A>
struct MlpOperands {
  index_t n, c, r;
  int k;  // pools the MLP sees: 2 for avg+max, else 1
  ChannelPools pools;
  GateKind gate;
  const A* pooled;  // [2, N, C]
  const A* w1;      // [R, C]
  const A* b1;      // [R] or nullptr
  const A* w2;      // [C, R]
  const A* b2;      // [C] or nullptr
};

__device__ __forceinline__ float mlp_exp(float z) { return expf(z); }
__device__ __forceinline__ double mlp_exp(double z) { return exp(z); }

// std::max / std::min as the CPU kernel uses them (a NaN first operand is returned)
template <typename A> __device__ __forceinline__ A mlp_max(A a, A b) { return a < b ? b : a; }
template <typename A> __device__ __forceinline__ A mlp_min(A a, A b) { return b < a ? b : a; }
template <typename A> __device__ __forceinline__ A mlp_relu(A h) { return mlp_max(h, A(0)); }

template <typename A>
__device__ __forceinline__ A mlp_gate(GateKind g, A z) {
  switch (g) {
    case GateKind::Sigmoid: return A(1) / (A(1) + mlp_exp(-z));
    case GateKind::HardSigmoid: return mlp_min(mlp_max(z + A(3), A(0)), A(6)) / A(6);
    case GateKind::KerasHardSigmoid: return mlp_min(mlp_max(z * A(0.2) + A(0.5), A(0)), A(1));
  }
  return z;
}

// grad * G'(z), open intervals for the hard gates; value = G(z)
template <typename A>
__device__ __forceinline__ A mlp_gate_grad(GateKind g, A z, A value, A grad) {
  switch (g) {
    case GateKind::Sigmoid: return grad * (A(1) - value) * value;
    case GateKind::HardSigmoid: return (z > A(-3) && z < A(3)) ? grad / A(6) : A(0);
    case GateKind::KerasHardSigmoid: return (z > A(-2.5) && z < A(2.5)) ? grad * A(0.2) : A(0);
  }
  return grad;
}

// Element c of the vector that pool p of sample n feeds the MLP.
template <typename A>
__device__ __forceinline__ A mlp_input(const MlpOperands<A>& op, int p, index_t n, index_t c) {
  const index_t i = n * op.c + c, nc = op.n * op.c;
  switch (op.pools) {
    case ChannelPools::AvgMax: return op.pooled[p * nc + i];
    case ChannelPools::Avg: return op.pooled[i];
    case ChannelPools::Max: return op.pooled[nc + i];
    case ChannelPools::Light: return (op.pooled[i] + op.pooled[nc + i]) / A(2);
  }
  return A(0);
}

// Sum over the warp in a fixed tree; lane 0 holds the result.
template <typename A>
__device__ __forceinline__ A mlp_warp_sum(A s) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) s += __shfl_down_sync(0xffffffffu, s, d);
  return s;
}

// h[p, n, j] = b1[j] + sum_c W1[j, c] v_p[n, c]; the whole warp calls it, lane 0 gets the value.
template <typename A>
__device__ __forceinline__ A mlp_hidden(const MlpOperands<A>& op, int p, index_t n, index_t j, int lane) {
  const A* w = op.w1 + j * op.c;
  A s = A(0);
  for (index_t c = lane; c < op.c; c += 32) s += mlp_input(op, p, n, c) * w[c];
  s = mlp_warp_sum(s);
  return op.b1 != nullptr ? op.b1[j] + s : s;
}

template <typename A>
__device__ __forceinline__ A mlp_gm(const MlpOperands<A>& op, const A* m, const A* a, const A* ga, index_t i) {
  return mlp_gate_grad(op.gate, m[i], a[i], ga[i]);
}

// gr[n, j] = sum_c gm[n, c] W2[c, j], the same for every pool; a warp's call, lane 0 gets the value.
template <typename A>
__device__ __forceinline__ A mlp_grad_hidden(const MlpOperands<A>& op, const A* m, const A* a, const A* ga,
                                             index_t n, index_t j, int lane) {
  A s = A(0);
  for (index_t c = lane; c < op.c; c += 32) s += mlp_gm(op, m, a, ga, n * op.c + c) * op.w2[c * op.r + j];
  return mlp_warp_sum(s);
}

template <typename A>
__global__ void channel_mlp_fwd(MlpOperands<A> op, A* __restrict__ m, A* __restrict__ a) {
  __shared__ A h_s[2][kMlpChunk];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  for (index_t n = blockIdx.x; n < op.n; n += gridDim.x) {  // uniform across the block
    A* mn = m + n * op.c;
    for (index_t c = tid; c < op.c; c += kMlpThreads) mn[c] = A(0);
    for (index_t j0 = 0; j0 < op.r; j0 += kMlpChunk) {
      const int jn = int(op.r - j0 < kMlpChunk ? op.r - j0 : kMlpChunk);
      for (int d = warp; d < op.k * jn; d += kMlpWarps) {
        const A h = mlp_hidden(op, d / jn, n, j0 + d % jn, lane);
        if (lane == 0) h_s[d / jn][d % jn] = h;
      }
      __syncthreads();
      for (index_t c = tid; c < op.c; c += kMlpThreads) {
        const A* w = op.w2 + c * op.r + j0;
        A acc = mn[c];
        for (int j = 0; j < jn; ++j) {
          A hs = mlp_relu(h_s[0][j]);
          if (op.k == 2) hs += mlp_relu(h_s[1][j]);
          acc += w[j] * hs;
        }
        mn[c] = acc;
      }
      __syncthreads();  // h_s is refilled by the next chunk
    }
    for (index_t c = tid; c < op.c; c += kMlpThreads) {
      const A z = op.b2 != nullptr ? A(op.k) * op.b2[c] + mn[c] : mn[c];  // b2 enters once per pool
      mn[c] = z;
      a[n * op.c + c] = mlp_gate(op.gate, z);
    }
  }
}

template <typename A>
struct MlpGradOutputs {
  const A *m, *a, *ga;
  const std::int32_t* count;  // split-style ties, else nullptr
  A pixels;
  A *u, *v, *gw1, *gb1, *gw2, *gb2;
};

// Weight role: hidden units j = role_block, role_block + role_blocks, ...; then a share of gb2.
template <typename A>
__device__ __forceinline__ void mlp_grad_weights(const MlpOperands<A>& op, const MlpGradOutputs<A>& o,
                                                 index_t role_block, index_t role_blocks, A (&h_s)[2][kMlpChunk],
                                                 A (&gr_s)[kMlpChunk]) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  for (index_t j = role_block; j < op.r; j += role_blocks) {
    for (index_t c = tid; c < op.c; c += kMlpThreads) {
      o.gw1[j * op.c + c] = A(0);
      o.gw2[c * op.r + j] = A(0);
    }
    A gb1 = A(0);  // thread 0's
    for (index_t n0 = 0; n0 < op.n; n0 += kMlpChunk) {
      const int nn = int(op.n - n0 < kMlpChunk ? op.n - n0 : kMlpChunk);
      for (int d = warp; d < (op.k + 1) * nn; d += kMlpWarps) {
        if (d < op.k * nn) {
          const A h = mlp_hidden(op, d / nn, n0 + d % nn, j, lane);
          if (lane == 0) h_s[d / nn][d % nn] = h;
        } else {
          const A g = mlp_grad_hidden(op, o.m, o.a, o.ga, n0 + d - op.k * nn, j, lane);
          if (lane == 0) gr_s[d - op.k * nn] = g;
        }
      }
      __syncthreads();
      for (index_t c = tid; c < op.c; c += kMlpThreads) {
        A g2 = o.gw2[c * op.r + j];
        for (int i = 0; i < nn; ++i) {
          A hs = mlp_relu(h_s[0][i]);
          if (op.k == 2) hs += mlp_relu(h_s[1][i]);
          g2 += mlp_gm(op, o.m, o.a, o.ga, (n0 + i) * op.c + c) * hs;
        }
        o.gw2[c * op.r + j] = g2;
        A g1 = o.gw1[j * op.c + c];
        for (int p = 0; p < op.k; ++p)
          for (int i = 0; i < nn; ++i) {
            const A gh = h_s[p][i] > A(0) ? gr_s[i] : A(0);
            g1 += gh * mlp_input(op, p, n0 + i, c);
          }
        o.gw1[j * op.c + c] = g1;
      }
      if (tid == 0)
        for (int p = 0; p < op.k; ++p)
          for (int i = 0; i < nn; ++i) gb1 += h_s[p][i] > A(0) ? gr_s[i] : A(0);
      __syncthreads();  // h_s and gr_s are refilled by the next chunk
    }
    if (tid == 0 && o.gb1 != nullptr) o.gb1[j] = gb1;
  }
  if (o.gb2 != nullptr)
    for (index_t c = role_block * kMlpThreads + tid; c < op.c; c += role_blocks * kMlpThreads) {
      A s = A(0);
      for (index_t n = 0; n < op.n; ++n) s += mlp_gm(op, o.m, o.a, o.ga, n * op.c + c);
      o.gb2[c] = s * A(op.k);
    }
}

// Input role: samples n = role_block, role_block + role_blocks, ...
template <typename A>
__device__ __forceinline__ void mlp_grad_input(const MlpOperands<A>& op, const MlpGradOutputs<A>& o,
                                               index_t role_block, index_t role_blocks, A (&h_s)[2][kMlpChunk],
                                               A (&gr_s)[kMlpChunk]) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  // where pool p's gradient g_p = sum_j gh[p, n, j] W1[j, c] accumulates until the end
  A* acc0 = op.pools == ChannelPools::Max ? o.v : o.u;
  A* acc1 = o.v;  // the max pool of avg+max
  for (index_t n = role_block; n < op.n; n += role_blocks) {
    const index_t row = n * op.c;
    for (index_t c = tid; c < op.c; c += kMlpThreads) {
      acc0[row + c] = A(0);
      if (op.k == 2) acc1[row + c] = A(0);
    }
    for (index_t j0 = 0; j0 < op.r; j0 += kMlpChunk) {
      const int jn = int(op.r - j0 < kMlpChunk ? op.r - j0 : kMlpChunk);
      for (int d = warp; d < (op.k + 1) * jn; d += kMlpWarps) {
        if (d < op.k * jn) {
          const A h = mlp_hidden(op, d / jn, n, j0 + d % jn, lane);
          if (lane == 0) h_s[d / jn][d % jn] = h;
        } else {
          const A g = mlp_grad_hidden(op, o.m, o.a, o.ga, n, j0 + d - op.k * jn, lane);
          if (lane == 0) gr_s[d - op.k * jn] = g;
        }
      }
      __syncthreads();
      for (index_t c = tid; c < op.c; c += kMlpThreads) {
        const A* w = op.w1 + j0 * op.c + c;
        for (int p = 0; p < op.k; ++p) {
          A* dst = p == 0 ? acc0 : acc1;
          A g = dst[row + c];
          for (int j = 0; j < jn; ++j) g += (h_s[p][j] > A(0) ? gr_s[j] : A(0)) * w[j * op.c];
          dst[row + c] = g;
        }
      }
      __syncthreads();
    }
    // into the pools' input-gradient operands, as the CPU kernel
    for (index_t c = tid; c < op.c; c += kMlpThreads) {
      const index_t i = row + c;
      A g_avg = A(0), g_max = A(0);
      switch (op.pools) {
        case ChannelPools::AvgMax: g_avg = o.u[i]; g_max = o.v[i]; break;
        case ChannelPools::Avg: g_avg = o.u[i]; break;
        case ChannelPools::Max: g_max = o.v[i]; break;
        case ChannelPools::Light: g_avg = o.u[i] * A(0.5); g_max = g_avg; break;
      }
      o.u[i] = op.pools == ChannelPools::Max ? A(0) : g_avg / o.pixels;
      const A gm = op.pools == ChannelPools::Avg ? A(0) : g_max;
      o.v[i] = o.count != nullptr ? gm / static_cast<A>(o.count[i]) : gm;
    }
  }
}

// Blocks [0, weight_blocks) take the weight role, the rest the input role (a block-uniform branch).
template <typename A>
__global__ void channel_mlp_bwd(MlpOperands<A> op, MlpGradOutputs<A> o, index_t weight_blocks) {
  __shared__ A h_s[2][kMlpChunk];
  __shared__ A gr_s[kMlpChunk];
  const index_t b = blockIdx.x;
  if (b < weight_blocks)
    mlp_grad_weights(op, o, b, weight_blocks, h_s, gr_s);
  else
    mlp_grad_input(op, o, b - weight_blocks, index_t(gridDim.x) - weight_blocks, h_s, gr_s);
}

// ---- launchers
inline bool mlp_args_ok(const ChannelMlpArgs& a) {
  if (a.n < 0 || a.c < 0 || a.hidden < 0) return false;
  if (int(a.pools) < 0 || int(a.pools) > int(ChannelPools::Light)) return false;
  if (int(a.gate) < 0 || int(a.gate) > int(GateKind::KerasHardSigmoid)) return false;
  const bool any_nc = a.n > 0 && a.c > 0, any_w = a.hidden > 0 && a.c > 0;
  return !(any_nc && (a.pooled == nullptr || a.m == nullptr || a.a == nullptr)) &&
         !(any_w && (a.w1 == nullptr || a.w2 == nullptr));
}

template <typename A>
MlpOperands<A> mlp_operands(const ChannelMlpArgs& a) {
  return MlpOperands<A>{a.n, a.c, a.hidden, a.pools == ChannelPools::AvgMax ? 2 : 1, a.pools, a.gate,
                        static_cast<const A*>(a.pooled), static_cast<const A*>(a.w1), static_cast<const A*>(a.b1),
                        static_cast<const A*>(a.w2), static_cast<const A*>(a.b2)};
}

inline unsigned mlp_blocks(index_t count) { return unsigned(count < kMlpMaxBlocks ? count : kMlpMaxBlocks); }

template <typename A>
cudaError_t launch_channel_mlp(const ChannelMlpArgs& a, cudaStream_t stream) {
  if (!mlp_args_ok(a)) return cudaErrorInvalidValue;
  if (a.n == 0 || a.c == 0) return cudaSuccess;  // nothing to write
  channel_mlp_fwd<<<mlp_blocks(a.n), kMlpThreads, 0, stream>>>(mlp_operands<A>(a), static_cast<A*>(a.m),
                                                              static_cast<A*>(a.a));
  return cudaGetLastError();
}

template <typename A>
cudaError_t launch_channel_mlp_grad(const ChannelMlpGradArgs& a, cudaStream_t stream) {
  const ChannelMlpArgs& f = a.fwd;
  if (!mlp_args_ok(f) || a.pixels <= 0) return cudaErrorInvalidValue;
  const bool any_nc = f.n > 0 && f.c > 0, any_w = f.hidden > 0 && f.c > 0;
  if (any_nc && (a.ga == nullptr || a.u == nullptr || a.v == nullptr)) return cudaErrorInvalidValue;
  if (any_w && (a.gw1 == nullptr || a.gw2 == nullptr)) return cudaErrorInvalidValue;
  // gb1 [R] is written even for N = 0 or C = 0 (zeros); gb2 [C] and the rest need C > 0
  if (f.c == 0 && (f.hidden == 0 || a.gb1 == nullptr)) return cudaSuccess;
  const MlpGradOutputs<A> o{static_cast<const A*>(f.m), static_cast<const A*>(f.a), static_cast<const A*>(a.ga),
                            a.count,                    static_cast<A>(a.pixels),   static_cast<A*>(a.u),
                            static_cast<A*>(a.v),       static_cast<A*>(a.gw1),     static_cast<A*>(a.gb1),
                            static_cast<A*>(a.gw2),     static_cast<A*>(a.gb2)};
  // at least one weight block: it writes gb2 (zeros for N = 0) even without hidden units
  const index_t weight_blocks = mlp_blocks(f.hidden > 0 ? f.hidden : 1), input_blocks = mlp_blocks(f.n);
  channel_mlp_bwd<<<unsigned(weight_blocks + input_blocks), kMlpThreads, 0, stream>>>(mlp_operands<A>(f), o,
                                                                                      weight_blocks);
  return cudaGetLastError();
}

}  // namespace cbam_fused::cuda
