// CPU kernels of the spatial gate's KxK convolution of two [N, H, W] planes into one (entries of the
// CPU PassTable, declared in csrc/cpu/pass_table_cpu.h). The planes are small (N*H*W values, not N*C*H*W), so a library
// convolution's setup costs more than the work; these are plain loops the compiler vectorises.
//
// Padding follows ATen's convolution and its autograd, so that non-finite values propagate alike: the
// forward and the weight gradient multiply the padding zeros (a non-finite weight, or grad_out value,
// there gives NaN), the input gradient skips taps outside grad_out. Products with padding zeros are
// computed only where they are NaN; otherwise they change nothing. Every output pixel adds its taps
// in (channel, row, column) order after the bias, the order of the CUDA kernels
// (csrc/cuda/spatial_conv.cuh).
//
// Weight and bias gradients: short partial sums in the accumulation type (interleaved lanes over at
// most kSegment pixels of a row, folded in a fixed order) are added in double per chunk of rows of
// fixed size, and the chunks' double partials are folded in chunk order. The chunks depend only on
// the shape, so the result does not depend on the thread count; and no fp32 sum runs over more than a
// few hundred products (a single fp32 sum over a 4097x4097 image lost 3%, see
// cbam_fused/small_steps.py).
#include "cpu/pass_table_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace cbam_fused::cpu {
namespace {

constexpr int kLanes = 16;                 // partial sums per dot product
constexpr int64_t kSegment = 256;          // pixels per partial sum before it is added in double
constexpr int64_t kChunkPixels = 4096;     // pixels (whole rows) per weight-gradient chunk, at least
constexpr int64_t kGrainMacs = 1 << 15;    // multiply-adds per parallel task, at least

// 16-byte vectors of A (GCC/Clang vector extensions: SSE2 in the baseline build, no intrinsics).
// Elementwise multiply then add, so every lane rounds exactly like the scalar code.
template <typename A> struct Simd {
  typedef A V __attribute__((vector_size(16)));
  static constexpr int kSize = 16 / int(sizeof(A));
  static V load(const A* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(A* p, V v) { std::memcpy(p, &v, sizeof v); }
  static V splat(A a) { return V{} + a; }
};

bool shape_ok(int64_t n, int64_t h, int64_t w, int64_t k) {
  return n >= 0 && h > 0 && w > 0 && k > 0 && k % 2 == 1 && k < 32768;
}

int64_t chunk_rows(int64_t w) { return std::max<int64_t>(1, (kChunkPixels + w - 1) / w); }

int64_t num_chunks(int64_t n, int64_t h, int64_t w) {
  const int64_t rows = n * h, per = chunk_rows(w);
  return (rows + per - 1) / per;
}

int64_t grain_rows(int64_t w, int64_t k, int sources) {
  return std::max<int64_t>(1, kGrainMacs / std::max<int64_t>(1, w * k * k * sources));
}

// Valid taps [lo, hi) along an axis of length len for output coordinate `at`.
inline void tap_range(int64_t at, int64_t len, int k, int& lo, int& hi) {
  const int64_t r = k / 2;
  lo = at < r ? int(r - at) : 0;
  hi = len + r - at < k ? int(len + r - at) : k;
}

// One output pixel x of a row: init + sum_s sum_{i, j} wts[s][i*k + j] * planes[s][(y+i-r)*w + x+j-r]
// over the taps inside the image (rows [i0, i1)), in (s, i, j) order.
template <typename A>
A correlate_pixel(int64_t x, int64_t y, int64_t w, int k, int i0, int i1, int sources, const A* const* planes,
                  const A* const* wts, A init) {
  const int r = k / 2;
  const int j0 = x < r ? int(r - x) : 0, j1 = w + r - x < k ? int(w + r - x) : k;
  A acc = init;
  for (int s = 0; s < sources; ++s)
    for (int i = i0; i < i1; ++i) {
      const A* row = planes[s] + (y + i - r) * w;
      const A* wr = wts[s] + i * k;
      for (int j = j0; j < j1; ++j) acc += wr[j] * row[x + j - r];
    }
  return acc;
}

// out[x] for the output row y of one plane, as correlate_pixel. Columns whose taps are all inside the
// row are computed a few vectors at a time with the partial sums in registers (in the same per-pixel
// order), the border columns and the rest one at a time. With `pad_products`, a tap whose weight times
// zero is NaN adds that NaN to the pixels it would read from the padding (as conv2d does).
template <typename A>
void correlate_row(A* __restrict__ out, int64_t y, int64_t h, int64_t w, int k, int sources,
                   const A* const* planes, const A* const* wts, A init, bool pad_products) {
  const int r = k / 2;
  int i0, i1;
  tap_range(y, h, k, i0, i1);
  const int64_t xa = std::min<int64_t>(r, w), xb = std::max<int64_t>(xa, w - r);  // interior [xa, xb)
  for (int64_t x = 0; x < xa; ++x) out[x] = correlate_pixel(x, y, w, k, i0, i1, sources, planes, wts, init);
  using S = Simd<A>;
  using V = typename S::V;
  constexpr int kV = S::kSize;
  int64_t x = xa;
  for (; x + 4 * kV <= xb; x += 4 * kV) {  // 4 vectors of partial sums in registers
    V acc0 = S::splat(init), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int s = 0; s < sources; ++s)
      for (int i = i0; i < i1; ++i) {
        const A* __restrict__ src = planes[s] + (y + i - r) * w + x - r;
        const A* wr = wts[s] + i * k;
        for (int j = 0; j < k; ++j) {
          const V wv = S::splat(wr[j]);
          acc0 += wv * S::load(src + j);
          acc1 += wv * S::load(src + j + kV);
          acc2 += wv * S::load(src + j + 2 * kV);
          acc3 += wv * S::load(src + j + 3 * kV);
        }
      }
    S::store(out + x, acc0);
    S::store(out + x + kV, acc1);
    S::store(out + x + 2 * kV, acc2);
    S::store(out + x + 3 * kV, acc3);
  }
  for (; x + kV <= xb; x += kV) {  // then one vector at a time
    V acc = S::splat(init);
    for (int s = 0; s < sources; ++s)
      for (int i = i0; i < i1; ++i) {
        const A* __restrict__ src = planes[s] + (y + i - r) * w + x - r;
        const A* wr = wts[s] + i * k;
        for (int j = 0; j < k; ++j) acc += S::splat(wr[j]) * S::load(src + j);
      }
    S::store(out + x, acc);
  }
  for (; x < w; ++x) out[x] = correlate_pixel(x, y, w, k, i0, i1, sources, planes, wts, init);
  if (!pad_products) return;
  for (int s = 0; s < sources; ++s)  // rare: a non-finite weight meets the padding
    for (int i = 0; i < k; ++i)
      for (int j = 0; j < k; ++j) {
        const A z = wts[s][i * k + j] * A(0);
        if (!std::isnan(z)) continue;
        const int64_t off = j - r;
        const bool row_in = i >= i0 && i < i1;
        const int64_t lo = row_in ? std::min<int64_t>(w, std::max<int64_t>(0, -off)) : w;  // padded: [0, lo)
        const int64_t hi = row_in ? std::max<int64_t>(lo, std::min<int64_t>(w, w - off)) : w;  // and [hi, w)
        for (int64_t xx = 0; xx < lo; ++xx) out[xx] += z;
        for (int64_t xx = hi; xx < w; ++xx) out[xx] += z;
      }
}

// sum_x a[x] * b[x] with kLanes interleaved partial sums, folded pairwise.
template <typename A>
A dot(const A* __restrict__ a, const A* __restrict__ b, int64_t len) {
  A acc[kLanes] = {};
  int64_t x = 0;
  for (; x + kLanes <= len; x += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[x + l] * b[x + l];
  for (int l = 0; x < len; ++x, ++l) acc[l] += a[x] * b[x];
  for (int half = kLanes / 2; half > 0; half /= 2)
    for (int l = 0; l < half; ++l) acc[l] += acc[l + half];
  return acc[0];
}

// part[j] += sum_{x in [xa, xb)} src[x + j - r] * g[x] for the K lags j, where every lag stays inside
// the row: one pass over g for all lags, V interleaved partial sums per lag, folded and added in double
// every kSegment pixels.
template <typename A, int K>
void lag_dots(const A* __restrict__ src, const A* __restrict__ g, int64_t xa, int64_t xb, double* part) {
  using S = Simd<A>;
  using V = typename S::V;
  constexpr int r = K / 2, kV = S::kSize;
  for (int64_t s0 = xa; s0 < xb; s0 += kSegment) {
    const int64_t s1 = std::min(xb, s0 + kSegment);
    V acc[K];
#pragma GCC unroll 16
    for (int j = 0; j < K; ++j) acc[j] = V{};
    int64_t x = s0;
    for (; x + kV <= s1; x += kV) {
      const V gv = S::load(g + x);
#pragma GCC unroll 16
      for (int j = 0; j < K; ++j) acc[j] += S::load(src + x + j - r) * gv;
    }
    for (int j = 0; j < K; ++j) {
      A t = acc[j][0];
      for (int l = 1; l < kV; ++l) t += acc[j][l];
      for (int64_t xr = x; xr < s1; ++xr) t += src[xr + j - r] * g[xr];
      part[j] += double(t);
    }
  }
}

template <typename A>
A sum(const A* __restrict__ a, int64_t len) {
  A acc[kLanes] = {};
  int64_t x = 0;
  for (; x + kLanes <= len; x += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[x + l];
  for (int l = 0; x < len; ++x, ++l) acc[l] += a[x];
  for (int half = kLanes / 2; half > 0; half /= 2)
    for (int l = 0; l < half; ++l) acc[l] += acc[l + half];
  return acc[0];
}

template <typename A>
void forward(const SpatialConvArgs& a) {
  const int64_t h = a.h, w = a.w, plane = h * w;
  const int k = int(a.k);
  const auto* in0 = static_cast<const A*>(a.in0);
  const auto* in1 = static_cast<const A*>(a.in1);
  const auto* wt = static_cast<const A*>(a.weight);
  const A init = a.bias != nullptr ? *static_cast<const A*>(a.bias) : A(0);
  auto* out = static_cast<A*>(a.out);
  const A* wts[2] = {wt, wt + k * k};
  at::parallel_for(0, a.n * h, grain_rows(w, k, 2), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / h, y = row % h;
      const A* planes[2] = {in0 + n * plane, in1 + n * plane};
      correlate_row(out + row * w, y, h, w, k, 2, planes, wts, init, true);
    }
  });
}

// grad_in_ci = the forward's correlation of grad_out with channel ci's kernel flipped in both axes.
template <typename A>
void input_grad(const SpatialConvGradArgs& a) {
  const int64_t h = a.h, w = a.w, plane = h * w;
  const int k = int(a.k), kk = k * k;
  const auto* wt = static_cast<const A*>(a.weight);
  const auto* g = static_cast<const A*>(a.grad_out);
  std::vector<A> flipped(2 * kk);
  for (int ci = 0; ci < 2; ++ci)
    for (int t = 0; t < kk; ++t) flipped[ci * kk + t] = wt[ci * kk + (kk - 1 - t)];
  A* outs[2] = {static_cast<A*>(a.grad_in0), static_cast<A*>(a.grad_in1)};
  const int wanted = int(outs[0] != nullptr) + int(outs[1] != nullptr);
  at::parallel_for(0, a.n * h, grain_rows(w, k, wanted), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / h, y = row % h;
      const A* planes[1] = {g + n * plane};
      for (int ci = 0; ci < 2; ++ci) {
        if (outs[ci] == nullptr) continue;
        const A* wts[1] = {flipped.data() + ci * kk};
        correlate_row(outs[ci] + row * w, y, h, w, k, 1, planes, wts, A(0), false);
      }
    }
  });
}

