// The op pair's options and the checks of its inputs, in one place: every backend's entry runs
// check_inputs (the compiled ops in C++, the Python backends through the check_inputs op), so a bad
// argument gets the same Python exception, naming it, whichever backend runs.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <string>
#include <vector>

#include "attention_interface.h"
#include "pass_args.h"

namespace cbam_fused {

enum class ChannelKind { Mlp, Linear, Conv1d };
enum class Order { MeanMax, MaxMean };
enum class BnMode { None, Train, Eval };
// None: inference, no gradient follows; the forward tracks no tie operand (csrc/attention.cpp).
enum class Ties { Index, Split, None };

// The parsed configuration (ChannelPools and GateKind are the kernels' numbering, csrc/pass_args.h).
struct Config {
  ChannelKind kind;
  ChannelPools pools;
  GateKind cgate, sgate;
  Order order;
  BnMode bn;
  double bn_eps;
  bool split;  // split-style ties (amax), else index-style (torch.max)
  bool track;  // the forward keeps the tie operand (ties is not "none")
};

// Allowed values of a string option, by option name, in the order of its enum.
std::vector<std::string> config_choices(c10::string_view option);

#define CBAM_FUSED_CHECK_WEIGHT_PARAM(name) , const std::optional<at::Tensor>& name
#define CBAM_FUSED_CHECK_CONFIG_PARAM(schema_type, cpp_type, name) , cpp_type name

// Parses the options (ValueError naming an unknown value); nothing else.
Config parse_config(c10::string_view channel_kind, c10::string_view channel_pools, c10::string_view channel_gate,
                    c10::string_view spatial_order, c10::string_view spatial_gate, c10::string_view bn,
                    double bn_eps, c10::string_view ties);

// Every check of the forward's arguments: x's rank, dtype and sizes; each weight's presence, dtype,
// device and shape for the configuration. Raises TypeError or ValueError (TORCH_CHECK_TYPE/_VALUE)
// naming the argument as the Python API calls it. Reads metadata only.
Config check_inputs(const at::Tensor& x CBAM_FUSED_WEIGHTS(CBAM_FUSED_CHECK_WEIGHT_PARAM)
                        CBAM_FUSED_CONFIG(CBAM_FUSED_CHECK_CONFIG_PARAM));

// A [rows, cols] view of a channel-map weight given as [rows, cols] or as a 1x1 conv's [rows, cols, 1, 1].
at::Tensor as_matrix(const at::Tensor& w);

}  // namespace cbam_fused
