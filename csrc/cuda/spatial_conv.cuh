// CUDA kernels and launchers of the spatial gate's convolution: out = conv2d([in0, in1], weight, bias,
// padding = K // 2) on two acc-typed [N, H, W] planes, one output plane, and its gradients
// (SpatialConvArgs / SpatialConvGradArgs in csrc/pass_args.h; cbam_fused/passes.py,
// TorchPasses.spatial_conv*, is the executable spec). Raw pointers and a stream, no ATen, like
// passes.cuh: compiled by nvcc (csrc/cuda/pass_table.cuh) and by the emulator's cucc.
//
// These planes are small (N*H*W, not N*C*H*W), so the kernels are plain: a thread per output pixel
// that loads its taps straight from global memory (neighbouring threads share them through L1), for
// any K. The arithmetic is ordinary fp32/fp64 multiply-add (FMA at most), never TF32.
//
// Padding follows ATen's CPU convolution and its autograd, so that non-finite values propagate alike:
// the forward and the weight gradient multiply the padding zeros (a non-finite weight, or grad_out
// value, there gives NaN), the input gradient skips taps outside grad_out. With finite operands the
// padded products are zeros and change nothing.
//
// The weight and bias gradients sum N*H*W products each. Every block owns a fixed chunk of pixels
// and one tap (2*K*K weights + the bias), sums its products in double and reduces over the block in
// a fixed order; a finish kernel folds the chunks' partials in chunk order. No atomics, so the result
// is bitwise the same on every run, and the chunk size depends only on the shape. The input gradient
// runs in the same launch as these partials, on blocks of its own (spatial_conv_grad_tiles): two
// launches per gradient, where host time dominates (docs/design.md §6).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "pass_args.h"

namespace cbam_fused::cuda {

using index_t = std::int64_t;

constexpr int kConvThreads = 256;
constexpr index_t kConvMinPixelsPerThread = 8;
constexpr index_t kConvMaxChunks = 1024;  // partials per tap, at most about this many
constexpr index_t kConvMaxBlocks = index_t(1) << 20;
// Blocks per chunk that share out the taps. With at most about kConvMaxChunks chunks and
// kConvMaxBlocks input-gradient blocks, the one grid stays far below 2^31 blocks.
constexpr int kConvMaxTapBlocks = 65535;

// Valid tap range [lo, hi) along one axis for output coordinate `at` of an axis of length `len`: the
// taps that read inside the image.
__device__ __forceinline__ void conv_tap_range(index_t at, index_t len, int k, int& lo, int& hi) {
  const int r = k / 2;
  lo = at < r ? int(r - at) : 0;
  hi = len + r - at < k ? int(len + r - at) : k;
}

// out[q] = bias + sum_{ci, i, j} w[ci][i][j] * in_ci[y + i - r][x + j - r], taps in (ci, i, j) order,
// zero outside the image.
template <typename A>
__global__ void spatial_conv_fwd(const A* __restrict__ in0, const A* __restrict__ in1, const A* __restrict__ w,
                                 const A* __restrict__ bias, index_t total, index_t h, index_t wd, int k,
                                 A* __restrict__ out) {
  const int r = k / 2;
  for (index_t q = index_t(blockIdx.x) * blockDim.x + threadIdx.x; q < total; q += index_t(gridDim.x) * blockDim.x) {
    const index_t x = q % wd, y = (q / wd) % h;
    int i0, i1, j0, j1;
    conv_tap_range(y, h, k, i0, i1);
    conv_tap_range(x, wd, k, j0, j1);
    A acc = bias != nullptr ? bias[0] : A(0);
    for (int ci = 0; ci < 2; ++ci) {
      const A* src = ci == 0 ? in0 : in1;
      const A* wk = w + ci * k * k;
      for (int i = 0; i < k; ++i) {
        const index_t base = q + index_t(i - r) * wd - r;  // pixel (y + i - r, x - r) of the same plane
        const bool row_in = i >= i0 && i < i1;
        for (int j = 0; j < k; ++j) acc += wk[i * k + j] * (row_in && j >= j0 && j < j1 ? src[base + j] : A(0));
      }
    }
    out[q] = acc;
  }
}

// grad_in_ci[q] = sum_{i', j'} w[ci][K-1-i'][K-1-j'] * g[y + i' - r][x + j' - r] over the taps inside
// g: the forward with the flipped kernel, both channels from one read of g; a null output is skipped.
// Run by `blocks` blocks, this one being `block`.
template <typename A>
__device__ __forceinline__ void conv_grad_in(const A* __restrict__ g, const A* __restrict__ w, index_t total,
                                             index_t h, index_t wd, int k, A* __restrict__ gin0,
                                             A* __restrict__ gin1, index_t block, index_t blocks) {
  const int r = k / 2, kk = k * k;
  for (index_t q = block * blockDim.x + threadIdx.x; q < total; q += blocks * blockDim.x) {
    const index_t x = q % wd, y = (q / wd) % h;
    int i0, i1, j0, j1;
    conv_tap_range(y, h, k, i0, i1);
    conv_tap_range(x, wd, k, j0, j1);
    A acc0 = A(0), acc1 = A(0);
    for (int i = i0; i < i1; ++i) {
      const index_t base = q + index_t(i - r) * wd - r;
      const int wrow = (k - 1 - i) * k + (k - 1);
      for (int j = j0; j < j1; ++j) {
        const A gv = g[base + j];
        acc0 += w[wrow - j] * gv;
        acc1 += w[kk + wrow - j] * gv;
      }
    }
    if (gin0 != nullptr) gin0[q] = acc0;
    if (gin1 != nullptr) gin1[q] = acc1;
  }
}

// Partial sums, in double, of tap t in [t0, t1) over pixel chunk `chunk`, this block taking every
// `tap_step`-th tap from t0 + `tap`: tap t < 2*K*K is weight (ci, i, j) = (t / K^2, t / K % K, t % K),
// summing in_ci[y + i - r][x + j - r] * g[y][x] (zero outside the image); tap 2*K*K is the bias,
// summing g. part[t * chunks + chunk].
template <typename A>
__device__ __forceinline__ void conv_grad_w_tiles(const A* __restrict__ in0, const A* __restrict__ in1,
                                                  const A* __restrict__ g, index_t total, index_t h, index_t wd,
                                                  int k, index_t chunk_px, index_t chunks, int t0, int t1,
                                                  double* __restrict__ part, index_t chunk, int tap, int tap_step) {
  __shared__ double warp_sums[kConvThreads / 32];
  const int r = k / 2, kk = k * k, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const index_t begin = chunk * chunk_px;
  const index_t end = begin + chunk_px < total ? begin + chunk_px : total;
  for (int t = t0 + tap; t < t1; t += tap_step) {  // uniform across the block
    double s = 0.0;
    if (t == 2 * kk) {
      for (index_t q = begin + threadIdx.x; q < end; q += kConvThreads) s += double(g[q]);
    } else {
      const int ci = t / kk, i = t / k % k, j = t % k;
      const A* src = ci == 0 ? in0 : in1;
      const index_t shift = index_t(i - r) * wd + (j - r);
      for (index_t q = begin + threadIdx.x; q < end; q += kConvThreads) {
        const index_t x = q % wd, y = (q / wd) % h;
        const index_t yy = y + i - r, xx = x + j - r;
        const A v = yy >= 0 && yy < h && xx >= 0 && xx < wd ? src[q + shift] : A(0);  // padding: a zero
        s += double(v) * double(g[q]);
      }
    }
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) s += __shfl_down_sync(0xffffffffu, s, d);
    if (lane == 0) warp_sums[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
      double b = warp_sums[0];
      for (int v = 1; v < kConvThreads / 32; ++v) b += warp_sums[v];
      part[index_t(t) * chunks + chunk] = b;
    }
    __syncthreads();  // warp_sums is reused by the next tap
  }
}

