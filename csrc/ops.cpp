// Schemas of the cbam_fused:: ops, written once here.
// * The fused op pair attention_forward / attention_backward; its argument lists expand
//   csrc/attention_interface.h. Device kernels: csrc/cpu/attention_cpu.cpp and the CUDA glue;
//   autograd: csrc/attention_autograd.cpp; fakes: cbam_fused/attention_op.py.
// * check_inputs, the forward's argument checks on their own (csrc/attention_checks.h).
// * The full-size passes as ops of their own, for pass-level tests (cbam_fused/passes.py specifies
//   what each computes).
#include <torch/library.h>

#include <string>

#include "attention_interface.h"

#ifdef CBAM_FUSED_PYTHON_MODULE
#include <Python.h>
#endif

namespace {

#define CBAM_FUSED_SCHEMA_WEIGHT(name) s += ", Tensor? " #name;
#define CBAM_FUSED_SCHEMA_CONFIG(schema_type, cpp_type, name) s += ", " schema_type " " #name;
#define CBAM_FUSED_SCHEMA_SAVED(name) s += ", Tensor " #name;
#define CBAM_FUSED_SCHEMA_GRAD(name) s += ", Tensor grad_" #name;

std::string forward_schema() {
  std::string s = "attention_forward(Tensor x";
  CBAM_FUSED_WEIGHTS(CBAM_FUSED_SCHEMA_WEIGHT)
  CBAM_FUSED_CONFIG(CBAM_FUSED_SCHEMA_CONFIG)
  s += ") -> (Tensor y";
  CBAM_FUSED_SAVED(CBAM_FUSED_SCHEMA_SAVED)
  return s + ")";
}

// The forward's arguments, checked and nothing else (csrc/attention_checks.h); for the Python backends.
std::string check_schema() {
  std::string s = "check_inputs(Tensor x";
  CBAM_FUSED_WEIGHTS(CBAM_FUSED_SCHEMA_WEIGHT)
  CBAM_FUSED_CONFIG(CBAM_FUSED_SCHEMA_CONFIG)
  return s + ") -> ()";
}

std::string backward_schema() {
  std::string s = "attention_backward(Tensor gy, Tensor x";
  CBAM_FUSED_WEIGHTS(CBAM_FUSED_SCHEMA_WEIGHT)
  CBAM_FUSED_SAVED(CBAM_FUSED_SCHEMA_SAVED)
  CBAM_FUSED_CONFIG(CBAM_FUSED_SCHEMA_CONFIG)
  s += ", bool need_gx) -> (Tensor grad_x";
  CBAM_FUSED_TRAINED(CBAM_FUSED_SCHEMA_GRAD)
  return s + ")";
}

}  // namespace

TORCH_LIBRARY(cbam_fused, m) {
  m.def(forward_schema().c_str());
  m.def(backward_schema().c_str());
  m.def(check_schema().c_str());

  // ties=False: argmax and count are neither tracked nor returned (empty), as inference needs
  m.def("pool_hw(Tensor x, bool ties=True) -> (Tensor avg, Tensor max, Tensor argmax, Tensor count)");
  m.def("pool_c(Tensor x, Tensor? a, bool ties=True) -> (Tensor mean, Tensor max, Tensor argmax, Tensor count)");
  m.def("apply_gates(Tensor x, Tensor? a, Tensor? s) -> Tensor");
  m.def("gate_grads(Tensor gy, Tensor x, Tensor? a, Tensor? s, bool want_a, bool want_s) -> (Tensor ga, Tensor gs)");
  m.def("pool_c_grad_a(Tensor x, Tensor a, Tensor u, Tensor v, Tensor argmax, Tensor max, bool split) -> Tensor");
  m.def("input_grad(Tensor gy, Tensor? x, Tensor? a, Tensor? s, Tensor? u_c, Tensor? v_c, Tensor? argmax_c, "
        "Tensor? max_c, Tensor? u_hw, Tensor? v_hw, Tensor? argmax_hw, Tensor? max_hw, bool split) -> Tensor");
  // The spatial gate's KxK convolution of two acc-typed planes [N, h*w] into one (csrc/pass_args.h,
  // SpatialConvArgs), and its gradients; grad_bias is [1] if has_bias, else empty.
  m.def("spatial_conv(Tensor in0, Tensor in1, Tensor weight, Tensor? bias, int h, int w) -> Tensor");
  m.def("spatial_conv_backward(Tensor grad_out, Tensor in0, Tensor in1, Tensor weight, bool has_bias, int h, "
        "int w) -> (Tensor grad_in0, Tensor grad_in1, Tensor grad_weight, Tensor grad_bias)");
}

#ifdef CBAM_FUSED_PYTHON_MODULE
// Importing the module from Python loads the library, which runs the registrations above. It
// exports no Python functions: everything is reached through torch.ops.cbam_fused.
#define CBAM_CONCAT2(a, b) a##b
#define CBAM_CONCAT(a, b) CBAM_CONCAT2(a, b)
static struct PyModuleDef cbam_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC CBAM_CONCAT(PyInit_, CBAM_FUSED_PYTHON_MODULE)(void) { return PyModule_Create(&cbam_module); }
#endif
