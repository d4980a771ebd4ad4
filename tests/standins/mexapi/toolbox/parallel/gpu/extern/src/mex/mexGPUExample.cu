/* STAND-IN for MATLAB's GPU mex example, written for kilosort-docker's tests; not MathWorks
 * code. Doubles a single-precision gpuArray. */
#include "mex.h"
#include "gpu/mxGPUArray.h"

__global__ void timesTwo(const float *in, float *out, size_t n)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n) out[i] = 2.0f * in[i];
}

void mexFunction(int nlhs, mxArray *plhs[], int nrhs, const mxArray *prhs[])
{
    if (nrhs != 1 || !mxIsGPUArray(prhs[0]))
        mexErrMsgIdAndTxt("standin:mexGPUExample", "expects one gpuArray");
    mxInitGPU();
    const mxGPUArray *in = mxGPUCreateFromMxArray(prhs[0]);
    mxGPUArray *out = mxGPUCreateGPUArray(mxGPUGetNumberOfDimensions(in), mxGPUGetDimensions(in),
                                          mxSINGLE_CLASS, mxREAL, MX_GPU_DO_NOT_INITIALIZE);
    size_t n = (size_t)mxGPUGetNumberOfElements(in);
    timesTwo<<<(unsigned)((n + 255) / 256), 256>>>((const float *)mxGPUGetDataReadOnly(in),
                                                  (float *)mxGPUGetData(out), n);
    plhs[0] = mxGPUCreateMxArrayOnGPU(out);
    mxGPUDestroyGPUArray(in);
    mxGPUDestroyGPUArray(out);
    (void)nlhs;
}
