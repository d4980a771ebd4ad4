/* STAND-IN written for kilosort-docker's tests; not MathWorks code. See the README.md at the
 * root of this stand-in tree. Declares only what the test sources and Kilosort v3.0.2's CUDA
 * sources use, with the signatures of MathWorks' public documentation (mxGPUArray C API
 * reference pages). */
#ifndef KSD_STANDIN_MXGPUARRAY_H
#define KSD_STANDIN_MXGPUARRAY_H

#include "matrix.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ksd_standin_mxGPUArray mxGPUArray;
typedef enum { MX_GPU_INITIALIZE_VALUES = 0, MX_GPU_DO_NOT_INITIALIZE = 1 } mxGPUInitialize;

int mxInitGPU(void);
int mxIsGPUArray(const mxArray *array);
const mxGPUArray *mxGPUCreateFromMxArray(const mxArray *array);
mxGPUArray *mxGPUCopyFromMxArray(const mxArray *array);
mxGPUArray *mxGPUCreateGPUArray(mwSize ndims, const mwSize *dims, mxClassID cls,
                                mxComplexity complexity, mxGPUInitialize init);
const void *mxGPUGetDataReadOnly(const mxGPUArray *array);
void *mxGPUGetData(mxGPUArray *array);
mwSize mxGPUGetNumberOfElements(const mxGPUArray *array);
mwSize mxGPUGetNumberOfDimensions(const mxGPUArray *array);
const mwSize *mxGPUGetDimensions(const mxGPUArray *array);
mxClassID mxGPUGetClassID(const mxGPUArray *array);
mxArray *mxGPUCreateMxArrayOnGPU(const mxGPUArray *array);
void mxGPUDestroyGPUArray(const mxGPUArray *array);

#ifdef __cplusplus
}
#endif

#endif