// sum_x (x inside [x0, x1) ? a[x + off] : 0) * b[x] over a whole row, padding products included: for
// a row of grad_out that holds a non-finite value (0 * inf is NaN, as in conv2d's weight gradient).
template <typename A>
A padded_dot(const A* a, const A* b, int64_t off, int64_t x0, int64_t x1, int64_t len) {
  A acc = A(0);
  for (int64_t x = 0; x < len; ++x) acc += (x >= x0 && x < x1 ? a[x + off] : A(0)) * b[x];
  return acc;
}

template <typename A>
bool all_finite(const A* a, int64_t len) {
  bool ok = true;
  for (int64_t x = 0; x < len; ++x) ok &= std::isfinite(a[x]);
  return ok;
}

// Partial sums of one chunk of rows, in double: part[t] for weight tap t = (ci, i, j) and part[2kk]
// for the bias.
template <typename A>
void chunk_weight_grad(const SpatialConvGradArgs& a, int64_t row_begin, int64_t row_end, double* part) {
  const int64_t h = a.h, w = a.w, plane = h * w;
  const int k = int(a.k), kk = k * k, r = k / 2;
  const auto* g = static_cast<const A*>(a.grad_out);
  const A* ins[2] = {static_cast<const A*>(a.in0), static_cast<const A*>(a.in1)};
  const bool want_w = a.grad_weight != nullptr, want_b = a.grad_bias != nullptr;
  std::fill(part, part + 2 * kk + 1, 0.0);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / h, y = row % h;
    const A* grow = g + row * w;
    if (want_b) part[2 * kk] += double(sum(grow, w));
    if (!want_w) continue;
    const bool finite = all_finite(grow, w);
    int i0, i1;
    tap_range(y, h, k, i0, i1);
    for (int ci = 0; ci < 2; ++ci) {
      for (int i = 0; i < k; ++i) {
        const bool row_in = i >= i0 && i < i1;
        if (!row_in && finite) continue;  // padding rows: zeros
        const A* src = row_in ? ins[ci] + n * plane + (y + i - r) * w : nullptr;
        double* pt = part + ci * kk + i * k;
        if (!finite) {
          for (int j = 0; j < k; ++j) {
            const int64_t off = j - r;
            const int64_t x0 = row_in ? std::max<int64_t>(0, -off) : w;
            const int64_t x1 = row_in ? std::min<int64_t>(w, w - off) : w;
            pt[j] += double(padded_dot(src, grow, off, x0, x1, w));
          }
          continue;
        }
        // border columns (some lags outside the row), then the interior [xa, xb) for all lags at once
        const int64_t xa = std::min<int64_t>(r, w), xb = std::max<int64_t>(xa, w - r);
        for (int j = 0; j < k; ++j) {
          const int64_t off = j - r;
          A t = A(0);
          const int64_t lo = std::max<int64_t>(0, -off), hi = std::min<int64_t>(w, w - off);  // lag inside
          for (int64_t x = lo; x < std::min(xa, hi); ++x) t += src[x + off] * grow[x];
          for (int64_t x = std::max(xb, lo); x < hi; ++x) t += src[x + off] * grow[x];
          pt[j] += double(t);
        }
        switch (k) {
          case 1: lag_dots<A, 1>(src, grow, xa, xb, pt); break;
          case 3: lag_dots<A, 3>(src, grow, xa, xb, pt); break;
          case 5: lag_dots<A, 5>(src, grow, xa, xb, pt); break;
          case 7: lag_dots<A, 7>(src, grow, xa, xb, pt); break;
          default:
            for (int j = 0; j < k; ++j)
              if (xb > xa) pt[j] += double(dot(src + xa + j - r, grow + xa, xb - xa));
        }
      }
    }
  }
}

