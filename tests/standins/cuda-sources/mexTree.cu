// Written for kilosort-docker's tests: built like Kilosort's mexMPnu8 (-dynamic
// -DENABLE_STABLEMODE), it reaches a device-side kernel launch through an #include'd helper.
#include "mex.h"
#include "gpu/mxGPUArray.h"

#include "treeHelper.cu"

void mexFunction(int nlhs, mxArray *plhs[], int nrhs, const mxArray *prhs[])
{
    if (nrhs != 1) mexErrMsgIdAndTxt("test:mexTree", "usage: y = mexTree(int32 gpuArray)");
    mxInitGPU();
    const mxGPUArray *in = mxGPUCreateFromMxArray(prhs[0]);
    mxGPUArray *out = mxGPUCreateGPUArray(mxGPUGetNumberOfDimensions(in), mxGPUGetDimensions(in),
                                          mxINT32_CLASS, mxREAL, MX_GPU_INITIALIZE_VALUES);
    int n = (int)mxGPUGetNumberOfElements(in);
    launchTree<<<1, 1>>>((int *)mxGPUGetData(out), n, 1024);
    plhs[0] = mxGPUCreateMxArrayOnGPU(out);
    mxGPUDestroyGPUArray(in);
    mxGPUDestroyGPUArray(out);
    (void)nlhs;
}
