// The fused op pair's interface, declared once. The schemas (csrc/ops.cpp), the kernels' C++
// signatures (csrc/attention.cpp), the C++ autograd (csrc/attention_autograd.cpp) and, through the
// schemas, the Python fakes and call sites (cbam_fused/attention_op.py) all expand these lists.
#pragma once

// Optional tensor inputs after x, in order: the channel map's weights, the spatial conv's, and the
// BatchNorm after the conv (running statistics last; they get no gradient).
#define CBAM_FUSED_WEIGHTS(X) \
  X(w1) X(b1) X(w2) X(b2) X(conv_w) X(conv_b) X(bn_w) X(bn_b) X(bn_mean) X(bn_var)

// The weights that get a gradient, in the order the backward op returns them after gx.
#define CBAM_FUSED_TRAINED(X) X(w1) X(b1) X(w2) X(b2) X(conv_w) X(conv_b) X(bn_w) X(bn_b)
#define CBAM_FUSED_NUM_TRAINED 8

// Configuration (schema type, C++ parameter type, name). Allowed values: kChoices in attention.cpp.
#define CBAM_FUSED_CONFIG(X)                   \
  X("str", c10::string_view, channel_kind)     \
  X("str", c10::string_view, channel_pools)    \
  X("str", c10::string_view, channel_gate)     \
  X("str", c10::string_view, spatial_order)    \
  X("str", c10::string_view, spatial_gate)     \
  X("str", c10::string_view, bn)               \
  X("float", double, bn_eps)                   \
  X("str", c10::string_view, ties)             \
  X("str", c10::string_view, backend)

// Small tensors the forward returns after y and the backward takes back (empty where a gate is
// absent): the channel logits m [N, C]; the pools over pixels [2, N, C] (mean; max) and their tie
// operand [N, C] (the argmax for index-style ties, the count of maxima for split-style); the
// spatial logits l [N, P]; the pools over channels [2, N, P] and their tie operand; the BatchNorm
// batch statistics [2] (mean, biased variance) in training mode.
#define CBAM_FUSED_SAVED(X) X(m) X(pooled_hw) X(tie_hw) X(l) X(pooled_c) X(tie_c) X(bn_stats)
#define CBAM_FUSED_NUM_SAVED 7
