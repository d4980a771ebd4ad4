/* STAND-IN written for kilosort-docker's tests; not MathWorks code. See ../../README.md.
 * Declares only what the test sources use. */
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

typedef enum { mxUNKNOWN_CLASS = 0, mxDOUBLE_CLASS = 6, mxSINGLE_CLASS = 7, mxINT32_CLASS = 12 }
    mxClassID;
typedef enum { mxREAL = 0, mxCOMPLEX = 1 } mxComplexity;

double mxGetScalar(const mxArray *array);
size_t mxGetNumberOfElements(const mxArray *array);
mxArray *mxCreateDoubleScalar(double value);

#ifdef __cplusplus
}
#endif

#endif