template <typename A>
void weight_grad(const SpatialConvGradArgs& a) {
  const int kk = int(a.k * a.k), taps = 2 * kk + 1;
  const int64_t per = chunk_rows(a.w), rows = a.n * a.h, chunks = num_chunks(a.n, a.h, a.w);
  auto* part = static_cast<double*>(a.workspace);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      chunk_weight_grad<A>(a, c * per, std::min(rows, (c + 1) * per), part + c * taps);
  });
  for (int t = 0; t < taps; ++t) {
    double s = 0.0;
    for (int64_t c = 0; c < chunks; ++c) s += part[c * taps + t];
    if (t < 2 * kk) {
      if (a.grad_weight != nullptr) static_cast<A*>(a.grad_weight)[t] = A(s);
    } else if (a.grad_bias != nullptr) {
      *static_cast<A*>(a.grad_bias) = A(s);
    }
  }
}

}  // namespace

// Pointers to the planes may be null when N = 0 (empty tensors).
int spatial_conv_cpu(const SpatialConvArgs& a, void*) {
  if (!shape_ok(a.n, a.h, a.w, a.k)) return kSpatialConvBadArgs;
  if (a.n == 0) return 0;
  if (a.in0 == nullptr || a.in1 == nullptr || a.weight == nullptr || a.out == nullptr) return kSpatialConvBadArgs;
  if (a.f64) forward<double>(a);
  else forward<float>(a);
  return 0;
}

