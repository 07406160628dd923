// Placeholder direct convolution for the spatial gate (scalar loops), until the tuned kernels land.
#include <cstdint>
#include <vector>

#include "cpu/pass_table_cpu.h"

namespace cbam_fused::cpu {
namespace {

template <typename A>
void conv(const SpatialConvArgs& a) {
  const int64_t H = a.h, W = a.w, K = a.k, r = K / 2, P = H * W;
  const A* in[2] = {static_cast<const A*>(a.in0), static_cast<const A*>(a.in1)};
  const A* wt = static_cast<const A*>(a.weight);
  const A bias = a.bias ? *static_cast<const A*>(a.bias) : A(0);
  A* out = static_cast<A*>(a.out);
  for (int64_t n = 0; n < a.n; ++n)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j) {
        A s = bias;
        for (int c = 0; c < 2; ++c)
          for (int64_t di = 0; di < K; ++di) {
            const int64_t ii = i + di - r;
            if (ii < 0 || ii >= H) continue;
            for (int64_t dj = 0; dj < K; ++dj) {
              const int64_t jj = j + dj - r;
              if (jj < 0 || jj >= W) continue;
              s += in[c][n * P + ii * W + jj] * wt[(c * K + di) * K + dj];
            }
          }
        out[n * P + i * W + j] = s;
      }
}

template <typename A>
void conv_grad(const SpatialConvGradArgs& a) {
  const int64_t H = a.h, W = a.w, K = a.k, r = K / 2, P = H * W;
  const A* in[2] = {static_cast<const A*>(a.in0), static_cast<const A*>(a.in1)};
  A* gin[2] = {static_cast<A*>(a.grad_in0), static_cast<A*>(a.grad_in1)};
  const A* wt = static_cast<const A*>(a.weight);
  const A* go = static_cast<const A*>(a.grad_out);
  std::vector<double> gw(2 * K * K, 0.0);
  double gb = 0.0;
  for (int64_t n = 0; n < a.n; ++n)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j) {
        const A g = go[n * P + i * W + j];
        gb += g;
        for (int c = 0; c < 2; ++c) {
          A s = 0;
          // taps on the zero padding add g * 0, as a convolution does: a NaN or Inf in grad_out
          // reaches every weight, as in the reference
          for (int64_t di = 0; di < K; ++di) {
            const int64_t ii = i + di - r;
            for (int64_t dj = 0; dj < K; ++dj) {
              const int64_t jj = j + dj - r;
              const bool inside = ii >= 0 && ii < H && jj >= 0 && jj < W;
              gw[(c * K + di) * K + dj] += double(g) * (inside ? double(in[c][n * P + ii * W + jj]) : 0.0);
            }
          }
          // input gradient: the flipped kernel over grad_out
          for (int64_t di = 0; di < K; ++di) {
            const int64_t ii = i - di + r;
            if (ii < 0 || ii >= H) continue;
            for (int64_t dj = 0; dj < K; ++dj) {
              const int64_t jj = j - dj + r;
              if (jj < 0 || jj >= W) continue;
              s += go[n * P + ii * W + jj] * wt[(c * K + di) * K + dj];
            }
          }
          if (gin[c]) gin[c][n * P + i * W + j] = s;
        }
      }
  if (a.grad_weight)
    for (int64_t t = 0; t < 2 * K * K; ++t) static_cast<A*>(a.grad_weight)[t] = A(gw[t]);
  if (a.grad_bias) *static_cast<A*>(a.grad_bias) = A(gb);
}

}  // namespace

int spatial_conv_cpu(const SpatialConvArgs& a, void*) {
  a.f64 ? conv<double>(a) : conv<float>(a);
  return 0;
}

int spatial_conv_grad_cpu(const SpatialConvGradArgs& a, void*) {
  a.f64 ? conv_grad<double>(a) : conv_grad<float>(a);
  return 0;
}

std::size_t spatial_conv_grad_workspace_cpu(int64_t, int64_t, int64_t, int64_t, bool) { return 0; }

}  // namespace cbam_fused::cpu
