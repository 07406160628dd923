// AddressSanitizer driver: runs every entry of the CUDA PassTable (csrc/cuda/pass_table.cuh: the
// launchers of passes.cuh, spatial_conv.cuh and channel_mlp.cuh) on a few odd and misaligned shapes,
// with exact-size cudaMalloc buffers (an overrun is a heap-buffer-overflow), and checks the results
// against plain host loops written here. Built by tests/test_cuda_emulator.py with `cucc -fsanitize=address -g -O1`;
// prints "asan_driver: all checks passed" and exits 0 on success.
#include <cstdint>

static long long tile_rows = 0;  // rows per reduction tile (0 = default), see passes.cuh
#define CBAM_CUDA_TEST_REDUCE_ROWS ::tile_rows

#include "cuda/pass_table.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace cf = cbam_fused;
using index_t = std::int64_t;

static const cf::PassTable& table() { return cf::cuda::cuda_pass_table(); }

static int failures = 0;

static void expect(bool ok, const char* what, const char* shape, index_t i, double got, double want) {
  if (!ok && failures++ < 20)
    std::printf("MISMATCH %s [%s] at %lld: got %.9g want %.9g\n", what, shape, (long long)i, got, want);
}

static void near(const char* what, const char* shape, const float* got, const std::vector<double>& want) {
  for (std::size_t i = 0; i < want.size(); ++i)
    expect(std::fabs(got[i] - want[i]) <= 1e-4 * (1 + std::fabs(want[i])), what, shape, index_t(i), got[i], want[i]);
}

// A device buffer of exactly `count` elements of T, starting `skew` elements into the allocation (so
// skew = 1 makes every 16-byte load of T misaligned); the allocation ends exactly at the last element.
template <typename T> struct Buf {
  void* base = nullptr;
  T* p = nullptr;
  Buf(std::size_t count, int skew = 0) {
    cudaMalloc(&base, (count + skew) * sizeof(T));
    p = static_cast<T*>(base) + skew;
  }
  ~Buf() { cudaFree(base); }
  Buf(const Buf&) = delete;
};

template <typename T> constexpr cf::DType dtype_of() { return sizeof(T) == 4 ? cf::DType::F32 : cf::DType::F16; }

