// CUDACPU_DRY_RUN=1: launches are checked and logged, kernel bodies do not run. run.sh runs this with
// CUDACPU_DRY_RUN=1 and CUDACPU_LAUNCH_LOG, then checks that the log lists all three launches.
#include <cuda_runtime.h>
#include "probe.h"

__global__ void fill(float* x, float v) { x[blockIdx.x * blockDim.x + threadIdx.x] = v; }
__global__ void hang() {  // lanes at a shuffle and at a barrier: a DEADLOCK abort if it ran (deadlock.cu)
    if (threadIdx.x < 16) (void)__shfl_down_sync(0xffffffffu, 1, 1);
    else __syncthreads();
}

int main() {
    float* x;
    cudaMalloc(&x, 256 * sizeof(float));
    for (int i = 0; i < 256; ++i) x[i] = 1.f;
    fill<<<4, 64>>>(x, 2.f);
    const cudaError_t ran = cudaGetLastError();
    hang<<<2, 32>>>();
    const cudaError_t hung = cudaGetLastError();
    fill<<<1, 2048>>>(x, 3.f);  // over the 1024-thread limit
    const cudaError_t bad = cudaGetLastError();
    cudaDeviceSynchronize();
    probe::expect("a valid launch succeeds", ran == cudaSuccess && hung == cudaSuccess);
    probe::expect("kernel bodies do not run (memory unchanged)", x[0] == 1.f && x[255] == 1.f);
    probe::expect("a bad configuration is still an error", bad == cudaErrorInvalidConfiguration);
    cudaFree(x);
    return probe::done();
}
