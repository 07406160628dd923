// The channel gate's shared MLP and its gate, forward and backward, as one CPU kernel each
// (ChannelMlpArgs in csrc/pass_args.h): a dozen small ATen ops per call become one, which matters
// where the block's host time dominates (small feature maps, docs/design.md "The launch budget").
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/pass_table_cpu.h"

namespace cbam_fused::cpu {
namespace {

// Row-major C[M, N] = op(A) op(B) + beta * C (beta 0 or 1), in plain loops the compiler vectorises
// along the contiguous axis. The orchestration sends only small MLPs here (larger ones go to the
// BLAS through ATen), so these loops need no blocking.
template <typename A>
void mm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const A* a, int64_t lda, const A* b, int64_t ldb,
        A beta, A* c, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    A* ci = c + i * ldc;
    if (beta == A(0)) std::fill(ci, ci + N, A(0));
    if (!ta && tb) {  // dot products of rows
      const A* ai = a + i * lda;
      for (int64_t j = 0; j < N; ++j) {
        const A* bj = b + j * ldb;
        A s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t k = 0; k < K; ++k) s += ai[k] * bj[k];
        ci[j] += s;
      }
    } else {  // rows of B scaled and added
      for (int64_t k = 0; k < K; ++k) {
        const A aik = ta ? a[k * lda + i] : a[i * lda + k];
        const A* bk = b + k * ldb;
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) ci[j] += aik * bk[j];
      }
    }
  }
}

template <typename A>
A gate_value(GateKind g, A z) {
  switch (g) {
    case GateKind::Sigmoid: return A(1) / (A(1) + std::exp(-z));
    case GateKind::HardSigmoid: return std::min(std::max(z + A(3), A(0)), A(6)) / A(6);
    case GateKind::KerasHardSigmoid: return std::min(std::max(z * A(0.2) + A(0.5), A(0)), A(1));
  }
  return z;
}

// g * G'(z): the derivative from the logit z (open intervals for the hard gates), `value` = G(z).
template <typename A>
A gate_grad(GateKind g, A z, A value, A grad) {
  switch (g) {
    case GateKind::Sigmoid: return grad * (A(1) - value) * value;
    case GateKind::HardSigmoid: return (z > A(-3) && z < A(3)) ? grad / A(6) : A(0);
    case GateKind::KerasHardSigmoid: return (z > A(-2.5) && z < A(2.5)) ? grad * A(0.2) : A(0);
  }
  return grad;
}

int pools_of(ChannelPools p) { return p == ChannelPools::AvgMax ? 2 : 1; }

// The [k * N, C] batch of pooled vectors the MLP sees (`light` writes the mean of both into buf).
template <typename A>
const A* map_input(const ChannelMlpArgs& args, std::vector<A>& buf) {
  const A* pooled = static_cast<const A*>(args.pooled);
  const int64_t nc = args.n * args.c;
  switch (args.pools) {
    case ChannelPools::AvgMax:
    case ChannelPools::Avg: return pooled;
    case ChannelPools::Max: return pooled + nc;
    case ChannelPools::Light:
      buf.resize(static_cast<size_t>(nc));
      for (int64_t i = 0; i < nc; ++i) buf[i] = (pooled[i] + pooled[nc + i]) / A(2);
      return buf.data();
  }
  return pooled;
}

// h = V W1^T + b1 over the k * N rows.
template <typename A>
void hidden(const ChannelMlpArgs& args, const A* v, int64_t rows, std::vector<A>& h) {
  const int64_t C = args.c, R = args.hidden;
  h.resize(static_cast<size_t>(rows * R));
  const A* b1 = static_cast<const A*>(args.b1);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < R; ++j) h[i * R + j] = b1 ? b1[j] : A(0);
  mm<A>(false, true, rows, R, C, v, C, static_cast<const A*>(args.w1), C, A(b1 ? 1 : 0), h.data(), R);
}

// hs = the sum over the pools of relu(h), [N, hidden].
template <typename A>
void relu_sum(const std::vector<A>& h, int k, int64_t n, int64_t R, std::vector<A>& hs) {
  hs.assign(static_cast<size_t>(n * R), A(0));
  for (int p = 0; p < k; ++p)
    for (int64_t i = 0; i < n * R; ++i) hs[i] += std::max(h[p * n * R + i], A(0));
}