template <typename T> static void check_shape(index_t n, index_t c, index_t p, bool cl, int skew, index_t rows) {
  tile_rows = rows;
  const cf::Geometry geo{n, c, p, dtype_of<T>(), cl ? cf::Layout::NHWC : cf::Layout::NCHW};
  char shape[96];
  std::snprintf(shape, sizeof shape, "%s n%lld c%lld p%lld %s skew%d rows%lld", sizeof(T) == 4 ? "f32" : "f16",
                (long long)n, (long long)c, (long long)p, cl ? "cl" : "nchw", skew, (long long)rows);
  const index_t total = n * c * p;
  auto at = [&](index_t ni, index_t ci, index_t pi) { return cl ? (ni * p + pi) * c + ci : (ni * c + ci) * p + pi; };
  std::mt19937 rng(unsigned(total + c));
  std::uniform_int_distribution<int> q(-8, 8);  // small integers: exact in fp16, plenty of ties
  Buf<T> x(total, skew), gy(total, skew), y(total, skew), gx(total, skew);
  std::vector<double> hx(total), hgy(total);
  for (index_t i = 0; i < total; ++i) {
    x.p[i] = T(float(q(rng)) * 0.25f);
    gy.p[i] = T(float(q(rng)) * 0.5f);
    hx[i] = double(float(x.p[i]));
    hgy[i] = double(float(gy.p[i]));
  }
  Buf<float> a(n * c), s(n * p), u(n * p), v(n * p), uh(n * c), vh(n * c);
  for (index_t i = 0; i < n * c; ++i) { a.p[i] = 0.5f + 0.25f * float(i % 3); uh.p[i] = 0.1f * float(i % 5); vh.p[i] = 1.5f; }
  for (index_t i = 0; i < n * p; ++i) { s.p[i] = 1.0f + 0.5f * float(i % 2); u.p[i] = 0.2f * float(i % 4); v.p[i] = 2.0f; }

  // host pools
  std::vector<double> mean_hw(n * c), mean_c(n * p);
  std::vector<float> max_hw(n * c, -INFINITY), max_c(n * p, -INFINITY);
  std::vector<int> arg_hw(n * c), cnt_hw(n * c), arg_c(n * p), cnt_c(n * p);
  for (index_t ni = 0; ni < n; ++ni) {
    for (index_t ci = 0; ci < c; ++ci) {
      double sum = 0;
      for (index_t pi = 0; pi < p; ++pi) {
        float val = float(hx[at(ni, ci, pi)]);
        sum += val;
        if (val > max_hw[ni * c + ci]) { max_hw[ni * c + ci] = val; arg_hw[ni * c + ci] = int(pi); }
      }
      mean_hw[ni * c + ci] = sum / double(p);
      for (index_t pi = 0; pi < p; ++pi) cnt_hw[ni * c + ci] += float(hx[at(ni, ci, pi)]) == max_hw[ni * c + ci];
    }
    for (index_t pi = 0; pi < p; ++pi) {
      double sum = 0;
      const index_t j = ni * p + pi;
      for (index_t ci = 0; ci < c; ++ci) {
        float val = float(hx[at(ni, ci, pi)]) * a.p[ni * c + ci];
        sum += val;
        if (val > max_c[j]) { max_c[j] = val; arg_c[j] = int(ci); }
      }
      mean_c[j] = sum / double(c);
      for (index_t ci = 0; ci < c; ++ci) cnt_c[j] += float(hx[at(ni, ci, pi)]) * a.p[ni * c + ci] == max_c[j];
    }
  }

  Buf<float> mean(n * (c > p ? c : p)), mx(n * (c > p ? c : p));
  Buf<int> arg(n * (c > p ? c : p)), cnt(n * (c > p ? c : p));
  auto pools_match = [&](const char* what, index_t count, const std::vector<double>& m, const std::vector<float>& hm,
                         const std::vector<int>& ha, const std::vector<int>& hc) {
    near(what, shape, mean.p, m);
    for (index_t i = 0; i < count; ++i) {
      expect(mx.p[i] == hm[i], what, shape, i, mx.p[i], hm[i]);
      expect(arg.p[i] == ha[i], what, shape, i, arg.p[i], ha[i]);
      expect(cnt.p[i] == hc[i], what, shape, i, cnt.p[i], hc[i]);
    }
  };
  auto launched = [&](int e, const char* what) {
    if (e != 0) expect(false, what, shape, 0, e, 0);
  };
  {
    Buf<unsigned char> ws(table().workspace_bytes(cf::Pass::PoolHw, geo));
    launched(table().pool_hw({geo, x.p, mean.p, mx.p, arg.p, cnt.p, ws.p}, nullptr), "pool_hw launch");
    pools_match("pool_hw", n * c, mean_hw, max_hw, arg_hw, cnt_hw);
  }
  {
    Buf<unsigned char> ws(table().workspace_bytes(cf::Pass::PoolC, geo));
    launched(table().pool_c({geo, x.p, a.p, mean.p, mx.p, arg.p, cnt.p, ws.p}, nullptr), "pool_c launch");
    pools_match("pool_c", n * p, mean_c, max_c, arg_c, cnt_c);
  }
  {  // inference: no argmax, no count (nothing may be written through them)
    Buf<unsigned char> ws(table().workspace_bytes(cf::Pass::PoolHw, geo));
    launched(table().pool_hw({geo, x.p, mean.p, mx.p, nullptr, nullptr, ws.p}, nullptr), "pool_hw launch");
    near("pool_hw mean (no argmax)", shape, mean.p, mean_hw);
  }
  // apply_gates
  launched(table().apply_gates({geo, x.p, a.p, s.p, y.p}, nullptr), "apply_gates launch");
  for (index_t ni = 0; ni < n; ++ni)
    for (index_t ci = 0; ci < c; ++ci)
      for (index_t pi = 0; pi < p; ++pi) {
        const index_t i = at(ni, ci, pi);
        const float want = float(T(float(hx[i]) * a.p[ni * c + ci] * s.p[ni * p + pi]));
        expect(float(y.p[i]) == want, "apply_gates", shape, i, float(y.p[i]), want);
      }
  // gate_grads
  {
    Buf<float> ga(n * c), gs(n * p);
    Buf<unsigned char> ws(table().workspace_bytes(cf::Pass::GateGrads, geo));
    launched(table().gate_grads({geo, gy.p, x.p, a.p, s.p, ga.p, gs.p, ws.p}, nullptr), "gate_grads launch");
    std::vector<double> hga(n * c), hgs(n * p);
    for (index_t ni = 0; ni < n; ++ni)
      for (index_t ci = 0; ci < c; ++ci)
        for (index_t pi = 0; pi < p; ++pi) {
          const double g = hgy[at(ni, ci, pi)] * hx[at(ni, ci, pi)];
          hga[ni * c + ci] += g * s.p[ni * p + pi];
          hgs[ni * p + pi] += g * a.p[ni * c + ci];
        }
    near("gate_grads ga", shape, ga.p, hga);
    near("gate_grads gs", shape, gs.p, hgs);
  }
  // pool_c_grad_a and input_grad, index- and split-style
  for (int split = 0; split < 2; ++split) {
    Buf<float> ga(n * c), maxc(n * p), maxh(n * c);
    Buf<int> argc(n * p), argh(n * c);
    std::memcpy(maxc.p, max_c.data(), n * p * sizeof(float));
    std::memcpy(argc.p, arg_c.data(), n * p * sizeof(int));
    std::memcpy(maxh.p, max_hw.data(), n * c * sizeof(float));
    std::memcpy(argh.p, arg_hw.data(), n * c * sizeof(int));
    for (index_t i = 0; i < n * c; ++i) ga.p[i] = 0.25f * float(i % 3);  // the pass adds to ga
    Buf<unsigned char> ws(table().workspace_bytes(cf::Pass::PoolCGradA, geo));
    // only the tie operand of the style is passed: the other must not be read
    const cf::TieOperand tie_c{split ? nullptr : argc.p, split ? maxc.p : nullptr};
    const cf::TieOperand tie_hw{split ? nullptr : argh.p, split ? maxh.p : nullptr};
    launched(table().pool_c_grad_a({geo, x.p, a.p, u.p, v.p, tie_c, ga.p, ws.p}, nullptr), "pool_c_grad_a launch");
    launched(table().input_grad({geo, gy.p, split ? x.p : nullptr, a.p, s.p, u.p, v.p, tie_c, uh.p, vh.p, tie_hw,
                                 bool(split), gx.p},
                                nullptr),
             "input_grad launch");
    std::vector<double> hga(n * c);
    for (index_t i = 0; i < n * c; ++i) hga[i] = 0.25 * double(i % 3);
    for (index_t ni = 0; ni < n; ++ni)
      for (index_t ci = 0; ci < c; ++ci)
        for (index_t pi = 0; pi < p; ++pi) {
          const index_t i = at(ni, ci, pi), j = ni * p + pi, k = ni * c + ci;
          const bool tie_c = split ? float(hx[i]) * a.p[k] == max_c[j] : arg_c[j] == ci;
          const bool tie_hw = split ? float(hx[i]) == max_hw[k] : arg_hw[k] == pi;
          hga[k] += hx[i] * (u.p[j] + (tie_c ? v.p[j] : 0.0));
          const double g = (hgy[i] * s.p[j] + u.p[j] + (tie_c ? v.p[j] : 0.0)) * a.p[k] + uh.p[k] + (tie_hw ? vh.p[k] : 0.0);
          const float got = float(gx.p[i]);
          expect(std::fabs(got - g) <= (sizeof(T) == 4 ? 1e-5 : 2e-3) * (1 + std::fabs(g)),
                 split ? "input_grad split" : "input_grad index", shape, i, got, g);
        }
    near(split ? "pool_c_grad_a split" : "pool_c_grad_a index", shape, ga.p, hga);
  }
}