// What spatial_conv_grad_tiles does: the input gradient over in_blocks blocks, then the weight
// partials over chunks * tap_blocks blocks (chunk = fastest); either part may have no blocks.
template <typename A> struct ConvGradJobs {
  const A *in0, *in1, *w, *g;
  index_t total, h, wd;
  int k;
  A *gin0, *gin1;
  unsigned in_blocks;
  index_t chunk_px, chunks;
  int t0, t1, tap_blocks;
  double* part;
};

// One launch for both full-size jobs of the gradient: each block takes one of them (a block-uniform
// branch, so the weight part's barriers are reached by the whole block).
template <typename A>
__global__ void spatial_conv_grad_tiles(ConvGradJobs<A> j) {
  if (blockIdx.x < j.in_blocks) {
    conv_grad_in(j.g, j.w, j.total, j.h, j.wd, j.k, j.gin0, j.gin1, index_t(blockIdx.x), index_t(j.in_blocks));
  } else {
    const index_t b = index_t(blockIdx.x - j.in_blocks);
    conv_grad_w_tiles(j.in0, j.in1, j.g, j.total, j.h, j.wd, j.k, j.chunk_px, j.chunks, j.t0, j.t1, j.part,
                      b % j.chunks, int(b / j.chunks), j.tap_blocks);
  }
}

// Folds each tap's chunk partials in chunk order; no chunks (N = 0) gives zeros.
template <typename A>
__global__ void spatial_conv_grad_finish(const double* __restrict__ part, index_t chunks, int k, int t0, int t1,
                                         A* __restrict__ gw, A* __restrict__ gb) {
  const int t = t0 + int(blockIdx.x * blockDim.x + threadIdx.x);
  if (t >= t1) return;
  double s = 0.0;
  for (index_t c = 0; c < chunks; ++c) s += part[index_t(t) * chunks + c];
  if (t < 2 * k * k) gw[t] = A(s);
  else gb[0] = A(s);
}

