// CPU kernels of the fused op pair: the orchestration (csrc/attention.cpp) over the CPU PassTable, or
// over a table registered under another name (the CUDA launchers built for the CPU emulator).
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "attention.h"
#include "attention_checks.h"
#include "cpu/pass_table_cpu.h"

namespace cbam_fused {
namespace {

std::mutex registry_mutex;
std::map<std::string, const PassTable*>& registry() {
  static std::map<std::string, const PassTable*> tables;
  return tables;
}

void register_pass_table(c10::string_view name, int64_t address) {
  TORCH_CHECK_VALUE(name != "cpu", "cbam_fused: the name 'cpu' belongs to the built-in CPU kernels");
  TORCH_CHECK_VALUE(address != 0, "cbam_fused: register_pass_table needs the address of a PassTable");
  std::lock_guard<std::mutex> lock(registry_mutex);
  registry()[std::string(name)] = reinterpret_cast<const PassTable*>(address);
}

const PassTable& table_for(c10::string_view backend) {
  if (backend == "cpu") return cpu::cpu_pass_table();
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto it = registry().find(std::string(backend));
  if (it != registry().end()) return *it->second;
  std::string known = "'cpu'";
  for (const auto& kv : registry()) known += ", '" + kv.first + "'";
  TORCH_CHECK_VALUE(false, "cbam_fused: backend '", std::string(backend), "' has no kernels for CPU tensors (",
                    known, ")");
}

#define CBAM_FUSED_WEIGHT_NAME(name) , name
#define CBAM_FUSED_CONFIG_NAME(schema_type, cpp_type, name) , name
#define CBAM_FUSED_SAVED_NAME(name) , name

ForwardResult forward_cpu(const Tensor& x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_PARAM)
                              CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_PARAM)) {
  return attention_forward(table_for(backend), nullptr,
                           x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_NAME) CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_NAME));
}

BackwardResult backward_cpu(const Tensor& gy, const Tensor& x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_PARAM)
                                CBAM_FUSED_SAVED(CBAM_FUSED_SAVED_PARAM) CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_PARAM),
                            bool need_gx) {
  return attention_backward(table_for(backend), nullptr, gy,
                            x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_NAME) CBAM_FUSED_SAVED(CBAM_FUSED_SAVED_NAME)
                                CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_NAME),
                            need_gx);
}

void check_inputs_op(const Tensor& x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_PARAM)
                         CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_PARAM)) {
  check_inputs(x CBAM_FUSED_WEIGHTS(CBAM_FUSED_WEIGHT_NAME) CBAM_FUSED_CONFIG(CBAM_FUSED_CONFIG_NAME));
}

}  // namespace
}  // namespace cbam_fused

// Metadata only, so one kernel serves every device, meta and fake tensors included.
TORCH_LIBRARY_IMPL(cbam_fused, CompositeImplicitAutograd, m) { m.impl("check_inputs", &cbam_fused::check_inputs_op); }

TORCH_LIBRARY_IMPL(cbam_fused, CPU, m) {
  m.impl("attention_forward", &cbam_fused::forward_cpu);
  m.impl("attention_backward", &cbam_fused::backward_cpu);
}

TORCH_LIBRARY_FRAGMENT(cbam_fused, m) {
  // Adds a PassTable (csrc/pass_args.h) at `table` (an address in this process) under `name`, for
  // CPU tensors: tests register the CUDA launchers compiled for the CPU emulator this way.
  m.def("register_pass_table(str name, int table) -> ()", &cbam_fused::register_pass_table);
  // The allowed values of a string option of the op pair (the Python layer checks its own lists).
  m.def("config_choices(str option) -> str[]",
        [](c10::string_view option) { return cbam_fused::config_choices(option); });
}