// The spatial convolution and its gradients, float and double, on values that are small multiples of
// 1/4: every product and sum here is exact, so results must equal the host loops bit for bit.
template <typename A> static void check_conv(index_t n, index_t h, index_t w, int k, bool with_bias, int skew) {
  char shape[96];
  std::snprintf(shape, sizeof shape, "conv %s n%lld h%lld w%lld k%d bias%d skew%d", sizeof(A) == 4 ? "f32" : "f64",
                (long long)n, (long long)h, (long long)w, k, int(with_bias), skew);
  const index_t total = n * h * w, kk = index_t(k) * k, r = k / 2;
  const bool f64 = sizeof(A) == 8;
  std::mt19937 rng(unsigned(total * 7 + k));
  std::uniform_int_distribution<int> q(-8, 8);
  Buf<A> in0(total, skew), in1(total, skew), g(total, skew), out(total, skew), gi0(total, skew), gi1(total, skew);
  Buf<A> wt(2 * kk), b(1), gw(2 * kk), gb(1);
  for (index_t i = 0; i < total; ++i) {
    in0.p[i] = A(q(rng)) / 4;
    in1.p[i] = A(q(rng)) / 4;
    g.p[i] = A(q(rng)) / 4;
  }
  for (index_t i = 0; i < 2 * kk; ++i) wt.p[i] = A(q(rng)) / 4;
  b.p[0] = A(0.75);
  const A* ins[2] = {in0.p, in1.p};
  auto inside = [&](index_t y, index_t x) { return y >= 0 && y < h && x >= 0 && x < w; };
  std::vector<double> want_out(total, with_bias ? 0.75 : 0.0), want_g0(total), want_g1(total), want_gw(2 * kk);
  double want_gb = 0;
  for (index_t ni = 0; ni < n; ++ni)
    for (index_t y = 0; y < h; ++y)
      for (index_t x = 0; x < w; ++x) {
        const index_t o = (ni * h + y) * w + x;
        want_gb += g.p[o];
        for (int ci = 0; ci < 2; ++ci)
          for (index_t i = 0; i < k; ++i)
            for (index_t j = 0; j < k; ++j) {
              const index_t yy = y + i - r, xx = x + j - r;
              if (!inside(yy, xx)) continue;
              const index_t src = (ni * h + yy) * w + xx, t = ci * kk + i * k + j;
              want_out[o] += double(wt.p[t]) * double(ins[ci][src]);
              (ci == 0 ? want_g0 : want_g1)[src] += double(wt.p[t]) * double(g.p[o]);
              want_gw[t] += double(ins[ci][src]) * double(g.p[o]);
            }
      }
  auto same = [&](const char* what, const A* got, const std::vector<double>& want) {
    for (std::size_t i = 0; i < want.size(); ++i)
      expect(double(got[i]) == want[i], what, shape, index_t(i), got[i], want[i]);
  };
  if (table().spatial_conv({n, h, w, k, f64, in0.p, in1.p, wt.p, with_bias ? b.p : nullptr, out.p}, nullptr) != 0)
    expect(false, "spatial_conv launch", shape, 0, 0, 0);
  same("spatial_conv", out.p, want_out);
  Buf<unsigned char> ws(table().conv_grad_workspace_bytes(n, h, w, k, f64));
  if (table().spatial_conv_grad({n, h, w, k, f64, in0.p, in1.p, wt.p, g.p, gi0.p, gi1.p, gw.p,
                                 with_bias ? gb.p : nullptr, ws.p},
                                nullptr) != 0)
    expect(false, "spatial_conv_grad launch", shape, 0, 0, 0);
  same("spatial_conv grad_in0", gi0.p, want_g0);
  same("spatial_conv grad_in1", gi1.p, want_g1);
  same("spatial_conv grad_weight", gw.p, want_gw);
  if (with_bias) expect(double(gb.p[0]) == want_gb, "spatial_conv grad_bias", shape, 0, gb.p[0], want_gb);
  // a subset of the outputs: the others are neither read nor written
  gb.p[0] = A(0);
  if (table().spatial_conv_grad({n, h, w, k, f64, nullptr, nullptr, wt.p, g.p, nullptr, gi1.p, nullptr, gb.p, ws.p},
                                nullptr) != 0)
    expect(false, "spatial_conv_grad (subset) launch", shape, 0, 0, 0);
  same("spatial_conv grad_in1 (subset)", gi1.p, want_g1);
  expect(double(gb.p[0]) == want_gb, "spatial_conv grad_bias (subset)", shape, 0, gb.p[0], want_gb);
}

