// extern "C" entry points over the launchers of csrc/cuda/passes.cuh, for the CPU emulator
// (tests/cudaemu.py loads the library built from this file with ctypes). They call the very
// launchers the ATen glue (csrc/cuda/passes_cuda.cu) calls; only the dtype switch is repeated here.
// Every entry point returns a cudaError_t code (0 = success) after the (synchronous) launches.
#include "cuda/passes.cuh"

namespace cf = cbam_fused::cuda;
using cf::index_t;

// dtype codes shared with tests/cudaemu.py
#define CBAM_EMU_DISPATCH(code, ...)                                            \
  switch (code) {                                                               \
    case 0: { using T = float; __VA_ARGS__; }                                   \
    case 1: { using T = c10::Half; __VA_ARGS__; }                               \
    case 2: { using T = c10::BFloat16; __VA_ARGS__; }                           \
    case 3: { using T = double; __VA_ARGS__; }                                  \
    default: return -1;                                                         \
  }

#define P(T, v) static_cast<T>(v)
#define ACC(v) static_cast<const cf::acc_of<T>*>(v)
#define OUT(v) static_cast<cf::acc_of<T>*>(v)

static int done(cudaError_t e) { return e == cudaSuccess ? int(cudaDeviceSynchronize()) : int(e); }

extern "C" {

long long cbam_emu_pool_workspace(int dtype, index_t n, index_t c, index_t p, int cl, int over_pixels,
                                  index_t rows) {
  CBAM_EMU_DISPATCH(dtype, return (long long)cf::pool_workspace_bytes<T>(n, c, p, cl, over_pixels, rows))
}

long long cbam_emu_gate_grads_workspace(int dtype, index_t n, index_t c, index_t p, int cl, index_t rows) {
  CBAM_EMU_DISPATCH(dtype, return (long long)cf::gate_grads_workspace_bytes<T>(n, c, p, cl, rows))
}

long long cbam_emu_pool_c_grad_a_workspace(int dtype, index_t n, index_t c, index_t p, int cl, index_t rows) {
  CBAM_EMU_DISPATCH(dtype, return (long long)cf::pool_c_grad_a_workspace_bytes<T>(n, c, p, cl, rows))
}

int cbam_emu_pool_hw(int dtype, const void* x, index_t n, index_t c, index_t p, int cl, void* mean, void* max,
                     int* arg, int* count, void* ws, index_t rows) {
  CBAM_EMU_DISPATCH(dtype, return done(cf::launch_pool_hw<T>(P(const T*, x), n, c, p, cl, OUT(mean), OUT(max),
                                                              arg, count, ws, nullptr, rows)))
}

int cbam_emu_pool_c(int dtype, const void* x, const void* a, index_t n, index_t c, index_t p, int cl, void* mean,
                    void* max, int* arg, int* count, void* ws, index_t rows) {
  CBAM_EMU_DISPATCH(dtype, return done(cf::launch_pool_c<T>(P(const T*, x), ACC(a), n, c, p, cl, OUT(mean),
                                                             OUT(max), arg, count, ws, nullptr, rows)))
}

int cbam_emu_apply_gates(int dtype, const void* x, const void* a, const void* s, index_t n, index_t c, index_t p,
                         int cl, void* y) {
  CBAM_EMU_DISPATCH(dtype, return done(cf::launch_apply_gates<T>(P(const T*, x), ACC(a), ACC(s), n, c, p, cl,
                                                                  P(T*, y), nullptr)))
}

int cbam_emu_gate_grads(int dtype, const void* gy, const void* x, const void* a, const void* s, index_t n,
                        index_t c, index_t p, int cl, void* ga, void* gs, void* ws, index_t rows) {
  CBAM_EMU_DISPATCH(dtype, return done(cf::launch_gate_grads<T>(P(const T*, gy), P(const T*, x), ACC(a), ACC(s),
                                                                 n, c, p, cl, OUT(ga), OUT(gs), ws, nullptr, rows)))
}

int cbam_emu_pool_c_grad_a(int dtype, const void* x, const void* a, const void* u, const void* v, const int* arg,
                           const void* max, int split, index_t n, index_t c, index_t p, int cl, void* ga, void* ws,
                           index_t rows) {
  CBAM_EMU_DISPATCH(dtype, return done(cf::launch_pool_c_grad_a<T>(P(const T*, x), ACC(a), ACC(u), ACC(v), arg,
                                                                    ACC(max), split, n, c, p, cl, OUT(ga), ws,
                                                                    nullptr, rows)))
}

int cbam_emu_input_grad(int dtype, const void* gy, const void* x, const void* a, const void* s, const void* u_c,
                        const void* v_c, const int* arg_c, const void* max_c, const void* u_hw, const void* v_hw,
                        const int* arg_hw, const void* max_hw, int split, index_t n, index_t c, index_t p, int cl,
                        void* gx) {
  CBAM_EMU_DISPATCH(dtype, return done(cf::launch_input_grad<T>(P(const T*, gy), P(const T*, x), ACC(a), ACC(s),
                                                                 ACC(u_c), ACC(v_c), arg_c, ACC(max_c), ACC(u_hw),
                                                                 ACC(v_hw), arg_hw, ACC(max_hw), split, n, c, p,
                                                                 cl, P(T*, gx), nullptr)))
}

}  // extern "C"