template <typename A>
void forward(const ChannelMlpArgs& args) {
  const int64_t N = args.n, C = args.c, R = args.hidden;
  const int k = pools_of(args.pools);
  std::vector<A> buf, h, hs;
  const A* v = map_input<A>(args, buf);
  hidden<A>(args, v, k * N, h);
  relu_sum<A>(h, k, N, R, hs);
  A* m = static_cast<A*>(args.m);
  const A* b2 = static_cast<const A*>(args.b2);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < C; ++c) m[i * C + c] = b2 ? A(k) * b2[c] : A(0);  // b2 enters once per pool
  mm<A>(false, true, N, C, R, hs.data(), R, static_cast<const A*>(args.w2), R, A(b2 ? 1 : 0), m, C);
  A* a = static_cast<A*>(args.a);
  for (int64_t i = 0; i < N * C; ++i) a[i] = gate_value(args.gate, m[i]);
}

template <typename A>
void backward(const ChannelMlpGradArgs& args) {
  const ChannelMlpArgs& f = args.fwd;
  const int64_t N = f.n, C = f.c, R = f.hidden, NC = N * C;
  const int k = pools_of(f.pools);
  std::vector<A> buf, h, hs;
  const A* v = map_input<A>(f, buf);
  hidden<A>(f, v, k * N, h);
  relu_sum<A>(h, k, N, R, hs);
  const A *m = static_cast<const A*>(f.m), *a = static_cast<const A*>(f.a), *ga = static_cast<const A*>(args.ga);
  std::vector<A> gm(static_cast<size_t>(NC));
  for (int64_t i = 0; i < NC; ++i) gm[i] = gate_grad(f.gate, m[i], a[i], ga[i]);
  // second layer: gw2 = gm^T hs, gb2 = k * sum_n gm, gr = gm W2 (the same for every pool)
  mm<A>(true, false, C, R, N, gm.data(), C, hs.data(), R, A(0), static_cast<A*>(args.gw2), R);
  if (args.gb2 != nullptr) {
    A* gb2 = static_cast<A*>(args.gb2);
    for (int64_t c = 0; c < C; ++c) {
      A s = 0;
      for (int64_t i = 0; i < N; ++i) s += gm[i * C + c];
      gb2[c] = s * A(k);
    }
  }
  std::vector<A> gr(static_cast<size_t>(N * R));
  mm<A>(false, false, N, R, C, gm.data(), C, static_cast<const A*>(f.w2), R, A(0), gr.data(), R);
  // first layer, through the relu of each pool's hidden units
  std::vector<A> gh(static_cast<size_t>(k * N * R));
  for (int p = 0; p < k; ++p)
    for (int64_t i = 0; i < N * R; ++i) gh[p * N * R + i] = h[p * N * R + i] > A(0) ? gr[i] : A(0);
  mm<A>(true, false, R, C, k * N, gh.data(), R, v, C, A(0), static_cast<A*>(args.gw1), C);
  if (args.gb1 != nullptr) {
    A* gb1 = static_cast<A*>(args.gb1);
    for (int64_t j = 0; j < R; ++j) {
      A s = 0;
      for (int64_t i = 0; i < k * N; ++i) s += gh[i * R + j];
      gb1[j] = s;
    }
  }
  std::vector<A> gv(static_cast<size_t>(k * NC));
  mm<A>(false, false, k * N, C, R, gh.data(), R, static_cast<const A*>(f.w1), C, A(0), gv.data(), C);
  // into the pools' input-gradient operands
  const A* g_avg = nullptr;
  const A* g_max = nullptr;
  A scale = A(1);
  switch (f.pools) {
    case ChannelPools::AvgMax: g_avg = gv.data(); g_max = gv.data() + NC; break;
    case ChannelPools::Avg: g_avg = gv.data(); break;
    case ChannelPools::Max: g_max = gv.data(); break;
    case ChannelPools::Light: g_avg = g_max = gv.data(); scale = A(0.5); break;
  }
  A* u = static_cast<A*>(args.u);
  A* vv = static_cast<A*>(args.v);
  const A pixels = static_cast<A>(args.pixels);
  for (int64_t i = 0; i < NC; ++i) {
    u[i] = g_avg ? (g_avg[i] * scale) / pixels : A(0);
    const A gmax = g_max ? g_max[i] * scale : A(0);
    vv[i] = args.count != nullptr ? gmax / static_cast<A>(args.count[i]) : gmax;
  }
}

}  // namespace

int channel_mlp_cpu(const ChannelMlpArgs& args, void*) {
  args.f64 ? forward<double>(args) : forward<float>(args);
  return 0;
}

int channel_mlp_grad_cpu(const ChannelMlpGradArgs& args, void*) {
  args.fwd.f64 ? backward<double>(args) : backward<float>(args);
  return 0;
}

}  // namespace cbam_fused::cpu