// The channel MLP and its gradients, float and double, every pool choice and gate, against host loops
// in double: exact-size buffers for every operand, so a read or write past an end is reported.
template <typename A> static void check_mlp(index_t n, index_t c, index_t r, int pools, int gate, bool bias,
                                            bool split, int skew) {
  char shape[112];
  std::snprintf(shape, sizeof shape, "mlp %s n%lld c%lld r%lld pools%d gate%d bias%d split%d skew%d",
                sizeof(A) == 4 ? "f32" : "f64", (long long)n, (long long)c, (long long)r, pools, gate, int(bias),
                int(split), skew);
  const index_t nc = n * c, pixels = 5;
  const int k = pools == 0 ? 2 : 1;
  std::mt19937 rng(unsigned(nc * 31 + r * 7 + pools * 3 + gate));
  std::uniform_int_distribution<int> q(-8, 8);
  Buf<A> pooled(2 * nc, skew), w1(r * c, skew), b1(r, skew), w2(c * r, skew), b2(c, skew), m(nc, skew), a(nc, skew),
      ga(nc, skew), u(nc, skew), v(nc, skew), gw1(r * c, skew), gb1(r, skew), gw2(c * r, skew), gb2(c, skew);
  Buf<int> count(nc, skew);
  for (index_t i = 0; i < 2 * nc; ++i) pooled.p[i] = A(q(rng)) / 4;
  for (index_t i = 0; i < r * c; ++i) { w1.p[i] = A(q(rng)) / 8; w2.p[i] = A(q(rng)) / 8; }
  for (index_t i = 0; i < r; ++i) b1.p[i] = A(q(rng)) / 4;
  for (index_t i = 0; i < c; ++i) b2.p[i] = A(q(rng)) / 4;
  for (index_t i = 0; i < nc; ++i) { ga.p[i] = A(q(rng)) / 4; count.p[i] = 1 + int(i % 3); }
  // host: the MLP inputs, hidden units, logits, gates
  auto in = [&](int p, index_t ni, index_t ci) {
    const index_t i = ni * c + ci;
    switch (pools) {
      case 0: return double(pooled.p[p * nc + i]);
      case 1: return double(pooled.p[i]);
      case 2: return double(pooled.p[nc + i]);
      default: return (double(pooled.p[i]) + double(pooled.p[nc + i])) / 2;
    }
  };
  std::vector<double> h(k * n * r), hm(nc), ha(nc);
  for (int p = 0; p < k; ++p)
    for (index_t ni = 0; ni < n; ++ni)
      for (index_t j = 0; j < r; ++j) {
        double s = bias ? double(b1.p[j]) : 0.0;
        for (index_t ci = 0; ci < c; ++ci) s += double(w1.p[j * c + ci]) * in(p, ni, ci);
        h[(p * n + ni) * r + j] = s;
      }
  auto g_of = [&](double z) {
    if (gate == 0) return 1 / (1 + std::exp(-z));
    if (gate == 1) return std::min(std::max(z + 3, 0.0), 6.0) / 6;
    return std::min(std::max(z * 0.2 + 0.5, 0.0), 1.0);
  };
  for (index_t ni = 0; ni < n; ++ni)
    for (index_t ci = 0; ci < c; ++ci) {
      double s = bias ? k * double(b2.p[ci]) : 0.0;
      for (index_t j = 0; j < r; ++j)
        for (int p = 0; p < k; ++p) s += double(w2.p[ci * r + j]) * std::max(h[(p * n + ni) * r + j], 0.0);
      hm[ni * c + ci] = s;
      ha[ni * c + ci] = g_of(s);
    }
  const cf::ChannelMlpArgs fwd{n, c, r, sizeof(A) == 8, static_cast<cf::ChannelPools>(pools),
                               static_cast<cf::GateKind>(gate), pooled.p, w1.p, bias ? b1.p : nullptr, w2.p,
                               bias ? b2.p : nullptr, m.p, a.p};
  if (table().channel_mlp(fwd, nullptr) != 0) expect(false, "channel_mlp launch", shape, 0, 0, 0);
  const double tol = sizeof(A) == 4 ? 1e-4 : 1e-10;
  auto near_a = [&](const char* what, const A* got, const std::vector<double>& want) {
    for (std::size_t i = 0; i < want.size(); ++i)
      expect(std::fabs(double(got[i]) - want[i]) <= tol * (1 + std::fabs(want[i])), what, shape, index_t(i),
             double(got[i]), want[i]);
  };
  near_a("channel_mlp m", m.p, hm);
  near_a("channel_mlp a", a.p, ha);
  // host backward from the kernel's m and a (the gate's derivative is taken at the kernel's logits)
  std::vector<double> gm(nc), gr(n * r), gh(k * n * r), want_gw1(r * c), want_gb1(r), want_gw2(c * r), want_gb2(c),
      gv(k * nc), want_u(nc), want_v(nc);
  for (index_t i = 0; i < nc; ++i) {
    const double z = double(m.p[i]), val = double(a.p[i]), g = double(ga.p[i]);
    gm[i] = gate == 0 ? g * (1 - val) * val
            : gate == 1 ? (z > -3 && z < 3 ? g / 6 : 0.0)
                        : (z > -2.5 && z < 2.5 ? g * 0.2 : 0.0);
  }
  for (index_t ni = 0; ni < n; ++ni)
    for (index_t j = 0; j < r; ++j) {
      for (index_t ci = 0; ci < c; ++ci) {
        double hs = 0;
        for (int p = 0; p < k; ++p) hs += std::max(h[(p * n + ni) * r + j], 0.0);
        want_gw2[ci * r + j] += gm[ni * c + ci] * hs;
        gr[ni * r + j] += gm[ni * c + ci] * double(w2.p[ci * r + j]);
      }
      for (int p = 0; p < k; ++p) gh[(p * n + ni) * r + j] = h[(p * n + ni) * r + j] > 0 ? gr[ni * r + j] : 0.0;
    }
  for (index_t ci = 0; ci < c; ++ci)
    for (index_t ni = 0; ni < n; ++ni) want_gb2[ci] += k * gm[ni * c + ci];
  for (int p = 0; p < k; ++p)
    for (index_t ni = 0; ni < n; ++ni)
      for (index_t j = 0; j < r; ++j) {
        const double g = gh[(p * n + ni) * r + j];
        want_gb1[j] += g;
        for (index_t ci = 0; ci < c; ++ci) {
          want_gw1[j * c + ci] += g * in(p, ni, ci);
          gv[p * nc + ni * c + ci] += g * double(w1.p[j * c + ci]);
        }
      }
  for (index_t i = 0; i < nc; ++i) {
    const double g_avg = pools == 0 || pools == 1 ? gv[i] : pools == 3 ? gv[i] / 2 : 0.0;
    const double g_max = pools == 0 ? gv[nc + i] : pools == 2 ? gv[i] : pools == 3 ? gv[i] / 2 : 0.0;
    want_u[i] = g_avg / double(pixels);
    want_v[i] = split ? g_max / count.p[i] : g_max;
  }
  const cf::ChannelMlpGradArgs bwd{fwd,  ga.p,  split ? count.p : nullptr, pixels, u.p, v.p, gw1.p,
                                   bias ? gb1.p : nullptr, gw2.p, bias ? gb2.p : nullptr};
  if (table().channel_mlp_grad(bwd, nullptr) != 0) expect(false, "channel_mlp_grad launch", shape, 0, 0, 0);
  near_a("channel_mlp_grad u", u.p, want_u);
  near_a("channel_mlp_grad v", v.p, want_v);
  near_a("channel_mlp_grad gw1", gw1.p, want_gw1);
  near_a("channel_mlp_grad gw2", gw2.p, want_gw2);
  if (bias) {
    near_a("channel_mlp_grad gb1", gb1.p, want_gb1);
    near_a("channel_mlp_grad gb2", gb2.p, want_gb2);
  }
}

