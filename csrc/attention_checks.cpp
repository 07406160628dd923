// See csrc/attention_checks.h. The messages name arguments as cbam_fused.attention calls them and
// dtypes as Python prints them, since that is where users meet them.
#include "attention_checks.h"

#include <c10/util/Exception.h>

#include <array>
#include <sstream>

namespace cbam_fused {
namespace {

struct Choices {
  const char* option;
  std::vector<std::string> values;
};

const std::array<Choices, 6>& choices() {
  static const std::array<Choices, 6> c{{
      {"channel_kind", {"mlp", "linear", "conv1d"}},
      {"channel_pools", {"avg+max", "avg", "max", "light"}},
      {"gate", {"sigmoid", "hard_sigmoid", "keras_hard_sigmoid"}},
      {"spatial_order", {"mean_max", "max_mean"}},
      {"bn", {"none", "train", "eval"}},
      {"ties", {"index", "split", "none"}},
  }};
  return c;
}

const Choices& option(c10::string_view name) {
  for (const auto& c : choices())
    if (name == c.option) return c;
  TORCH_CHECK_VALUE(false, "cbam_fused: no option named '", std::string(name), "'");
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "'" : ", '") + s + "'";
  return out;
}

template <typename E>
E parse(const char* option_name, const char* what, c10::string_view value) {
  const auto& values = option(option_name).values;
  for (size_t i = 0; i < values.size(); ++i)
    if (value == values[i]) return static_cast<E>(i);
  TORCH_CHECK_VALUE(false, "cbam_fused: unknown ", what, " '", std::string(value), "'; expected one of ",
                    join(values));
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kBool: return "torch.bool";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(t);
  }
}

std::string shape(at::IntArrayRef s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}

bool is_1x1(const at::Tensor& w) { return w.dim() == 4 && w.size(2) == 1 && w.size(3) == 1; }

// dtype and device as x's; then, when `rows` is given, the shape [rows] ([rows, cols] with `cols`).
void check_like_x(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), "cbam_fused: ", name, " has dtype ", dtype_name(t.scalar_type()),
                   " but x has dtype ", dtype_name(x.scalar_type()), "; cast the weights to x's dtype");
  TORCH_CHECK_VALUE(t.device() == x.device(), "cbam_fused: ", name, " is on ", t.device(), " but x is on ",
                    x.device());
}

void check_vector(const char* name, const std::optional<at::Tensor>& t, const at::Tensor& x, int64_t len) {
  if (!t.has_value()) return;
  check_like_x(name, *t, x);
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == len, "cbam_fused: ", name, " must have shape (", len,
                    ",), got ", shape(t->sizes()));
}

// A [rows, cols] matrix, or the same as a 1x1 conv weight [rows, cols, 1, 1].
void check_matrix(const char* name, const at::Tensor& t, const at::Tensor& x, int64_t rows, int64_t cols) {
  check_like_x(name, t, x);
  const bool ok = (t.dim() == 2 || is_1x1(t)) && t.size(0) == rows && t.size(1) == cols;
  TORCH_CHECK_VALUE(ok, "cbam_fused: ", name, " must have shape (", rows, ", ", cols, ") or (", rows, ", ", cols,
                    ", 1, 1), got ", shape(t.sizes()));
}

}  // namespace

std::vector<std::string> config_choices(c10::string_view name) { return option(name).values; }

Config parse_config(c10::string_view channel_kind, c10::string_view channel_pools, c10::string_view channel_gate,
                    c10::string_view spatial_order, c10::string_view spatial_gate, c10::string_view bn,
                    double bn_eps, c10::string_view ties) {
  return Config{parse<ChannelKind>("channel_kind", "channel_kind", channel_kind),
                parse<ChannelPools>("channel_pools", "channel_pools", channel_pools),
                parse<GateKind>("gate", "channel gate", channel_gate),
                parse<GateKind>("gate", "spatial gate", spatial_gate),
                parse<Order>("spatial_order", "spatial_order", spatial_order),
                parse<BnMode>("bn", "BatchNorm mode", bn),
                bn_eps,
                parse<Ties>("ties", "ties", ties) == Ties::Split,
                parse<Ties>("ties", "ties", ties) != Ties::None};
}

at::Tensor as_matrix(const at::Tensor& w) { return w.dim() == 4 ? w.view({w.size(0), w.size(1)}) : w; }

