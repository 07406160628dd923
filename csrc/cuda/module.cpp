// Python module cbam_fused._cuda. Importing it loads the library, whose TORCH_LIBRARY_IMPL registers
// the CUDA kernels of the cbam_fused:: pass ops (schemas in csrc/ops.cpp, loaded first by ops.py).
// It exports no Python functions.
#include <Python.h>

#define CBAM_CONCAT2(a, b) a##b
#define CBAM_CONCAT(a, b) CBAM_CONCAT2(a, b)
#define CBAM_STR2(a) #a
#define CBAM_STR(a) CBAM_STR2(a)
static struct PyModuleDef cbam_cuda_module = {PyModuleDef_HEAD_INIT, CBAM_STR(CBAM_FUSED_PYTHON_MODULE), nullptr,
                                              -1, nullptr};
PyMODINIT_FUNC CBAM_CONCAT(PyInit_, CBAM_FUSED_PYTHON_MODULE)(void) { return PyModule_Create(&cbam_cuda_module); }