int main() {
  // H or W below K, a single pixel, two weight-gradient chunks (2800 pixels)
  struct { index_t n, h, w; int k; } convs[] = {{2, 5, 7, 3}, {1, 3, 2, 7}, {1, 1, 1, 1}, {3, 13, 11, 7},
                                                {1, 40, 70, 5}};
  for (auto cv : convs)
    for (int skew = 0; skew < 2; ++skew) {
      check_conv<float>(cv.n, cv.h, cv.w, cv.k, skew == 0, skew);
      check_conv<double>(cv.n, cv.h, cv.w, cv.k, skew == 1, skew);
    }
  struct { index_t n, c, p; } shapes[] = {{2, 3, 30}, {1, 17, 143}, {3, 24, 1}, {2, 37, 35}, {1, 300, 9}, {1, 5, 323}};
  for (auto sh : shapes)
    for (int cl = 0; cl < 2; ++cl)
      for (int skew = 0; skew < 2; ++skew) {
        check_shape<float>(sh.n, sh.c, sh.p, cl, skew, skew ? 8 : 0);
        check_shape<c10::Half>(sh.n, sh.c, sh.p, cl, skew, skew ? 16 : 0);
      }
  // C past the block's threads, N and hidden past the kernels' chunk of 64, N = 0
  struct { index_t n, c, r; } mlps[] = {{2, 16, 4}, {3, 300, 2}, {70, 5, 3}, {2, 7, 130}, {1, 1, 1}, {0, 6, 2}};
  for (auto ml : mlps)
    for (int pools = 0; pools < 4; ++pools)
      for (int gate = 0; gate < 3; ++gate) {
        const int variant = pools + gate;  // bias, split and skew vary along with the rest
        check_mlp<float>(ml.n, ml.c, ml.r, pools, gate, variant % 2 == 0, variant % 3 == 0, variant % 2);
        check_mlp<double>(ml.n, ml.c, ml.r, pools, gate, variant % 2 == 1, variant % 3 == 1, 1 - variant % 2);
      }
  if (failures) {
    std::printf("asan_driver: %d mismatches\n", failures);
    return 1;
  }
  std::printf("asan_driver: all checks passed\n");
  return 0;
}
