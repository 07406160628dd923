// extern "C" entry points over the CUDA PassTable (csrc/cuda/pass_table.cuh), for the CPU emulator:
// tests/cudaemu.py loads the library built from this file with ctypes. cbam_emu_pass_table() hands
// the table itself to a caller that fills the argument structs of csrc/pass_args.h; the other entry
// points fill those structs from plain arguments for the pass-level tests, and call through the same
// table (so the dtype switch is the table's). Each returns a cudaError_t code (0 = success) after the
// (synchronous) launches.
#include <cstdint>

// Rows per reduction tile (0 = the launchers' default): set by tests to force several tiles per
// reduction on small shapes; read by csrc/cuda/passes.cuh through this hook.
static long long cbam_emu_reduce_rows = 0;
#define CBAM_CUDA_TEST_REDUCE_ROWS ::cbam_emu_reduce_rows

#include "cuda/pass_table.cuh"

namespace cf = cbam_fused;
using index_t = std::int64_t;

static const cf::PassTable& table() { return cf::cuda::cuda_pass_table(); }

static int done(int e) { return e == 0 ? int(cudaDeviceSynchronize()) : e; }

static cf::Geometry geometry(int dtype, int layout, index_t n, index_t c, index_t p) {
  return {n, c, p, static_cast<cf::DType>(dtype), static_cast<cf::Layout>(layout)};
}

extern "C" {

const void* cbam_emu_pass_table() { return &table(); }

void cbam_emu_set_reduce_rows(long long rows) { cbam_emu_reduce_rows = rows; }

long long cbam_emu_workspace(int pass, int dtype, int layout, index_t n, index_t c, index_t p) {
  return (long long)table().workspace_bytes(static_cast<cf::Pass>(pass), geometry(dtype, layout, n, c, p));
}

// Lanes per row of a tile (csrc/cuda/passes.cuh, row_lanes_for): rows of `cols_len` elements of
// `element_bytes` each.
int cbam_emu_row_lanes(index_t cols_len, int element_bytes) {
  return cf::cuda::row_lanes_for(cols_len, 16 / element_bytes);
}

long long cbam_emu_conv_grad_workspace(index_t n, index_t h, index_t w, index_t k, int f64) {
  return (long long)table().conv_grad_workspace_bytes(n, h, w, k, f64 != 0);
}

int cbam_emu_pool_hw(int dtype, int layout, index_t n, index_t c, index_t p, const void* x, void* mean, void* max,
                     int32_t* argmax, int32_t* count, void* ws) {
  return done(table().pool_hw({geometry(dtype, layout, n, c, p), x, mean, max, argmax, count, ws}, nullptr));
}

int cbam_emu_pool_c(int dtype, int layout, index_t n, index_t c, index_t p, const void* x, const void* a,
                    void* mean, void* max, int32_t* argmax, int32_t* count, void* ws) {
  return done(table().pool_c({geometry(dtype, layout, n, c, p), x, a, mean, max, argmax, count, ws}, nullptr));
}

int cbam_emu_apply_gates(int dtype, int layout, index_t n, index_t c, index_t p, const void* x, const void* a,
                         const void* s, void* y) {
  return done(table().apply_gates({geometry(dtype, layout, n, c, p), x, a, s, y}, nullptr));
}

int cbam_emu_gate_grads(int dtype, int layout, index_t n, index_t c, index_t p, const void* gy, const void* x,
                        const void* a, const void* s, void* ga, void* gs, void* ws) {
  return done(table().gate_grads({geometry(dtype, layout, n, c, p), gy, x, a, s, ga, gs, ws}, nullptr));
}

// tie: argmax selects index-style ties; without it, split-style ties read max. Adds to ga.
int cbam_emu_pool_c_grad_a(int dtype, int layout, index_t n, index_t c, index_t p, const void* x, const void* a,
                           const void* u, const void* v, const int32_t* tie_argmax, const void* tie_max, void* ga,
                           void* ws) {
  return done(table().pool_c_grad_a(
      {geometry(dtype, layout, n, c, p), x, a, u, v, cf::TieOperand{tie_argmax, tie_max}, ga, ws}, nullptr));
}

int cbam_emu_input_grad(int dtype, int layout, index_t n, index_t c, index_t p, const void* gy, const void* x,
                        const void* a, const void* s, const void* u_c, const void* v_c, const int32_t* argmax_c,
                        const void* max_c, const void* u_hw, const void* v_hw, const int32_t* argmax_hw,
                        const void* max_hw, int split, void* gx) {
  cf::InputGradArgs args{geometry(dtype, layout, n, c, p),
                         gy,
                         x,
                         a,
                         s,
                         u_c,
                         v_c,
                         cf::TieOperand{argmax_c, max_c},
                         u_hw,
                         v_hw,
                         cf::TieOperand{argmax_hw, max_hw},
                         split != 0,
                         gx};
  return done(table().input_grad(args, nullptr));
}

int cbam_emu_spatial_conv(index_t n, index_t h, index_t w, index_t k, int f64, const void* in0, const void* in1,
                          const void* weight, const void* bias, void* out) {
  return done(table().spatial_conv({n, h, w, k, f64 != 0, in0, in1, weight, bias, out}, nullptr));
}

int cbam_emu_spatial_conv_grad(index_t n, index_t h, index_t w, index_t k, int f64, const void* in0, const void* in1,
                               const void* weight, const void* grad_out, void* grad_in0, void* grad_in1,
                               void* grad_weight, void* grad_bias, void* ws) {
  return done(table().spatial_conv_grad(
      {n, h, w, k, f64 != 0, in0, in1, weight, grad_out, grad_in0, grad_in1, grad_weight, grad_bias, ws}, nullptr));
}

// pools, gate: the ChannelPools and GateKind numbering of csrc/pass_args.h
static cf::ChannelMlpArgs mlp_args(index_t n, index_t c, index_t hidden, int f64, int pools, int gate,
                                   const void* pooled, const void* w1, const void* b1, const void* w2, const void* b2,
                                   void* m, void* a) {
  return {n, c, hidden, f64 != 0, static_cast<cf::ChannelPools>(pools), static_cast<cf::GateKind>(gate),
          pooled, w1, b1, w2, b2, m, a};
}

int cbam_emu_channel_mlp(index_t n, index_t c, index_t hidden, int f64, int pools, int gate, const void* pooled,
                         const void* w1, const void* b1, const void* w2, const void* b2, void* m, void* a) {
  return done(table().channel_mlp(mlp_args(n, c, hidden, f64, pools, gate, pooled, w1, b1, w2, b2, m, a), nullptr));
}

// m and a are the forward's outputs, inputs here
int cbam_emu_channel_mlp_grad(index_t n, index_t c, index_t hidden, int f64, int pools, int gate, const void* pooled,
                              const void* w1, const void* b1, const void* w2, const void* b2, const void* m,
                              const void* a, const void* ga, const int32_t* count, index_t pixels, void* u, void* v,
                              void* gw1, void* gb1, void* gw2, void* gb2) {
  cf::ChannelMlpGradArgs args{mlp_args(n, c, hidden, f64, pools, gate, pooled, w1, b1, w2, b2, const_cast<void*>(m),
                                       const_cast<void*>(a)),
                              ga, count, pixels, u, v, gw1, gb1, gw2, gb2};
  return done(table().channel_mlp_grad(args, nullptr));
}

const char* cbam_emu_error_string(int code) { return table().error_string(code); }

}  // extern "C"
