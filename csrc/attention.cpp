// The fused op pair's orchestration (docs/design.md, "The orchestration"): the full-size passes of a
// device's PassTable, with the small steps between them (channel map, gates, spatial conv,
// BatchNorm) on tensors of size O(N * (C + P)). cbam_fused/ops.py's Python orchestration over
// cbam_fused/passes.py is the executable spec this follows; tests check that the two agree.
#include "attention.h"
#include "attention_checks.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <array>
#include <string>

namespace cbam_fused {
namespace {

// ------------------------------------------------------------------------------ tensors
at::ScalarType acc_type(const Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// The weights in the accumulation dtype: a no-op (no ATen call) when they already are.
Tensor acc(const OptTensor& t, at::ScalarType type) {
  if (!t.has_value() || !t->defined()) return Tensor();
  return t->scalar_type() == type ? *t : t->to(type);
}

DType dtype_of(const Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return DType::F32;
    case at::kDouble: return DType::F64;
    case at::kBFloat16: return DType::BF16;
    case at::kHalf: return DType::F16;
    default:
      TORCH_CHECK_TYPE(false, "cbam_fused: x must be float32, float64, bfloat16 or float16, got ", x.scalar_type());
  }
}

// NCHW- or channels_last-contiguous as it is; anything else becomes NCHW-contiguous.
Tensor dense(const Tensor& x) {
  if (x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast)) return x;
  return x.contiguous();
}

Geometry geometry_of(const Tensor& x) {
  const Layout layout = x.is_contiguous() ? Layout::NCHW : Layout::NHWC;
  return Geometry{x.size(0), x.size(1), x.size(2) * x.size(3), dtype_of(x), layout};
}

at::MemoryFormat memory_format(const Geometry& g) {
  return g.layout == Layout::NHWC ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

const void* ptr(const Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }
void* mut(const Tensor& t) { return t.defined() ? t.mutable_data_ptr() : nullptr; }
int32_t* ints(const Tensor& t) { return t.defined() ? t.mutable_data_ptr<int32_t>() : nullptr; }

// Runs one kernel of the table. The profiler sees it as "cbam_fused::kernel::<name>": the launch
// budget (docs/design.md, "The launch budget") counts these next to the ATen ops.
template <typename Args>
void run(const PassTable& table, int (*kernel)(const Args&, void*), const Args& args, void* stream,
         const char* name) {
  RECORD_FUNCTION(name, std::vector<c10::IValue>());
  const int code = kernel(args, stream);
  TORCH_CHECK(code == 0, "cbam_fused: the ", name, " kernel failed: ", table.error_string(code));
}

// Undefined (a null pointer for the kernel) when the pass needs none: no allocation call.
Tensor workspace(const PassTable& table, Pass pass, const Geometry& g, const Tensor& like) {
  const std::size_t bytes = table.workspace_bytes(pass, g);
  return bytes == 0 ? Tensor() : at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

// Plane i of a contiguous [k, ...] tensor, as a pointer (no select op).
void* plane(const Tensor& t, int64_t i) {
  return static_cast<char*>(t.mutable_data_ptr()) + i * t.stride(0) * t.element_size();
}

Tensor empty_small(const Tensor& x, at::IntArrayRef size, at::ScalarType type) {
  return at::empty(size, x.options().dtype(type));
}

// ------------------------------------------------------------------------------ gates
Tensor gate_forward(GateKind gate, const Tensor& z) {
  switch (gate) {
    case GateKind::Sigmoid: return at::sigmoid(z);
    case GateKind::HardSigmoid: return at::hardsigmoid(z);  // relu6(z + 3) / 6
    case GateKind::KerasHardSigmoid: return at::clamp(z * 0.2 + 0.5, 0.0, 1.0);
  }
  return z;
}

// g * G'(z), the derivative taken from the logits z (open intervals for the hard gates); `value`
// is G(z) when the caller has it.
Tensor gate_backward(GateKind gate, const Tensor& z, const Tensor& value, const Tensor& g) {
  switch (gate) {
    case GateKind::Sigmoid: return at::sigmoid_backward(g, value);
    case GateKind::HardSigmoid: return at::where((z > -3.0).logical_and_(z < 3.0), g / 6.0, at::zeros_like(g));
    case GateKind::KerasHardSigmoid: return at::where((z > -2.5).logical_and_(z < 2.5), g * 0.2, at::zeros_like(g));
  }
  return g;
}

// ------------------------------------------------------------------------------ channel map
struct ChannelWeights {
  ChannelKind kind;
  Tensor w1, b1, w2, b2;
};

int num_pools(ChannelPools p) { return p == ChannelPools::AvgMax ? 2 : 1; }

// The pooled vectors the map sees, as one [k * N, C] batch: both pools, one of them, or their mean.
Tensor map_input(ChannelPools pools, const Tensor& pooled) {
  const int64_t n = pooled.size(1), c = pooled.size(2);
  switch (pools) {
    case ChannelPools::AvgMax: return pooled.view({2 * n, c});
    case ChannelPools::Avg: return pooled[0];
    case ChannelPools::Max: return pooled[1];
    case ChannelPools::Light: return pooled.mean(0);  // LightCBAM: one pass on (avg + max) / 2
  }
  return pooled;
}

// Sum of the k per-pool blocks of a [k * N, L] tensor.
Tensor sum_pools(const Tensor& t, int k) { return k == 1 ? t : t.view({k, -1, t.size(1)}).sum(0); }

int64_t conv1d_padding(const Tensor& w) { return (w.size(-1) - 1) / 2; }

Tensor linear(const Tensor& v, const Tensor& w, const Tensor& b) {
  return b.defined() ? at::addmm(b, v, w.t()) : at::mm(v, w.t());
}

// m = sum over the used pools of map(pool).
Tensor channel_logits(const ChannelWeights& wt, ChannelPools pools, const Tensor& pooled) {
  const Tensor v = map_input(pools, pooled);
  const int k = num_pools(pools);
  switch (wt.kind) {
    case ChannelKind::Mlp: {
      // W2 relu(h_avg) + W2 relu(h_max) = W2 (relu(h_avg) + relu(h_max)): one product for all pools.
      Tensor hs = sum_pools(linear(v, wt.w1, wt.b1).relu_(), k);
      return wt.b2.defined() ? at::addmm(wt.b2, hs, wt.w2.t(), /*beta=*/k) : at::mm(hs, wt.w2.t());
    }
    case ChannelKind::Linear: return sum_pools(linear(v, wt.w1, wt.b1), k);
    case ChannelKind::Conv1d: {
      Tensor out = at::conv1d(v.unsqueeze(1), wt.w1, wt.b1, 1, conv1d_padding(wt.w1)).squeeze(1);
      return sum_pools(out, k);
    }
  }
  return v;
}

struct ChannelGrads {
  Tensor g_avg, g_max;  // undefined where the pool is not used
  Tensor w1, b1, w2, b2;
};

ChannelGrads channel_logits_backward(const ChannelWeights& wt, ChannelPools pools, const Tensor& pooled,
                                     const Tensor& gm) {
  const Tensor v = map_input(pools, pooled);
  const int k = num_pools(pools);
  const int64_t n = gm.size(0);
  ChannelGrads out;
  Tensor gv;  // [k * N, C]
  switch (wt.kind) {
    case ChannelKind::Mlp: {
      const Tensor h = linear(v, wt.w1, wt.b1);  // [k * N, Cr]
      out.w2 = at::mm(gm.t(), sum_pools(at::relu(h), k));
      if (wt.b2.defined()) out.b2 = gm.sum(0).mul_(k);  // b2 enters m once per pool
      const Tensor gr = at::mm(gm, wt.w2);  // [N, Cr], the same for every pool
      const Tensor gh = at::threshold_backward(gr.unsqueeze(0), h.view({k, n, -1}), 0).view({k * n, -1});
      out.w1 = at::mm(gh.t(), v);
      if (wt.b1.defined()) out.b1 = gh.sum(0);
      gv = at::mm(gh, wt.w1);
      break;
    }
    case ChannelKind::Linear: {
      const Tensor g = k == 1 ? gm : gm.repeat({k, 1});
      out.w1 = at::mm(g.t(), v);
      if (wt.b1.defined()) out.b1 = g.sum(0);
      gv = at::mm(g, wt.w1);
      break;
    }
    case ChannelKind::Conv1d: {
      const Tensor g = (k == 1 ? gm : gm.repeat({k, 1})).unsqueeze(1);
      const int64_t pad = conv1d_padding(wt.w1);
      auto grads = at::convolution_backward(g, v.unsqueeze(1), wt.w1,
                                            wt.b1.defined() ? at::OptionalIntArrayRef({1}) : std::nullopt, {1},
                                            {pad}, {1}, false, {0}, 1, {true, true, wt.b1.defined()});
      gv = std::get<0>(grads).squeeze(1);
      out.w1 = std::get<1>(grads);
      if (wt.b1.defined()) out.b1 = std::get<2>(grads);
      break;
    }
  }
  switch (pools) {
    case ChannelPools::AvgMax: out.g_avg = gv.narrow(0, 0, n); out.g_max = gv.narrow(0, n, n); break;
    case ChannelPools::Avg: out.g_avg = gv; break;
    case ChannelPools::Max: out.g_max = gv; break;
    case ChannelPools::Light: out.g_avg = out.g_max = gv * 0.5; break;
  }
  return out;
}

// Multiply-adds of one MLP layer up to which the table's MLP kernel runs it. The kernel saves a dozen
// small ATen calls (it pays where host time dominates); past this size the BLAS behind ATen's
// matrix products is faster than its plain loops.
constexpr int64_t kMlpKernelMacs = int64_t{1} << 18;

// The shared MLP as one kernel of the table, where the device has it and the MLP is small.
bool has_mlp_kernel(const PassTable& table, const Config& cfg, const Tensor& w1, int64_t n) {
  return cfg.kind == ChannelKind::Mlp && table.channel_mlp != nullptr &&
         table.channel_mlp_grad != nullptr && 2 * n * w1.size(0) * w1.size(1) <= kMlpKernelMacs;
}

ChannelMlpArgs mlp_args(const ChannelWeights& wt, const Config& cfg, const Tensor& pooled, const Tensor& m,
                        const Tensor& a) {
  TORCH_CHECK(wt.w1.is_contiguous() && wt.w2.is_contiguous() && (!wt.b1.defined() || wt.b1.is_contiguous()) &&
                  (!wt.b2.defined() || wt.b2.is_contiguous()),
              "cbam_fused: the MLP weights must be contiguous");
  return ChannelMlpArgs{pooled.size(1), pooled.size(2), wt.w1.size(0),  pooled.scalar_type() == at::kDouble,
                        cfg.pools,      cfg.cgate,      ptr(pooled),     ptr(wt.w1),
                        ptr(wt.b1),     ptr(wt.w2),     ptr(wt.b2),      const_cast<void*>(ptr(m)),
                        const_cast<void*>(ptr(a))};
}

// ------------------------------------------------------------------------------ spatial map
struct SpatialWeights {
  Tensor conv_w, conv_b;
  Order order;
  BnMode bn;
  Tensor bn_w, bn_b, bn_mean, bn_var;
  double bn_eps;
};

// The weights of each map in the accumulation dtype (no ATen call where they already are).
ChannelWeights channel_weights(const Config& cfg, const OptTensor& w1, const OptTensor& b1, const OptTensor& w2,
                               const OptTensor& b2, at::ScalarType type) {
  // 1x1 conv weights [rows, cols, 1, 1] are taken as the matrices they are (no copy)
  auto matrix = [&](const OptTensor& w) {
    return w.has_value() && cfg.kind != ChannelKind::Conv1d ? OptTensor(as_matrix(*w)) : w;
  };
  return ChannelWeights{cfg.kind, acc(matrix(w1), type), acc(b1, type), acc(matrix(w2), type), acc(b2, type)};
}

SpatialWeights spatial_weights(const Config& cfg, const OptTensor& conv_w, const OptTensor& conv_b,
                               const OptTensor& bn_w, const OptTensor& bn_b, const OptTensor& bn_mean,
                               const OptTensor& bn_var, at::ScalarType type) {
  return SpatialWeights{acc(conv_w, type), acc(conv_b, type), cfg.order,          cfg.bn,
                        acc(bn_w, type),   acc(bn_b, type),   acc(bn_mean, type), acc(bn_var, type),
                        cfg.bn_eps};
}

// The conv's input planes in its channel order, from the pools over channels [2, N, P].
std::pair<Tensor, Tensor> conv_inputs(const SpatialWeights& wt, const Tensor& pooled) {
  return wt.order == Order::MeanMax ? std::make_pair(pooled[0], pooled[1]) : std::make_pair(pooled[1], pooled[0]);
}

SpatialConvArgs conv_args(const SpatialWeights& wt, const Tensor& in0, const Tensor& in1, int64_t h, int64_t w) {
  return SpatialConvArgs{in0.size(0), h,   w, wt.conv_w.size(-1), in0.scalar_type() == at::kDouble, ptr(in0),
                         ptr(in1),    ptr(wt.conv_w), ptr(wt.conv_b), nullptr};
}

Tensor conv(const PassTable& table, void* stream, const SpatialWeights& wt, const Tensor& pooled, int64_t h,
            int64_t w) {
  auto [in0, in1] = conv_inputs(wt, pooled);
  Tensor out = at::empty_like(in0);
  SpatialConvArgs args = conv_args(wt, in0, in1, h, w);
  args.out = mut(out);
  run(table, table.spatial_conv, args, stream, "cbam_fused::kernel::spatial_conv");
  return out;
}

// (mean, var) that normalise the conv output: batch statistics in training, running ones in eval.
std::pair<Tensor, Tensor> bn_moments(const SpatialWeights& wt, const Tensor& stats) {
  if (wt.bn == BnMode::Train) return {stats[0], stats[1]};
  return {wt.bn_mean.reshape({}), wt.bn_var.reshape({})};
}

Tensor scalar_or(const Tensor& t, double dflt, const Tensor& like) {
  return t.defined() ? t.reshape({}) : at::scalar_tensor(dflt, like.options());
}

// (l [N, P], batch statistics [2] in BatchNorm training mode, else empty).
std::pair<Tensor, Tensor> spatial_logits(const PassTable& table, void* stream, const SpatialWeights& wt,
                                         const Tensor& pooled, int64_t h, int64_t w) {
  Tensor c = conv(table, stream, wt, pooled, h, w);
  Tensor stats = at::empty({0}, c.options());
  if (wt.bn != BnMode::None) {
    if (wt.bn == BnMode::Train) stats = at::stack({c.mean(), c.var(/*dim=*/std::nullopt, /*correction=*/0)});
    auto [mean, var] = bn_moments(wt, stats);
    c = (c - mean) * at::rsqrt(var + wt.bn_eps) * scalar_or(wt.bn_w, 1.0, c) + scalar_or(wt.bn_b, 0.0, c);
  }
  return {c, stats};
}

struct SpatialGrads {
  Tensor g_mean, g_max;
  Tensor conv_w, conv_b, bn_w, bn_b;
};

SpatialGrads spatial_logits_backward(const PassTable& table, void* stream, const SpatialWeights& wt,
                                     const Tensor& pooled, const Tensor& stats, int64_t h, int64_t w, Tensor gc) {
  SpatialGrads out;
  if (wt.bn != BnMode::None) {
    const Tensor c = conv(table, stream, wt, pooled, h, w);
    auto [mean, var] = bn_moments(wt, stats);
    const Tensor invstd = at::rsqrt(var + wt.bn_eps);
    const Tensor xhat = (c - mean) * invstd;
    const Tensor gamma = scalar_or(wt.bn_w, 1.0, c);
    if (wt.bn_w.defined()) out.bn_w = (gc * xhat).sum().reshape({1});
    if (wt.bn_b.defined()) out.bn_b = gc.sum().reshape({1});
    if (wt.bn == BnMode::Train)  // batch statistics depend on c as well
      gc = gamma * invstd * (gc - gc.mean() - xhat * (gc * xhat).mean());
    else
      gc = gc * gamma * invstd;
  }
  auto [in0, in1] = conv_inputs(wt, pooled);
  Tensor g0 = at::empty_like(in0), g1 = at::empty_like(in0), gw = at::empty_like(wt.conv_w);
  Tensor gb = wt.conv_b.defined() ? at::empty_like(wt.conv_b) : Tensor();
  const Tensor gcc = gc.contiguous();
  const SpatialConvArgs base = conv_args(wt, in0, in1, h, w);
  Tensor ws = at::empty({static_cast<int64_t>(table.conv_grad_workspace_bytes(base.n, h, w, base.k, base.f64))},
                        in0.options().dtype(at::kByte));
  SpatialConvGradArgs args{base.n,   h,         w,         base.k,   base.f64, base.in0, base.in1,
                           base.weight, ptr(gcc), mut(g0), mut(g1), mut(gw), mut(gb),   mut(ws)};
  run(table, table.spatial_conv_grad, args, stream, "cbam_fused::kernel::spatial_conv_grad");
  out.conv_w = gw;
  out.conv_b = gb;
  if (wt.order == Order::MeanMax) {
    out.g_mean = g0;
    out.g_max = g1;
  } else {
    out.g_mean = g1;
    out.g_max = g0;
  }
  return out;
}

// ------------------------------------------------------------------------------ passes
// Pools over pixels (per_channel) or over channels of acc(x) * a: ([2, N, L] mean; max, and the tie
// operand: the argmax for index-style ties, the count for split-style ones, undefined with
// ties "none"). The kernel gets a null pointer for what is not kept, and tracks neither in inference.
std::pair<Tensor, Tensor> pool(const PassTable& table, void* stream, const Tensor& x, const Geometry& g,
                               const Tensor& a, bool per_channel, const Config& cfg) {
  const int64_t len = per_channel ? g.c : g.p;
  Tensor pooled = empty_small(x, {2, g.n, len}, acc_type(x));
  Tensor argmax, count;
  if (cfg.track) (cfg.split ? count : argmax) = empty_small(x, {g.n, len}, at::kInt);
  if (per_channel) {
    Tensor ws = workspace(table, Pass::PoolHw, g, x);
    run(table, table.pool_hw,
        PoolHwArgs{g, ptr(x), plane(pooled, 0), plane(pooled, 1), ints(argmax), ints(count), mut(ws)}, stream,
        "cbam_fused::kernel::pool_hw");
  } else {
    Tensor ws = workspace(table, Pass::PoolC, g, x);
    run(table, table.pool_c,
        PoolCArgs{g, ptr(x), ptr(a), plane(pooled, 0), plane(pooled, 1), ints(argmax), ints(count), mut(ws)}, stream,
        "cbam_fused::kernel::pool_c");
  }
  return {pooled, cfg.split ? count : argmax};
}

// gy constant over pixels (stride 0, or size 1, over H and W: the gradient of y.sum() or of a mean
// over pixels). A table with reads_gy_c reads such a gy as its [N, C] values, in place of a
// full-size contiguous copy.
bool constant_over_pixels(const Tensor& gy) {
  return (gy.size(2) == 1 || gy.stride(2) == 0) && (gy.size(3) == 1 || gy.stride(3) == 0);
}

// The max is passed with index-style ties too: the CPU kernels read it unconditionally.
TieOperand tie_operand(bool split, const Tensor& tie, const Tensor& max) {
  return TieOperand{split ? nullptr : tie.const_data_ptr<int32_t>(), ptr(max)};
}

}  // namespace

#define CBAM_FUSED_WEIGHT_NAME(name) , name
#define CBAM_FUSED_CONFIG_NAME(schema_type, cpp_type, name) , name

ForwardResult attention_forward(const PassTable& table, void* stream,
                                const Tensor& x_in CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_PARAM)
                                    CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_PARAM)) {
  const Config cfg = check_inputs(x_in CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_NAME) CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_NAME));
  // the small steps run in the accumulation dtype whatever autocast says (the autocast policy in README.md)
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const Tensor x = dense(x_in);
  const Geometry g = geometry_of(x);
  const auto type = acc_type(x);
  const bool channel = w1.has_value(), spatial = conv_w.has_value();
  const int64_t h = x.size(2), w = x.size(3);
  auto none = [&](at::ScalarType t) { return at::empty({0}, x.options().dtype(t)); };
  Tensor a, s, m, pooled_hw, tie_hw, l, pooled_c, tie_c, stats;
  if (channel) {
    const ChannelWeights wt = channel_weights(cfg, w1, b1, w2, b2, type);
    std::tie(pooled_hw, tie_hw) = pool(table, stream, x, g, Tensor(), true, cfg);
    if (has_mlp_kernel(table, cfg, wt.w1, g.n)) {
      m = empty_small(x, {g.n, g.c}, type);
      a = empty_small(x, {g.n, g.c}, type);
      run(table, table.channel_mlp, mlp_args(wt, cfg, pooled_hw, m, a), stream, "cbam_fused::kernel::channel_mlp");
    } else {
      m = channel_logits(wt, cfg.pools, pooled_hw);
      a = gate_forward(cfg.cgate, m);
    }
  }
  if (spatial) {
    const SpatialWeights wt = spatial_weights(cfg, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var, type);
    std::tie(pooled_c, tie_c) = pool(table, stream, x, g, a, false, cfg);
    std::tie(l, stats) = spatial_logits(table, stream, wt, pooled_c, h, w);
    if (cfg.bn != BnMode::Train) stats = Tensor();
    s = gate_forward(cfg.sgate, l);
  }
  Tensor y = at::empty(x.sizes(), x.options().memory_format(memory_format(g)));
  run(table, table.apply_gates, ApplyGatesArgs{g, ptr(x), ptr(a), ptr(s), mut(y)}, stream,
      "cbam_fused::kernel::apply_gates");
  if (!channel) {  // distinct empties: outputs of an op must not alias each other
    m = none(type);
    pooled_hw = none(type);
  }
  if (!spatial) {
    l = none(type);
    pooled_c = none(type);
  }
  if (!tie_hw.defined()) tie_hw = none(at::kInt);
  if (!tie_c.defined()) tie_c = none(at::kInt);
  if (!stats.defined()) stats = none(type);
  return {y, m, pooled_hw, tie_hw, l, pooled_c, tie_c, stats};
}

