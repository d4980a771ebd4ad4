/* STAND-IN written for kilosort-docker's tests; not MathWorks code. See ../../README.md.
 * Declares only what the test sources and Kilosort v3.0.2's CUDA sources use; the
 * signatures follow MathWorks' public documentation of each function (MATLAB C Matrix API
 * reference pages), the class list follows the documented order of mxClassID. */
#ifndef KSD_STANDIN_MATRIX_H
#define KSD_STANDIN_MATRIX_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifdef MX_COMPAT_64
typedef size_t mwSize;  /* -largeArrayDims: 64-bit sizes */
typedef size_t mwIndex;
#else
typedef int mwSize;
typedef int mwIndex;
#endif

typedef struct ksd_standin_mxArray mxArray;

typedef enum {
    mxUNKNOWN_CLASS = 0, mxCELL_CLASS, mxSTRUCT_CLASS, mxLOGICAL_CLASS, mxCHAR_CLASS,
    mxVOID_CLASS, mxDOUBLE_CLASS, mxSINGLE_CLASS, mxINT8_CLASS, mxUINT8_CLASS, mxINT16_CLASS,
    mxUINT16_CLASS, mxINT32_CLASS, mxUINT32_CLASS, mxINT64_CLASS, mxUINT64_CLASS,
    mxFUNCTION_CLASS
} mxClassID;
typedef enum { mxREAL = 0, mxCOMPLEX = 1 } mxComplexity;

double mxGetScalar(const mxArray *array);
size_t mxGetNumberOfElements(const mxArray *array);
mxArray *mxCreateDoubleScalar(double value);
mxArray *mxCreateNumericArray(mwSize ndim, const mwSize *dims, mxClassID classid,
                              mxComplexity complexity);
void *mxGetData(const mxArray *array);

#ifdef __cplusplus
}
#endif

#endif
