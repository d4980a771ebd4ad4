/* STAND-IN written for kilosort-docker's tests; not MathWorks code. See ../../README.md. */
#ifndef KSD_STANDIN_MEX_H
#define KSD_STANDIN_MEX_H

#include "matrix.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The entry point every mex file defines. */
void mexFunction(int nlhs, mxArray *plhs[], int nrhs, const mxArray *prhs[]);

void mexErrMsgIdAndTxt(const char *identifier, const char *format, ...);
int mexPrintf(const char *format, ...);

#ifdef __cplusplus
}
#endif

#endif