BackwardResult attention_backward(const PassTable& table, void* stream, const Tensor& gy_in,
                                  const Tensor& x_in CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_PARAM)
                                      CBAM_FUSED_SAVED(CBAM_FUSED_SAVED_PARAM)
                                          CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_PARAM),
                                  bool need_gx) {
  (void)backend;
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const Config cfg = parse_config(channel_kind, channel_pools, channel_gate, spatial_order, spatial_gate, bn,
                                  bn_eps, ties);
  TORCH_CHECK_VALUE(cfg.track, "cbam_fused: no gradient through a forward that ran with ties='none' (inference: "
                    "it kept no argmax or count); run the forward with ties='index' or 'split'");
  const Tensor x = dense(x_in);
  const Geometry g = geometry_of(x);
  const auto type = acc_type(x);
  Tensor gy, gy_c;  // one of them: gy in x's layout, or the values of a gy constant over pixels
  if (table.reads_gy_c && constant_over_pixels(gy_in)) {
    gy_c = gy_in.select(3, 0).select(2, 0).to(type).contiguous();
  } else {
    gy = gy_in.contiguous(memory_format(g));
  }
  const bool channel = w1.has_value(), spatial = conv_w.has_value();
  const int64_t h = x.size(2), w = x.size(3);
  const ChannelWeights cw = channel_weights(cfg, w1, b1, w2, b2, type);
  const SpatialWeights sw = spatial_weights(cfg, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var, type);
  // the gates are recomputed rather than saved, bitwise as in the forward: split-style ties find the
  // maxima over channels by comparing acc(x) * a with the saved max. Where the MLP kernel made a, the
  // kernel makes it again (ATen's sigmoid may differ from its gate by an ulp).
  Tensor a;
  if (channel && has_mlp_kernel(table, cfg, cw.w1, g.n)) {
    a = empty_small(x, {g.n, g.c}, type);
    const Tensor m_again = empty_small(x, {g.n, g.c}, type);
    run(table, table.channel_mlp, mlp_args(cw, cfg, pooled_hw, m_again, a), stream,
        "cbam_fused::kernel::channel_mlp");
  } else if (channel) {
    a = gate_forward(cfg.cgate, m);
  }
  const Tensor s = spatial ? gate_forward(cfg.sgate, l) : Tensor();
  Tensor ga = channel ? empty_small(x, {g.n, g.c}, type) : Tensor();
  Tensor gs = spatial ? empty_small(x, {g.n, g.p}, type) : Tensor();
  {
    Tensor ws = workspace(table, Pass::GateGrads, g, x);
    run(table, table.gate_grads,
        GateGradsArgs{g, ptr(gy), ptr(x), ptr(a), ptr(s), mut(ga), mut(gs), mut(ws), ptr(gy_c)}, stream,
        "cbam_fused::kernel::gate_grads");
  }
  Tensor u_c, v_c, u_hw, v_hw;
  SpatialGrads sg;
  ChannelGrads cg;
  if (spatial) {
    const Tensor gl = gate_backward(cfg.sgate, l, s, gs);
    sg = spatial_logits_backward(table, stream, sw, pooled_c, bn_stats, h, w, gl);
    u_c = sg.g_mean.div(static_cast<double>(g.c));
    v_c = cfg.split ? sg.g_max / tie_c : sg.g_max.contiguous();
    if (channel) {  // adds its part of ga to gate_grads' part
      Tensor ws = workspace(table, Pass::PoolCGradA, g, x);
      run(table, table.pool_c_grad_a,
          PoolCGradAArgs{g, ptr(x), ptr(a), ptr(u_c), ptr(v_c), tie_operand(cfg.split, tie_c, pooled_c[1]),
                         mut(ga), mut(ws)},
          stream, "cbam_fused::kernel::pool_c_grad_a");
    }
  }
  if (channel) {
    if (has_mlp_kernel(table, cfg, cw.w1, g.n)) {
      u_hw = at::empty_like(ga);
      v_hw = at::empty_like(ga);
      cg.w1 = at::empty_like(cw.w1);
      cg.w2 = at::empty_like(cw.w2);
      if (cw.b1.defined()) cg.b1 = at::empty_like(cw.b1);
      if (cw.b2.defined()) cg.b2 = at::empty_like(cw.b2);
      ChannelMlpGradArgs args{mlp_args(cw, cfg, pooled_hw, m, a), ptr(ga), cfg.split ? ints(tie_hw) : nullptr,
                              g.p, mut(u_hw), mut(v_hw), mut(cg.w1), mut(cg.b1), mut(cg.w2), mut(cg.b2)};
      run(table, table.channel_mlp_grad, args, stream, "cbam_fused::kernel::channel_mlp_grad");
    } else {
      const Tensor gm = gate_backward(cfg.cgate, m, a, ga);
      cg = channel_logits_backward(cw, cfg.pools, pooled_hw, gm);
      u_hw = cg.g_avg.defined() ? cg.g_avg.div(static_cast<double>(g.p)) : at::zeros_like(ga);
      if (!cg.g_max.defined())
        v_hw = at::zeros_like(ga);
      else
        v_hw = cfg.split ? cg.g_max / tie_hw : cg.g_max.contiguous();
    }
  }
  Tensor gx = at::empty({0}, x.options());
  if (need_gx) {
    gx = at::empty(x.sizes(), x.options().memory_format(memory_format(g)));
    const TieOperand no_tie{nullptr, nullptr};
    InputGradArgs args{g,
                       ptr(gy),
                       cfg.split ? ptr(x) : nullptr,
                       ptr(a),
                       ptr(s),
                       ptr(u_c),
                       ptr(v_c),
                       spatial ? tie_operand(cfg.split, tie_c, pooled_c[1]) : no_tie,
                       ptr(u_hw),
                       ptr(v_hw),
                       channel ? tie_operand(cfg.split, tie_hw, pooled_hw[1]) : no_tie,
                       cfg.split,
                       mut(gx),
                       ptr(gy_c)};
    run(table, table.input_grad, args, stream, "cbam_fused::kernel::input_grad");
  }
  // gradients in their weight's dtype and shape; empty where a weight is absent
  auto like = [&](const Tensor& grad, const OptTensor& weight) {
    if (!grad.defined() || !weight.has_value()) return at::empty({0}, x.options());
    const Tensor g = grad.scalar_type() == weight->scalar_type() ? grad : grad.to(weight->scalar_type());
    return g.dim() == weight->dim() ? g : g.view(weight->sizes());
  };
  return {gx,
          like(cg.w1, w1),
          like(cg.b1, b1),
          like(cg.w2, w2),
          like(cg.b2, b2),
          like(sg.conv_w, conv_w),
          like(sg.conv_b, conv_b),
          like(sg.bn_w, bn_w),
          like(sg.bn_b, bn_b)};
}

}  // namespace cbam_fused
