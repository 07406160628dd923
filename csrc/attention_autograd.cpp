// Autograd of the fused op pair, in C++: no Python runs between a module's forward and the kernels,
// nor between autograd and the backward op. The forward op's small outputs are not differentiable
// and get no materialised zero gradients; the backward op refuses to be differentiated.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "attention.h"
#include "attention_checks.h"

namespace cbam_fused {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

#define CBAM_FUSED_WEIGHT_TYPE(name) , const OptTensor&
#define CBAM_FUSED_CONFIG_TYPE(schema_type, cpp_type, name) , cpp_type
#define CBAM_FUSED_SAVED_TYPE(name) , const Tensor&
#define CBAM_FUSED_WEIGHT_NAME(name) , name
#define CBAM_FUSED_CONFIG_NAME(schema_type, cpp_type, name) , name
#define CBAM_FUSED_SAVED_NAME(name) , name
#define CBAM_FUSED_COUNT(...) +1

using ForwardSig = ForwardResult(const Tensor& CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_TYPE)
                                     CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_TYPE));
using BackwardSig = BackwardResult(const Tensor&, const Tensor& CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_TYPE)
                                       CBAM_FUSED_SAVED(CBAM_FUSED_SAVED_TYPE)
                                           CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_TYPE),
                                   bool);

constexpr int kNumWeights = 0 CBAM_FUSED_WEIGHTS(CBAM_FUSED_COUNT);
constexpr int kNumConfig = 0 CBAM_FUSED_CONFIG(CBAM_FUSED_COUNT);

const c10::TypedOperatorHandle<ForwardSig>& forward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("cbam_fused::attention_forward", "").typed<ForwardSig>();
  return op;
}

const c10::TypedOperatorHandle<BackwardSig>& backward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("cbam_fused::attention_backward", "").typed<BackwardSig>();
  return op;
}

OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

template <typename T>
T config_arg(const c10::IValue& v);
template <>
c10::string_view config_arg<c10::string_view>(const c10::IValue& v) {
  return v.toStringView();
}
template <>
double config_arg<double>(const c10::IValue& v) {
  return v.toDouble();
}

// The configuration travels through the context as IValues, in CBAM_FUSED_CONFIG order.
#define CBAM_FUSED_SAVE_CONFIG(schema_type, cpp_type, name) config.emplace_back(name);

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_PARAM)
                                                         CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_PARAM)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = forward_op().call(x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_NAME) CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_NAME));
    variable_list outputs = std::apply([](auto&... t) { return variable_list{t...}; }, out);
    variable_list saved{x};
#define CBAM_FUSED_SAVE_WEIGHT(name) saved.push_back(name.has_value() ? *name : Tensor());
    CBAM_FUSED_WEIGHTS(CBAM_FUSED_SAVE_WEIGHT)
    saved.insert(saved.end(), outputs.begin() + 1, outputs.end());
    ctx->save_for_backward(saved);
    std::vector<c10::IValue> config;
    CBAM_FUSED_CONFIG(CBAM_FUSED_SAVE_CONFIG)
    ctx->saved_data["config"] = c10::ivalue::Tuple::create(std::move(config));
    ctx->mark_non_differentiable(variable_list(outputs.begin() + 1, outputs.end()));
    ctx->set_materialize_grads(false);
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // x, the weights and the configuration: one slot per forward argument
    variable_list grads(1 + kNumWeights + kNumConfig);
    const Tensor& gy = grad_outputs[0];
    if (!gy.defined()) return grads;
    const auto saved = ctx->get_saved_variables();
    const auto& config = ctx->saved_data["config"].toTupleRef().elements();
    std::vector<OptTensor> weights;
    for (int i = 0; i < kNumWeights; ++i) weights.push_back(opt(saved[1 + i]));
    const std::vector<Tensor> small(saved.begin() + 1 + kNumWeights, saved.end());
    auto out = call_backward(gy, saved[0], weights, small, config.vec(), ctx->needs_input_grad(0));
    const variable_list result = std::apply([](auto&... t) { return variable_list{t...}; }, out);
    // needs_input_grad counts the tensor inputs that were present (absent optionals have no edge)
    for (int i = 0, edge = 0; i <= CBAM_FUSED_NUM_TRAINED; ++i) {
      if (i > 0 && !saved[i].defined()) continue;
      if (ctx->needs_input_grad(edge++)) grads[i] = result[i];  // present weights always get one
    }
    return grads;
  }

 private:
  static BackwardResult call_backward(const Tensor& gy, const Tensor& x, const std::vector<OptTensor>& wt,
                                      const std::vector<Tensor>& sm, const std::vector<c10::IValue>& cf,
                                      bool need_gx);
};

