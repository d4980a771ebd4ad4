// Written for kilosort-docker's tests: scales a single-precision gpuArray by a scalar.
#include "mex.h"
#include "gpu/mxGPUArray.h"

#ifndef MX_COMPAT_64
#error "mexScale is built with -largeArrayDims (-DMX_COMPAT_64)"
#endif
#ifndef MATLAB_MEX_FILE
#error "mexcuda passes -DMATLAB_MEX_FILE to the host compiler"
#endif

__global__ void scale(const float *in, float *out, float factor, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = factor * in[i];
}

void mexFunction(int nlhs, mxArray *plhs[], int nrhs, const mxArray *prhs[])
{
    if (nrhs != 2) mexErrMsgIdAndTxt("test:mexScale", "usage: y = mexScale(gpuArray, factor)");
    mxInitGPU();
    const mxGPUArray *in = mxGPUCreateFromMxArray(prhs[0]);
    mxGPUArray *out = mxGPUCreateGPUArray(mxGPUGetNumberOfDimensions(in), mxGPUGetDimensions(in),
                                          mxSINGLE_CLASS, mxREAL, MX_GPU_DO_NOT_INITIALIZE);
    size_t n = mxGPUGetNumberOfElements(in);
    scale<<<64, 256>>>((const float *)mxGPUGetDataReadOnly(in), (float *)mxGPUGetData(out),
                       (float)mxGetScalar(prhs[1]), n);
    plhs[0] = mxGPUCreateMxArrayOnGPU(out);
    mxGPUDestroyGPUArray(in);
    mxGPUDestroyGPUArray(out);
    (void)nlhs;
}