int spatial_conv_grad_cpu(const SpatialConvGradArgs& a, void*) {
  if (!shape_ok(a.n, a.h, a.w, a.k) || (a.n > 0 && a.grad_out == nullptr)) return kSpatialConvBadArgs;
  const bool want_in = a.n > 0 && (a.grad_in0 != nullptr || a.grad_in1 != nullptr);
  const bool want_wb = a.grad_weight != nullptr || a.grad_bias != nullptr;
  if (want_in && a.weight == nullptr) return kSpatialConvBadArgs;
  if (want_wb && num_chunks(a.n, a.h, a.w) > 0 &&
      (a.workspace == nullptr || (a.grad_weight != nullptr && (a.in0 == nullptr || a.in1 == nullptr))))
    return kSpatialConvBadArgs;
  if (want_in) {
    if (a.f64) input_grad<double>(a);
    else input_grad<float>(a);
  }
  if (want_wb) {
    if (a.f64) weight_grad<double>(a);
    else weight_grad<float>(a);
  }
  return 0;
}

std::size_t spatial_conv_grad_workspace_cpu(int64_t n, int64_t h, int64_t w, int64_t k, bool) {
  if (!shape_ok(n, h, w, k)) return 0;
  return std::size_t(num_chunks(n, h, w)) * std::size_t(2 * k * k + 1) * sizeof(double);
}

}  // namespace cbam_fused::cpu