BackwardResult AttentionFunction::call_backward(const Tensor& gy, const Tensor& x, const std::vector<OptTensor>& wt,
                                                const std::vector<Tensor>& sm, const std::vector<c10::IValue>& cf,
                                                bool need_gx) {
  // The evaluation order of a call's arguments is unspecified: bind each to a named local first.
  int wi = 0, si = 0, ci = 0;
#define CBAM_FUSED_BIND_W(name) const OptTensor& name = wt[wi++];
#define CBAM_FUSED_BIND_S(name) const Tensor& name = sm[si++];
#define CBAM_FUSED_BIND_C(schema_type, cpp_type, name) const cpp_type name = config_arg<cpp_type>(cf[ci++]);
  CBAM_FUSED_WEIGHTS(CBAM_FUSED_BIND_W)
  CBAM_FUSED_SAVED(CBAM_FUSED_BIND_S)
  CBAM_FUSED_CONFIG(CBAM_FUSED_BIND_C)
  return backward_op().call(gy, x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_NAME) CBAM_FUSED_SAVED(CBAM_FUSED_SAVED_NAME)
                                CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_NAME),
                            need_gx);
}

ForwardResult forward_autograd(const Tensor& x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_PARAM)
                                   CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_PARAM)) {
  // Checked here as well as in the device kernel: with a weight on another device the dispatcher
  // would pick that device's kernel (a meta weight: the fake) below this one.
  check_inputs(x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_NAME) CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_NAME));
  variable_list out =
      AttentionFunction::apply(x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_NAME) CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_NAME));
  ForwardResult result;
  int i = 0;
  std::apply([&](auto&... t) { ((t = out[i++]), ...); }, result);
  return result;
}

// Differentiating the backward op (double backward) is not supported: a clear error, not a silent zero.
class AttentionBackwardFunction : public torch::autograd::Function<AttentionBackwardFunction> {
 public:
  static variable_list forward(AutogradContext*, const Tensor& gy, const Tensor& x CBAM_FUSED_WEIGHTS(
                                                                      CBAM_FUSED_WEIGHT_PARAM)
                                                     CBAM_FUSED_SAVED(CBAM_FUSED_SAVED_PARAM)
                                                         CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_PARAM),
                               bool need_gx) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = backward_op().call(gy, x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_NAME) CBAM_FUSED_SAVED(CBAM_FUSED_SAVED_NAME)
                                          CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_NAME),
                                  need_gx);
    return std::apply([](auto&... t) { return variable_list{t...}; }, out);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "cbam_fused does not implement second derivatives: double backward (create_graph=True, then "
                "differentiating the gradients) through a fused op is not supported; use backend='torch' for that");
  }
};

BackwardResult backward_autograd(const Tensor& gy, const Tensor& x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_PARAM)
                                     CBAM_FUSED_SAVED(CBAM_FUSED_SAVED_PARAM)
                                         CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_PARAM),
                                 bool need_gx) {
  variable_list out = AttentionBackwardFunction::apply(
      gy, x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_NAME) CBAM_FUSED_SAVED(CBAM_FUSED_SAVED_NAME)
              CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_NAME),
      need_gx);
  BackwardResult result;
  int i = 0;
  std::apply([&](auto&... t) { ((t = out[i++]), ...); }, result);
  return result;
}

}  // namespace
}  // namespace cbam_fused

TORCH_LIBRARY_IMPL(cbam_fused, Autograd, m) {
  m.impl("attention_forward", &cbam_fused::forward_autograd);
  m.impl("attention_backward", &cbam_fused::backward_autograd);
}
