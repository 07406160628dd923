// The C++ orchestration of the fused op pair over one device's PassTable (csrc/pass_args.h).
// attention.cpp is compiled into every op library that registers a device kernel for the pair
// (cbam_fused._C for the CPU, cbam_fused._cuda for CUDA); each passes its own table and stream.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>
#include <vector>

#include "attention_interface.h"
#include "pass_args.h"

namespace cbam_fused {

using at::Tensor;
using OptTensor = std::optional<at::Tensor>;

#define CBAM_FUSED_WEIGHT_PARAM(name) , const OptTensor& name
#define CBAM_FUSED_CONFIG_PARAM(schema_type, cpp_type, name) , cpp_type name
#define CBAM_FUSED_SAVED_PARAM(name) , const Tensor& name
#define CBAM_FUSED_TENSOR_TYPE(name) , Tensor

// y and the saved small tensors.
using ForwardResult = std::tuple<Tensor CBAM_FUSED_SAVED(CBAM_FUSED_TENSOR_TYPE)>;
// gx and the gradient of every trained weight (empty where absent or not wanted).
using BackwardResult = std::tuple<Tensor CBAM_FUSED_TRAINED(CBAM_FUSED_TENSOR_TYPE)>;

ForwardResult attention_forward(const PassTable& table, void* stream,
                                const Tensor& x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_PARAM)
                                    CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_PARAM));

BackwardResult attention_backward(const PassTable& table, void* stream, const Tensor& gy,
                                  const Tensor& x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_PARAM)
                                      CBAM_FUSED_SAVED(CBAM_FUSED_SAVED_PARAM)
                                          CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_PARAM),
                                  bool need_gx);

}  // namespace cbam_fused