Config check_inputs(const at::Tensor& x CBAM_FUSED_WEIGHTS(CBAM_FUSED_CHECK_WEIGHT_PARAM)
                        CBAM_FUSED_CONFIG(CBAM_FUSED_CHECK_CONFIG_PARAM)) {
  (void)backend;
  TORCH_CHECK_VALUE(x.dim() == 4, "cbam_fused: x must be 4-D [N, C, H, W], got shape ", shape(x.sizes()));
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                   "cbam_fused: x must be float16, bfloat16, float32 or float64, got ", dtype_name(t));
  const int64_t c = x.size(1);
  TORCH_CHECK_VALUE(c > 0 && x.size(2) > 0 && x.size(3) > 0, "cbam_fused: x has an empty C, H or W dimension (shape ",
                    shape(x.sizes()), "); the max pools over channels and pixels are undefined");
  const Config cfg = parse_config(channel_kind, channel_pools, channel_gate, spatial_order, spatial_gate, bn,
                                  bn_eps, ties);
  if (w1.has_value()) {
    switch (cfg.kind) {
      case ChannelKind::Mlp: {
        check_like_x("w1", *w1, x);
        TORCH_CHECK_VALUE((w1->dim() == 2 || is_1x1(*w1)) && w1->size(1) == c, "cbam_fused: w1 must have shape [hidden, C=",
                          c, "] (or [hidden, C, 1, 1]), got ", shape(w1->sizes()));
        const int64_t hidden = w1->size(0);
        TORCH_CHECK_VALUE(w2.has_value(), "cbam_fused: channel_kind='mlp' needs w2");
        check_matrix("w2", *w2, x, c, hidden);
        check_vector("b1", b1, x, hidden);
        check_vector("b2", b2, x, c);
        break;
      }
      case ChannelKind::Linear:
        check_matrix("w1", *w1, x, c, c);
        check_vector("b1", b1, x, c);
        break;
      case ChannelKind::Conv1d:
        check_like_x("w1", *w1, x);
        TORCH_CHECK_VALUE(w1->dim() == 3 && w1->size(0) == 1 && w1->size(1) == 1 && w1->size(2) % 2 == 1,
                          "cbam_fused: the conv1d channel weight w1 must be [1, 1, k] with k odd, got ",
                          shape(w1->sizes()));
        check_vector("b1", b1, x, 1);
        break;
    }
    TORCH_CHECK_VALUE(cfg.kind == ChannelKind::Mlp || (!w2.has_value() && !b2.has_value()),
                      "cbam_fused: channel_kind='", std::string(channel_kind), "' takes no w2/b2");
  } else {
    TORCH_CHECK_VALUE(!b1.has_value() && !w2.has_value() && !b2.has_value(), "cbam_fused: b1, w2 and b2 need w1");
  }
  if (conv_w.has_value()) {
    check_like_x("conv_weight", *conv_w, x);
    TORCH_CHECK_VALUE(conv_w->dim() == 4 && conv_w->size(0) == 1 && conv_w->size(1) == 2 &&
                          conv_w->size(2) == conv_w->size(3),
                      "cbam_fused: conv_weight must have shape [1, 2, K, K], got ", shape(conv_w->sizes()));
    TORCH_CHECK_VALUE(conv_w->size(2) % 2 == 1, "cbam_fused: the spatial kernel size K must be odd, got ",
                      conv_w->size(2));
    check_vector("conv_bias", conv_b, x, 1);
    check_vector("bn_weight", bn_w, x, 1);
    check_vector("bn_bias", bn_b, x, 1);
    check_vector("bn_running_mean", bn_mean, x, 1);
    check_vector("bn_running_var", bn_var, x, 1);
    TORCH_CHECK_VALUE(cfg.bn == BnMode::Train || bn_mean.has_value() == bn_var.has_value(),
                      "cbam_fused: bn_running_mean and bn_running_var go together");
    TORCH_CHECK_VALUE(cfg.bn != BnMode::Eval || bn_mean.has_value(),
                      "cbam_fused: BatchNorm in eval mode needs bn_running_mean and bn_running_var");
    TORCH_CHECK_VALUE(cfg.bn == BnMode::None || bn_eps >= 0, "cbam_fused: bn_eps must be non-negative, got ", bn_eps);
  } else {
    TORCH_CHECK_VALUE(!conv_b.has_value() && !bn_w.has_value() && !bn_b.has_value() && !bn_mean.has_value() &&
                          !bn_var.has_value() && cfg.bn == BnMode::None,
                      "cbam_fused: conv_bias and the BatchNorm need conv_weight");
  }
  TORCH_CHECK_VALUE(w1.has_value() || conv_w.has_value(),
                    "cbam_fused: neither a channel gate (w1) nor a spatial gate (conv_weight) was given");
  return cfg;
}

}  // namespace cbam_fused
