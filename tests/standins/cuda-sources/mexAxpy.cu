// Written for kilosort-docker's tests: y = STANDIN_ALPHA * x + y on the GPU, templated.
#include "mex.h"
#include "gpu/mxGPUArray.h"

#include <string>

#ifndef STANDIN_ALPHA
#error "mexAxpy needs -DSTANDIN_ALPHA (a per-file define from the spec)"
#endif

template <typename T>
__global__ void axpy(const T *x, T *y, size_t n)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n) y[i] = T(STANDIN_ALPHA) * x[i] + y[i];
}

void mexFunction(int nlhs, mxArray *plhs[], int nrhs, const mxArray *prhs[])
{
    if (nrhs != 2) {
        // Host C++ (std::string) so the binary needs libstdc++ symbol versions (GLIBCXX_*).
        std::string usage = "usage: y = mexAxpy(x, y), got " + std::to_string(nrhs) + " inputs";
        mexErrMsgIdAndTxt("test:mexAxpy", "%s", usage.c_str());
    }
    mxInitGPU();
    const mxGPUArray *x = mxGPUCreateFromMxArray(prhs[0]);
    mxGPUArray *y = mxGPUCreateGPUArray(mxGPUGetNumberOfDimensions(x), mxGPUGetDimensions(x),
                                        mxGPUGetClassID(x), mxREAL, MX_GPU_INITIALIZE_VALUES);
    size_t n = mxGPUGetNumberOfElements(x);
    unsigned blocks = (unsigned)((n + 255) / 256);
    if (mxGPUGetClassID(x) == mxDOUBLE_CLASS)
        axpy<double><<<blocks, 256>>>((const double *)mxGPUGetDataReadOnly(x),
                                      (double *)mxGPUGetData(y), n);
    else
        axpy<float><<<blocks, 256>>>((const float *)mxGPUGetDataReadOnly(x),
                                     (float *)mxGPUGetData(y), n);
    plhs[0] = mxGPUCreateMxArrayOnGPU(y);
    mxGPUDestroyGPUArray(x);
    mxGPUDestroyGPUArray(y);
    (void)nlhs;
}
