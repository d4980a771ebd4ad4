/* STAND-IN libmwgpu (and libgpumexbinder) written for kilosort-docker's tests; not MathWorks
 * code. Every function is a stub: the binaries must link and load, not compute. */
#include <stddef.h>
#include "gpu/mxGPUArray.h"

int mxInitGPU(void) { return 1; }
int mxIsGPUArray(const mxArray *array) { (void)array; return 0; }
const mxGPUArray *mxGPUCreateFromMxArray(const mxArray *array) { (void)array; return NULL; }
mxGPUArray *mxGPUCopyFromMxArray(const mxArray *array) { (void)array; return NULL; }
mxGPUArray *mxGPUCreateGPUArray(mwSize ndims, const mwSize *dims, mxClassID cls,
                                mxComplexity complexity, mxGPUInitialize init)
{
    (void)ndims; (void)dims; (void)cls; (void)complexity; (void)init;
    return NULL;
}
const void *mxGPUGetDataReadOnly(const mxGPUArray *array) { (void)array; return NULL; }
void *mxGPUGetData(mxGPUArray *array) { (void)array; return NULL; }
mwSize mxGPUGetNumberOfElements(const mxGPUArray *array) { (void)array; return 0; }
mwSize mxGPUGetNumberOfDimensions(const mxGPUArray *array) { (void)array; return 0; }
const mwSize *mxGPUGetDimensions(const mxGPUArray *array) { (void)array; return NULL; }
mxClassID mxGPUGetClassID(const mxGPUArray *array) { (void)array; return mxUNKNOWN_CLASS; }
mxArray *mxGPUCreateMxArrayOnGPU(const mxGPUArray *array) { (void)array; return NULL; }
void mxGPUDestroyGPUArray(const mxGPUArray *array) { (void)array; }