// ---- launchers
// Pixels per weight-gradient chunk: a multiple of the block, at least 8 per thread, and at most about
// kConvMaxChunks chunks (so the finish kernel's serial fold stays short).
inline index_t conv_chunk_pixels(index_t total) {
  const index_t per_block = kConvThreads * kConvMaxChunks;
  index_t per_thread = (total + per_block - 1) / per_block;
  if (per_thread < kConvMinPixelsPerThread) per_thread = kConvMinPixelsPerThread;
  return per_thread * kConvThreads;
}

inline bool conv_shape_ok(index_t n, index_t h, index_t w, index_t k) {
  return n >= 0 && h > 0 && w > 0 && k > 0 && k % 2 == 1 && k < 32768;
}

inline unsigned conv_blocks(index_t total) {
  const index_t b = (total + kConvThreads - 1) / kConvThreads;
  return unsigned(b < kConvMaxBlocks ? b : kConvMaxBlocks);
}

// Workspace of spatial_conv_grad: the double partials of every tap and chunk.
inline std::size_t spatial_conv_grad_workspace_bytes(index_t n, index_t h, index_t w, index_t k, bool /*f64*/) {
  if (!conv_shape_ok(n, h, w, k)) return 0;
  const index_t total = n * h * w, chunks = (total + conv_chunk_pixels(total) - 1) / conv_chunk_pixels(total);
  return std::size_t(chunks) * std::size_t(2 * k * k + 1) * sizeof(double);
}

template <typename A>
cudaError_t launch_spatial_conv(const SpatialConvArgs& a, cudaStream_t stream) {
  if (!conv_shape_ok(a.n, a.h, a.w, a.k)) return cudaErrorInvalidValue;
  const index_t total = a.n * a.h * a.w;
  if (total == 0) return cudaSuccess;  // N = 0: the planes' pointers may be null
  if (a.in0 == nullptr || a.in1 == nullptr || a.weight == nullptr || a.out == nullptr) return cudaErrorInvalidValue;
  spatial_conv_fwd<<<conv_blocks(total), kConvThreads, 0, stream>>>(
      static_cast<const A*>(a.in0), static_cast<const A*>(a.in1), static_cast<const A*>(a.weight),
      static_cast<const A*>(a.bias), total, a.h, a.w, int(a.k), static_cast<A*>(a.out));
  return cudaGetLastError();
}

template <typename A>
cudaError_t launch_spatial_conv_grad(const SpatialConvGradArgs& a, cudaStream_t stream) {
  const index_t total = a.n * a.h * a.w;
  if (!conv_shape_ok(a.n, a.h, a.w, a.k) || (total > 0 && a.grad_out == nullptr)) return cudaErrorInvalidValue;
  const int k = int(a.k), taps = 2 * k * k + 1;
  const bool want_in = (a.grad_in0 != nullptr || a.grad_in1 != nullptr) && total > 0;
  const bool want_w = a.grad_weight != nullptr || a.grad_bias != nullptr;
  if (want_in && a.weight == nullptr) return cudaErrorInvalidValue;
  // taps [t0, t1): the weights when wanted, the bias (last) when wanted
  const int t0 = a.grad_weight != nullptr ? 0 : taps - 1, t1 = a.grad_bias != nullptr ? taps : taps - 1;
  const index_t chunk_px = conv_chunk_pixels(total), chunks = want_w ? (total + chunk_px - 1) / chunk_px : 0;
  auto* part = static_cast<double*>(a.workspace);
  if (chunks > 0 && (part == nullptr || (a.grad_weight != nullptr && (a.in0 == nullptr || a.in1 == nullptr))))
    return cudaErrorInvalidValue;
  const int tap_blocks = t1 - t0 < kConvMaxTapBlocks ? t1 - t0 : kConvMaxTapBlocks;
  const ConvGradJobs<A> jobs{static_cast<const A*>(a.in0), static_cast<const A*>(a.in1),
                             static_cast<const A*>(a.weight), static_cast<const A*>(a.grad_out), total, a.h, a.w, k,
                             static_cast<A*>(a.grad_in0), static_cast<A*>(a.grad_in1),
                             want_in ? conv_blocks(total) : 0u, chunk_px, chunks, t0, t1, tap_blocks, part};
  const index_t blocks = index_t(jobs.in_blocks) + chunks * tap_blocks;
  if (blocks > 0) {
    spatial_conv_grad_tiles<<<unsigned(blocks), kConvThreads, 0, stream>>>(jobs);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  if (!want_w) return cudaSuccess;
  spatial_conv_grad_finish<<<unsigned((t1 - t0 + kConvThreads - 1) / kConvThreads), kConvThreads, 0, stream>>>(
      part, chunks, k, t0, t1, static_cast<A*>(a.grad_weight), static_cast<A*>(a.grad_bias));
  return cudaGetLastError();
}

}  // namespace cbam_fused::cuda
